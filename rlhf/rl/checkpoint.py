"""PPO checkpoints: written only from finite state, verified before a resume, newest good one first.

A folder ``step-N`` holds ``trainable.safetensors`` (adapter or weights, and the value head),
``optimizer.pt`` (the optimizer's state, read with ``weights_only``), ``rng.safetensors`` and
``trainer_state.json`` (step, data position, KL controller, Python RNG, and the resolved config it
was written under). It is written atomically (:func:`rlhf.artifacts.atomic_dir`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from rlhf.artifacts import atomic_dir
from rlhf.checkpoints import (CheckpointError, numbered, read_json_state, read_safetensors, read_torch,
                              require_files, shape_mismatch)
from rlhf.config import config_from_dict, to_dict
from rlhf.configdiff import resume_changes
from rlhf.errors import UserError
from rlhf.rundir import STAGE_SECTIONS

PREFIX = "step"
FILES = ("trainable.safetensors", "optimizer.pt", "rng.safetensors", "trainer_state.json")

# What a resume may change. None of these changes the model or the maths of a PPO step: how many
# steps, how often to checkpoint and write samples, the held-out evaluation, the trackers, compiling, and the
# learning rate (AdamW's moments do not depend on it; the optimizer's rate is set from the config
# after loading, with the constant schedule). Every other setting the PPO stage reads
# (rundir.STAGE_SECTIONS["rl"]: seed, model, data, tinyworld, sft, reward, ppo), such as the LoRA
# shape, the policy kind, batch sizes, epochs, clipping or the KL estimator, must match the checkpoint.
SAFE_ON_RESUME = frozenset({"rl.steps", "rl.save_steps", "rl.sample_steps", "rl.learning_rate",
                            "rl.eval_n_dialogues", "rl.eval_batch_size", "rl.report_to", "rl.compile"})


@dataclass
class Checkpoint:
    folder: Path
    trainable: dict[str, torch.Tensor]
    optimizer: dict
    rng: dict[str, torch.Tensor]
    state: dict

    @property
    def step(self) -> int:
        return self.state["step"]


def write_checkpoint(folder: Path, ckpt: Checkpoint) -> None:
    """All four files into a temp folder that replaces ``folder`` in one rename."""
    from safetensors.torch import save_file

    with atomic_dir(folder) as tmp:
        save_file(ckpt.trainable, str(tmp / "trainable.safetensors"))
        torch.save(ckpt.optimizer, tmp / "optimizer.pt")
        save_file(ckpt.rng, str(tmp / "rng.safetensors"))
        (tmp / "trainer_state.json").write_text(json.dumps(ckpt.state))


def read_checkpoint(folder: Path) -> Checkpoint:
    """Every file present, readable and finite, or :class:`CheckpointError` saying which is not."""
    require_files(folder, FILES)
    state = read_json_state(folder / "trainer_state.json")
    if not isinstance(state.get("step"), int) or "kl_controller" not in state or "python_random" not in state:
        raise CheckpointError("trainer_state.json lacks step, kl_controller or python_random")
    _check_state(state)
    trainable = read_safetensors(folder / "trainable.safetensors")
    optimizer = read_torch(folder / "optimizer.pt")
    if not isinstance(optimizer, dict) or "optimizer" not in optimizer:
        raise CheckpointError("optimizer.pt lacks the optimizer state")
    rng = read_safetensors(folder / "rng.safetensors")
    if any(t.dtype != torch.uint8 or t.dim() != 1 for t in rng.values()) or "torch" not in rng:
        raise CheckpointError("rng.safetensors lacks a torch generator state (1-d uint8)")
    return Checkpoint(folder, trainable, optimizer, rng, state)


def _check_state(state: dict) -> None:
    """The values a resume puts back: a finite positive KL coefficient and a Python RNG state."""
    import math

    value = state["kl_controller"].get("value") if isinstance(state["kl_controller"], dict) else None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise CheckpointError(f"trainer_state.json: kl_controller value {value!r} is not a finite number >= 0")
    py = state["python_random"]
    if not (isinstance(py, list) and len(py) == 3 and isinstance(py[0], int) and isinstance(py[1], list)
            and all(isinstance(x, int) and not isinstance(x, bool) for x in py[1])):
        raise CheckpointError("trainer_state.json: python_random is not a Python random state")


def find_resumable(folder: Path, expected: dict[str, torch.Size], config: dict, log: Callable[[str], Any] = print
                   ) -> Checkpoint | None:
    """The newest checkpoint in ``folder`` that is intact and fits the configured model, saying
    which it skipped and why, and which setting changes the resume applies. ``expected``: the
    policy's trainable tensor shapes; ``config``: the resolved config as a dict. Refuses (one
    :class:`UserError` line) when settings outside :data:`SAFE_ON_RESUME` changed."""
    candidates, _ = numbered(folder, PREFIX)
    for n, path in candidates:
        try:
            ckpt = read_checkpoint(path)
            if ckpt.step != n:
                raise CheckpointError(f"trainer_state.json says step {ckpt.step}")
        except CheckpointError as err:
            log(f"rl: skipping checkpoint {path}: {err}")
            continue
        applied = _check_config(ckpt, config)
        if (why := shape_mismatch(ckpt.trainable, expected)) is not None:
            log(f"rl: skipping checkpoint {path}: {why}")
            continue
        for line in applied:
            log(line)
        return ckpt
    log(f"rl: --resume: no {'usable ' if candidates else ''}checkpoint in {folder}; starting from step 0")
    return None


def _check_config(ckpt: Checkpoint, config: dict) -> list[str]:
    recorded = ckpt.state.get("config")
    if not isinstance(recorded, dict):
        raise UserError(f"rl: checkpoint {ckpt.folder} records no config, so a resume cannot be checked against "
                        f"yours: drop --resume and add --force to start over")
    try:
        recorded = to_dict(config_from_dict(recorded))
    except UserError:
        pass  # a record from an older version: compared as written
    steps = config["rl"]["steps"]
    if steps < ckpt.step:
        raise UserError(f"rl: cannot resume from {ckpt.folder}: rl.steps={steps} is below its step {ckpt.step}")
    return resume_changes("rl", recorded, config, STAGE_SECTIONS["rl"], SAFE_ON_RESUME, str(ckpt.folder))


def checkpoint_names(folder: Path) -> list[str]:
    """``step-N`` folder names in ``folder``, newest first."""
    return [p.name for _, p in numbered(folder, PREFIX)[0]]
