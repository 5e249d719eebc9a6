"""What the processes of a multi-process PPO run (accelerate: DDP, DeepSpeed) must share, and what
each keeps for itself.

Shared: the plan of an update. DDP reduces gradients inside every backward, so every process must
run as many mini-batch passes, and an accumulation of gradients must end within the update that
made them (:func:`check_update_plan`). Their own: the random generators. Each process samples its
share of the prompts with its own noise (``seed + rank``), and a checkpoint keeps every process's
CPU and CUDA generator states, so that a resume draws what the run would have drawn
(:func:`generator_states`, :func:`restore_generators`). One process is the special case
``world == 1``: nothing here changes what it does.
"""

from __future__ import annotations

import torch

from rlhf.config import PpoConfig
from rlhf.errors import UserError


def mini_batch_per_process(cfg: PpoConfig, world: int) -> int:
    """Rollouts in each process's share of a mini-batch (at least one)."""
    return max(1, cfg.mini_batch_size // world)


def minibatches_per_update(cfg: PpoConfig, world: int) -> int:
    """Mini-batch passes of one update on each process: ``ppo_epochs`` x its rollouts per mini-batch."""
    return cfg.ppo_epochs * -(-(cfg.batch_size // world) // mini_batch_per_process(cfg, world))


def check_update_plan(cfg: PpoConfig, world: int) -> None:
    """One line naming the key when the processes' updates could differ, or gradients outlive
    the update whose rollouts made them."""
    if cfg.batch_size % world:
        raise UserError(f"config key 'ppo.batch_size': {cfg.batch_size} rollouts do not split evenly over {world} "
                        f"processes (each must run as many mini-batch passes)")
    accumulate = cfg.gradient_accumulation_steps
    if accumulate > 1:
        n = minibatches_per_update(cfg, world)
        if n % accumulate:
            raise UserError(f"config key 'ppo.gradient_accumulation_steps': {accumulate} does not divide the {n} "
                            f"mini-batch passes of an update: the last ones' gradients would be applied in the next "
                            f"step, to its rollouts")
        if cfg.target_kl is not None:
            raise UserError(f"config key 'ppo.target_kl': an early stop would leave gradients accumulated "
                            f"(ppo.gradient_accumulation_steps {accumulate}) for the next step; set one of them")


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
