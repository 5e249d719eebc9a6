"""Text metrics: ROUGE with ``rouge_score`` (no hub download, unlike ``evaluate.load("rouge")``)."""

from __future__ import annotations

import functools
import re
from statistics import mean

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def sentence_lines(text: str) -> str:
    """One sentence per line: ``rougeLsum`` computes the union LCS over sentences split at newlines
    only, so on one-line text it equals ``rougeL`` (the summarization scripts split with nltk first)."""
    return "\n".join(s for s in _SENTENCE_END.split(text.strip()) if s)


def rouge_per_prediction(predictions: list[str], references: list[str | list[str]]) -> list[dict[str, float]]:
    """ROUGE F-measures of each prediction, stemmed as the ``evaluate`` rouge metric does; for
    ``rougeLsum`` both texts are split into sentences first (:func:`sentence_lines`). A prediction
    with several references (DialogSum's test set has three per dialogue) gets the mean of its
    scores against each one (``evaluate`` takes the best one instead, which scores higher)."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions vs {len(references)} references")
    tokenizer = _MemoTokenizer()
    scorer = rouge_scorer.RougeScorer([k for k in ROUGE_KEYS if k != "rougeLsum"], tokenizer=tokenizer)
    summary = rouge_scorer.RougeScorer(["rougeLsum"], tokenizer=tokenizer)
    out = []
    for pred, refs in zip(predictions, references):
        refs = [refs] if isinstance(refs, str) else list(refs)
        scores = [scorer.score(ref, pred) | summary.score(sentence_lines(ref), sentence_lines(pred)) for ref in refs]
        out.append({k: mean(s[k].fmeasure for s in scores) for k in ROUGE_KEYS})
    return out


class _MemoTokenizer:
    """``rouge_score``'s default tokenizer with its Porter stemmer (``use_stemmer=True``), the same
    tokens, memoised: each text once (a prompt's references are scored against every one of its
    samples) and each word's stem once (the stemmer is pure Python: it was three quarters of the
    scoring time). A text's token list is shared by every score of it: rouge_score only reads it."""

    def __init__(self):
        from nltk.stem import porter

        self._stem = functools.lru_cache(maxsize=None)(porter.PorterStemmer().stem)
        self._texts: dict[str, list[str]] = {}

    def stem(self, word: str) -> str:
        return self._stem(word)

    def tokenize(self, text: str) -> list[str]:
        from rouge_score.tokenize import tokenize

        tokens = self._texts.get(text)
        if tokens is None:
            tokens = self._texts[text] = tokenize(text, self)
        return tokens


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
