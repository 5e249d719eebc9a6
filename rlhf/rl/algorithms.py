"""What PPO, RLOO and GRPO each add to the one RL loop (:mod:`rlhf.rl.trainer`): the targets of a
step's rollouts (advantages, and returns for PPO's critic) and the loss of an update mini-batch.
The maths are the pure functions of :mod:`rlhf.rl.ppo`, :mod:`rlhf.rl.rloo`, :mod:`rlhf.rl.grpo`
and :mod:`rlhf.rl.objectives`; every method shares the sampling, scoring, update plan,
checkpoints and PPO-ptx of the loop.

Shapes: B rollouts in groups of k (``rl.group_size``; rows ``i * k .. i * k + k - 1`` answer prompt
i), T response tokens, ``mask`` [B, T] True on a real response token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from rlhf.config import RlConfig
from rlhf.rl import dpo, grpo, ppo, rloo
from rlhf.rl.objectives import kl_penalty, policy_loss
from rlhf.seq2seq import masked_mean


@dataclass
class Targets:
    """What the update needs besides the rollouts: ``advantages`` [B, T] (PPO, GRPO) or [B] (RLOO),
    ``returns`` [B, T] for PPO's value head, and the per-token ``kl`` [B, T] the step reports."""

    advantages: torch.Tensor
    returns: torch.Tensor | None
    kl: torch.Tensor


@dataclass
class MiniBatch:
    """The rollouts of one update mini-batch, as the no-grad pass saw them."""

    old_logprobs: torch.Tensor        # [b, T]
    ref_logprobs: torch.Tensor        # [b, T]
    old_values: torch.Tensor | None   # [b, T]
    advantages: torch.Tensor          # [b, T] or [b]
    returns: torch.Tensor | None      # [b, T]
    mask: torch.Tensor                # [b, T]


