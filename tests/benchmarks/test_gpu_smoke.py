"""benchmarks/gpu_smoke.sh and its helpers, without a GPU: the dry run checks every command's
overrides, bad options stop with one line, and the report reads run folders."""

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks import gpu_smoke

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_smoke.sh"


def run_script(*args, shared: Path, timeout=120):
    env = dict(os.environ, SHARED=str(shared), PYTHON=sys.executable)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout,
                          check=False)


def fake_shared(tmp_path) -> Path:
    for name in ("dialogsum", "t5-tokenizer"):
        (tmp_path / "shared" / name).mkdir(parents=True)
    return tmp_path / "shared"


def test_dry_run_checks_every_command_and_runs_nothing(tmp_path):
    out = run_script("--dry-run", "--device", "cpu", "--work", str(tmp_path / "w"), shared=fake_shared(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("+ rlhf ") == 4 and "tiny-bf16 model.mixed_precision=bf16" in out.stdout
    assert "+ python benchmarks/decoding.py --device cpu" in out.stdout and "== decoding" in out.stdout
    assert "dry run: every command's overrides are valid" in out.stdout
    assert not (tmp_path / "w" / "runs").exists()


def test_only_runs_the_named_phases_in_their_order(tmp_path):
    out = run_script("--dry-run", "--device", "cpu", "--only", "lab-ppo,tiny-fp32", "--work", str(tmp_path / "w"),
                     shared=fake_shared(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("+ rlhf ") == 3 and "tiny-bf16" not in out.stdout
    assert out.stdout.index("== lab-ppo") < out.stdout.index("== tiny-fp32")


def test_bad_options_stop_with_one_line(tmp_path):
    shared = fake_shared(tmp_path)
    for args, message in [(["--device", "tpu"], "--device must be cuda or cpu"),
                          (["--frobnicate"], "unknown option '--frobnicate'"),
                          (["--only", "tiny-fp32,lab"], "--only: unknown phase 'lab'"),
                          (["--work", str(ROOT / "inside")], "is inside the repository")]:
        out = run_script(*args, shared=shared)
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and message in out.stderr
    assert not (ROOT / "inside").exists()
    out = run_script("--dry-run", shared=tmp_path / "nothing")
    assert out.returncode == 2 and "lacks dialogsum/ or t5-tokenizer/" in out.stderr


def test_check_rejects_a_bad_override_with_one_line(capsys):
    assert gpu_smoke.check(str(ROOT / "configs" / "tiny.yaml"), ["rl.step=2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'step'" in err and "'steps'" in err
    assert gpu_smoke.check(str(ROOT / "configs" / "tiny.yaml"), ["rl.steps=2"]) == 0


def test_report_lists_step_times_and_peak_memory(tmp_path):
    run = tmp_path / "tiny-bf16"
    (run / "rl").mkdir(parents=True)
    (run / "rl" / "manifest.json").write_text(json.dumps({"seconds": 12.5}))
    (run / "rl" / "metrics.jsonl").write_text("".join(json.dumps({"time/step": t}) + "\n" for t in (3.0, 1.0, 2.0)))
    (run / "rl" / "metrics.json").write_text(json.dumps({"peak_memory_mb": 2048.4, "precision": "bf16 autocast"}))
    (tmp_path / "g.nvsmi").write_text("100\n4096\n512\n")
    lines = gpu_smoke.run_lines(run, tmp_path / "g.nvsmi")
    assert "stage seconds: rl 12.5" in lines
    assert "rl step seconds: first 3.00, median of the rest 1.50 (3 steps: 3.00, 1.00, 2.00)" in lines
    assert "rl peak memory while training: 2048 MiB (bf16 autocast)" in lines
    assert "nvidia-smi peak memory.used over the command: 4096 MiB" in lines
