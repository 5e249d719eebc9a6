"""Which settings differ between two resolved configs, and whether a resume may go ahead.

Configs are compared as plain dicts (``rlhf.config.to_dict``), flattened to dotted keys:
``rl.kl.target``, ``prompt.settings[1].top_p``; a list of scalars is one value.
"""

from __future__ import annotations

from typing import Any, Iterable

from rlhf.errors import UserError

UNSET = "<unset>"


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [{"d": 2}]}`` -> ``{"a.b": 1, "c[0].d": 2}``."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out or {prefix: {}}
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = {f"{prefix}[len]": len(value)}
        for i, sub in enumerate(value):
            out.update(flatten(sub, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def differences(old: dict, new: dict, sections: Iterable[str]) -> list[tuple[str, Any, Any]]:
    """``(key, old value, new value)`` for every setting under ``sections`` that differs."""
    sections = tuple(sections)
    a = flatten({k: old.get(k) for k in sections})
    b = flatten({k: new.get(k) for k in sections})
    return [(k, a.get(k, UNSET), b.get(k, UNSET)) for k in dict.fromkeys([*a, *b])
            if a.get(k, UNSET) != b.get(k, UNSET)]


def describe(diffs: list[tuple[str, Any, Any]]) -> str:
    """``rl.learning_rate: 0.01 -> 0.5, rl.lora.r: 8 -> 4``."""
    return ", ".join(f"{key}: {_show(old)} -> {_show(new)}" for key, old, new in diffs)


def _show(value: Any) -> str:
    return value if value == UNSET else repr(value)


def resume_changes(stage: str, old: dict, new: dict, sections: Iterable[str], safe: frozenset[str],
                   source: str) -> list[str]:
    """The lines to print for settings that changed since ``source`` (a checkpoint) was written.

    Changes to ``safe`` keys are applied by the caller and reported; any other change would make
    the resumed run something no straight run is, so it ends in one :class:`UserError` line.
    """
    diffs = differences(old, new, sections)
    refused = [d for d in diffs if d[0] not in safe]
    if refused:
        raise UserError(f"{stage}: cannot resume from {source}: {describe(refused)} changed since it was written, "
                        f"which changes the model or the maths; set it back, or drop --resume and add --force to "
                        f"start over")
    return [f"{stage}: resume applies {key}: {_show(o)} -> {_show(n)}" for key, o, n in diffs]
