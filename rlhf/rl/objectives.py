"""The maths every RL method here shares: the KL estimators, the clipped policy-gradient loss
(token- or sequence-level ratio, with the normalisers of PPO, GRPO and Dr. GRPO) and PPO-ptx's
supervised term. Shapes: B rollouts, T response tokens; ``response_mask`` [B, T] is True on a real
response token (up to and including EOS).
"""

from __future__ import annotations

from typing import Literal

import torch

from rlhf.seq2seq import logprobs_from_logits, masked_mean


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: Literal["k1", "k3"] = "k1") -> torch.Tensor:
    """Per-token KL estimate [B, T] of the policy from the reference, on tokens sampled from the policy.

    k1 = log p - log q (unbiased, can be negative); k3 = (q/p - 1) - log(q/p) (unbiased, >= 0),
    from J. Schulman, "Approximating KL divergence" (2020).
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}")


Normaliser = Literal["token", "sequence", "constant"]


def normalise(per_token: torch.Tensor, response_mask: torch.Tensor, normaliser: Normaliser,
              max_tokens: int | None = None) -> torch.Tensor:
    """[B, T] per-token losses -> one scalar.

    - ``token``: mean over every real token of the batch (PPO as lm-human-preferences and TRL);
    - ``sequence``: each response's mean over its own tokens, then the mean over responses
      (GRPO, Shao et al. 2024, eq. 3: the 1/|o_i| of each response);
    - ``constant``: the sum over real tokens divided by B x ``max_tokens`` (Dr. GRPO, Liu et al. 2025,
      sec. 3.2: no 1/|o_i|, whose bias favours long wrong and short right answers).
    """
    if normaliser == "token":
        return masked_mean(per_token, response_mask)
    if normaliser == "sequence":
        return masked_mean(per_token, response_mask, dim=-1).mean()
    if normaliser == "constant":
        return (per_token * response_mask).sum() / (per_token.shape[0] * max_tokens)
    raise ValueError(f"unknown normaliser {normaliser!r}")


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                response_mask: torch.Tensor, cliprange: float, level: Literal["token", "sequence"] = "token",
                normaliser: Normaliser = "token", max_tokens: int | None = None,
                kl: torch.Tensor | None = None, kl_coef: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped surrogate (Schulman et al. 2017, eq. 7) as a loss to minimise: per unit,
    max(-A r, -A clip(r, 1 - c, 1 + c)) with r = pi / pi_old.

    ``level`` ``token``: one ratio per token, ``advantages`` [B, T] (PPO, GRPO), the per-token losses
    (plus ``kl_coef`` x ``kl`` [B, T] per token: GRPO's KL term, eq. 3) reduced by ``normaliser``
    (:func:`normalise`). ``sequence``: one ratio per response, r = exp(sum_t log pi - log pi_old), and
    one advantage per response (``advantages`` [B] or its first column), mean over responses: with
    one pass on fresh samples (r = 1) its gradient is REINFORCE's, A * grad sum_t log pi(y_t)
    (RLOO, Ahmadian et al. 2024, eq. 5).

    Stats: ``clipfrac`` (share of units where the clipped term was used) and ``approxkl``
    (0.5 * mean over tokens of (log ratio)^2, as lm-human-preferences reports it).
    """
    log_ratio = logprobs - old_logprobs
    if level == "token":
        ratio = torch.exp(log_ratio)
        unclipped = -advantages * ratio
        clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
        per_token = torch.max(unclipped, clipped)
        if kl is not None:
            per_token = per_token + kl_coef * kl
        loss = normalise(per_token, response_mask, normaliser, max_tokens)
        clip_units, clip_mask = (clipped > unclipped).float(), response_mask
    elif level == "sequence":
        adv = advantages if advantages.dim() == 1 else advantages[:, 0]
        seq_ratio = torch.exp((log_ratio * response_mask).sum(-1))
        unclipped = -adv * seq_ratio
        clipped = -adv * torch.clamp(seq_ratio, 1.0 - cliprange, 1.0 + cliprange)
        loss = torch.max(unclipped, clipped).mean()
        clip_units, clip_mask = (clipped > unclipped).float(), torch.ones_like(adv, dtype=torch.bool)
    else:
        raise ValueError(f"unknown ratio level {level!r}")
    with torch.no_grad():
        stats = {"clipfrac": masked_mean(clip_units, clip_mask),
                 "approxkl": 0.5 * masked_mean(log_ratio ** 2, response_mask)}
    return loss, stats


def sft_loss(logits: torch.Tensor, targets: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """[B, T, V] logits, [B, T] target ids, bool [B, T] (True = real token) -> the mean negative
    log-likelihood of the real target tokens, fp32: PPO-ptx's term (Ouyang et al. 2022, eq. 2,
    gamma * E[log pi(x)] on supervised data) as a loss to minimise."""
    return -masked_mean(logprobs_from_logits(logits, targets), target_mask)
