"""The run directory: ``<output_dir>/<run_name>/<stage>/`` with config, metrics and a manifest.

The manifest is written atomically and last: a stage folder without one did not finish.
"""

from __future__ import annotations

import platform
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from rlhf.artifacts import atomic_write_json, atomic_write_text, read_json
from rlhf.config import ExperimentConfig, to_yaml
from rlhf.errors import UserError

MANIFEST = "manifest.json"


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "trl", "datasets", "accelerate"):
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
    """Return the folder of a finished ``stage``, or fail saying which stage to run first."""
    folder = stage_dir(config, stage)
    if not (folder / MANIFEST).is_file():
        raise UserError(
            f"stage '{needed_by}' needs the '{stage}' stage, which has not finished in {config.run_dir}: "
            f"run `rlhf {stage} CONFIG` first"
        )
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
    folder = stage_dir(config, name)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)
    atomic_write_text(folder / "config.yaml", to_yaml(config))
    atomic_write_text(config.run_dir / "config.yaml", to_yaml(config))
    return StageRun(config=config, name=name, dir=folder, started=time.time())


def read_manifest(folder: Path) -> dict:
    return read_json(folder / MANIFEST)
