from statistics import mean

import pytest

from rlhf.metrics import (
    binary_classification,
    expected_calibration_error,
    roc_auc,
    rouge,
    rouge_per_prediction,
    sentence_lines,
)


def test_rouge_lsum_scores_sentences_so_it_differs_from_rouge_l_on_reordered_ones():
    ref = "Tom buys a red bike for his son. They will meet on Monday."
    pred = "They will meet on Monday. Tom buys a red bike for his son."
    s = rouge_per_prediction([pred], [ref])[0]
    assert s["rougeLsum"] == pytest.approx(1.0) and s["rougeL"] < 0.7
    assert sentence_lines(" A b. C d?  E ") == "A b.\nC d?\nE"


def test_several_references_give_the_mean_of_their_scores():
    one = rouge_per_prediction(["the cat sat"], ["the cat sat"])[0]["rougeL"]
    other = rouge_per_prediction(["the cat sat"], ["a dog ran"])[0]["rougeL"]
    both = rouge_per_prediction(["the cat sat"], [["the cat sat", "a dog ran"]])[0]["rougeL"]
    assert both == pytest.approx((one + other) / 2) and one == pytest.approx(1.0)
    assert rouge([], []) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0, "rougeLsum": 0.0}


def test_rouge_tokens_and_scores_are_rouge_scores_own():
    from rouge_score import rouge_scorer, tokenizers

    from rlhf.metrics import _MemoTokenizer

    texts = ["Running runners ran; the RUNNER's runs!", "Mary's cats were running to Paris, 3 times.",
             "Running runners ran; the RUNNER's runs!", "", "a an the caresses ponies ties"]
    memo, plain = _MemoTokenizer(), tokenizers.DefaultTokenizer(use_stemmer=True)
    assert [memo.tokenize(t) for t in texts] == [plain.tokenize(t) for t in texts]
    assert memo.tokenize("caresses ponies") == ["caress", "poni"]  # stemmed
    preds, refs = texts[1:], [[texts[0], texts[4]], texts[2], texts[1], "ponies run"]
    keys = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    own = rouge_scorer.RougeScorer(keys, use_stemmer=True)
    for pred, ref, got in zip(preds, refs, rouge_per_prediction(preds, refs)):
        ref = [ref] if isinstance(ref, str) else ref
        want = [own.score(sentence_lines(r), sentence_lines(pred)) | {k: own.score(r, pred)[k] for k in keys[:3]}
                for r in ref]
        assert got == {k: mean(w[k].fmeasure for w in want) for k in keys}


def test_classification_metrics_known_values():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert expected_calibration_error([1, 0], [1.0, 0.0]) == 0.0
    # all predicted toxic with confidence 0.9, half right: |0.5 - 0.9| = 0.4
    assert expected_calibration_error([1, 0], [0.9, 0.9]) == pytest.approx(0.4)
    m = binary_classification([1, 1, 0, 0], [0.9, 0.2, 0.6, 0.1])
    assert m["confusion_matrix"]["rows_true_cols_pred"] == [[1, 1], [1, 1]]
    assert m["accuracy"] == m["precision"] == m["recall"] == m["f1"] == 0.5
