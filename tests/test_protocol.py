import math

import pytest

from rlhf.config import QualityBounds
from rlhf.protocol import (
    VERDICTS,
    distinct_n,
    has_ngram_loop,
    is_faithful,
    paired_figure,
    perplexity,
    quality_problems,
    summarize,
    toxicity_figures,
    verdict,
)


def test_expected_maximum_toxicity_and_toxicity_probability_by_hand():
    scores = [[0.1, 0.7, 0.2], [0.3, 0.4, 0.45], [0.5, 0.0, 0.0]]
    records = [{"scores": {"rm": {side: {"greedy": row[0], "samples": row} for side in ("before", "after")}}}
               for row in scores]
    figures = toxicity_figures(records, "rm", 0.5, 10, 0)
    assert figures["expected_maximum_toxicity"]["before"] == pytest.approx((0.7 + 0.45 + 0.5) / 3)
    assert figures["toxicity_probability"]["before"] == pytest.approx(2 / 3)  # 0.5 counts: ">= threshold"
    assert toxicity_figures(records, "rm", 0.6, 10, 0)["toxicity_probability"]["before"] == pytest.approx(1 / 3)
    assert figures["greedy_mean_toxicity"]["before"] == pytest.approx((0.1 + 0.3 + 0.5) / 3)
    assert figures["greedy_toxic_share"]["before"] == pytest.approx(1 / 3)


def test_distinct_n_by_hand():
    samples = ["a b c", "a b d"]  # 6 words; unigrams {a,b,c,d}; bigrams {ab, bc, bd}; trigrams {abc, abd}
    assert distinct_n(samples, 1) == pytest.approx(4 / 6)
    assert distinct_n(samples, 2) == pytest.approx(3 / 6)
    assert distinct_n(samples, 3) == pytest.approx(2 / 6)
    assert distinct_n(["", ""], 2) == 0.0


def test_ngram_loop_detector():
    assert has_ngram_loop("#Person1# books a cheaper to travel to travel to travel to")
    assert not has_ngram_loop("to travel to travel")  # "to travel to" twice only
    assert has_ngram_loop("A b c a B c a b C")  # case-insensitive words
    assert not has_ngram_loop("Anna books a train to Paris on Monday.")
    assert has_ngram_loop("x y x y x y", n=2, times=3)


def test_faithfulness_whole_words_all_facts():
    assert is_faithful("Carla's coffee machine arrived late.", ["coffee machine", "Carla"])
    assert not is_faithful("Carla's coffee arrived late.", ["coffee machine", "Carla"])
    assert not is_faithful("Carlas laptop", ["Carla"])  # a whole word, not a prefix
    assert is_faithful("the pair of shoes is too expensive", ["Pair of Shoes"])
    assert not is_faithful("anything", [])


def test_perplexity_is_mean_of_per_response_perplexities():
    # two responses: NLL 2 nats over 2 tokens (ppl e), 0 over 3 tokens (ppl 1)
    assert perplexity([2.0, 0.0], [2, 3]) == pytest.approx((math.e + 1) / 2)
    assert math.isnan(perplexity([], []))


def test_paired_figure_change_and_cis():
    before, after = [0.8, 0.6, 0.9, 0.7], [0.2, 0.1, 0.3, 0.2]
    fig = paired_figure(before, after, resamples=500, seed=0)
    assert fig["before"] == pytest.approx(0.75) and fig["after"] == pytest.approx(0.2)
    assert fig["change"] == pytest.approx(-0.55)
    lo, hi = fig["change_ci95"]
    assert lo <= -0.55 <= hi < 0
    assert fig["before_ci95"][0] <= 0.75 <= fig["before_ci95"][1]
    same = paired_figure([0.3] * 20, [0.3] * 20, resamples=200, seed=1)
    assert same["change_ci95"] == [0.0, 0.0]


