"""RLOO's maths: REINFORCE with a leave-one-out baseline over the k responses sampled for the same
prompt (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for
Learning from Human Feedback in LLMs", arXiv:2402.14740, sec. 3.2 eq. 5; Kool et al. 2019). No
value head: each response's baseline is the mean reward of the other k - 1 of its group.

Rows of a batch come in groups: rows ``i * k .. i * k + k - 1`` are the k responses to prompt i.
"""

from __future__ import annotations

import torch

from rlhf.rl.objectives import kl_penalty


def sequence_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                     response_mask: torch.Tensor, kl_coef: float, estimator: str = "k1") -> tuple[torch.Tensor,
                                                                                                  torch.Tensor]:
    """([B] rewards, [B, T] per-token KL): the whole response's reward R = score - kl_coef x sum_t KL_t,
    the KL to the reference in the reward as RLOO has it (Ahmadian et al. 2024, eq. 1)."""
    kl = kl_penalty(logprobs, ref_logprobs, estimator) * response_mask
    return scores.to(kl.dtype) - kl_coef * kl.sum(-1), kl


def leave_one_out_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """[B] rewards, B = groups x ``k`` -> [B] advantages R_i - b_i, with the baseline
    b_i = (sum_j R_j - R_i) / (k - 1) over the other responses of i's group (eq. 5)."""
    if k < 2:
        raise ValueError(f"a leave-one-out baseline needs k >= 2 responses per prompt, got {k}")
    groups = rewards.view(-1, k)
    baseline = (groups.sum(-1, keepdim=True) - groups) / (k - 1)
    return (groups - baseline).reshape(-1)
