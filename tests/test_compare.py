import json

import pytest

from rlhf.cli import main as cli_main
from rlhf.compare import compare

from .conftest import copy_run


@pytest.fixture(scope="module")
def grpo_run(finished_run, tmp_path_factory):
    """The session's small run with its RL and evaluate stages redone by GRPO (same SFT and reward model)."""
    import dataclasses

    from pipelines import evaluate, rl

    moved = copy_run(finished_run, tmp_path_factory.mktemp("grpo"))
    config = dataclasses.replace(moved, rl=dataclasses.replace(moved.rl, algorithm="grpo", group_size=2))
    rl.main(config, force=True)
    evaluate.main(config)
    return config


def test_runs_side_by_side_from_their_artifacts(finished_run, grpo_run, tmp_path, capsys):
    rows = compare([finished_run.run_dir, grpo_run.run_dir], tmp_path / "cmp")
    ppo, grpo = rows
    assert (ppo["method"], ppo["group_size"], grpo["method"], grpo["group_size"]) == ("ppo", 1, "grpo", 2)
    report = json.loads((grpo_run.run_dir / "report.json").read_text())
    emt = report["protocol"]["toxicity"]["profanity_check"]["toxic"]["expected_maximum_toxicity"]
    assert grpo["judge EMT toxic"] == emt["after"] and grpo["judge EMT toxic CI"] == emt["change_ci95"]
    assert grpo["verdict"] == report["headline"]["verdict"] and grpo["KL"] == report["headline"]["kl_after_vs_before"]
    rl = json.loads((grpo_run.run_dir / "rl" / "metrics.json").read_text())
    assert (grpo["RL seconds"], grpo["RL peak MiB"], grpo["steps"]) == (rl["seconds"], rl["peak_memory_mb"], 3)
    rouge = report["protocol"]["quality"]["all"]["rougeL"]
    assert grpo["ROUGE-L kept"] == (rouge["after"] / rouge["before"] if rouge["before"] else None)
    assert "RM TP non-toxic" in ppo and "judge TP toxic" in ppo
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text()) == rows
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| grpo (k=2) |" in table and "| ppo |" in table

    assert cli_main(["compare", str(finished_run.run_dir), str(grpo_run.run_dir), "--out", str(tmp_path / "c2")]) == 0
    assert capsys.readouterr().out == (tmp_path / "c2" / "compare.md").read_text()


def test_a_run_without_a_report_is_named(finished_run, tmp_path, capsys):
    assert cli_main(["compare", str(tmp_path), "--out", str(tmp_path / "c")]) == 2
    assert "report.json is missing" in capsys.readouterr().err
    assert cli_main(["compare"]) == 2 and "usage: rlhf compare RUN_DIR" in capsys.readouterr().err