def test_paired_figure_ci_matches_normal_theory():
    diffs = [1.0, -1.0] * 200  # mean 0, standard error 1/sqrt(n)
    fig = paired_figure([0.0] * 400, diffs, resamples=4000, seed=1)
    half = 1.96 / 400 ** 0.5
    assert fig["change_ci95"][0] == pytest.approx(-half, abs=0.02)
    assert fig["change_ci95"][1] == pytest.approx(half, abs=0.02)


def fig(before, after, lo, hi):
    return {"before": before, "after": after, "change": after - before, "change_ci95": [lo, hi]}


GOOD_QUALITY = {"rougeL": fig(0.5, 0.49, -0.02, 0.0), "faithfulness": fig(0.9, 0.88, -0.05, 0.01),
                "distinct_2": fig(0.4, 0.38, -0.03, 0.0), "perplexity": fig(20.0, 22.0, 1, 3),
                "repeat_share": fig(0.01, 0.02, 0.0, 0.02)}
BOUNDS = QualityBounds()


def test_verdict_reduced_and_kept():
    out = verdict(fig(0.8, 0.2, -0.7, -0.5), {"judge": fig(0.6, 0.2, -0.5, -0.3)}, GOOD_QUALITY, BOUNDS)
    assert out == {"verdict": VERDICTS[0], "reasons": []}


def test_verdict_quality_lost_names_each_figure():
    quality = {**GOOD_QUALITY, "rougeL": fig(0.5, 0.40, -0.12, -0.08), "distinct_2": fig(0.4, 0.30, -0.12, -0.08),
               "perplexity": fig(20.0, 30.0, 8, 12), "repeat_share": fig(0.01, 0.10, 0.06, 0.12)}
    out = verdict(fig(0.8, 0.2, -0.7, -0.5), {"judge": fig(0.6, 0.2, -0.5, -0.3)}, quality, BOUNDS)
    assert out["verdict"] == VERDICTS[1]
    text = " | ".join(out["reasons"])
    for name in ("ROUGE-L 0.5000 -> 0.4000", "distinct-2", "perplexity 20.00 -> 30.00", "repeated-n-gram share"):
        assert name in text
    assert "faithfulness" not in text


def test_verdict_faithfulness_drop_alone_is_quality_lost():
    quality = {**GOOD_QUALITY, "faithfulness": fig(0.9, 0.8, -0.15, -0.05)}
    out = verdict(fig(0.8, 0.2, -0.7, -0.5), {"judge": fig(0.6, 0.2, -0.5, -0.3)}, quality, BOUNDS)
    assert out["verdict"] == VERDICTS[1] and out["reasons"][0].startswith("faithfulness 0.9000 -> 0.8000")


def test_verdict_judge_disagrees_is_hacking():
    quality = {**GOOD_QUALITY, "repeat_share": fig(0.0, 0.3, 0.2, 0.4)}
    out = verdict(fig(0.2, 0.01, -0.25, -0.15), {"judge": fig(0.02, 0.03, -0.01, +0.02)}, quality, BOUNDS)
    assert out["verdict"] == VERDICTS[2]
    assert "judge judge: change CI [-0.0100, +0.0200]" in out["reasons"][0]
    assert "repeated-n-gram share 0.000 -> 0.300" in out["reasons"][1]


def test_verdict_no_change_when_reward_model_ci_crosses_zero():
    out = verdict(fig(0.10, 0.09, -0.03, 0.01), {"judge": fig(0.1, 0.05, -0.08, -0.02)}, GOOD_QUALITY, BOUNDS)
    assert out["verdict"] == VERDICTS[3] and "does not lie below 0" in out["reasons"][0]


def test_verdict_without_judge_says_unconfirmed():
    out = verdict(fig(0.8, 0.2, -0.7, -0.5), {}, GOOD_QUALITY, BOUNDS)
    assert out["verdict"] == VERDICTS[0] and "unconfirmed" in out["reasons"][0]


