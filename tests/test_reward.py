import json

import pytest
import torch

from pipelines import reward as reward_stage
from rlhf.config import RewardDataConfig, config_from_dict
from rlhf.errors import UserError
from rlhf.metrics import binary_classification, expected_calibration_error, roc_auc
from rlhf.reward import RewardScorer, class_weights, label_index, load_classifier, load_labelled, scored_texts
from rlhf.tinyworld.build import resolve_tinyworld

from .conftest import small_raw, write_jsonl

REWARD = {"model": "tinyworld", "from_scratch": True, "learning_rate": 2e-3, "epochs": 3, "batch_size": 16,
          "eval_steps": 10, "data": {"source": "tinyworld"}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reward")
    config = resolve_tinyworld(config_from_dict(small_raw(tmp, reward=REWARD)), log=lambda *_: None)
    return config, reward_stage.main(config)


def test_reward_stage_trains_and_reports(trained):
    config, metrics = trained
    folder = config.run_dir / "reward"
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc", "ece", "confusion_matrix"):
        assert key in metrics
    saved = json.loads((folder / "metrics.json").read_text())
    assert saved["roc_auc"] == metrics["roc_auc"] and saved["roc_auc"] > 0.5
    model, _ = load_classifier(str(folder / "model"))
    assert model.config.id2label == {0: "non-toxic", 1: "toxic"}
    text = (folder / "results.md").read_text()
    assert "Confusion matrix" in text and "Most confidently wrong" in text
    assert not (folder / "checkpoints").exists()


@pytest.fixture(scope="module")
def scorer(trained):
    config, _ = trained
    model, tok = load_classifier(str(config.run_dir / "reward" / "model"))
    return RewardScorer(model, tok, "non-toxic", batch_size=3)


def test_scorer_strips_special_tokens(scorer):
    clean = scorer.score(["you are a stupid idiot"]).rewards
    noisy = scorer.score(["<pad> you are a stupid idiot</s><pad><pad>"]).rewards
    torch.testing.assert_close(clean, noisy)


def test_batching_matches_one_by_one(scorer):
    texts = ["#Person1# books a table.", "shut up you moron", "", "a much longer text " * 5, "ok"]
    batched = scorer.score(texts)
    single = [scorer.score([t]) for t in texts]
    torch.testing.assert_close(batched.rewards, torch.cat([s.rewards for s in single]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched.toxic_probs, torch.cat([s.toxic_probs for s in single]), atol=1e-5, rtol=1e-5)


def test_empty_string_and_outputs(scorer):
    scores = scorer.score(["", "   "])
    assert scores.rewards.shape == (2,) and torch.isfinite(scores.rewards).all()
    assert ((scores.toxic_probs >= 0) & (scores.toxic_probs <= 1)).all()
    assert scorer.score([]).rewards.shape == (0,)


def test_probability_output_is_non_toxic_prob(scorer):
    prob = RewardScorer(scorer.model, scorer.tokenizer, "non-toxic", output="probability")
    s = prob.score(["hello there"])
    torch.testing.assert_close(s.rewards, 1 - s.toxic_probs)


def test_label_mapping_and_missing_label(scorer):
    assert label_index(scorer.model, "non-toxic") == 0 and label_index(scorer.model, "toxic") == 1
    with pytest.raises(UserError, match=r"do not include the non-toxic label 'nothate'"):
        label_index(scorer.model, "nothate")


def test_scored_texts_with_prompt():
    assert scored_texts(["P"], ["R"], with_prompt=True) == ["P R"]
    assert scored_texts(["P"], ["R"], with_prompt=False) == ["R"]


def test_label_values_outside_declared(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": "maybe"}, {"text": "b", "label": "1"}] * 10)
    with pytest.raises(UserError, match=r"values \['maybe'\] besides the declared"):
        load_labelled(RewardDataConfig(source=src), seed=0)


def test_single_class_training_set(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"text": f"t{i}", "label": 0} for i in range(30)])
    with pytest.raises(UserError, match="single class"):
        load_labelled(RewardDataConfig(source=src), seed=0)


def test_non_string_text(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"text": i, "label": i % 2} for i in range(30)])
    with pytest.raises(UserError, match="non-string value 0"):
        load_labelled(RewardDataConfig(source=src), seed=0)


def test_missing_columns(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"comment": "x", "label": 1}] * 10)
    with pytest.raises(UserError, match="no column 'text'"):
        load_labelled(RewardDataConfig(source=src), seed=0)


def test_model_that_is_not_a_classifier(tmp_path):
    from transformers import T5Config

    T5Config(d_model=8, d_kv=2, d_ff=8, num_layers=1, num_heads=4, vocab_size=10,
             architectures=["T5ForConditionalGeneration"]).save_pretrained(tmp_path / "t5")
    with pytest.raises(UserError, match="could not load reward model|not a sequence classifier"):
        load_classifier(str(tmp_path / "t5"))


def test_cli_pretrained_missing_label_exits_2(trained, tmp_path, capsys):
    import yaml

    from rlhf.cli import main

    config, _ = trained
    raw = small_raw(tmp_path, reward={"pretrained": str(config.run_dir / "reward" / "model"),
                                      "non_toxic_label": "nothate"})
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(raw))
    assert main(["reward", str(tmp_path / "e.yaml")]) == 2
    assert "do not include the non-toxic label 'nothate'" in capsys.readouterr().err


def test_classification_metrics_known_values():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert expected_calibration_error([1, 0], [1.0, 0.0]) == 0.0
    # all predicted toxic with confidence 0.9, half right: |0.5 - 0.9| = 0.4
    assert expected_calibration_error([1, 0], [0.9, 0.9]) == pytest.approx(0.4)
    m = binary_classification([1, 1, 0, 0], [0.9, 0.2, 0.6, 0.1])
    assert m["confusion_matrix"]["rows_true_cols_pred"] == [[1, 1], [1, 1]]
    assert m["accuracy"] == m["precision"] == m["recall"] == m["f1"] == 0.5


def test_class_weights_balance():
    torch.testing.assert_close(class_weights([0, 0, 0, 1]), torch.tensor([2 / 3, 2.0]))
