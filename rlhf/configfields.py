"""Config field helpers: value checks and :func:`opt`, the dataclass field with a check and a doc."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any, Callable, Optional

from rlhf.errors import UserError, shown

Check = Callable[[Any], Optional[str]]


def positive(v: Any) -> str | None:
    return None if v > 0 else "must be > 0"


def non_negative(v: Any) -> str | None:
    return None if v >= 0 else "must be >= 0"


def unit_open_closed(v: Any) -> str | None:
    return None if 0 < v <= 1 else "must be in (0, 1]"


def unit_open(v: Any) -> str | None:
    return None if 0 < v < 1 else "must be in (0, 1)"


def unit_closed(v: Any) -> str | None:
    return None if 0 <= v <= 1 else "must be in [0, 1]"


def fraction(v: Any) -> str | None:
    return None if 0 <= v < 1 else "must be in [0, 1)"


SEED_MAX = 2**32 - 1  # numpy's limit; torch and random accept it too


def seed_value(v: Any) -> str | None:
    return None if 0 <= v <= SEED_MAX else f"must be in [0, {SEED_MAX}]"


NAME_MAX_BYTES = 200  # a folder name; file systems allow 255 bytes, and temp names add a prefix and suffix


def path_name(v: Any) -> str | None:
    """A name that becomes one folder name: no separator, no '..', no leading dot, printable, and
    within the file system's name limit (:data:`NAME_MAX_BYTES` in UTF-8)."""
    if not v or v.startswith(".") or any(c in v for c in "/\\") or not v.isprintable():
        return "must be a plain folder name (no '/', '\\' or leading '.')"
    if len(v.encode("utf-8")) > NAME_MAX_BYTES:
        return f"is {len(v.encode('utf-8'))} bytes long; a folder name here is at most {NAME_MAX_BYTES}"
    return None


def home(path: str | None) -> str | None:
    """A path-or-hub-id setting with a leading ``~`` expanded (hub ids never start with one)."""
    import os

    return os.path.expanduser(path) if isinstance(path, str) and path.startswith("~") else path


def optional(check: Check) -> Check:
    return lambda v: None if v is None else check(v)


def non_empty(v: Any) -> str | None:
    return None if len(v) else "must not be empty"


def all_of(*checks: Check) -> Check:
    """The first complaint of ``checks``, in order (None when all pass)."""
    return lambda v: next((msg for check in checks if (msg := check(v)) is not None), None)


def each(check: Check) -> Check:
    def run(values: list) -> str | None:
        for v in values:
            if (msg := check(v)) is not None:
                return f"{msg} (item {shown(v)})"
        return None

    return run


def opt(default: Any = None, check: Check | None = None, doc: str = "") -> Any:
    """A config field with a default, an optional value check and a one-line description."""
    meta = {"check": check, "doc": doc}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda d=default: _copy(d), metadata=meta)
    return field(default=default, metadata=meta)


def _copy(value: Any) -> Any:
    import copy

    return copy.deepcopy(value)


def type_name(tp: Any) -> str:
    """A declared type in words: ``int``, ``float or null``, ``one of 'k1', 'k3'``, ``list of str``."""
    import typing

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        return f"list of {type_name(args[0])}"
    if args and origin is not None and type(None) in args:  # Optional[X] and X | None
        return " or ".join(type_name(a) for a in args if a is not type(None)) + " or null"
    if args:
        return " or ".join(type_name(a) for a in args)
    return getattr(tp, "__name__", str(tp))


def describe_keys(cls: type, values: dict, section: str = "") -> str:
    """Every key of the config dataclass ``cls`` under ``section`` ('' = all), one entry each:
    ``key: type = default`` (and the value in ``values`` where it differs), then its doc. Items of
    a list of sections are listed as ``key[].sub``."""
    lines = [line for line in _key_lines(cls, values, "") if _under(line[0], section)]
    if not lines:
        raise UserError(f"option --keys: no config key or section {shown(section)}")
    out = []
    for key, kind, default, value, doc in lines:
        here = "" if value is _NOT_GIVEN or value == default else f"  (here: {value!r})"
        head = f"{key}: section" if kind == "section" else f"{key}: {kind} = {default!r}{here}"
        out.append(f"{head}\n" + (f"    {doc}\n" if doc else ""))
    return "".join(out)


_NOT_GIVEN = object()


def _under(key: str, section: str) -> bool:
    return not section or key == section or key.startswith((f"{section}.", f"{section}["))


def _key_lines(cls: type, values: Any, prefix: str):
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, tp = f"{prefix}{f.name}", hints[f.name]
        value = values.get(f.name, _NOT_GIVEN) if isinstance(values, dict) else _NOT_GIVEN
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        inner = typing.get_args(tp)
        nested = next((a for a in (tp, *inner) if dataclasses.is_dataclass(a)), None)
        if nested is not None and typing.get_origin(tp) is not list:
            yield key, "section", None, _NOT_GIVEN, f.metadata.get("doc", "")
            yield from _key_lines(nested, value if value is not _NOT_GIVEN else {}, f"{key}.")
        elif typing.get_origin(tp) is list and inner and dataclasses.is_dataclass(inner[0]):
            shown = [dataclasses.asdict(d) for d in default]
            yield key, f"list of {inner[0].__name__}", shown, value, f.metadata.get("doc", "")
            yield from _key_lines(inner[0], {}, f"{key}[].")
        else:
            yield key, type_name(tp), default, value, f.metadata.get("doc", "")
