import json

from rlhf import plots


def test_each_plot_is_a_png_in_the_run_folder(finished_run, tmp_path):
    ev = json.loads((finished_run.run_dir / "evaluate" / "metrics.json").read_text())
    records = [json.loads(x) for x in (finished_run.run_dir / "evaluate" / "generations.jsonl").read_text().splitlines()]
    history = [json.loads(x) for x in (finished_run.run_dir / "rl" / "metrics.jsonl").read_text().splitlines()]
    made = [plots.emt_by_stratum(ev["protocol"], tmp_path), plots.max_toxicity_hist(records, "reward model", tmp_path),
            plots.rl_curves(history, tmp_path), plots.rouge_by_stage({"sft full": 0.5, "eval after": 0.4}, tmp_path)]
    assert made == ["plots/emt_by_stratum.png", "plots/max_toxicity_hist.png", "plots/rl_curves.png",
                    "plots/rouge_by_stage.png"]
    for name in made:
        path = tmp_path / name.split("/")[1]
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n.split("/")[1] for n in made)  # no temp files left


def test_nothing_to_draw_draws_nothing(tmp_path):
    no_samples = [{"scores": {"reward model": {"before": {"samples": []}}}}]
    assert plots.emt_by_stratum({"k": 0}, tmp_path) is None
    assert plots.max_toxicity_hist(no_samples, "reward model", tmp_path) is None
    assert plots.rl_curves([], tmp_path) is None and plots.rouge_by_stage({}, tmp_path) is None
    assert list(tmp_path.iterdir()) == []
