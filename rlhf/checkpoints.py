"""Reading checkpoints defensively: numbered folders, safetensors and ``torch.load(weights_only)``
files, finiteness. Shared by the SFT and PPO resume logic; each says what a good checkpoint holds.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from rlhf.artifacts import remove_leftovers
from rlhf.errors import first_line


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message says why (missing file, unreadable, NaN...)."""


def numbered(folder: Path, prefix: str) -> tuple[list[tuple[int, Path]], list[Path]]:
    """(``[(n, folder/PREFIX-n)]`` newest first, other entries that are not leftovers of an atomic write)."""
    if not folder.is_dir():
        return [], []
    found, strays = [], []
    pattern = re.compile(rf"{re.escape(prefix)}-(\d+)")
    for p in folder.iterdir():
        m = pattern.fullmatch(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
        elif not (p.name.startswith(".") and p.name.endswith((".tmp", ".old"))):
            strays.append(p)
    return sorted(found, reverse=True), sorted(strays)


def clean_stray(folder: Path, prefix: str, log: Callable[[str], Any] = print, stage: str = "") -> None:
    """Remove what is not a ``PREFIX-n`` checkpoint from ``folder`` (leftovers of a killed write,
    stray entries such as ``PREFIX-final``), saying what went."""
    removed = remove_leftovers(folder)
    for p in numbered(folder, prefix)[1]:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        removed.append(p.name)
    if removed:
        log(f"{stage}: removed {', '.join(removed)} from {folder} (not a checkpoint)")


def require_files(folder: Path, names: tuple[str, ...]) -> None:
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise CheckpointError(f"{', '.join(missing)} missing")


def _load_finite(path: Path, load: Callable[[], Any]) -> Any:
    """``load()``, with any failure to read and any non-finite value as a :class:`CheckpointError`
    naming ``path`` (the libraries raise several types for a cut or garbled file)."""
    try:
        obj = load()
    except Exception as err:
        raise CheckpointError(f"{path.name} is unreadable ({_first_line(err)})") from None
    if (bad := first_non_finite(obj)) is not None:
        raise CheckpointError(f"{path.name} holds non-finite values ({bad})")
    return obj


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return _load_finite(path, lambda: load_file(str(path)))


def read_torch(path: Path) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary pickles."""
    return _load_finite(path, lambda: torch.load(path, weights_only=True, map_location="cpu"))


def read_json_state(path: Path) -> dict:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path.name} is unreadable ({_first_line(err)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path.name} is not a JSON object")
    return state


def first_non_finite(obj: Any, name: str = "") -> str | None:
    """The name of the first floating tensor in ``obj`` (nested dicts / lists) with a NaN or inf."""
    if isinstance(obj, torch.Tensor):
        return (name or "tensor") if obj.is_floating_point() and not torch.isfinite(obj).all() else None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for key, value in items:
        if (bad := first_non_finite(value, f"{name}.{key}" if name else str(key))) is not None:
            return bad
    return None


def shape_mismatch(found: dict[str, torch.Tensor], expected: dict[str, torch.Size]) -> str | None:
    """Why tensors ``found`` do not fit a model whose trainable tensors are ``expected``; None if they do."""
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    if missing or extra:
        return f"{len(missing)} tensors missing (e.g. {missing[:1]}), {len(extra)} unexpected (e.g. {extra[:1]})"
    for key, shape in expected.items():
        if found[key].shape != shape:
            return f"{key} has shape {list(found[key].shape)}, the configured model {list(shape)}"
    return None


def _first_line(err: Exception) -> str:
    return first_line(err)[:200]
