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


@pytest.fixture(scope="module")
def dpo_run(finished_run, tmp_path_factory):
    """The session's small run with its RL and evaluate stages redone by DPO on the world's own pairs (the
    same on every machine; pairs of samples ranked by a classifier are tested in tests/test_pairs.py: the
    small world's classifier scores every sample within 0.542-0.547, so no threshold splits them everywhere)."""
    import dataclasses

    from pipelines import evaluate

    moved = copy_run(finished_run, tmp_path_factory.mktemp("dpo"))
    pairs = dataclasses.replace(moved.rl.pairs, source="corpus", corpus_column="neutral_summary")
    preference = dataclasses.replace(moved.rl.preference, nll_coef=1.0)  # with RPO's NLL of the chosen
    config = dataclasses.replace(moved, rl=dataclasses.replace(moved.rl, algorithm="dpo", group_size=2, batch_size=4,
                                                               mini_batch_size=2, epochs=1, toxic_share=None,
                                                               pairs=pairs, preference=preference))
    metrics = rl_stage.main(config, force=True)
    evaluate.main(config)
    return config, metrics


def test_dpo_makes_its_pairs_then_trains_through_the_rl_stage(dpo_run, tmp_path):
    from rlhf.compare import compare
    from rlhf.pairs import read_pairs

    config, metrics = dpo_run
    folder = config.run_dir / "rl"
    pairs = read_pairs(folder / "pairs.jsonl")
    counts = json.loads((folder / "pairs.json").read_text())
    assert metrics["algorithm"] == "dpo" and metrics["pairs"]["pairs"] == counts["pairs"] == len(pairs) > 0
    assert counts["prompts"] == 160 and counts["made_with"]["pairs"]["source"] == "corpus"
    assert all(p.rejected == p.reference != p.chosen and p.made_by.startswith("corpus") for p in pairs)
    log = [json.loads(line) for line in (folder / "metrics.jsonl").open()]
    assert [row["step"] for row in log] == [1, 2, 3] and "objective/kl" not in log[0]
    assert log[0]["loss/pair"] == pytest.approx(0.6931, abs=0.01) and metrics["kl_mean_final"] is None
    assert log[0]["loss/chosen_nll"] > 0
    assert log[0]["loss/policy"] == pytest.approx(log[0]["loss/pair"] + log[0]["loss/chosen_nll"], rel=1e-4)
    assert (folder / "policy" / "adapter_model.safetensors").is_file()
    assert not (folder / "policy" / "value_head.safetensors").exists()
    assert (config.run_dir / "report.json").is_file()

    row = compare([config.run_dir], tmp_path / "cmp")[0]
    assert row["method"] == "dpo" and row["pairs"] == len(pairs)
    assert row["RL seconds"] == pytest.approx(metrics["seconds"] + counts["seconds"])
    assert row["nll_coef"] == 1.0 and "| dpo (beta=0.1, nll_coef=1.0, " in (tmp_path / "cmp" / "compare.md").read_text()

    # --resume reads the pairs back rather than making them again
    (folder / "pairs.jsonl").write_text((folder / "pairs.jsonl").read_text().splitlines()[0] + "\n")
    import dataclasses

    longer = dataclasses.replace(config, rl=dataclasses.replace(config.rl, steps=4))
    assert rl_stage.main(longer, resume=True, force=True)["pairs"]["pairs"] == counts["pairs"]
    assert len(read_pairs(folder / "pairs.jsonl")) == 1  # the (shortened) file was read, not remade


def test_a_missing_corpus_column_is_one_line_before_anything_changes(dpo_run, tmp_path):
    import dataclasses

    config, _ = dpo_run
    moved = copy_run(config, tmp_path)
    pairs = dataclasses.replace(moved.rl.pairs, source="corpus", corpus_column="nope")
    bad = dataclasses.replace(moved, rl=dataclasses.replace(moved.rl, pairs=pairs, steps=1))
    before = sorted(p.name for p in (moved.run_dir / "rl").iterdir())
    with pytest.raises(UserError, match="'rl.pairs.corpus_column': column 'nope' is not in the training data"):
        rl_stage.main(bad, force=True)
    assert sorted(p.name for p in (moved.run_dir / "rl").iterdir()) == before  # refused before anything changed


