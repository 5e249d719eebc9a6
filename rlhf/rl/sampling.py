"""Which training prompts each PPO step rolls out: pure functions of the step, so a resumed run
draws exactly the batches an uninterrupted one would."""

from __future__ import annotations

import torch


def stream(pool: list[int], start: int, count: int, seed: int) -> list[int]:
    """Positions ``start .. start + count`` of an endless stream over ``pool``: one seeded
    permutation per pass, so every item comes once per pass (epoch) before any comes twice."""
    out, perms = [], {}
    for pos in range(start, start + count):
        epoch, offset = divmod(pos, len(pool))
        if epoch not in perms:
            perms[epoch] = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        out.append(pool[int(perms[epoch][offset])])
    return out


def batch_indices(n_prompts: int, batch_size: int, step: int, seed: int,
                  toxic: list[bool] | None = None, n_toxic: int | None = None) -> list[int]:
    """Prompt indices of step ``step`` (from 0), ``batch_size`` of them.

    Without ``n_toxic``: the next ``batch_size`` of one stream over all prompts. With it
    (``rl.toxic_share``), every batch holds exactly ``n_toxic`` prompts from the stream over the
    toxic ones (``toxic[i]`` True) and the rest from the stream over the clean ones, in a seeded order (so that each
    process's ``[rank::world]`` share mixes both). Oversampling the rare stratum, as detoxification
    RL trains on challenging prompts, puts more of each step's learning signal where the reward
    varies, and fewer updates where it is flat and only noise moves the policy.
    """
    if n_toxic is None:
        return stream(list(range(n_prompts)), step * batch_size, batch_size, seed)
    pools = [i for i in range(n_prompts) if toxic[i]], [i for i in range(n_prompts) if not toxic[i]]
    picked = (stream(pools[0], step * n_toxic, n_toxic, seed)
              + stream(pools[1], step * (batch_size - n_toxic), batch_size - n_toxic, seed + 1))
    order = torch.randperm(batch_size, generator=torch.Generator().manual_seed(seed * 1000 + 999_983 + step))
    return [picked[int(i)] for i in order]
