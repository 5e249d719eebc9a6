"""DPO and IPO in the RL loop: the same update, checkpoints, resume and logs as PPO, RLOO and
GRPO (:class:`rlhf.rl.trainer.RLTrainer`), with a step's rows read from preference pairs
(:mod:`rlhf.pairs`) instead of sampled: each prompt's group is its (chosen, rejected) pair, so the
encoder runs once per prompt for both, and the reference's logprobs come from the same no-grad
pass as PPO's (the SFT model: the policy's adapter disabled). The loss is
:class:`rlhf.rl.algorithms.Preference`'s."""

from __future__ import annotations

import torch

from rlhf.errors import UserError
from rlhf.pairs import Pair
from rlhf.rl.trainer import RLTrainer, Timer
from rlhf.seq2seq import Queries, encode_queries, encode_responses, encoder_states


class PreferenceTrainer(RLTrainer):
    def __init__(self, policy, tokenizer, scorer, pairs: list[Pair], cfg, **kwargs):
        if cfg.algorithm not in ("dpo", "ipo"):
            raise ValueError(f"PreferenceTrainer trains dpo or ipo, not {cfg.algorithm}")
        if not pairs:
            raise UserError(f"rl.algorithm {cfg.algorithm}: no preference pairs to train on (rl.pairs: the "
                            f"samples gave no clean and toxic response to one prompt; try a larger rl.pairs.k "
                            f"or n_prompts, or a smaller rl.pairs.margin)")
        super().__init__(policy, tokenizer, scorer, [p.prompt for p in pairs], cfg, **kwargs)
        self.pairs = pairs

    def rollouts(self, step: int, timer: Timer) -> tuple[Queries, torch.Tensor, torch.Tensor, torch.Tensor,
                                                         torch.Tensor]:
        """This process's pairs of step ``step`` (``rl.batch_size`` / 2 of them, drawn as the online
        methods draw prompts) -> (queries [P, S], encoder states [P, S, d], responses [2P, T]: rows
        2i and 2i + 1 are pair i's chosen and rejected, response mask [2P, T], the pairs' rewards
        [2P] as the reward model gave them when the pairs were made)."""
        pairs = [self.pairs[i] for i in self.batch_indices(step)]
        device = self.accelerator.device
        queries = encode_queries(self.tokenizer, [p.prompt for p in pairs], self.max_input_length, device)
        with timer("encode"), self.accelerator.autocast():
            states = encoder_states(self.policy.lm, queries, max(1, self.cfg.mini_batch_size // 2))
        texts = [t for p in pairs for t in (p.chosen, p.rejected)]
        responses, mask = encode_responses(self.tokenizer, texts, self.cfg.max_new_tokens, device)
        scores = torch.tensor([r for p in pairs for r in (p.chosen_reward, p.rejected_reward)], device=device)
        return queries, states, responses, mask, scores
