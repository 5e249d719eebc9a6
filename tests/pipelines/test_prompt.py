import csv
import json

import yaml

from pipelines import prompt

from ..conftest import small_raw


def test_prompt_stage_smoke(small_config):
    metrics = prompt.main(small_config)
    folder = small_config.run_dir / "prompt"
    rows = list(csv.DictReader((folder / "results.csv").open()))
    assert {(r["asked"], r["setting"]) for r in rows} == {(a, s) for a in ("zero-shot", "one-shot")
                                                          for s in ("greedy", "sample", "beams_2")}
    for asked in ("zero-shot", "one-shot"):  # every prompt in exactly one row per setting
        assert sum(int(r["n_prompts"]) for r in rows if r["asked"] == asked and r["setting"] == "greedy") == 6
    for r in rows:
        assert 0.0 <= float(r["rougeL"]) <= 1.0 and float(r["gen_seconds"]) > 0
    saved = json.loads((folder / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics)) and saved["n_dialogues"] == 6
    assert saved["prompt_stats"]["one-shot"]["n_prompts"] == 6
    assert "| mode | asked | n_prompts | setting |" in (folder / "results.md").read_text()
    assert "**Reference:**" in (folder / "samples.md").read_text()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    resolved = yaml.safe_load((folder / "config.yaml").read_text())
    assert resolved["model"]["name"].endswith("base_model")  # tinyworld resolved to a real path


def test_rows_hold_what_their_prompts_really_hold(tmp_path):
    """A 2-shot request whose prompts cannot all hold two examples: those prompts get their own rows."""
    raw = small_raw(tmp_path, prompt={"shots": [2], "settings": [{"name": "greedy"}]},
                    model={"name": "tinyworld", "max_input_length": 150})
    from rlhf.config import config_from_dict

    metrics = prompt.main(config_from_dict(raw))
    rows = metrics["rows"]
    assert {r["asked"] for r in rows} == {"2-shot"}
    assert sum(r["n_prompts"] for r in rows) == 6
    stats = metrics["prompt_stats"]["2-shot"]
    held_two = next((r["n_prompts"] for r in rows if r["mode"] == "2-shot"), 0)
    assert held_two == 6 - stats["prompts_with_dropped_examples"] and stats["prompts_with_dropped_examples"] > 0
    assert all(r["mode"] in ("zero-shot", "one-shot", "2-shot") for r in rows)
