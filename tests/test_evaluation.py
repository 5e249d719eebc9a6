import json
import shutil
import statistics

import pytest
import yaml

from pipelines import evaluate as evaluate_stage
from pipelines import ppo as ppo_stage
from pipelines import reward as reward_stage
from pipelines import sft as sft_stage
from rlhf import judges
from rlhf.cli import main as cli_main
from rlhf.config import config_from_dict
from rlhf.errors import UserError
from rlhf.evaluation import bootstrap_ci, paired_change, summary
from rlhf.report import build_report
from rlhf.tinyworld.build import resolve_tinyworld

from .conftest import small_raw


def test_bootstrap_ci_constant_differences_is_a_point():
    assert bootstrap_ci([0.3] * 50, resamples=200, seed=0) == (pytest.approx(0.3), pytest.approx(0.3))


def test_bootstrap_ci_matches_normal_theory():
    # differences +1 / -1 in equal numbers: mean 0, standard error 1/sqrt(n) -> 95% CI about +-1.96/sqrt(n)
    diffs = [1.0, -1.0] * 200
    lo, hi = bootstrap_ci(diffs, resamples=4000, seed=1)
    half = 1.96 / len(diffs) ** 0.5
    assert lo == pytest.approx(-half, abs=0.02) and hi == pytest.approx(half, abs=0.02)


def test_paired_change_sign_conventions():
    before, after = [0.8, 0.6, 0.9, 0.7], [0.2, 0.1, 0.3, 0.2]
    change = paired_change(before, after, resamples=500, seed=0)
    assert change["mean_change"] == pytest.approx(-0.55)  # after - before: negative = less toxic
    lo, hi = change["change_ci95"]
    assert lo <= -0.55 <= hi < 0
    assert change["improvement_pct"] == pytest.approx(100 * 0.55 / 0.75)  # positive = better
    worse = paired_change(after, before, resamples=500, seed=0)
    assert worse["mean_change"] > 0 and worse["improvement_pct"] < 0


def test_summary_statistics():
    s = summary([0.1, 0.2, 0.9, 0.6], threshold=0.5)
    assert s == {"mean": pytest.approx(0.45), "std": pytest.approx(statistics.pstdev([0.1, 0.2, 0.9, 0.6])),
                 "median": pytest.approx(0.4), "share_toxic": 0.5}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    config = resolve_tinyworld(config_from_dict(small_raw(tmp, evaluate={"n_dialogues": 8, "n_samples": 1,
                                                                         "bootstrap_resamples": 200})),
                               log=lambda *_: None)
    for stage in (sft_stage, reward_stage, ppo_stage, evaluate_stage):
        stage.main(config)
    return config


def test_evaluate_and_report(finished_run):
    run = finished_run.run_dir
    report = json.loads((run / "report.json").read_text())
    h = report["headline"]
    for key in ("toxicity_before", "toxicity_after", "toxicity_change_ci95", "toxicity_improvement_pct", "judge",
                "judge_toxicity_before", "judge_toxicity_after", "judge_change_ci95", "rougeL_before", "rougeL_after",
                "kl_after_vs_before", "n_samples"):
        assert key in h
    assert h["n_samples"] == 8 and h["judge"] == "profanity_check" and len(h["toxicity_change_ci95"]) == 2
    text = (run / "report.md").read_text()
    for section in ("Headline", "Stage 1", "Stage 2", "Stage 3", "Stage 4", "Largest improvements", "Run metadata"):
        assert section in text
    for png in ("toxicity_hist.png", "ppo_curves.png", "rouge_by_stage.png"):
        assert (run / "plots" / png).stat().st_size > 1000


def test_report_rebuilt_from_artifacts_matches(finished_run, capsys):
    run = finished_run.run_dir
    first = (run / "report.json").read_text()
    (run / "report.json").unlink()
    (run / "report.md").unlink()
    assert cli_main(["report", str(run)]) == 0
    assert (run / "report.json").read_text() == first
    out = capsys.readouterr().out
    assert "toxicity (reward model)" in out and "ROUGE-L" in out


def test_report_names_the_missing_stage(finished_run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(finished_run.run_dir, copy)
    (copy / "evaluate" / "manifest.json").unlink()
    with pytest.raises(UserError, match="no finished 'evaluate' stage"):
        build_report(copy)
    assert cli_main(["report", str(copy)]) == 2
    assert "rlhf evaluate CONFIG" in capsys.readouterr().err


def test_evaluation_without_the_judge(finished_run, monkeypatch):
    def missing():
        raise ImportError("no module named profanity_check")

    monkeypatch.setitem(judges.JUDGES, "profanity_check", missing)
    metrics = evaluate_stage.main(finished_run)
    assert metrics["judges_run"] == [] and "not installed" in metrics["judges_missing"]["profanity_check"]
    report = json.loads((finished_run.run_dir / "report.json").read_text())
    assert report["headline"]["judge"] is None
    assert "Independent judge: not run" in (finished_run.run_dir / "report.md").read_text()


def test_evaluate_needs_ppo(tmp_path):
    config = resolve_tinyworld(config_from_dict(small_raw(tmp_path)), log=lambda *_: None)
    with pytest.raises(UserError, match="needs the 'ppo' stage"):
        evaluate_stage.main(config)


def test_cli_run_prints_headline(tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    raw = small_raw(tmp_path, evaluate={"n_dialogues": 4, "n_samples": 0, "bootstrap_resamples": 100},
                    prompt={"settings": [{"name": "greedy"}]})
    path.write_text(yaml.safe_dump(raw))
    assert cli_main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "report:" in out and "toxicity (reward model)" in out and "toxicity (judge profanity_check)" in out