@pytest.fixture(scope="module")
def pairwise_run(finished_run, tmp_path_factory):
    """The session's small run with its RL and evaluate stages redone by PPO against a pairwise reward model of
    the data's own pairs (neutral_summary over summary: the same on every machine, where the small classifier's
    scores of samples are not); the scorers the RL loop got."""
    import dataclasses

    from pipelines import evaluate

    moved = copy_run(finished_run, tmp_path_factory.mktemp("pairwise"))
    pairs = dataclasses.replace(moved.rl.pairs, source="corpus", corpus_column="neutral_summary")
    pairwise = dataclasses.replace(moved.rl.pairwise, epochs=2, batch_size=8)
    config = dataclasses.replace(moved, rl=dataclasses.replace(moved.rl, reward_model="pairwise", pairs=pairs,
                                                               pairwise=pairwise))
    scorers = []

    class Recording(rl_stage.RLTrainer):
        def __init__(self, policy, tokenizer, scorer, *args, **kwargs):
            scorers.append(scorer)
            super().__init__(policy, tokenizer, scorer, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rl_stage, "RLTrainer", Recording)
        metrics = rl_stage.main(config, force=True)
    evaluate.main(config)
    return config, metrics, scorers


def test_ppo_against_a_pairwise_reward_model_of_the_pairs(pairwise_run, tmp_path, capsys):
    import dataclasses

    from rlhf.compare import compare
    from rlhf.pairs import read_pairs
    from rlhf.pairwise import PairwiseScorer

    config, metrics, scorers = pairwise_run
    folder = config.run_dir / "rl"
    assert [type(s) for s in scorers] == [PairwiseScorer]  # the loop optimised the pairwise model
    pw, n_pairs = metrics["pairwise"], len(read_pairs(folder / "pairs.jsonl"))
    assert metrics["reward_model"] == "pairwise" and metrics["algorithm"] == "ppo"
    assert pw["n_train"] + pw["n_heldout"] == n_pairs == metrics["pairs"]["pairs"] and pw["n_heldout"] > 0
    assert 0 <= pw["heldout_pair_accuracy"] <= 1 and pw["seconds"] > 0
    assert 0 <= metrics["greedy_toxicity_before"] <= 1  # the stage's own figures stay the classifier's
    assert (folder / "samples" / "step-2.md").is_file()
    saved = folder / "pairwise_rm"
    assert (saved / "model.safetensors").is_file() and not (saved / "trainer").exists()
    assert json.loads((saved / "pairwise.json").read_text())["heldout_pair_accuracy"] == pw["heldout_pair_accuracy"]

    report = json.loads((config.run_dir / "report.json").read_text())
    assert report["headline"]["rl_reward"] == {"model": "pairwise", "algorithm": "ppo", "heldout_pair_accuracy":
                                               pw["heldout_pair_accuracy"], "n_train": pw["n_train"],
                                               "n_heldout": pw["n_heldout"]}
    assert "- The RL stage optimised: a pairwise Bradley-Terry model" in (config.run_dir / "report.md").read_text()
    row = compare([config.run_dir], tmp_path / "cmp")[0]
    assert row["reward"] == "pairwise" and row["pairwise accuracy"] == pw["heldout_pair_accuracy"]
    assert row["RL seconds"] == pytest.approx(metrics["seconds"] + metrics["pairs"]["seconds"] + pw["seconds"])
    assert "| pairwise (held-out pair acc. " in (tmp_path / "cmp" / "compare.md").read_text()

    # --resume reads the model back rather than training it again
    capsys.readouterr()
    longer = dataclasses.replace(config, rl=dataclasses.replace(config.rl, steps=4))
    assert rl_stage.main(longer, resume=True, force=True)["pairwise"] == pw
    assert f"rl: pairwise reward model read from {saved}" in capsys.readouterr().out


def test_a_classifier_run_names_its_reward(finished_run):
    assert json.loads((finished_run.run_dir / "rl" / "metrics.json").read_text())["reward_model"] == "classifier"
    report = json.loads((finished_run.run_dir / "report.json").read_text())
    assert report["headline"]["rl_reward"] == {"model": "classifier", "algorithm": "ppo"}
    assert "- The RL stage optimised: the reward stage's classifier" in (finished_run.run_dir / "report.md").read_text()
