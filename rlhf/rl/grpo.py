"""GRPO's maths: advantages normalised within each group of k responses to one prompt, no value
head (Shao et al. 2024, "DeepSeekMath", arXiv:2402.03300, sec. 4.1.2: outcome supervision,
A_i = (r_i - mean(r)) / std(r)), and Dr. GRPO's fix (Liu et al. 2025, "Understanding R1-Zero-Like
Training: A Critical Perspective", arXiv:2503.20783, sec. 3.2: no division by the std, whose
question-level weighting biases the update). The clipped token-level loss with GRPO's KL term and
its length normalisers is :func:`rlhf.rl.objectives.policy_loss`.

Rows of a batch come in groups: rows ``i * k .. i * k + k - 1`` are the k responses to prompt i.
"""

from __future__ import annotations

import torch

EPS = 1e-4  # in the std's denominator: a group whose rewards are all equal gets advantage 0, not 0 / 0


def group_advantages(scores: torch.Tensor, k: int, scale: bool = True) -> torch.Tensor:
    """[B] scores, B = groups x ``k`` -> [B] advantages r_i - mean(group), divided by the group's
    standard deviation (Bessel-corrected) + :data:`EPS` when ``scale`` (GRPO), not (Dr. GRPO)."""
    if k < 2:
        raise ValueError(f"group-normalised advantages need k >= 2 responses per prompt, got {k}")
    groups = scores.float().view(-1, k)
    centred = groups - groups.mean(-1, keepdim=True)
    if scale:
        centred = centred / (groups.std(-1, keepdim=True) + EPS)
    return centred.reshape(-1)
