"""Stage 3: the toxicity reward model, trained (or a pretrained one named) and evaluated on held-out data."""

from __future__ import annotations

import shutil
import sys

from rlhf.artifacts import atomic_dir, atomic_write_text, markdown_table
from rlhf.config import ExperimentConfig, to_dict
from rlhf.configcheck import validate
from rlhf.entrypoint import stage_command
from rlhf.metrics import binary_classification
from rlhf.reward import ID2LABEL, RewardScorer, load_classifier, load_labelled, train_classifier
from rlhf.rundir import start_stage
from rlhf.tinyworld.build import resolve_tinyworld
from rlhf.trackers import Trackers, trainer_logger


def main(config: ExperimentConfig) -> dict:
    config = resolve_tinyworld(config)
    cfg = config.reward
    validate(config, ["reward"])  # labelled data or a pretrained classifier, also when called from Python
    splits = load_labelled(cfg.data, config.seed) if cfg.data.source else None  # before the stage folder is touched
    stage = start_stage(config, "reward")
    trackers = Trackers(config.trackers("reward"), config.run_name, "reward", stage.dir, to_dict(config))
    log_path = stage.dir / "metrics.jsonl"
    log_path.unlink(missing_ok=True)  # the Trainer's rows of this run only
    info: dict = {"pretrained": cfg.pretrained, "output": cfg.output, "score_with_prompt": cfg.score_with_prompt}
    if cfg.pretrained:
        model, tokenizer = load_classifier(cfg.pretrained, cfg.trust_remote_code)
        label = cfg.non_toxic_label
    else:
        model, tokenizer = load_classifier(cfg.model, cfg.trust_remote_code, from_scratch=cfg.from_scratch,
                                           init_seed=config.seed)
        model.config.id2label, model.config.label2id = dict(ID2LABEL), {v: k for k, v in ID2LABEL.items()}
        model, train_info = train_classifier(model, tokenizer, splits, cfg, stage.dir / "checkpoints", config.seed,
                                             callbacks=[trainer_logger(log_path, trackers)])
        info.update(train_info)
        with atomic_dir(stage.dir / "model") as tmp:
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(stage.dir / "checkpoints", ignore_errors=True)
        label = ID2LABEL[0]
    scorer = RewardScorer(model, tokenizer, label, cfg.output, cfg.max_length)
    metrics = {**info, "non_toxic_label": label}
    wrong = []
    if splits is not None:
        test = splits["test"]
        toxic = scorer.toxic_probs(test["text"]).tolist()
        metrics.update(binary_classification(test["labels"], toxic))
        wrong = sorted(
            ({"text": t, "label": ID2LABEL[y], "toxic_prob": p} for t, y, p in zip(test["text"], test["labels"], toxic)
             if (p >= 0.5) != (y == 1)), key=lambda r: -abs(r["toxic_prob"] - 0.5))[: cfg.n_wrong_shown]
        metrics["most_confidently_wrong"] = wrong
    atomic_write_text(stage.dir / "results.md", _results_md(metrics, wrong, cfg))
    stage.write_metrics(metrics)
    trackers.log(metrics, metrics.get("global_step", 0))  # the held-out figures at the last step
    trackers.finish()
    stage.finish()
    if "roc_auc" in metrics:
        print(f"reward: held-out accuracy {metrics['accuracy']:.4f}, ROC-AUC {metrics['roc_auc']:.4f}, "
              f"ECE {metrics['ece']:.4f} on {metrics['n']} texts")
    return metrics


def _results_md(metrics: dict, wrong: list[dict], cfg) -> str:
    source = f"pretrained `{cfg.pretrained}`" if cfg.pretrained else f"trained from `{cfg.model}`"
    head = (f"# Stage 3: toxicity reward model\n\nModel: {source}. Reward = non-toxic "
            f"{cfg.output} (label `{metrics['non_toxic_label']}`); scored text: "
            f"{'prompt + response' if cfg.score_with_prompt else 'response only'}.\n\n")
    if "accuracy" not in metrics:
        return head + "No held-out data given: not evaluated.\n"
    rows = [{k: metrics[k] for k in ("n", "accuracy", "precision", "recall", "f1", "roc_auc", "ece")}]
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]["rows_true_cols_pred"]
    confusion = markdown_table([{"true \\ predicted": "non-toxic", "non-toxic": tn, "toxic": fp},
                                {"true \\ predicted": "toxic", "non-toxic": fn, "toxic": tp}])
    return (head + f"## Held-out metrics (toxic = positive class)\n\n{markdown_table(rows)}\n"
            f"## Confusion matrix\n\n{confusion}\n## Most confidently wrong\n\n{markdown_table(wrong)}")


if __name__ == "__main__":
    sys.exit(stage_command("reward", main))
