"""Experiment trackers for every training stage: TensorBoard, Trackio and W&B (offline unless
``WANDB_MODE`` says otherwise), through accelerate's tracker classes.

A stage's trackers receive exactly the rows the stage writes to its ``metrics.jsonl`` (one
vocabulary: the same names in the file, the tracker and the report), the resolved config as
hyperparameters, and are named ``<run_name>/<stage>``. A resumed stage continues the same tracker
run where the tracker allows it: TensorBoard appends to the same folder, W&B and Trackio resume
the run of the same name. Every process but the main one logs nothing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Iterable, get_args

from rlhf.config import Tracker
from rlhf.configdiff import flatten
from rlhf.errors import UserError

TRACKERS = get_args(Tracker)  # the names report_to accepts; each is also its package's name
PROJECT = "rlhf"  # the project (W&B) or space (Trackio) every run reports to


def check_installed(names: Iterable[str], key: str = "report_to") -> None:
    """One line naming the key and the package to install for a tracker that is not installed."""
    for name in names:
        if importlib.util.find_spec(name) is None:
            raise UserError(f"config key '{key}': the tracker {name} is not installed: pip install 'rlhf[{name}]' "
                            f"(or 'rlhf[trackers]' for all of them)")


def hyperparameters(config: dict) -> dict[str, bool | int | float | str]:
    """The resolved config, flattened to dotted keys with scalar values (what trackers take)."""
    return {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v) for k, v in flatten(config).items()}


class Trackers:
    """The trackers of one stage. ``folder``: the stage's folder (TensorBoard and W&B files go to
    ``folder/trackers``); ``config``: the resolved config as a dict. Only the main process starts
    them (accelerate's process state, which this sets up when no stage has yet)."""

    def __init__(self, names: Iterable[str], run_name: str, stage: str, folder: Path, config: dict):
        from accelerate import PartialState

        from rlhf.runtime import use_cpu

        self.names = list(names)
        main = not self.names or PartialState(cpu=use_cpu()).is_main_process
        self.trackers = [self._start(n, f"{run_name}/{stage}", folder) for n in self.names] if main else []
        for tracker in self.trackers:
            tracker.store_init_configuration(hyperparameters(config))

    @staticmethod
    def _start(name: str, run: str, folder: Path):
        from accelerate.tracking import TensorBoardTracker, TrackioTracker, WandBTracker

        logs = folder / "trackers"
        logs.mkdir(parents=True, exist_ok=True)
        run_id = hashlib.sha256(str(logs.resolve()).encode()).hexdigest()[:16]  # the same stage folder: the same run
        if name == "tensorboard":
            tracker = TensorBoardTracker(run.replace("/", "-"), logs)
        elif name == "wandb":
            tracker = WandBTracker(PROJECT, name=run, id=run_id, resume="allow", dir=str(logs),
                                   mode=os.environ.get("WANDB_MODE", "offline"))
        else:
            tracker = TrackioTracker(PROJECT, name=run, resume="allow")
        tracker.start()
        return tracker

    def log(self, values: dict, step: int) -> None:
        """The numbers among ``values`` at ``step`` (strings and flags are left to metrics.jsonl)."""
        numbers = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for tracker in self.trackers:
            tracker.log(numbers, step=step)

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []


def trainer_logger(log_path: Path, trackers: Trackers | None = None, prefix: str = ""):
    """A Trainer callback writing each of the Trainer's log rows to ``log_path`` (one JSON line,
    ``step`` first, the Trainer's names: ``loss``, ``eval_loss``, ...) and to ``trackers``, there
    under ``prefix`` (``full/loss``: one SFT run holds every variant)."""
    from transformers import TrainerCallback

    class Logger(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            row = {"step": state.global_step, **logs}
            with log_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            if trackers is not None:
                trackers.log({f"{prefix}{k}": v for k, v in logs.items()}, state.global_step)

    return Logger()
