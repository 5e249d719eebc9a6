"""Process-wide settings for where and how tensors are computed."""

from __future__ import annotations

import torch


def use_cpu() -> bool:
    """True when no GPU is visible: the stages then run on the CPU, and under ``torchrun``
    accelerate / the Trainer form a MULTI_CPU group over gloo."""
    return not torch.cuda.is_available()


def flush_denormals() -> bool:
    """Treat subnormal floats (|x| < 1.2e-38) as zero on x86 CPUs (FTZ + DAZ).

    A matmul with subnormal inputs runs about 200x slower on these CPUs (2.1 s vs 10 ms for 1024^2,
    benchmarks/RESULTS.md), and PPO's backward pass through a 32k-way softmax produces them. The
    setting is per thread and worker threads copy it when they are created, so call this at
    process start, before the first parallel torch op. Returns False where unsupported.
    """
    return torch.set_flush_denormal(True)
