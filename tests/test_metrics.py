import pytest

from rlhf.metrics import rouge, rouge_per_prediction, sentence_lines


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
