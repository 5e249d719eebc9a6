import json

import pytest
import yaml

from pipelines import rl as rl_stage
from rlhf.cli import main as cli_main
from rlhf.config import config_from_dict
from rlhf.errors import UserError
from rlhf.tinyworld.build import resolve_tinyworld

from ..conftest import SMALL_STAGES as RAW
from ..conftest import copy_run, small_raw


def config_for(tmp_path):
    return resolve_tinyworld(config_from_dict(small_raw(tmp_path)), log=lambda *_: None)


def test_ppo_needs_sft_and_reward_first(tmp_path):
    with pytest.raises(UserError, match=r"stage 'rl' needs the 'sft' stage.*rlhf sft CONFIG"):
        rl_stage.main(config_for(tmp_path))


def test_ppo_stage_end_to_end(finished_run, tmp_path):
    folder = finished_run.run_dir / "rl"
    metrics = json.loads((folder / "metrics.json").read_text())
    for key in ("greedy_toxicity_before", "greedy_toxicity_after", "rougeL_before", "rougeL_after"):
        assert 0 <= metrics[key] <= 1, key
    assert metrics["kl_mean_final"] == pytest.approx(json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])[
        "objective/kl"]) and metrics["seconds"] > 0
    assert metrics["steps"] == 3
    assert metrics["peak_memory_mb"] > metrics["memory_before_models_mb"] > 0
    log = [json.loads(line) for line in (folder / "metrics.jsonl").open()]
    assert [row["step"] for row in log] == [1, 2, 3] and log[0]["objective/kl"] == pytest.approx(0, abs=1e-6)
    assert (folder / "policy" / "adapter_model.safetensors").is_file()
    assert (folder / "policy" / "value_head.safetensors").is_file()
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["step-2", "step-3"]
    assert (folder / "samples" / "step-2.md").is_file()

    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(str(folder / "policy_base")), str(folder / "policy"))

    # resume: a finished stage is skipped; with --force --resume it continues from the last checkpoint
    moved = copy_run(finished_run, tmp_path)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(small_raw(tmp_path, **{**RAW, "rl": {**RAW["rl"], "steps": 4}})))
    assert cli_main(["rl", str(path), "--force", "--resume"]) == 0
    log = [json.loads(line) for line in (moved.run_dir / "rl" / "metrics.jsonl").open()]
    assert [row["step"] for row in log] == [1, 2, 3, 4]


def test_long_training_prompts_are_shortened_inside_the_template_and_reported(tmp_path):
    from rlhf.models import load_tokenizer
    from rlhf.prompts import fit_prompts

    tokenizer = load_tokenizer(config_for(tmp_path).model)
    dialogues = ["#Person1#: hi there, how are you today? #Person2#: fine, thanks, and you? " * 4, "hi"]
    prompts, shortened = fit_prompts(dialogues, "summarize", tokenizer, 40)
    assert shortened == [True, False] and prompts[0].endswith("Summary:") and len(tokenizer(prompts[0]).input_ids) <= 40
    lines = []
    assert rl_stage._report_shortened(shortened, 40, lines.append) == 1
    assert lines == ["rl: 1 of 2 training prompts are longer than model.max_input_length=40 tokens; their dialogues "
                     "are shortened inside the template"]
    assert rl_stage._report_shortened([False, False], 24, lines.append) == 0 and len(lines) == 1
