"""Choosing the next token from a decoding step's fp32 scores [R, V] (R rows, V vocabulary).

``greedy`` and ``gumbel_max`` (what the RL methods sample with) are one line each. ``nucleus`` is
what ``generate(do_sample=True, temperature, top_k, top_p)`` does, token for token from the same
random state: ``transformers``' own temperature and top-k warpers, then :func:`top_p_filter` and
:func:`draw`, which on a CPU compute exactly what the top-p warper and ``torch.multinomial``
compute, in about a third of the time at the evaluate stage's shape ([800, 946]: 25 samples of
32 prompts; benchmarks/RESULTS.md). There the two took 60% of the decoding time, more than the
model's step.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import numpy as np
import torch

Picker = Callable[[torch.Tensor], torch.Tensor]  # fp32 scores [R, V] -> next tokens [R]


class GumbelMax:
    """A logits processor that turns greedy search into sampling from softmax(scores): the argmax
    of scores + Gumbel(0, 1) noise is an exact sample (Gumbel 1954; Maddison et al. 2014,
    "A* Sampling"). Same distribution as ``do_sample=True`` at temperature 1 without top-k/top-p,
    but about 3x cheaper per step on CPU than ``torch.multinomial`` over a 32k vocabulary
    (benchmarks/RESULTS.md). Processors that ran before it (e.g. the EOS ban of
    ``min_new_tokens``) keep their -inf."""

    def __call__(self, input_ids: torch.Tensor | None, scores: torch.Tensor) -> torch.Tensor:
        uniform = torch.rand_like(scores, dtype=torch.float32)
        return scores.float() - uniform.log_().neg_().log_()  # + Gumbel noise = -log(-log U)


def greedy(scores: torch.Tensor) -> torch.Tensor:
    """The most likely token."""
    return scores.argmax(-1)


def gumbel_max(scores: torch.Tensor) -> torch.Tensor:
    """A sample from softmax(scores) (:class:`GumbelMax`): what the RL methods sample with."""
    return GumbelMax()(None, scores).argmax(-1)


def nucleus(temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Picker:
    """A sample after temperature, top-k and top-p (Holtzman et al. 2020), in ``generate``'s order:
    the same draws as ``generate(do_sample=True, ...)`` from the same random state."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper

    warpers = ([TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []) + \
        ([TopKLogitsWarper(top_k)] if top_k else [])

    def pick(scores: torch.Tensor) -> torch.Tensor:
        for warp in warpers:
            scores = warp(None, scores)
        if top_p < 1.0:
            scores = top_p_filter(scores, top_p)
        return draw(scores.softmax(-1))

    return pick


def top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """[R, V] scores -> the same with every token outside the nucleus at -inf: the fewest most likely
    tokens whose probability passes ``top_p``. Exactly what ``transformers``' ``TopPLogitsWarper``
    (top_p, min_tokens_to_keep=1) returns, and its error for a ``top_p`` outside [0, 1].

    The warper sorts each row with its indices, and drops the ascending order's longest prefix whose
    cumulative probability is <= 1 - top_p (never the last token). The values alone fix that cut:
    a token is dropped iff its score is below the first kept value, unless that value ties with
    the last dropped one (then the sort's order among equals decides: the warper itself runs on
    those rows). On a CPU in fp32 the values are sorted without indices by numpy's vectorised sort,
    which at [800, 946] takes a fifth of the time of ``torch.sort``; the softmax and cumulative sum
    are the warper's own ops on the same sorted values, so every cumulative probability is the
    warper's (a NaN makes its row's all NaN: nothing dropped, in both). Elsewhere the warper runs."""
    from transformers import TopPLogitsWarper

    warper = TopPLogitsWarper(top_p)  # checks top_p as the warper does
    if scores.device.type != "cpu" or scores.dim() != 2 or scores.dtype != torch.float32 or 0 in scores.shape:
        return warper(None, scores)
    values = torch.from_numpy(np.sort(scores.detach().numpy(), axis=-1))  # ascending
    dropped = (values.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)).sum(-1, keepdim=True)  # a prefix: >= 0 terms
    dropped.clamp_(max=values.shape[-1] - 1)  # min_tokens_to_keep = 1
    first_kept = values.gather(-1, dropped)
    tie = ((dropped > 0) & (values.gather(-1, (dropped - 1).clamp_(min=0)) == first_kept)).squeeze(-1)
    out = scores.masked_fill(scores < first_kept, float("-inf"))
    if bool(tie.any()):
        out[tie] = warper(None, scores[tie])
    return out


