import json

import pytest

from rlhf.reward import load_classifier

from ..conftest import small_raw


def test_reward_stage_trains_and_reports(trained_reward):
    config, metrics = trained_reward
    folder = config.run_dir / "reward"
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc", "ece"):
        assert 0 <= metrics[key] <= 1, key
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]["rows_true_cols_pred"]
    assert tn + fp + fn + tp == metrics["n"] and metrics["accuracy"] == pytest.approx((tn + tp) / metrics["n"])
    saved = json.loads((folder / "metrics.json").read_text())
    assert saved["roc_auc"] == metrics["roc_auc"] and saved["roc_auc"] > 0.5
    model, _ = load_classifier(str(folder / "model"))
    assert model.config.id2label == {0: "non-toxic", 1: "toxic"}
    text = (folder / "results.md").read_text()
    assert "Confusion matrix" in text and "Most confidently wrong" in text
    assert not (folder / "checkpoints").exists()


def test_cli_pretrained_missing_label_exits_2(trained_reward, tmp_path, capsys):
    import yaml

    from rlhf.cli import main

    config, _ = trained_reward
    raw = small_raw(tmp_path, reward={"pretrained": str(config.run_dir / "reward" / "model"),
                                      "non_toxic_label": "nothate"})
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(raw))
    assert main(["reward", str(tmp_path / "e.yaml")]) == 2
    assert "do not include the non-toxic label 'nothate'" in capsys.readouterr().err
