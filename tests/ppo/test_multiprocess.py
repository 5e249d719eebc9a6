import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
def test_two_cpu_ranks_stay_identical_and_split_the_batch(tmp_path):
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29517", str(ROOT / "tests/ppo/ddp_step.py"),
                           str(tmp_path)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 and "MULTI_CPU" in r["distributed_type"] for r in ranks)
    assert ranks[0]["weights"] == ranks[1]["weights"]  # gradients were all-reduced
    assert ranks[0]["scores"] == ranks[1]["scores"]  # metrics gathered over both ranks
    assert ranks[0]["ptx_loss"] > 0 and ranks[1]["ptx_loss"] > 0
    assert ranks[0]["early_stop_passes"] == ranks[1]["early_stop_passes"] < 4  # stopped early, on the ranks' mean KL
    assert ranks[0]["whitens_as_one"] and ranks[1]["whitens_as_one"]
    assert ranks[0]["noise"] != ranks[1]["noise"]  # each rank samples with its own noise
    assert ranks[0]["checkpoint_generators"] == ["torch", "torch.rank1"]  # and a resume restores each rank's
    a, b = ranks[0]["prompts"], ranks[1]["prompts"]
    assert len(a) == len(b) == 4 and not set(a) & set(b)  # each rank generates for its own half
