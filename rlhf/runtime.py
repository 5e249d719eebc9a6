"""Process-wide settings for where and how tensors are computed."""

from __future__ import annotations

import threading

import psutil
import torch


def use_cpu() -> bool:
    """True when no GPU is visible: the stages then run on the CPU, and under ``torchrun``
    accelerate / the Trainer form a MULTI_CPU group over gloo."""
    return not torch.cuda.is_available()


def default_device() -> torch.device:
    """Where a stage puts the models it loads: this process's GPU (``LOCAL_RANK`` under torchrun /
    accelerate launch) when one is visible, else the CPU. Inputs follow the model that consumes them."""
    import os

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(mixed_precision: str):
    """Autocast for inference on :func:`default_device` (``model.mixed_precision``); a no-op for "no".
    Training gets the same through the Trainer's ``bf16``/``fp16`` and accelerate's ``mixed_precision``."""
    return torch.autocast(default_device().type, dtype=AUTOCAST_DTYPES.get(mixed_precision, torch.bfloat16),
                          enabled=mixed_precision in AUTOCAST_DTYPES)


def precision_note(dtype: str, mixed_precision: str) -> str:
    """How a stage's weights and arithmetic are held, in words, for its metrics."""
    if dtype in ("bfloat16", "float16"):
        return f"pure {dtype} weights and optimizer states (no fp32 master weights: model.dtype={dtype})"
    if mixed_precision != "no":
        return f"fp32 master weights, {mixed_precision} autocast compute; logprobs, KL, rewards and losses in fp32"
    return "fp32"


# transformers log lines that are expected here and change nothing, matched exactly (see below).
KNOWN_LOG_LINES = (
    # Loading the best SFT checkpoint of a model with tied embeddings: the tied copies are not stored
    # (safetensors keeps one tensor) and are re-tied on load.
    r"There were missing keys in the checkpoint model loaded: \[('(encoder\.|decoder\.)?embed_tokens\.weight'|"
    r"'lm_head\.weight')(, ('(encoder\.|decoder\.)?embed_tokens\.weight'|'lm_head\.weight'))*\]",
    # Flan-T5 checkpoints carry their own lm_head: it stays untied, which is what the checkpoint means.
    r"The tied weights mapping and config for this model specifies to tie .* but both are present in the checkpoints",
    # The reward classifier's config has no EOS/PAD of its own; the Trainer copies the tokenizer's.
    r"The tokenizer has new PAD/BOS/EOS tokens that differ from the model config",
    # Checkpoint rotation on file systems with coarse timestamps: it orders by step instead.
    r"mtime may not be reliable on this filesystem",
)


class _KnownLogLines:
    """A logging filter that drops :data:`KNOWN_LOG_LINES`."""

    def __init__(self):
        import re

        self.patterns = [re.compile(p) for p in KNOWN_LOG_LINES]

    def filter(self, record) -> bool:
        message = record.getMessage()
        return not any(p.search(message) for p in self.patterns)


def quiet_known_warnings() -> None:
    """The one place for warnings we understand and that say nothing about the user's run:

    - transformers 5 deprecates ``is_gradient_checkpointing``; peft 0.21 still reads it when it wraps
      a model (every LoRA adapter and PeftModel load prints it). Harmless until transformers 6.
    - peft, merging an adapter into a model whose embeddings are untied (Flan-T5), sets
      ``tie_word_embeddings=False`` in its config and says so: that is the checkpoint's truth.
    - the transformers log lines of :data:`KNOWN_LOG_LINES`.
    """
    import warnings

    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"Input and output embeddings are no longer tied after merging")
    for handler in hf_logging.get_logger().handlers:  # the library's root logger (no name), where its handler sits
        if not any(isinstance(f, _KnownLogLines) for f in handler.filters):
            handler.addFilter(_KnownLogLines())


def flush_denormals(on: bool = True) -> bool:
    """Treat subnormal floats (|x| < 1.2e-38) as zero on x86 CPUs (FTZ + DAZ).

    A matmul with subnormal inputs runs about 200x slower on some CPUs (2.1 s vs 10 ms for 1024^2
    on an Intel VM, benchmarks/RESULTS.md), and PPO's backward pass through a 32k-way softmax
    produces them. The setting is per thread and worker threads copy it when they are created, so
    call this at process start, before the first parallel torch op. Returns False where unsupported.

    On by default for the CLI (``RLHF_FLUSH_DENORMALS=0`` opts out) and in the test session. It
    changes the last bits of results where training meets subnormals, so the tiny world's cache
    key records it (:func:`denormals_flushed`).
    """
    return torch.set_flush_denormal(on)


def denormals_flushed() -> bool:
    """Whether this thread flushes subnormals now (1e-30 * 1e-10 = 1e-40 is subnormal in fp32)."""
    return (torch.tensor(1e-30) * 1e-10).item() == 0.0


def compile_unavailable(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot run on ``device`` here (None when it can): inductor needs a C++
    compiler on CPU and Triton on GPUs. A small function with a backward is compiled as a probe."""
    import shutil

    from rlhf.errors import first_line

    if device.type == "cpu" and not any(shutil.which(cc) for cc in ("c++", "g++", "clang++")):
        return "no C++ compiler on PATH"
    if device.type == "cuda":
        import importlib.util

        if importlib.util.find_spec("triton") is None:
            return "Triton is not installed"
    key = str(device)
    if key not in _PROBED:  # the probe compiles (seconds): once per device and process
        try:
            with torch.enable_grad():  # callers may probe from inside no_grad (generation)
                x = torch.ones(4, device=device, requires_grad=True)
                torch.compile(lambda t: (t * 2).sin().sum(), dynamic=False)(x).backward()
            _PROBED[key] = None
        except Exception as err:  # any failure of the toolchain means: run eagerly
            _PROBED[key] = f"{type(err).__name__}: {first_line(err)}"
    return _PROBED[key]


_PROBED: dict[str, str | None] = {}  # device -> what compile_unavailable's probe found


def rss_mib() -> float:
    """This process's resident memory now, in MiB."""
    return psutil.Process().memory_info().rss / 2**20


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``), so that the
    resident memory measured next is what is alive, not what an earlier step left in the allocator."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the measurement may include freed pages
        pass


class PeakRss:
    """Peak resident memory of this process while the block runs (sampled every 50 ms), in MiB:
    ``mib``, the whole process's peak, and ``increase_mib``, the peak above what was resident when
    the block began (with ``settle``, after :func:`release_freed_memory`): what the block itself
    needed, so that two blocks run one after the other compare fairly.

    On CUDA the peak allocated GPU memory is reported instead.
    """

    def __init__(self, settle: bool = False):
        self.settle = settle

    def __enter__(self):
        if self.settle:
            release_freed_memory()
        self.peak = self.start = psutil.Process().memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        if torch.cuda.is_available():
            if self.settle:
                torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.start_gpu = torch.cuda.memory_allocated()
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
            self.increase_mib = self.mib - self.start_gpu / 2**20
        else:
            self.mib = self.peak / 2**20
            self.increase_mib = (self.peak - self.start) / 2**20
