import json

import pytest

from rlhf.artifacts import atomic_dir, atomic_write_json
from rlhf.errors import UserError
from rlhf.rundir import MANIFEST, is_finished, require_stage, start_stage


def test_manifest_written_last_and_describes_the_run(small_config):
    stage = start_stage(small_config, "prompt")
    assert (stage.dir / "config.yaml").is_file() and not is_finished(small_config, "prompt")
    stage.write_metrics({"x": 1})
    manifest = stage.finish()
    assert is_finished(small_config, "prompt")
    saved = json.loads((stage.dir / MANIFEST).read_text())
    assert saved == manifest and saved["status"] == "finished" and saved["seed"] == small_config.seed
    assert {"python", "torch", "transformers", "peft", "trl"} <= set(saved["versions"])
    assert "started_at" in saved and "ended_at" in saved and "git_commit" in saved


def test_restarting_a_stage_removes_its_old_manifest(small_config):
    start_stage(small_config, "prompt").finish()
    start_stage(small_config, "prompt")
    assert not is_finished(small_config, "prompt")


def test_require_stage_names_the_missing_stage(small_config):
    with pytest.raises(UserError, match=r"needs the 'sft' stage.*rlhf sft CONFIG"):
        require_stage(small_config, "sft", needed_by="ppo")


def test_atomic_writes_leave_no_temp_files(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"a": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_dir_keeps_old_folder_on_failure(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("killed")
    assert (target / "weights").read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
