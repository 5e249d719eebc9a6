"""Config field helpers: value checks and :func:`opt`, the dataclass field with a check and a doc."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any, Callable, Optional

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


def path_name(v: Any) -> str | None:
    """A name that becomes one folder name: no separator, no '..', no leading dot, printable."""
    if not v or v.startswith(".") or any(c in v for c in "/\\") or not v.isprintable():
        return "must be a plain folder name (no '/', '\\' or leading '.')"
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
                return f"{msg} (item {v!r})"
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
