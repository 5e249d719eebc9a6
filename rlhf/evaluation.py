"""Before/after statistics: toxicity summaries, paired differences with bootstrap intervals, KL."""

from __future__ import annotations

import random
from statistics import mean, median, pstdev

import torch

from rlhf.ppo.core import logprobs_from_logits
from rlhf.ppo.rollout import decoder_inputs, encode_queries, response_mask_from


def summary(values: list[float], threshold: float) -> dict[str, float]:
    """Mean, std, median and share at or above ``threshold`` of toxicity scores."""
    return {"mean": mean(values), "std": pstdev(values), "median": median(values),
            "share_toxic": mean(v >= threshold for v in values)}


def bootstrap_ci(diffs: list[float], resamples: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval (Efron & Tibshirani 1993, ch. 13) for the mean of ``diffs``."""
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    lo = means[int((1 - level) / 2 * resamples)]
    hi = means[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return lo, hi


def paired_change(before: list[float], after: list[float], resamples: int, seed: int) -> dict:
    """after - before per prompt (negative = less toxic), its bootstrap 95% CI, and the
    percentage improvement of the mean and of the std (positive = better), as the lab printed."""
    diffs = [a - b for a, b in zip(after, before)]
    lo, hi = bootstrap_ci(diffs, resamples, seed)
    mb, ma, sb, sa = mean(before), mean(after), pstdev(before), pstdev(after)
    return {"mean_change": mean(diffs), "change_ci95": [lo, hi],
            "improvement_pct": 100.0 * (mb - ma) / mb if mb else 0.0,
            "std_improvement_pct": 100.0 * (sb - sa) / sb if sb else 0.0}


@torch.no_grad()
def response_logprobs(lm, tokenizer, prompts: list[str], responses: list[str], max_input: int,
                      batch_size: int) -> list[torch.Tensor]:
    """Per-token logprobs of each response (tokenised, EOS included) under ``lm`` given its prompt."""
    start = lm.config.decoder_start_token_id
    out = []
    for i in range(0, len(prompts), batch_size):
        q = encode_queries(tokenizer, prompts[i:i + batch_size], max_input)
        r = tokenizer(responses[i:i + batch_size], return_tensors="pt", padding=True, padding_side="right").input_ids
        mask = response_mask_from(r, tokenizer.eos_token_id)
        logits = lm(input_ids=q.input_ids, attention_mask=q.attention_mask, decoder_input_ids=decoder_inputs(r, start),
                    use_cache=False).logits
        lp = logprobs_from_logits(logits, r)
        out += [row[m] for row, m in zip(lp, mask)]
    return out


def sequence_kl(after_lp: list[torch.Tensor], before_lp: list[torch.Tensor]) -> float:
    """Mean over responses of sum_t (log p_after - log p_before): the k1 estimate of
    KL(after || before) when the responses were sampled from the after-policy."""
    return mean(float((a - b).sum()) for a, b in zip(after_lp, before_lp))
