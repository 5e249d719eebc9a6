import json
import shutil

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
from rlhf.config import QualityBounds
from rlhf.protocol import VERDICTS, summarize
from rlhf.report import build_report
from rlhf.tinyworld.build import resolve_tinyworld

from .conftest import small_raw


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    config = resolve_tinyworld(config_from_dict(small_raw(tmp, evaluate={"n_dialogues": 8, "n_samples": 3,
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
                "kl_after_vs_before", "n_prompts", "toxicity_figure", "greedy_toxicity_before"):
        assert key in h
    assert h["n_prompts"] == 8 and h["toxicity_figure"] == "Expected Maximum Toxicity" and h["judge"] == "profanity_check" and len(h["toxicity_change_ci95"]) == 2
    assert h["verdict"] in VERDICTS and h["k"] == 3
    text = (run / "report.md").read_text()
    assert text.startswith(f"# RLHF run `{run}`: {h['verdict']}\n")
    for section in ("Headline", "Rules", "by stratum", "Quality before vs after", "Stage 1", "Stage 2", "Stage 3",
                    "Stage 4", "Largest improvements", "Largest regressions", "disagree most", "Run metadata"):
        assert section in text
    for png in ("emt_by_stratum.png", "max_toxicity_hist.png", "ppo_curves.png", "rouge_by_stage.png"):
        assert (run / "plots" / png).stat().st_size > 1000
    p = report["protocol"]
    assert set(p["strata"]) <= {"all", "toxic", "non-toxic"} and p["strata"]["all"] == 8
    for scorer in ("reward model", "profanity_check"):
        for key in ("expected_maximum_toxicity", "toxicity_probability", "greedy_mean_toxicity", "greedy_toxic_share"):
            f = p["toxicity"][scorer]["all"][key]
            assert f["n"] == 8 and len(f["change_ci95"]) == 2 and f["before_ci95"][0] <= f["before"] <= f["before_ci95"][1]
    q = p["quality"]["all"]
    for key in ("rougeL", "faithfulness", "distinct_1", "distinct_2", "distinct_3", "repeat_share", "perplexity",
                "mean_words"):
        assert q[key]["before"] is not None, key
    records = [json.loads(x) for x in (run / "evaluate" / "generations.jsonl").read_text().splitlines()]
    assert len(records) == 8 and all(len(r["before"]["samples"]) == 3 for r in records)
    assert all(r["stratum"] in ("toxic", "non-toxic") and r["key_facts"] for r in records)


def test_report_rebuilt_from_artifacts_matches(finished_run, capsys):
    run = finished_run.run_dir
    first = (run / "report.json").read_text()
    (run / "report.json").unlink()
    (run / "report.md").unlink()
    assert cli_main(["report", str(run)]) == 0
    assert (run / "report.json").read_text() == first
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
    assert "report:" in out and "verdict:" in out and "greedy mean toxicity (judge profanity_check)" in out


def test_response_nll_reuses_the_encoder_and_matches_a_plain_pass():
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    from rlhf.config import TinyWorldConfig
    from rlhf.seq2seq import text_logprobs as response_logprobs, response_nll
    from rlhf.tinyworld.build import ensure_tinyworld

    from .conftest import SMALL_WORLD

    tok = AutoTokenizer.from_pretrained(str(ensure_tinyworld(TinyWorldConfig(**SMALL_WORLD), log=lambda *_: None) / "tokenizer"))
    torch.manual_seed(0)
    lm = T5ForConditionalGeneration(T5Config(vocab_size=len(tok), d_model=16, d_kv=4, d_ff=32, num_layers=1,
                                             num_heads=2, decoder_start_token_id=0)).eval()
    prompts = ["Summarize: Anna books a train.", "Summarize: a much longer dialogue about a coffee machine here"]
    responses = [["Anna books a train.", "A train.", ""], ["The coffee machine is broken.", "Coffee."]]
    grouped = response_nll(lm, tok, prompts, responses, max_input=64, batch_size=3)
    assert [len(r) for r in grouped] == [3, 2]
    for prompt, rows, got in zip(prompts, responses, grouped):
        plain = response_logprobs(lm, tok, [prompt] * len(rows), rows, max_input=64, batch_size=8)
        for lp, (nll, n) in zip(plain, got):
            assert n == lp.numel() and nll == pytest.approx(float(-lp.sum()), rel=1e-5, abs=1e-5)
