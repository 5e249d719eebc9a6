"""PPO's maths (Schulman et al. 2017, arXiv:1707.06347) as in lm-human-preferences
(``lm_human_preferences/train_policy.py``): per-token KL-shaped rewards, GAE, whitening and the
clipped value loss. The clipped policy loss and the KL estimators it shares with the critic-free
methods are in :mod:`rlhf.rl.objectives`. Shapes: B rollouts, T response tokens;
``response_mask`` [B, T] is True on a real response token (up to and including EOS).

References: Ziegler et al. 2019 (arXiv:1909.08593), Schulman et al. 2016 (GAE, arXiv:1506.02438),
Huang et al. 2024 "The N+ implementation details of RLHF with PPO" (arXiv:2403.17031).
"""

from __future__ import annotations

from typing import Callable, Literal

import torch

from rlhf.rl.objectives import kl_penalty
from rlhf.seq2seq import masked_mean


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  sum_over_processes: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """[B, T] -> [B, T]: (x - mean) / std over real tokens; padding positions come back as 0.

    lm-human-preferences ``whiten``; with ``shift_mean=False`` the mean is added back (used for rewards).
    ``sum_over_processes``: sums a scalar tensor over every process, so that the mean and variance
    are those of all processes' tokens together, as one process holding the whole batch would
    compute them (None: this process's tokens).
    """
    total = sum_over_processes or (lambda t: t)
    m = mask.to(x.dtype)
    n = total(m.sum())
    mean = total((x * m).sum()) / n.clamp(min=1)  # as masked_mean; the variance Bessel-corrected
    var = total(((x - mean) ** 2 * m).sum()) / n.clamp(min=1) * n / (n - 1).clamp(min=1)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def last_token_index(response_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] bool -> [B]: index of each row's last real token (0 for an empty row)."""
    lengths = response_mask.long().sum(-1)
    return (lengths - 1).clamp(min=0)


def compute_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                    response_mask: torch.Tensor, kl_coef: float,
                    estimator: Literal["k1", "k3"] = "k1") -> tuple[torch.Tensor, torch.Tensor]:
    """KL-shaped rewards [B, T] and the per-token KL [B, T].

    r_t = -kl_coef * kl_t on every real token, plus the score on the last real token
    (Ziegler et al. 2019 eq. 2; lm-human-preferences ``train_policy.py`` rewards = -kl_coef * kl,
    rewards[:, -1] += scores). Padding positions are 0.
    """
    kl = kl_penalty(logprobs, ref_logprobs, estimator) * response_mask
    rewards = -kl_coef * kl
    rows = torch.arange(scores.shape[0], device=scores.device)
    rewards[rows, last_token_index(response_mask)] += scores.to(rewards.dtype)
    return rewards * response_mask, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16) -> (advantages, returns), [B, T].

    delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}, with V and A zero
    past the last real token; returns = A + V (lm-human-preferences ``compute_advantages``).
    """
    mask = response_mask.to(values.dtype)
    values = values * mask
    next_value = torch.zeros_like(values[:, 0])
    next_adv = torch.zeros_like(values[:, 0])
    advantages = torch.zeros_like(values)
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * mask[:, t]
        advantages[:, t] = next_adv
        next_value = values[:, t]
    returns = advantages + values
    return advantages, returns


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, response_mask: torch.Tensor,
               cliprange_value: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss: 0.5 * max((V - R)^2, (clip(V, V_old +- c) - R)^2), mean over real tokens
    (lm-human-preferences ``train_policy.py`` vf_losses)."""
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    losses = torch.max((values - returns) ** 2, (clipped - returns) ** 2)
    loss = 0.5 * masked_mean(losses, response_mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean(((clipped - returns) ** 2 > (values - returns) ** 2).float(), response_mask)}
    return loss, stats
