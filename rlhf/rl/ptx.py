"""PPO-ptx: supervised (dialogue, summary) pairs mixed into every PPO update.

InstructGPT (Ouyang et al. 2022, arXiv:2203.02155, eq. 2) adds gamma * E_{x ~ D_pretrain}[log pi(x)]
to the PPO objective so that the policy keeps the skills its reward does not pay for. Here the
pairs are the SFT data the policy was fine-tuned on, so the term is the SFT loss: it holds the
summaries of prompts where the reward is flat (clean dialogues) near their references while PPO
moves the others. With ``data.toxic_column`` only the pairs not marked toxic are used: the
references of abusive dialogues repeat the abuse, and imitating them is what PPO is undoing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf.errors import UserError
from rlhf.rl.sampling import stream
from rlhf.seq2seq import Queries, encode_queries


@dataclass
class PtxBatch:
    """Supervised pairs, tokenized: queries [B, S]; ``targets`` [B, T] right-padded summary ids
    (EOS included); ``target_mask`` bool [B, T], True = a real target token."""

    queries: Queries
    targets: torch.Tensor
    target_mask: torch.Tensor


@dataclass
class PtxPairs:
    """The (prompt, summary) pairs PPO-ptx draws from; summaries cut to ``max_target_length`` tokens
    (the SFT stage's ``sft.max_target_length``)."""

    prompts: list[str]
    summaries: list[str]
    max_target_length: int

    def __len__(self) -> int:
        return len(self.prompts)

    def indices(self, draw: int, size: int, seed: int) -> list[int]:
        """Pair indices of the ``draw``-th mini-batch of the run (from 0): the next ``size`` of one
        seeded stream over all pairs, so a resumed run draws what an uninterrupted one would."""
        return stream(list(range(len(self))), draw * size, size, seed)

    def encode(self, tokenizer, idx: list[int], max_input_length: int, device) -> PtxBatch:
        queries = encode_queries(tokenizer, [self.prompts[i] for i in idx], max_input_length, device)
        enc = tokenizer(text_target=[self.summaries[i] for i in idx], max_length=self.max_target_length,
                        truncation=True, padding=True, padding_side="right", return_tensors="pt")
        return PtxBatch(queries, enc.input_ids.to(device), enc.attention_mask.to(device).bool())


def ptx_pairs(prompts: list[str], summaries: list[str], toxic: list[bool] | None, coef: float,
              max_target_length: int) -> PtxPairs:
    """The pairs of the training split that ``rl.ptx_coef`` mixes in: all of them, or with toxic
    flags only the clean ones; one line naming the key if none is left."""
    keep = [i for i in range(len(prompts)) if toxic is None or not toxic[i]]
    if not keep:
        raise UserError(f"config key 'rl.ptx_coef': value {coef} needs training pairs not marked toxic, but all "
                        f"{len(prompts)} are (data.toxic_column)")
    return PtxPairs([prompts[i] for i in keep], [summaries[i] for i in keep], max_target_length)


def pad_cat(a: torch.Tensor, b: torch.Tensor, value=0) -> torch.Tensor:
    """Rows of ``a`` [Ba, La, ...] then ``b`` [Bb, Lb, ...], right-padded with ``value`` to the longer
    of La, Lb: one forward serves the PPO mini-batch and the ptx pairs (one graph, one backward, so
    DDP reduces once)."""
    width = max(a.shape[1], b.shape[1])

    def pad(x: torch.Tensor) -> torch.Tensor:
        extra = x.new_full((x.shape[0], width - x.shape[1], *x.shape[2:]), value)
        return torch.cat([x, extra], dim=1)

    return torch.cat([pad(a), pad(b)], dim=0)
