"""Run the ``rlhf`` CLI in a process that kills itself with SIGKILL at a chosen point (a crash, a
power cut, the OOM killer): ``python tests/pipelines/fault_runner.py FAULT N rlhf-args...``.

FAULT names the call to die in and N which call of it; see :data:`FAULTS`. Used by test_faults.py.
"""

from __future__ import annotations

import os
import signal
import sys


def die_on_call(owner, name: str, n: int, first=None) -> None:
    """Replace ``owner.name`` so that its ``n``-th call runs ``first`` (if given) and then kills the process."""
    original = getattr(owner, name)
    calls = [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            if first is not None:
                first(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


def _empty_file(obj, path, *args, **kwargs):
    open(path, "wb").close()  # the file exists, at 0 bytes, when the process dies


def install(fault: str, n: int) -> None:
    import torch
    import transformers

    import rlhf.rl.objectives

    faults = {
        # PPO: inside the n-th mini-batch update (mid-step)
        "ppo_update": lambda: die_on_call(rlhf.rl.objectives, "policy_loss", n),
        # PPO: inside the n-th checkpoint write, weights written, before optimizer.pt
        "ppo_checkpoint": lambda: die_on_call(torch, "save", n),
        # PPO: the same with optimizer.pt created at 0 bytes
        "ppo_checkpoint_empty_file": lambda: die_on_call(torch, "save", n, first=_empty_file),
        # SFT: at the start of the n-th training step
        "sft_step": lambda: die_on_call(transformers.Trainer, "training_step", n),
        # SFT: inside the n-th Trainer checkpoint, model written, before optimizer / scheduler / RNG / state
        "sft_checkpoint": lambda: die_on_call(transformers.Trainer, "_save_optimizer_and_scheduler", n),
    }
    faults[fault]()


if __name__ == "__main__":
    install(sys.argv[1], int(sys.argv[2]))
    from rlhf.cli import main

    sys.exit(main(sys.argv[3:]))
