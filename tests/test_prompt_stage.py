import csv
import json
import subprocess
import sys

import yaml

from pipelines import prompt
from rlhf.cli import main as cli_main

from .conftest import small_raw


def test_prompt_stage_smoke(small_config):
    metrics = prompt.main(small_config)
    folder = small_config.run_dir / "prompt"
    rows = list(csv.DictReader((folder / "results.csv").open()))
    assert len(rows) == 2 * 3  # shots x settings
    assert {r["mode"] for r in rows} == {"zero-shot", "one-shot"}
    for r in rows:
        assert 0.0 <= float(r["rougeL"]) <= 1.0 and float(r["gen_seconds"]) > 0
    saved = json.loads((folder / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics)) and saved["n_dialogues"] == 6
    assert saved["prompt_stats"]["one-shot"]["n_prompts"] == 6
    assert "| mode | setting |" in (folder / "results.md").read_text()
    assert "**Reference:**" in (folder / "samples.md").read_text()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    resolved = yaml.safe_load((folder / "config.yaml").read_text())
    assert resolved["model"]["name"].endswith("base_model")  # tinyworld resolved to a real path


def test_cli_runs_stage_then_skips_it(tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(small_raw(tmp_path, prompt={"settings": [{"name": "greedy"}]})))
    assert cli_main(["prompt", str(path), "prompt.n_dialogues=3"]) == 0
    assert cli_main(["prompt", str(path)]) == 0
    assert "already finished" in capsys.readouterr().out
    assert cli_main(["run", str(path), "--force"]) == 0


def test_python_dash_m_with_bad_config_exits_2(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(small_raw(tmp_path, data={"source": str(tmp_path / "missing.jsonl")})))
    out = subprocess.run([sys.executable, "-m", "pipelines.prompt", str(path)], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"error: data source not found: {tmp_path / 'missing.jsonl'}"]
