import json

import pytest
import yaml

from pipelines import evaluate as evaluate_stage
from rlhf import judges
from rlhf.cli import main as cli_main
from rlhf.config import QualityBounds, config_from_dict
from rlhf.errors import UserError
from rlhf.protocol import verdict
from rlhf.tinyworld.build import resolve_tinyworld

from ..conftest import copy_run, small_raw


def test_evaluate_and_report(finished_run):
    run = finished_run.run_dir
    report = json.loads((run / "report.json").read_text())
    h, p = report["headline"], report["protocol"]
    assert h["n_prompts"] == 8 and h["k"] == 3 and h["judge"] == "profanity_check"
    figures = {name: p["toxicity"][name]["all"]["expected_maximum_toxicity"]
               for name in ("reward model", "profanity_check")}
    expected = verdict(figures["reward model"], {"profanity_check": figures["profanity_check"]}, p["quality"]["all"],
                       QualityBounds())
    # decided on the Expected Maximum Toxicity over all prompts
    assert (h["verdict"], h["verdict_reasons"]) == (expected["verdict"], expected["reasons"])
    assert h["toxicity_change_ci95"] == figures["reward model"]["change_ci95"]
    assert (h["judge_toxicity_before"], h["judge_toxicity_after"]) == (figures["profanity_check"]["before"],
                                                                        figures["profanity_check"]["after"])
    text = (run / "report.md").read_text()
    assert text.startswith(f"# RLHF run `{run}`: {h['verdict']}\n")
    for section in ("Headline", "Rules", "by stratum", "Quality before vs after", "Stage 1", "Stage 2", "Stage 3",
                    "Stage 4", "Largest improvements", "Largest regressions", "disagree most", "Run metadata"):
        assert section in text
    for png in ("emt_by_stratum.png", "max_toxicity_hist.png", "rl_curves.png", "rouge_by_stage.png"):
        assert (run / "plots" / png).stat().st_size > 1000
    p = report["protocol"]
    assert set(p["strata"]) <= {"all", "toxic", "non-toxic"} and p["strata"]["all"] == 8
    for scorer in ("reward model", "profanity_check"):
        for key in ("expected_maximum_toxicity", "toxicity_probability", "greedy_mean_toxicity", "greedy_toxic_share"):
            f = p["toxicity"][scorer]["all"][key]
            assert f["n"] == 8 and len(f["change_ci95"]) == 2
            assert f["before_ci95"][0] <= f["before"] <= f["before_ci95"][1]
    q = p["quality"]["all"]
    for key in ("rougeL", "faithfulness", "distinct_1", "distinct_2", "distinct_3", "repeat_share", "mean_words"):
        assert 0 <= q[key]["before"] <= (100 if key == "mean_words" else 1), key
    assert q["perplexity"]["before"] > 1
    records = [json.loads(x) for x in (run / "evaluate" / "generations.jsonl").read_text().splitlines()]
    assert len(records) == 8 and all(len(r["before"]["samples"]) == 3 for r in records)
    assert all(r["stratum"] in ("toxic", "non-toxic") and r["key_facts"] for r in records)


def test_evaluation_without_the_judge(finished_run, tmp_path, monkeypatch):
    def missing():
        raise ImportError("no module named profanity_check")

    monkeypatch.setitem(judges.JUDGES, "profanity_check", missing)
    config = copy_run(finished_run, tmp_path)
    metrics = evaluate_stage.main(config)
    assert metrics["judges_run"] == [] and "not installed" in metrics["judges_missing"]["profanity_check"]
    report = json.loads((config.run_dir / "report.json").read_text())
    assert report["headline"]["judge"] is None
    assert "Independent judge: not run" in (config.run_dir / "report.md").read_text()


def test_evaluate_needs_ppo(tmp_path):
    config = resolve_tinyworld(config_from_dict(small_raw(tmp_path)), log=lambda *_: None)
    with pytest.raises(UserError, match="needs the 'rl' stage"):
        evaluate_stage.main(config)


def test_cli_run_prints_headline(tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    raw = small_raw(tmp_path, evaluate={"n_dialogues": 4, "n_samples": 0, "bootstrap_resamples": 100},
                    prompt={"settings": [{"name": "greedy"}]})
    path.write_text(yaml.safe_dump(raw))
    assert cli_main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "report:" in out and "verdict:" in out and "greedy mean toxicity (judge profanity_check)" in out
