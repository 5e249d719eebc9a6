"""Strict loading of typed nested dataclasses from YAML mappings and ``key.sub=value`` overrides.

An unknown key names its section and the closest valid names; a wrong type or impossible value
names the key and the value; every float must be finite.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from rlhf.errors import UserError, shown

def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for option in inner:  # the first type the value fits; else the first type's complaint
            try:
                return _coerce(option, value, key)
            except UserError as err:
                errors.append(err)
        raise errors[0]
    if origin is Literal:
        value = "no" if value is False and "no" in args else value  # YAML reads an unquoted no/off as false
        if value not in args:
            raise UserError(f"config key '{key}': value {shown(value)} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"config key '{key}': expected a list, got {shown(value)}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:  # YAML 1.1 reads 1e-5 (no dot) as a string
            value = float(value)
        except (ValueError, OverflowError):
            pass
    if tp is str and isinstance(value, (bool, int, float)):
        raise UserError(f"config key '{key}': expected text, got {shown(value)} (YAML reads an unquoted yes/no/on/off/"
                        f"true/false as a boolean and digits as a number: quote the value)")
    if tp is bool and not isinstance(value, bool) or tp is not bool and isinstance(value, bool):
        raise UserError(f"config key '{key}': expected {_type_name(tp)}, got {shown(value)}")
    if not isinstance(value, tp):
        raise UserError(f"config key '{key}': expected {_type_name(tp)}, got {shown(value)}")
    return _finite(value, key)


def _finite(value: Any, key: str) -> Any:
    """Every float finite (no .inf / .nan), every int within 64 bits (what torch and numpy take)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"config key '{key}': value {shown(value)} is not a finite number")
    if isinstance(value, int) and not -2**63 <= value < 2**63:
        raise UserError(f"config key '{key}': value {shown(value)} is out of range (more than 64 bits)")
    return value


def _build(cls: type, raw: Any, section: str) -> Any:
    where = f"section '{section}'" if section else "the top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"config {where}: expected a mapping, got {shown(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UserError(f"unknown config key {shown(str(key))} in {where}{hint} (valid: {', '.join(fields)})")
        full = f"{section}.{key}" if section else str(key)
        kwargs[key] = _coerce(hints[key], value, full)
        check = fields[key].metadata.get("check")
        if check is not None and kwargs[key] is not None and (msg := check(kwargs[key])):
            raise UserError(f"config key '{full}': value {shown(kwargs[key])} {msg}")
    return cls(**kwargs)


# Bounds on what a config may hold, checked before anything is built from it (a config is a few KB
# with values nested three deep): a YAML alias expands each time it is used, so a few lines of
# nested anchors can stand for a billion values.
MAX_CONFIG_BYTES = 1_000_000
MAX_DEPTH = 16
MAX_VALUES = 50_000


def check_bounds(value: Any, where: str) -> None:
    """One :class:`UserError` line when ``value`` holds more than :data:`MAX_VALUES` values
    (counting each use of a YAML alias) or nests deeper than :data:`MAX_DEPTH`; a walk without
    recursion that stops at the first bound it passes."""
    stack, count = [(value, 1)], 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise UserError(f"{where} holds more than {MAX_VALUES} values (YAML aliases count each time they are "
                            f"used); a config needs a few hundred")
        if depth > MAX_DEPTH:
            raise UserError(f"{where} nests values more than {MAX_DEPTH} levels deep; a config needs three")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for pair in node.items() for v in pair)
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def _safe_load(text: str, where: str) -> Any:
    """``yaml.load`` (safe, unique keys) of ``text`` within :data:`MAX_CONFIG_BYTES`, nested within
    :data:`MAX_DEPTH`; YAML syntax errors pass through to the caller."""
    if len(text) > MAX_CONFIG_BYTES:
        raise UserError(f"{where} is {len(text):,} characters long; a config is at most {MAX_CONFIG_BYTES:,}")
    try:
        value = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader
    except RecursionError:  # the parser recurses once per level of nesting
        raise UserError(f"{where} nests values more than {MAX_DEPTH} levels deep; a config needs three") from None
    check_bounds(value, where)
    return value


def parse_overrides(overrides: list[str]) -> dict:
    """Turn ``["a.b=3", "c=x"]`` into a nested dict, values parsed as YAML scalars."""
    nested: dict = {}
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {shown(item)} is not of the form key.sub=value")
        dotted, text = item.split("=", 1)
        try:
            value = _safe_load(text, f"override {shown(item)}") if text.strip() else ""
        except yaml.YAMLError:
            value = text
        node = nested
        parts = dotted.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override {shown(item)} conflicts with another override of '{part}'")
        node[parts[-1]] = value
    return nested


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key given twice in one mapping (YAML would keep the last
    silently: a second ``ppo:`` block replaced the first whole)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key '{key}' is given twice in one mapping",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise UserError(f"config file {path} is {path.stat().st_size:,} bytes; a config is at most {MAX_CONFIG_BYTES:,}")
    try:
        raw = _safe_load(path.read_text(encoding="utf-8"), f"config file {path}")
    except UnicodeDecodeError as err:
        raise UserError(f"config file {path} is not valid UTF-8 ({_bad_byte(err)}): save it as UTF-8") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if raw is None:  # an empty file would silently run the lab defaults (hub model and data)
        raise UserError(f"config file {path} is empty: write at least one setting (see configs/tiny.yaml)")
    if not isinstance(raw, dict):
        raise UserError(f"config file {path}: expected a mapping at the top level")
    return raw


def _bad_byte(err: UnicodeDecodeError) -> str:
    """Where a decode failed: line, byte offset in the file and the byte, e.g. ``line 2, byte offset 17: 0xe9``."""
    line = err.object[:err.start].count(b"\n") + 1
    return f"line {line}, byte offset {err.start}: {err.object[err.start]:#04x}"