class PPO:
    """PPO with a value head (Ouyang et al. 2022, as lm-human-preferences): KL-shaped per-token
    rewards, GAE, whitened advantages, clipped policy and value losses."""

    value_head = True
    kl_in_reward = True
    samples = True  # its rows are the policy's samples (so their KL to the reference is the policy's)

    def __init__(self, cfg: RlConfig):
        self.cfg = cfg

    def targets(self, scores, logprobs, ref_logprobs, values, mask, kl_coef: float,
                sum_over_processes: Callable | None = None) -> Targets:
        c = self.cfg.ppo
        rewards, kl = ppo.compute_rewards(scores, logprobs, ref_logprobs, mask, kl_coef, self.cfg.kl.estimator)
        advantages, returns = ppo.gae(rewards, values, mask, c.gamma, c.lam)
        if c.whiten_advantages:  # over every process's tokens, as one process with the whole batch
            advantages = ppo.masked_whiten(advantages, mask, sum_over_processes=sum_over_processes)
        return Targets(advantages, returns, kl)

    def loss(self, logprobs, values, mb: MiniBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pg_loss, pg = policy_loss(logprobs, mb.old_logprobs, mb.advantages, mb.mask, self.cfg.cliprange)
        vf_loss, vf = ppo.value_loss(values, mb.old_values, mb.returns, mb.mask, self.cfg.ppo.cliprange_value)
        return pg_loss + self.cfg.ppo.vf_coef * vf_loss, {
            "loss/policy": pg_loss, "loss/value": vf_loss, "policy/clipfrac": pg["clipfrac"],
            "policy/approxkl": pg["approxkl"], "value/clipfrac": vf["clipfrac"]}


class RLOO:
    """RLOO (Ahmadian et al. 2024): the whole response's reward (score minus the KL to the reference)
    against the leave-one-out mean of its group, REINFORCE on the response's log-probability (a
    sequence-level ratio, clipped when a step makes several passes)."""

    value_head = False
    kl_in_reward = True
    samples = True

    def __init__(self, cfg: RlConfig):
        self.cfg = cfg

    def targets(self, scores, logprobs, ref_logprobs, values, mask, kl_coef: float,
                sum_over_processes: Callable | None = None) -> Targets:
        rewards, kl = rloo.sequence_rewards(scores, logprobs, ref_logprobs, mask, kl_coef, self.cfg.kl.estimator)
        return Targets(rloo.leave_one_out_advantages(rewards, self.cfg.group_size), None, kl)

    def loss(self, logprobs, values, mb: MiniBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, pg = policy_loss(logprobs, mb.old_logprobs, mb.advantages, mb.mask, self.cfg.cliprange, level="sequence")
        return loss, {"loss/policy": loss, "policy/clipfrac": pg["clipfrac"], "policy/approxkl": pg["approxkl"]}


class GRPO:
    """GRPO (Shao et al. 2024) and Dr. GRPO (Liu et al. 2025): the score against its group's mean
    (over the group's std unless ``rl.grpo.scale_rewards`` is off), a clipped ratio per token, and the
    k3 KL to the reference as a loss term, normalised per response or by a constant."""

    value_head = False
    kl_in_reward = False
    samples = True

    def __init__(self, cfg: RlConfig):
        self.cfg = cfg

    def targets(self, scores, logprobs, ref_logprobs, values, mask, kl_coef: float,
                sum_over_processes: Callable | None = None) -> Targets:
        advantages = grpo.group_advantages(scores, self.cfg.group_size, self.cfg.grpo.scale_rewards)
        kl = kl_penalty(logprobs, ref_logprobs, "k3") * mask
        return Targets(advantages.unsqueeze(-1).expand_as(logprobs) * mask, None, kl)

    def loss(self, logprobs, values, mb: MiniBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        g = self.cfg.grpo
        kl = kl_penalty(logprobs, mb.ref_logprobs, "k3")
        loss, pg = policy_loss(logprobs, mb.old_logprobs, mb.advantages, mb.mask, self.cfg.cliprange,
                               normaliser=g.length_normaliser, max_tokens=self.cfg.max_new_tokens, kl=kl,
                               kl_coef=g.kl_coef)
        return loss, {"loss/policy": loss, "loss/kl": masked_mean(kl.detach(), mb.mask),
                      "policy/clipfrac": pg["clipfrac"], "policy/approxkl": pg["approxkl"]}


class Preference:
    """DPO (Rafailov et al. 2023) or IPO (Azar et al. 2023) on preference pairs, offline: each
    prompt's two rows are its chosen and rejected response (a group of 2), their whole-response
    logprobs under the policy against the reference's (:mod:`rlhf.rl.dpo`). No advantages, no
    reward in the loop, and no KL reported while training (the rows are the pairs', not the
    policy's samples: the evaluate stage measures the policy's KL)."""

    value_head = False
    kl_in_reward = False
    samples = False

    def __init__(self, cfg: RlConfig):
        self.cfg = cfg
        self.loss_fn = dpo.ipo_loss if cfg.algorithm == "ipo" else dpo.dpo_loss

    def targets(self, scores, logprobs, ref_logprobs, values, mask, kl_coef: float,
                sum_over_processes: Callable | None = None) -> Targets:
        return Targets(torch.zeros(len(scores), device=logprobs.device), None, (logprobs - ref_logprobs) * mask)

    def loss(self, logprobs, values, mb: MiniBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        beta = self.cfg.preference.beta
        seq = (logprobs * mb.mask).sum(-1).view(-1, 2)  # [pairs, (chosen, rejected)]
        ref = (mb.ref_logprobs * mb.mask).sum(-1).view(-1, 2)
        margin = dpo.preference_margin(seq[:, 0], seq[:, 1], ref[:, 0], ref[:, 1])
        pair_loss = self.loss_fn(margin, beta).mean()
        lengths = mb.mask.sum(-1).view(-1, 2).to(seq.dtype)
        nll = dpo.chosen_nll(seq[:, 0], lengths[:, 0]).mean()
        loss = pair_loss + self.cfg.preference.nll_coef * nll if self.cfg.preference.nll_coef else pair_loss
        rewards = dpo.implicit_rewards(seq.detach(), ref, beta)
        return loss, {"loss/policy": loss, "loss/pair": pair_loss.detach(), "loss/chosen_nll": nll.detach(),
                      "preference/accuracy": (margin.detach() > 0).float().mean(),
                      "preference/margin": margin.detach().mean(), "preference/reward_chosen": rewards[:, 0].mean(),
                      "preference/reward_rejected": rewards[:, 1].mean()}


ALGORITHMS = {"ppo": PPO, "rloo": RLOO, "grpo": GRPO, "dpo": Preference, "ipo": Preference}


def make_algorithm(cfg: RlConfig):
    return ALGORITHMS[cfg.algorithm](cfg)
