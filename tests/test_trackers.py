import json
import math

import pytest

from rlhf.config import config_from_dict, to_dict
from rlhf.errors import UserError
from rlhf.trackers import Trackers, check_installed, hyperparameters

from .conftest import quiet, small_raw


def test_a_tracker_that_is_not_installed_is_named_with_its_package(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    check_installed([])
    with pytest.raises(UserError, match=r"^config key 'rl.report_to': the tracker wandb is not installed: "
                                        r"pip install 'rlhf\[wandb\]'"):
        check_installed(["wandb"], "rl.report_to")


def test_hyperparameters_are_the_resolved_config_flattened_to_scalars(tmp_path):
    flat = hyperparameters(to_dict(config_from_dict(small_raw(tmp_path))))
    assert flat["rl.kl.target"] == 6.0 and flat["seed"] == 1 and flat["sft.variants[0].name"] == "lora"
    assert flat["sft.lora.target_modules"] == '["q", "v"]' and flat["tinyworld.cache_dir"] == "null"
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())


def test_a_stage_reports_to_its_own_trackers_or_the_top_level_ones(tmp_path):
    config = config_from_dict(small_raw(tmp_path, report_to=["tensorboard"], rl={"report_to": []}))
    assert config.trackers("sft") == config.trackers("reward") == ["tensorboard"] and config.trackers("rl") == []


def test_no_tracker_logs_nothing(tmp_path):
    trackers = Trackers([], "run", "rl", tmp_path, {})
    trackers.log({"a": 1.0}, 1)
    trackers.finish()
    assert list(tmp_path.iterdir()) == []


def scalars(folder) -> dict[str, dict[int, float]]:
    """Every scalar in the TensorBoard event files under ``folder``: {tag: {step: value}}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = {}
    for events in sorted(folder.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events.parent), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return out


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_logged(seen: dict, row: dict, step: int, prefix: str = "") -> int:
    """Every number of ``row`` is the scalar ``prefix + key`` at ``step`` (TensorBoard keeps fp32)."""
    checked = 0
    for key, value in row.items():
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
            assert seen[prefix + key][step] == pytest.approx(value, rel=1e-6, abs=1e-6), (prefix + key, step)
            checked += 1
    return checked


def test_every_training_stage_writes_what_its_metrics_say_to_tensorboard(tmp_path):
    """End to end: sft, reward and ppo of a small run with report_to [tensorboard]; every row of each
    stage's metrics.jsonl and its final figures read back from the event files."""
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed (pip install 'rlhf[tensorboard]')")
    from pipelines import rl, reward, sft
    from rlhf.tinyworld.build import resolve_tinyworld

    config = resolve_tinyworld(config_from_dict(small_raw(tmp_path, report_to=["tensorboard"])), log=quiet)
    for stage in (sft, reward, rl):
        stage.main(config)
    run = config.run_dir

    seen = scalars(run / "sft" / "trackers")
    log = rows(run / "sft" / "lora" / "metrics.jsonl")
    assert any("loss" in r for r in log) and any("eval_loss" in r for r in log)
    assert sum(assert_logged(seen, r, r["step"], "lora/") for r in log) >= len(log)
    final = json.loads((run / "sft" / "metrics.json").read_text())["variants"]
    assert seen["lora/rougeL"][final["lora"]["global_step"]] == pytest.approx(final["lora"]["rougeL"])
    assert seen["base/rougeL"][0] == pytest.approx(final["base"]["rougeL"])

    seen = scalars(run / "reward" / "trackers")
    log = rows(run / "reward" / "metrics.jsonl")
    assert any("eval_loss" in r for r in log) and all(assert_logged(seen, r, r["step"]) for r in log)
    metrics = json.loads((run / "reward" / "metrics.json").read_text())
    for key in ("accuracy", "roc_auc", "f1"):
        assert seen[key][metrics["global_step"]] == pytest.approx(metrics[key])

    seen = scalars(run / "rl" / "trackers")
    log = rows(run / "rl" / "metrics.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3]
    for r in log:
        assert assert_logged(seen, r, r["step"]) >= 10
    assert {"objective/scores", "objective/kl", "objective/kl_coef"} <= set(seen)
    metrics = json.loads((run / "rl" / "metrics.json").read_text())
    assert seen["rougeL_after"][3] == pytest.approx(metrics["rougeL_after"])
    assert math.isclose(seen["greedy_toxicity_after"][3], metrics["greedy_toxicity_after"], rel_tol=1e-6, abs_tol=1e-6)
    hparams = list((run / "rl" / "trackers").rglob("hparams.yml"))
    assert hparams and "rl.kl.target: 6.0" in hparams[0].read_text()  # the resolved config as hyperparameters


def test_the_reward_stage_reports_to_trackio_offline(tmp_path):
    """Trackio keeps its runs in a local SQLite file (TRACKIO_DIR): the stage's rows read back from it.
    In child processes, as trackio reads TRACKIO_DIR once when first imported."""
    pytest.importorskip("trackio", reason="the trackio extra is not installed (pip install 'rlhf[trackio]')")
    import os
    import subprocess
    import sys

    import yaml

    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(small_raw(tmp_path, reward={"report_to": ["trackio"]})))
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio")}
    run = subprocess.run([sys.executable, "-m", "rlhf.cli", "reward", str(path)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    read = subprocess.run([sys.executable, "-c", "import json; from trackio.sqlite_storage import SQLiteStorage; "
                           "print(json.dumps(SQLiteStorage.get_logs('rlhf', 't/reward')))"], env=env,
                          capture_output=True, text=True, timeout=120)
    logged = json.loads(read.stdout.splitlines()[-1])
    for row in rows(tmp_path / "runs" / "t" / "reward" / "metrics.jsonl"):
        assert any(all(entry.get(k) == pytest.approx(v) for k, v in row.items() if isinstance(v, float))
                   for entry in logged if entry["step"] == row["step"]), row
    metrics = json.loads((tmp_path / "runs" / "t" / "reward" / "metrics.json").read_text())
    assert any(entry.get("roc_auc") == pytest.approx(metrics["roc_auc"]) for entry in logged)
