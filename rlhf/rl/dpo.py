"""Offline preference optimisation on (prompt, chosen, rejected) pairs, no sampling while training:
DPO (Rafailov et al. 2023, "Direct Preference Optimization", arXiv:2305.18290, eq. 7) and IPO
(Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
Preferences", arXiv:2310.12036, eq. 17), each optionally with RPO's negative log-likelihood of the
chosen response (Pang et al. 2024, "Iterative Reasoning Preference Optimization", arXiv:2404.19733,
eq. 1-3). Inputs are whole-response log-probabilities [B] (the sum
over the response's tokens) under the policy and under the reference (the SFT model: the policy's
adapter disabled).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def preference_margin(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                      ref_rejected: torch.Tensor) -> torch.Tensor:
    """[B] h = log(pi(y_w) / pi_ref(y_w)) - log(pi(y_l) / pi_ref(y_l)): how much more the policy than
    the reference prefers the chosen response y_w to the rejected y_l (both papers' h_pi)."""
    return (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)


def dpo_loss(margin: torch.Tensor, beta: float) -> torch.Tensor:
    """[B] -log sigmoid(beta x h) (DPO, eq. 7): the Bradley-Terry likelihood of the pair under the
    implicit reward beta x log(pi / pi_ref)."""
    return -F.logsigmoid(beta * margin)


def ipo_loss(margin: torch.Tensor, beta: float) -> torch.Tensor:
    """[B] (h - 1 / (2 beta))^2 (IPO, eq. 17 with tau = beta): a squared loss that drives h to a fixed
    target instead of to infinity, so the policy cannot run off from the reference however
    deterministic the preferences."""
    return (margin - 1.0 / (2.0 * beta)) ** 2


def implicit_rewards(policy_logprobs: torch.Tensor, ref_logprobs: torch.Tensor, beta: float) -> torch.Tensor:
    """[B] beta x log(pi(y) / pi_ref(y)): DPO's implicit reward of a response (sec. 5)."""
    return beta * (policy_logprobs - ref_logprobs)


def chosen_nll(chosen_logprobs: torch.Tensor, chosen_lengths: torch.Tensor) -> torch.Tensor:
    """[B] -log pi(y_w) / |y_w|: the chosen response's negative log-likelihood per token (RPO, eq. 2,
    with the response's length as the normaliser; the prompt is the encoder's input, not scored).
    Added to the pair loss with weight alpha (eq. 3), it holds up the likelihood of the chosen,
    which DPO alone may let fall together with the rejected's."""
    return -chosen_logprobs / chosen_lengths.clamp(min=1)
