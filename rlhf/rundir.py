"""The run directory: ``<output_dir>/<run_name>/<stage>/`` with config, metrics and a manifest.

The manifest is written atomically and last: a stage folder without one did not finish. The
stage's resolved ``config.yaml`` is the record a later run compares its own config with.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from rlhf.artifacts import atomic_write_json, atomic_write_text, ensure_dir
from rlhf.config import ExperimentConfig, config_from_dict, to_dict, to_yaml
from rlhf.configdiff import describe, differences
from rlhf.errors import UserError

MANIFEST = "manifest.json"
LOCK = ".lock"  # in the run folder: held by the one process writing to it

# The config sections each stage reads: the shared ones it uses, its own, and those of the upstream
# stages whose artifacts it consumes. A finished stage counts as changed only when one of these
# differs. run_name and output_dir are left out: they name the folder the record was found in, so a
# moved or copied run folder is still the same run.
STAGE_SECTIONS = {
    "prompt": ("seed", "model", "data", "tinyworld", "prompt"),
    "sft": ("seed", "model", "data", "tinyworld", "sft"),
    "reward": ("seed", "tinyworld", "reward"),
    "rl": ("seed", "model", "data", "tinyworld", "sft", "reward", "rl"),
    "evaluate": ("seed", "model", "data", "tinyworld", "sft", "reward", "rl", "evaluate"),
}

# Settings that change how a stage runs, not what it produces (compiled kernels compute the same
# maths; trackers only watch): a finished stage is not redone for them.
RUN_ONLY = frozenset({"rl.compile", "report_to", "sft.report_to", "reward.report_to", "rl.report_to"})


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "datasets", "accelerate"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    return versions


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def stage_dir(config: ExperimentConfig, stage: str) -> Path:
    return config.run_dir / stage


def is_finished(config: ExperimentConfig, stage: str) -> bool:
    return (stage_dir(config, stage) / MANIFEST).is_file()


def require_stage(config: ExperimentConfig, stage: str, needed_by: str) -> Path:
    """Return the folder of a finished ``stage`` whose recorded settings are ``config``'s, or fail
    saying which stage to run (again) first: a stage never consumes artifacts of another config."""
    folder = stage_dir(config, stage)
    if not (folder / MANIFEST).is_file():
        raise UserError(
            f"stage '{needed_by}' needs the '{stage}' stage, which has not finished in {config.run_dir}: "
            f"run `rlhf {stage} CONFIG` first"
        )
    if diffs := changed_settings(config, stage):
        raise UserError(f"stage '{needed_by}' needs the '{stage}' stage, which finished in {folder} with other "
                        f"settings ({describe(diffs)}): run `rlhf {stage} CONFIG --force` with these settings first")
    return folder


@dataclass
class StageRun:
    """One stage's folder, opened by :func:`start_stage` and closed by :meth:`finish`."""

    config: ExperimentConfig
    name: str
    dir: Path
    started: float

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        atomic_write_json(self.dir / "metrics.json", metrics)

    def finish(self, **extra: Any) -> dict:
        ended = time.time()
        manifest = {
            "stage": self.name,
            "status": "finished",
            "started_at": _iso(self.started),
            "ended_at": _iso(ended),
            "seconds": round(ended - self.started, 3),
            "seed": self.config.seed,
            "versions": library_versions(),
            "git_commit": git_commit(),
            **extra,
        }
        atomic_write_json(self.dir / MANIFEST, manifest)
        return manifest


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def start_stage(config: ExperimentConfig, name: str) -> StageRun:
    """Open a stage folder: drop any old manifest first, then write the resolved config."""
    ensure_dir(config.output_dir, "output_dir")
    folder = ensure_dir(stage_dir(config, name), "stage folder")
    (folder / MANIFEST).unlink(missing_ok=True)
    atomic_write_text(folder / "config.yaml", to_yaml(config))
    atomic_write_text(config.run_dir / "config.yaml", to_yaml(config))
    return StageRun(config=config, name=name, dir=folder, started=time.time())


def recorded_config(config: ExperimentConfig, stage: str) -> dict:
    """The resolved config a stage last started with, as a dict (as :func:`rlhf.config.to_dict`)."""
    import yaml

    path = stage_dir(config, stage) / "config.yaml"
    try:
        return to_dict(config_from_dict(yaml.safe_load(path.read_text(encoding="utf-8"))))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, UserError, TypeError) as err:
        raise UserError(f"{stage}: cannot read its recorded config {path} ({str(err).splitlines()[0]}): "
                        f"add --force to redo the stage") from None


def changed_settings(config: ExperimentConfig, stage: str) -> list[tuple[str, object, object]]:
    """Settings ``stage`` reads (:data:`STAGE_SECTIONS`) whose value differs from its record."""
    sections = STAGE_SECTIONS.get(stage) or [k for k in to_dict(config) if k not in ("run_name", "output_dir")]
    return [d for d in differences(recorded_config(config, stage), to_dict(config), sections) if d[0] not in RUN_ONLY]


def check_finished_unchanged(config: ExperimentConfig, stages: list[str]) -> None:
    """Fail with one line if a finished stage among ``stages`` recorded other settings than
    ``config``'s (both resolved): skipping it would silently keep results of another config."""
    changed = [(s, d) for s in stages if is_finished(config, s) and (d := changed_settings(config, s))]
    if not changed:
        return
    if len(changed) == 1:
        (stage, diffs), = changed
        raise UserError(f"{stage}: finished in {stage_dir(config, stage)} with other settings ({describe(diffs)}); "
                        f"add --force to redo it")
    listed = "; ".join(f"{s} ({describe(d)})" for s, d in changed)
    raise UserError(f"finished stages with other settings in {config.run_dir}: {listed}; add --force to redo them")


def keep_or_discard(stage: str, folder: Path, found: list[str], force: bool, log=print,
                    extra: tuple[Path, ...] = ()) -> None:
    """Before a fresh (not ``--resume``) start: an earlier run's checkpoints in ``folder`` (named
    in ``found``) are kept and the run refused, unless ``force`` discards them (and ``extra`` files)."""
    if not found:
        return
    shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
    if not force:
        raise UserError(f"{stage}: an earlier run left checkpoints in {folder} ({shown}): add --resume to continue "
                        f"from the newest good one, or --force to discard them and start over")
    log(f"{stage}: --force: discarding the checkpoints in {folder} ({shown})")
    shutil.rmtree(folder, ignore_errors=True)
    for path in extra:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def run_lock(config: ExperimentConfig):
    """One writer per run folder: an exclusive ``flock`` on ``<run folder>/.lock`` for as long as the
    block runs; a second process refuses in one line naming the holder's pid and command. The
    operating system releases the lock when its process dies, so a killed run never blocks the
    next. Under a multi-process launch only rank 0 takes it (the other ranks are its workers)."""
    if int(os.environ.get("RANK", "0") or 0) > 0:
        yield
        return
    ensure_dir(config.output_dir, "output_dir")
    folder = ensure_dir(config.run_dir, "run folder")
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"run folder {folder} is in use by {_holder(fd)}: wait for it to finish, or give this run "
                            f"another run_name or output_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": " ".join(sys.argv)}).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    """``pid N (`command`)`` of the process holding the lock, as it wrote them."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        holder = {}
    pid, command = holder.get("pid", "?"), holder.get("command", "")
    return f"pid {pid}" + (f" (`{command[:80]}`)" if command else "")
