"""What each process of a multi-process PPO run (accelerate: DDP, DeepSpeed) keeps for itself: its
random generators. Each process samples its share of the prompts with its own noise
(``seed + rank``), and a checkpoint keeps every process's CPU and CUDA generator states, so that a
resume draws what the run would have drawn (:func:`generator_states`, :func:`restore_generators`).
What they must share, the plan of an update, is checked by :func:`rlhf.configcheck.check_update_plan`.
One process is the special case ``world == 1``: nothing here changes what it does.
"""

from __future__ import annotations

import torch


def seed_process(seed: int, rank: int) -> None:
    """Processes other than the first draw their own noise (the first keeps the seeded stream)."""
    if rank:
        torch.manual_seed(seed + rank)


def generator_states(rank: int, world: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Every process's generator states (a collective call: every process calls it): ``torch`` and
    ``cuda`` for the first, ``torch.rank1``, ``cuda.rank1`` ... for the others."""
    mine = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(device)
    if world > 1:
        from accelerate.utils import gather_object

        every = gather_object([mine])
    else:
        every = [mine]
    return {(k if r == 0 else f"{k}.rank{r}"): v for r, states in enumerate(every) for k, v in states.items()}


def restore_generators(states: dict[str, torch.Tensor], rank: int, device: torch.device, seed: int) -> None:
    """This process's generators as :func:`generator_states` saved them; a process the checkpoint
    has none for (a resume on more processes) is seeded afresh."""
    suffix = f".rank{rank}" if rank else ""
    if f"torch{suffix}" in states:
        torch.set_rng_state(states[f"torch{suffix}"])
    else:
        torch.manual_seed(seed + rank)
    if device.type == "cuda":
        if f"cuda{suffix}" in states:
            torch.cuda.set_rng_state(states[f"cuda{suffix}"], device)
        else:
            torch.cuda.manual_seed(seed + rank)
