"""benchmarks/trl_baselines.py: bad input is one line and exit code 2; TRL's ORPO and CPO train on a
run's pairs and leave the RL stage's layout, which the evaluate stage loads."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.errors import UserError
from ..conftest import copy_run, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "trl_baselines.py"


def test_bad_input_is_one_line_on_stderr_and_exit_code_2(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--run", str(tmp_path / "nope"), "--method", "orpo",
                          "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"error: run directory not found: {tmp_path / 'nope'}"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, says", [
    (["--method", "dpo"], "invalid choice: 'dpo'"),
    (["--method", "orpo", "--steps", "0"], "--steps must be positive"),
    (["--method", "orpo", "--beta", "-1"], "--beta must be positive"),
])
def test_a_bad_option_is_refused(tmp_path, args, says):
    from benchmarks import trl_baselines

    with pytest.raises(UserError, match=says):
        trl_baselines.main(["--run", str(tmp_path), "--out", str(tmp_path / "out"), *args])


def test_a_run_without_pairs_or_an_out_in_the_way_is_refused(tmp_path):
    from benchmarks import trl_baselines

    (tmp_path / "run" / "rl").mkdir(parents=True)
    with pytest.raises(UserError, match="pairs.jsonl is missing"):
        trl_baselines.main(["--run", str(tmp_path / "run"), "--method", "cpo", "--out", str(tmp_path / "out")])
    (tmp_path / "run" / "rl" / "pairs.jsonl").write_text("")
    (tmp_path / "run" / "rl" / "config.yaml").write_text("")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("")
    with pytest.raises(UserError, match="exists and is not empty"):
        trl_baselines.main(["--run", str(tmp_path / "run"), "--method", "cpo", "--out", str(tmp_path / "out")])
    with pytest.raises(UserError, match="not --run"):
        trl_baselines.main(["--run", str(tmp_path / "run"), "--method", "cpo", "--out", str(tmp_path / "run")])


PROMPT = "Summarize the following conversation.\n\n#Person1#: {}\n#Person2#: Fine.\n\nSummary:"


def _pairs(n: int) -> list[dict]:
    return [{"prompt": PROMPT.format(f"We meet on day {i}."), "reference": f"They meet on day {i}.",
             "chosen": f"They meet on day {i}.", "rejected": "#Person1# calls #Person2# a stupid jerk.",
             "chosen_reward": -0.01, "rejected_reward": -5.0, "chosen_toxicity": 0.01, "rejected_toxicity": 0.99}
            for i in range(n)]


@pytest.mark.parametrize("method", ["orpo", "cpo"])
def test_trains_on_the_pairs_and_leaves_what_the_evaluate_stage_loads(finished_run, tmp_path, method):
    pytest.importorskip("trl", reason="TRL is not installed")
    import torch
    from safetensors.torch import load_file

    from benchmarks import trl_baselines
    from pipelines.evaluate import load_pair
    from rlhf.rundir import require_stage

    source = copy_run(finished_run, tmp_path)
    write_jsonl(source.run_dir / "rl" / "pairs.jsonl", _pairs(6))
    (source.run_dir / "rl" / "pairs.json").write_text(json.dumps({"pairs": 6}))
    out = source.run_dir.parent / method
    config = trl_baselines.prepare(source.run_dir, out)
    m = trl_baselines.train(config, source.run_dir, method, steps=2, beta=0.1, learning_rate=1e-2, batch_size=2)

    assert m["algorithm"] == method and m["library"].startswith("trl ") and m["steps"] == 2
    assert m["pairs"] == {"pairs": 6} and m["seconds"] > 0 and m["peak_memory_mb"] > 0
    assert all(len(json.loads(line)) for line in (out / "rl" / "pairs.jsonl").read_text().splitlines())
    for stage in ("sft", "reward"):  # copied, and still the same run's (the settings match)
        assert (out / stage / "manifest.json").is_file()
    assert require_stage(config, "rl", "evaluate") == out / "rl"  # what `rlhf evaluate` checks first
    adapter = load_file(str(out / "rl" / "policy" / "adapter_model.safetensors"))
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in adapter.items())  # trained from zero
    after, frozen = load_pair(config, out / "rl")  # the evaluate stage's own loading
    assert frozen is None
    ids = torch.tensor([[5, 6, 7, 1]])
    with torch.no_grad():
        logits = after(input_ids=ids, decoder_input_ids=ids[:, :1]).logits
        with after.disable_adapter():
            before = after(input_ids=ids, decoder_input_ids=ids[:, :1]).logits
    assert not torch.equal(logits, before)  # the adapter moved the policy from the SFT model
