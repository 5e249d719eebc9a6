"""Text metrics: ROUGE with ``rouge_score`` (no hub download, unlike ``evaluate.load("rouge")``)."""

from __future__ import annotations

from statistics import mean

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def rouge_per_prediction(predictions: list[str], references: list[str | list[str]]) -> list[dict[str, float]]:
    """ROUGE F-measures (stemmed, as the ``evaluate`` rouge metric) of each prediction. A prediction
    with several references (DialogSum's test set has three per dialogue) gets the mean of its
    scores against each one."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions vs {len(references)} references")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    out = []
    for pred, refs in zip(predictions, references):
        refs = [refs] if isinstance(refs, str) else list(refs)
        scores = [scorer.score(ref, pred) for ref in refs]
        out.append({k: mean(s[k].fmeasure for s in scores) for k in ROUGE_KEYS})
    return out


def rouge(predictions: list[str], references: list[str | list[str]]) -> dict[str, float]:
    """Mean over predictions of :func:`rouge_per_prediction`."""
    if not predictions:
        return {k: 0.0 for k in ROUGE_KEYS}
    scores = rouge_per_prediction(predictions, references)
    return {k: mean(s[k] for s in scores) for k in ROUGE_KEYS}


def mean_words(texts: list[str]) -> float:
    return mean(len(t.split()) for t in texts) if texts else 0.0


def roc_auc(labels: list[int], scores: list[float]) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney U) identity, ties counted half."""
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    if not pos or not neg:
        return float("nan")
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(r for r, y in zip(ranks, labels) if y == 1)
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def expected_calibration_error(labels: list[int], probs: list[float], bins: int = 10) -> float:
    """ECE (Guo et al. 2017, eq. 3): sum over equal-width confidence bins of
    |accuracy - mean confidence| x share of samples. Confidence = max(p, 1 - p) of the predicted class."""
    groups: dict[int, list[tuple[float, float]]] = {}
    for y, p in zip(labels, probs):
        conf = max(p, 1 - p)
        correct = float((p >= 0.5) == (y == 1))
        groups.setdefault(min(bins - 1, int(conf * bins)), []).append((conf, correct))
    n = max(1, len(labels))
    return sum(abs(mean(c for _, c in g) - mean(f for f, _ in g)) * len(g) / n for g in groups.values())


def binary_classification(labels: list[int], probs: list[float], threshold: float = 0.5) -> dict:
    """Accuracy, precision, recall, F1 (positive = 1), ROC-AUC, ECE and the confusion matrix."""
    preds = [int(p >= threshold) for p in probs]
    tp = sum(p == 1 and y == 1 for p, y in zip(preds, labels))
    fp = sum(p == 1 and y == 0 for p, y in zip(preds, labels))
    fn = sum(p == 0 and y == 1 for p, y in zip(preds, labels))
    tn = sum(p == 0 and y == 0 for p, y in zip(preds, labels))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "n": len(labels), "accuracy": (tp + tn) / max(1, len(labels)), "precision": precision, "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "roc_auc": roc_auc(labels, probs), "ece": expected_calibration_error(labels, probs),
        "confusion_matrix": {"labels": ["non-toxic", "toxic"], "rows_true_cols_pred": [[tn, fp], [fn, tp]]},
    }
