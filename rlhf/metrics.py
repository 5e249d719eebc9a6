"""Text metrics: ROUGE with ``rouge_score`` (no hub download, unlike ``evaluate.load("rouge")``)."""

from __future__ import annotations

from statistics import mean

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE F-measures, stemmed, as the ``evaluate`` rouge metric reports them."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions vs {len(references)} references")
    if not predictions:
        return {k: 0.0 for k in ROUGE_KEYS}
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
    return {k: mean(s[k].fmeasure for s in scores) for k in ROUGE_KEYS}


def mean_words(texts: list[str]) -> float:
    return mean(len(t.split()) for t in texts) if texts else 0.0