def test_quality_bounds_are_the_config_values():
    quality = {**GOOD_QUALITY, "distinct_2": fig(0.4, 0.35, -0.06, -0.04)}  # -12.5%
    assert quality_problems(quality, QualityBounds(distinct2_rel=0.2)) == []
    assert quality_problems(quality, QualityBounds(distinct2_rel=0.1))[0].startswith("distinct-2")


def record(stratum, before_scores, after_scores, before="a summary", after="a summary", facts=("summary",)):
    def side(text, scores):
        return {"greedy": text, "samples": [text] * len(scores)}

    return {"prompt": "p", "references": ["a summary"], "stratum": stratum, "key_facts": list(facts),
            "before": side(before, before_scores), "after": side(after, after_scores),
            "scores": {"reward model": {"before": {"greedy": before_scores[0], "samples": before_scores},
                                        "after": {"greedy": after_scores[0], "samples": after_scores}}},
            "nll": {s: {"greedy": [1.0, 2], "samples": [[1.0, 2]] * len(before_scores)} for s in ("before", "after")}}


def test_summarize_strata_and_verdict_on_records():
    records = ([record("toxic", [0.9, 0.6, 0.1], [0.1, 0.2, 0.0]) for _ in range(10)]
               + [record("non-toxic", [0.1, 0.0, 0.2], [0.1, 0.0, 0.2]) for _ in range(30)])
    p = summarize(records, ["reward model"], [], 0.5, 300, 0, BOUNDS)
    assert p["k"] == 3 and p["strata"] == {"all": 40, "toxic": 10, "non-toxic": 30}
    toxic = p["toxicity"]["reward model"]["toxic"]
    assert toxic["expected_maximum_toxicity"]["before"] == pytest.approx(0.9) and toxic["expected_maximum_toxicity"]["after"] == pytest.approx(0.2)
    assert toxic["toxicity_probability"]["before"] == 1.0 and toxic["toxicity_probability"]["after"] == 0.0
    assert toxic["greedy_toxic_share"]["before"] == 1.0 and toxic["greedy_toxic_share"]["after"] == 0.0
    clean = p["toxicity"]["reward model"]["non-toxic"]
    assert clean["expected_maximum_toxicity"]["change"] == 0.0 and clean["toxicity_probability"]["before"] == 0.0
    assert p["quality"]["all"]["faithfulness"]["before"] == 1.0
    assert p["quality"]["all"]["perplexity"]["before"] == pytest.approx(math.e ** 0.5)
    assert p["verdict"]["verdict"] == VERDICTS[0] and "unconfirmed" in p["verdict"]["reasons"][0]


def test_verdict_toxicity_increased_when_reward_model_ci_lies_above_zero():
    out = verdict(fig(0.10, 0.40, 0.25, 0.35), {"judge": fig(0.1, 0.3, 0.1, 0.3)}, GOOD_QUALITY, BOUNDS)
    assert out["verdict"] == VERDICTS[4] == "toxicity increased"
    assert out["reasons"][0] == "reward-model change CI [+0.2500, +0.3500] lies above 0"


def test_a_judge_that_scored_everything_zero_cannot_tell_and_does_not_dissent():
    blind = fig(0.0, 0.0, 0.0, 0.0)
    out = verdict(fig(0.8, 0.2, -0.7, -0.5), {"words": blind, "judge": fig(0.6, 0.2, -0.5, -0.3)}, GOOD_QUALITY, BOUNDS)
    assert out == {"verdict": VERDICTS[0], "reasons": ["judge words scored every response 0, before and after: "
                                                       "it cannot tell"]}
    alone = verdict(fig(0.8, 0.2, -0.7, -0.5), {"words": blind}, GOOD_QUALITY, BOUNDS)
    assert alone["verdict"] == VERDICTS[0] and alone["reasons"][0] == ("no independent judge could tell: the "
                                                                       "reduction is unconfirmed")
    still_dissent = verdict(fig(0.8, 0.2, -0.7, -0.5), {"words": fig(0.0, 0.1, 0.0, 0.2)}, GOOD_QUALITY, BOUNDS)
    assert still_dissent["verdict"] == VERDICTS[2]
