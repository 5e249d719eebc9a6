import json

import pytest

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
    assert {"python", "torch", "transformers", "peft", "datasets", "accelerate"} <= set(saved["versions"])
    assert "started_at" in saved and "ended_at" in saved and "git_commit" in saved


def test_restarting_a_stage_removes_its_old_manifest(small_config):
    start_stage(small_config, "prompt").finish()
    start_stage(small_config, "prompt")
    assert not is_finished(small_config, "prompt")


def test_require_stage_names_the_missing_stage(small_config):
    with pytest.raises(UserError, match=r"needs the 'sft' stage.*rlhf sft CONFIG"):
        require_stage(small_config, "sft", needed_by="rl")


def test_require_stage_refuses_artifacts_of_other_settings(small_config):
    import dataclasses

    start_stage(small_config, "sft").finish()
    assert require_stage(small_config, "sft", needed_by="rl").name == "sft"
    assert require_stage(_with(small_config, "rl", steps=99), "sft", needed_by="rl").name == "sft"  # not read by sft
    lora = dataclasses.replace(small_config.sft.lora, r=small_config.sft.lora.r + 1)
    with pytest.raises(UserError, match=r"^stage 'rl' needs the 'sft' stage, which finished in .*sft with other "
                                        r"settings \(sft.lora.r: \d+ -> \d+\): run `rlhf sft CONFIG --force`"):
        require_stage(_with(small_config, "sft", lora=lora), "sft", needed_by="rl")


def _with(config, section, **values):
    import dataclasses

    return dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **values)})


def test_a_finished_stage_is_checked_against_the_settings_it_reads(small_config):
    from rlhf.rundir import check_finished_unchanged

    start_stage(small_config, "prompt").finish()
    start_stage(small_config, "sft").finish()
    check_finished_unchanged(small_config, ["prompt", "sft"])  # unchanged: fine
    check_finished_unchanged(_with(small_config, "evaluate", n_samples=3), ["prompt", "sft"])  # not read by either
    start_stage(small_config, "rl").finish()
    check_finished_unchanged(_with(small_config, "rl", compile=True, report_to=["tensorboard"]), ["rl"])  # run-only
    with pytest.raises(UserError, match=r"other settings \(rl.steps: \d+ -> 99\); add --force"):
        check_finished_unchanged(_with(small_config, "rl", compile=True, steps=99), ["rl"])
    with pytest.raises(UserError, match=r"^prompt: finished in .*prompt with other settings "
                                        r"\(prompt.n_dialogues: 6 -> 3\); add --force to redo it$"):
        check_finished_unchanged(_with(small_config, "prompt", n_dialogues=3), ["prompt", "sft", "rl"])
    changed = _with(_with(small_config, "prompt", n_dialogues=3), "data", max_samples=50)
    with pytest.raises(UserError, match=r"^finished stages with other settings in .*: prompt \(data.max_samples: "
                                        r"None -> 50, prompt.n_dialogues: 6 -> 3\); sft \(data.max_samples: None -> 50\)"):
        check_finished_unchanged(changed, ["prompt", "sft"])


def test_a_moved_run_folder_is_the_same_run(small_config, tmp_path):
    import dataclasses
    import shutil

    from rlhf.rundir import check_finished_unchanged

    start_stage(small_config, "prompt").finish()
    shutil.copytree(small_config.run_dir, tmp_path / "moved" / "t")
    check_finished_unchanged(dataclasses.replace(small_config, output_dir=str(tmp_path / "moved")), ["prompt"])


def test_an_unreadable_record_needs_force(small_config):
    from rlhf.rundir import check_finished_unchanged

    stage = start_stage(small_config, "prompt")
    stage.finish()
    (stage.dir / "config.yaml").write_text("seed: [")
    with pytest.raises(UserError, match=r"prompt: cannot read its recorded config .*config.yaml.*add --force"):
        check_finished_unchanged(small_config, ["prompt"])


def test_checkpoints_are_kept_unless_forced(tmp_path):
    from rlhf.rundir import keep_or_discard

    folder = tmp_path / "checkpoints"
    (folder / "step-2").mkdir(parents=True)
    keep_or_discard("rl", folder, [], force=False)  # nothing found: nothing to say
    with pytest.raises(UserError, match=r"^rl: an earlier run left checkpoints in .* \(step-2\): add --resume to "
                                        r"continue from the newest good one, or --force to discard them"):
        keep_or_discard("rl", folder, ["step-2"], force=False)
    assert (folder / "step-2").is_dir()
    lines = []
    keep_or_discard("rl", folder, ["step-2"], force=True, log=lines.append)
    assert not folder.exists() and lines == [f"rl: --force: discarding the checkpoints in {folder} (step-2)"]


def test_output_dir_that_is_a_file_is_one_line(small_config, tmp_path):
    import dataclasses

    (tmp_path / "file").write_text("x")
    config = dataclasses.replace(small_config, output_dir=str(tmp_path / "file" / "runs"))
    with pytest.raises(UserError, match=r"^output_dir .*file/runs: .*file is a file, not a folder$"):
        start_stage(config, "prompt")