def draw(probs: torch.Tensor) -> torch.Tensor:
    """One token per row of [R, V] probabilities -> [R]: ``torch.multinomial(probs, 1)``, and on a
    CPU the very tokens it draws from the same generator state, in half the time.

    ATen draws one token per row by racing exponential clocks (Efraimidis & Spirakis 2006; the
    Gumbel-max trick exponentiated): ``argmax_i p_i / q_i``, ``q = empty_like(probs).exponential_(1)``,
    each ``q_i = (-1.0) * log1p(-u_i)`` computed in double from one double uniform, then cast to
    float, one value at a time. Here the same uniforms come from ``torch.rand`` (the same generator
    steps in the same order, for a contiguous ``probs``), rows a cache-sized block at a time, and the
    logarithm is vectorised: ``log(1 - u)``, ``1 - u`` exact. Vectorised and C library logarithms
    are each within about 1 ulp of exact, so they may differ in the double's last bits (they did
    in 7% of 40M draws, by 1 ulp), which moves the float only near a rounding midpoint: clocks
    within ``NEAR_ULPS`` of one are recomputed with the C library's log1p. Whether this torch
    build's ``exponential_`` is that kernel (some builds drew from MKL instead) is probed once;
    where it is not, or the input is not a contiguous fp32 [R, V] on the CPU, multinomial runs.
    Another thread drawing from the default generator meanwhile may interleave differently (ATen
    holds the generator's lock for the whole tensor, this for each block)."""
    rows, vocab = probs.shape if probs.dim() == 2 else (0, 0)
    if (probs.device.type != "cpu" or probs.dtype != torch.float32 or not probs.is_contiguous() or not rows
            or not 0 < vocab <= 2 ** 24 or not _exponential_is_aten_cpu()):
        return torch.multinomial(probs, 1).squeeze(1)
    valid = bool((probs.max() < math.inf) & (probs.min() >= 0))
    if not valid or bool((probs.sum(1) == 0).any()):
        return torch.multinomial(probs, 1).squeeze(1)  # multinomial's own checks, and its error
    step = max(1, BLOCK // vocab)
    return torch.cat([_race(probs[i:i + step]) for i in range(0, rows, step)])


BLOCK = 1 << 16  # values per block of draw(): its double uniforms and clocks (~2 MiB) stay in cache
DROPPED = (1 << 29) - 1  # the 29 low mantissa bits a double loses in its cast to float
MIDPOINT = 1 << 28  # those bits at a rounding midpoint
NEAR_ULPS = 16  # how close (in the double's ulps) to a midpoint a clock is recomputed


def clocks_from(uniform: torch.Tensor) -> torch.Tensor:
    """Double uniforms [..] -> the fp32 exponential clocks ATen's CPU ``exponential_(1)`` makes of
    them: ``float((-1.0) * log1p(-u))`` (+0.0 at u = 0)."""
    clocks64 = torch.log(1 - uniform).neg_().abs_()  # abs_: +0.0, not -0.0, at u = 0 (clocks are >= 0)
    clocks = clocks64.float()
    near = ((clocks64.view(torch.int64) & DROPPED) - MIDPOINT).abs_() <= NEAR_ULPS
    if bool(near.any()):
        at = near.nonzero(as_tuple=True)
        clocks[at] = torch.tensor([-1.0 * math.log1p(-u) for u in uniform[at].tolist()], dtype=torch.float64,
                                  device=uniform.device).float()
    return clocks


def _race(probs: torch.Tensor) -> torch.Tensor:
    uniform = torch.rand(probs.shape, dtype=torch.float64, device=probs.device)
    return (probs / clocks_from(uniform)).argmax(-1)


@functools.cache
def _exponential_is_aten_cpu() -> bool:
    """Whether this torch build's CPU ``exponential_`` turns ``torch.rand``'s double uniforms into
    its clocks as :func:`clocks_from` does (and leaves the generator where ``torch.rand`` does)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        want = torch.empty(4096, device="cpu").exponential_(1), torch.rand(2, device="cpu")
        torch.manual_seed(0)
        got = clocks_from(torch.rand(4096, dtype=torch.float64, device="cpu")), torch.rand(2, device="cpu")
    return all(map(torch.equal, want, got))
