"""kill -9 at a random point of a PPO or SFT run (mid-step, during a checkpoint write), then
``--resume``: the final adapter, value head and metrics equal a straight run's.

The runs are child processes (``tests/pipelines/fault_runner.py`` makes them SIGKILL themselves at the N-th
call of a chosen function). N is drawn at random; set RLHF_FAULT_SEED to replay a draw.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from pipelines import reward as reward_stage
from pipelines import sft as sft_stage
from rlhf.config import config_from_dict
from rlhf.tinyworld.build import resolve_tinyworld

from ..conftest import SMALL_STAGES, small_raw

ROOT = Path(__file__).resolve().parents[2]
SEED = os.environ.get("RLHF_FAULT_SEED") or str(random.randrange(10**6))
PPO = {**SMALL_STAGES["rl"], "steps": 4, "save_steps": 2, "sample_steps": 2}  # 2 mini-batches a step
GRPO = {**PPO, "algorithm": "grpo", "group_size": 2}  # 4 prompts x 2 a step, 2 prompts a mini-batch: 2 a step
SFT = {**SMALL_STAGES["sft"], "max_steps": 6}  # checkpoints at steps 2, 4, 6
# What may differ between two equal runs: wall time, memory, and where a resume started.
VOLATILE = ("time/", "tokens_per_s", "seconds", "memory", "resumed_from")


def experiment(folder: Path, rl: dict = PPO) -> str:
    path = folder / "exp.yaml"
    path.write_text(yaml.safe_dump(small_raw(folder, rl=rl, sft=SFT)))
    return str(path)


def rlhf(*args: str, fault: tuple[str, int] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    runner = [str(ROOT / "tests" / "pipelines" / "fault_runner.py"), fault[0], str(fault[1])] if fault else ["-m", "rlhf.cli"]
    return subprocess.run([sys.executable, *runner, *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600)


def stable(row: dict) -> dict:
    return {k: v for k, v in row.items() if not any(k.startswith(p) or p in k for p in VOLATILE)}


def assert_same_tensors(a: Path, b: Path) -> None:
    x, y = load_file(str(a)), load_file(str(b))
    assert x.keys() == y.keys()
    for key in x:
        assert torch.equal(x[key], y[key]), f"{a.name}: {key} differs (RLHF_FAULT_SEED={SEED})"


def draw(fault: str, first: int, last: int) -> int:
    return random.Random(f"{SEED}-{fault}").randint(first, last)


def kill_then_resume(folder: Path, stage: str, fault: str, n: int, rl: dict = PPO) -> subprocess.CompletedProcess:
    path = experiment(folder, rl)
    killed = rlhf(stage, path, fault=(fault, n))
    assert killed.returncode == -9, f"{fault} #{n} was not reached (RLHF_FAULT_SEED={SEED}): {killed.stderr[-2000:]}"
    assert not (folder / "runs" / "t" / stage / "manifest.json").exists()
    again = rlhf(stage, path)  # without --resume: refused, nothing discarded
    assert again.returncode in (0, 2), again.stderr[-2000:]
    if again.returncode == 2:
        assert "--resume" in again.stderr and again.stderr.count("\n") == 1
        resumed = rlhf(stage, path, "--resume")
    else:  # killed before the first checkpoint: nothing to keep, the plain re-run is the straight run
        resumed = again
    assert resumed.returncode == 0, f"(RLHF_FAULT_SEED={SEED}) {resumed.stderr[-3000:]}"
    return resumed


# ------------------------------------------------------------------------------------------- PPO


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """Finished sft and reward stages, copied into every PPO run's folder."""
    folder = tmp_path_factory.mktemp("upstream")
    config = resolve_tinyworld(config_from_dict(small_raw(folder, rl=PPO, sft=SFT)), log=lambda *_: None)
    sft_stage.main(config)
    reward_stage.main(config)
    return config.run_dir


def ppo_folder(folder: Path, upstream: Path) -> Path:
    for stage in ("sft", "reward"):
        shutil.copytree(upstream / stage, folder / "runs" / "t" / stage)
    return folder


@pytest.fixture(scope="module")
def straight_ppo(upstream, tmp_path_factory):
    folder = ppo_folder(tmp_path_factory.mktemp("straight_ppo"), upstream)
    proc = rlhf("rl", experiment(folder))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder / "runs" / "t" / "rl"


