"""Process-wide settings for where and how tensors are computed."""

from __future__ import annotations

import threading

import psutil
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

    Opt-in (``RLHF_FLUSH_DENORMALS=1`` for the CLI; the benchmark sets it): it changes results
    where training meets subnormals; the tiny world's pre-training, for one, converges elsewhere
    with it (base ROUGE-L 0.037 instead of 0.081).
    """
    return torch.set_flush_denormal(True)


def rss_mib() -> float:
    """This process's resident memory now, in MiB."""
    return psutil.Process().memory_info().rss / 2**20


class PeakRss:
    """Peak resident memory of this process while the block runs (sampled every 50 ms), in MiB.

    On CUDA the peak allocated GPU memory is reported instead.
    """

    def __enter__(self):
        self.peak = psutil.Process().memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread.start()
        return self

    def _sample(self):
        proc = psutil.Process()
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        if torch.cuda.is_available():
            self.mib = torch.cuda.max_memory_allocated() / 2**20
        else:
            self.mib = self.peak / 2**20
