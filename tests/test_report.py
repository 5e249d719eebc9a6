import json
import shutil

import pytest

from rlhf.cli import main as cli_main
from rlhf.config import QualityBounds
from rlhf.errors import UserError
from rlhf.protocol import summarize
from rlhf.report import FIGURES, build_report, examples, headline

from .conftest import copy_run


def without_run_dir(path) -> dict:
    report = json.loads(path.read_text())
    report.pop("run_dir")
    return report


def test_report_rebuilt_from_artifacts_matches(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path).run_dir
    (run / "report.json").unlink()
    (run / "report.md").unlink()
    assert cli_main(["report", str(run)]) == 0
    assert without_run_dir(run / "report.json") == without_run_dir(finished_run.run_dir / "report.json")
    out = capsys.readouterr().out
    assert "verdict:" in out and "Expected Maximum Toxicity (reward model, all prompts)" in out and "ROUGE-L" in out


def test_report_of_a_run_where_nothing_changed(finished_run, tmp_path):
    """After = before everywhere: the verdict says no change and no example table lists a row."""
    copy = tmp_path / "run"
    shutil.copytree(finished_run.run_dir, copy)
    path = copy / "evaluate" / "generations.jsonl"
    records = [json.loads(x) for x in path.read_text().splitlines()]
    for r in records:
        r["after"] = r["before"]
        r["nll"]["after"] = r["nll"]["before"]
        for s in r["scores"].values():
            s["after"] = s["before"]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    metrics_path = copy / "evaluate" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["protocol"] = summarize(records, ["reward model", "profanity_check"], ["profanity_check"], 0.5, 200, 0,
                                    QualityBounds())
    metrics_path.write_text(json.dumps(metrics))
    report = build_report(copy)
    assert report["headline"]["verdict"] == "no change"
    assert report["examples"] == {"improvements": [], "regressions": [], "disagreements": report["examples"]["disagreements"]}
    assert all(abs(r["gap after"]) >= 0.25 for r in report["examples"]["disagreements"])
    text = (copy / "report.md").read_text()
    assert text.startswith(f"# RLHF run `{copy}`: no change")
    improvements = text.split("## Largest improvements")[1].split("##")[0]
    assert "_(no rows)_" in improvements


def test_report_names_the_missing_stage(finished_run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(finished_run.run_dir, copy)
    (copy / "evaluate" / "manifest.json").unlink()
    with pytest.raises(UserError, match="no finished 'evaluate' stage"):
        build_report(copy)
    assert cli_main(["report", str(copy)]) == 2
    assert "rlhf evaluate CONFIG" in capsys.readouterr().err


def test_headline_leads_with_the_figure_the_verdict_was_decided_on(finished_run):
    ev = json.loads((finished_run.run_dir / "evaluate" / "metrics.json").read_text())
    h = headline(ev)
    rm = ev["protocol"]["toxicity"]["reward model"]["all"]
    assert ev["protocol"]["decided_on"] == "expected_maximum_toxicity" and h["toxicity_figure"] == FIGURES[
        "expected_maximum_toxicity"] == "Expected Maximum Toxicity"
    assert (h["toxicity_before"], h["toxicity_after"]) == (rm["expected_maximum_toxicity"]["before"],
                                                            rm["expected_maximum_toxicity"]["after"])
    assert (h["greedy_toxicity_before"], h["greedy_toxicity_after"]) == (rm["greedy_mean_toxicity"]["before"],
                                                                          rm["greedy_mean_toxicity"]["after"])
    assert h["judge"] == "profanity_check" and h["n_prompts"] == 8 and h["k"] == 3


def example_records(changes: list[float]) -> list[dict]:
    """One greedy record per change: the reward model's score moves by ``change``, the judge's not."""
    return [{"prompt": f"p{i}", "stratum": "toxic", "before": {"greedy": "b"}, "after": {"greedy": "a"},
             "scores": {"reward model": {"before": {"greedy": 0.5}, "after": {"greedy": 0.5 + c}},
                        "j": {"before": {"greedy": 0.5}, "after": {"greedy": 0.5}}}} for i, c in enumerate(changes)]


def test_examples_rank_by_the_mean_change_keep_only_moved_rows_and_honour_the_limit():
    ex = examples(example_records([-0.4, -0.2, 0.1, 0.015, -0.01, 0.3]), ["j"], limit=2)
    assert [r["prompt"] for r in ex["improvements"]] == ["p0", "p1"]  # mean of -0.4 and 0 first; p4 moved 0.005
    assert [r["prompt"] for r in ex["regressions"]] == ["p5", "p2"]  # limit 2 leaves p3 (0.0075 < 0.01 anyway)
    assert [r["prompt"] for r in ex["disagreements"]] == ["p0", "p5"]  # |gap after| >= 0.25
    assert examples(example_records([-0.4, -0.2]), [], limit=5)["disagreements"] == []


def test_a_run_evaluated_under_another_protocol_version_is_refused(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path).run_dir
    metrics = json.loads((run / "evaluate" / "metrics.json").read_text())
    metrics["protocol"]["version"] = 1
    (run / "evaluate" / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(UserError, match=r"predates the current protocol \(version 2\): re-run `rlhf evaluate"):
        build_report(run)