def assert_same_ppo(a: Path, b: Path, tensors=("adapter_model.safetensors", "value_head.safetensors")) -> None:
    for name in tensors:
        assert_same_tensors(a / "policy" / name, b / "policy" / name)
    rows = [[stable(json.loads(line)) for line in (d / "metrics.jsonl").open()] for d in (a, b)]
    assert [r["step"] for r in rows[1]] == [1, 2, 3, 4] and rows[0] == rows[1], f"RLHF_FAULT_SEED={SEED}"
    metrics = [stable(json.loads((d / "metrics.json").read_text())) for d in (a, b)]
    assert metrics[0] == metrics[1], f"RLHF_FAULT_SEED={SEED}"


@pytest.mark.parametrize("fault, first, last", [
    ("ppo_update", 5, 8),  # a mini-batch update of step 3 or 4 (2 each), after the step-2 checkpoint
    pytest.param("ppo_update", 1, 4, marks=pytest.mark.slow),  # step 1 or 2: before any checkpoint
    pytest.param("ppo_checkpoint", 1, 2, marks=pytest.mark.slow),  # either checkpoint write
    pytest.param("ppo_checkpoint_empty_file", 1, 2, marks=pytest.mark.slow),
])
def test_ppo_killed_and_resumed_equals_a_straight_run(fault, first, last, upstream, straight_ppo, tmp_path):
    n = draw(fault, first, last)
    resumed = kill_then_resume(ppo_folder(tmp_path, upstream), "rl", fault, n)
    folder = tmp_path / "runs" / "t" / "rl"
    if fault == "ppo_update" and n > 4:
        assert f"rl: resumed from {folder / 'checkpoints' / 'step-2'} (step 2 of 4)" in resumed.stdout
    if fault.startswith("ppo_checkpoint"):  # the write's temp folder was found and cleaned
        assert "(not a checkpoint)" in resumed.stdout, resumed.stdout
    assert not [p for p in (folder / "checkpoints").iterdir() if p.name.startswith(".")]
    assert_same_ppo(straight_ppo, folder)


@pytest.fixture(scope="module")
def straight_grpo(upstream, tmp_path_factory):
    folder = ppo_folder(tmp_path_factory.mktemp("straight_grpo"), upstream)
    proc = rlhf("rl", experiment(folder, GRPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder / "runs" / "t" / "rl"


@pytest.mark.slow
def test_grpo_killed_mid_update_and_resumed_equals_a_straight_run(upstream, straight_grpo, tmp_path):
    """A group method resumes as PPO does: killed in a mini-batch update of step 3 or 4, after the step-2 checkpoint."""
    n = draw("grpo_update", 5, 8)
    resumed = kill_then_resume(ppo_folder(tmp_path, upstream), "rl", "ppo_update", n, rl=GRPO)
    folder = tmp_path / "runs" / "t" / "rl"
    assert f"rl: resumed from {folder / 'checkpoints' / 'step-2'} (step 2 of 4)" in resumed.stdout
    assert not (folder / "policy" / "value_head.safetensors").exists()  # no critic
    assert_same_ppo(straight_grpo, folder, tensors=("adapter_model.safetensors",))


# ------------------------------------------------------------------------------------------- SFT


@pytest.fixture(scope="module")
def straight_sft(tmp_path_factory):
    folder = tmp_path_factory.mktemp("straight_sft")
    proc = rlhf("sft", experiment(folder))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder / "runs" / "t" / "sft"


def assert_same_sft(a: Path, b: Path) -> None:
    assert_same_tensors(a / "lora" / "adapter" / "adapter_model.safetensors",
                        b / "lora" / "adapter" / "adapter_model.safetensors")
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (a, b)]
    for m in metrics:  # transformers' train_loss averages the steps this process trained (since a resume)
        m["variants"] = {k: {f: x for f, x in stable(v).items() if not f.startswith("train_loss")}
                         for k, v in m["variants"].items()}
    differ = {(name, k): (row.get(k), metrics[1]["variants"].get(name, {}).get(k))
              for name, row in metrics[0]["variants"].items() for k in row
              if row.get(k) != metrics[1]["variants"].get(name, {}).get(k)}
    assert metrics[0] == metrics[1], f"RLHF_FAULT_SEED={SEED}: {differ}"


@pytest.mark.slow
@pytest.mark.parametrize("fault, first, last", [("sft_step", 1, 6), ("sft_checkpoint", 1, 3)])
def test_sft_killed_and_resumed_equals_a_straight_run(fault, first, last, straight_sft, tmp_path):
    n = draw(fault, first, last)
    kill_then_resume(tmp_path, "sft", fault, n)
    assert_same_sft(straight_sft, tmp_path / "runs" / "t" / "sft")
