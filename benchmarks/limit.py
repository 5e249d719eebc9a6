"""How far the PPO step is from its limits on this machine, on the peer benchmark's inputs.

Every matrix multiply and attention call of real PPO steps is recorded (op, shapes, strides);
each distinct call is then replayed alone on random tensors of the same layout and timed. The
**kernel floor** is the sum of those standalone times: what this implementation's step would cost
if nothing but its matmuls and attention ran, each at the speed this CPU's libraries give that
shape in isolation (no elementwise ops, no Python, no allocator). The **peak floor** is the same
FLOPs at the best GEMM rate measured here (2048^2): a bound no choice of shapes or layouts beats
without less or cheaper arithmetic. FLOPs: 2mkn per matmul, 4·B·H·L·S·E per attention forward and
2.5x that for its backward; ``rlhf estimate``'s analytic figure for the same shapes is printed
beside them. The **in-order floor** replays the last recorded step's calls in their order, each
operand in a buffer standing for the storage the step used (:func:`in_order_seconds`): the same
kernels with the step's memory traffic (weights and activations that no longer sit in the caches),
still with nothing between them. Settings as benchmarks/ppo_step.py (the peer's: batch 16, mini-batch 4, 4 epochs,
32 tokens, LoRA r=32 on q,v, fp32).

Each phase's **measured** time comes from further steps run without the recorder, by a second
trainer built with ``--compile`` / ``--compile-decoding`` when asked (the same prompts, seeds and
shapes: 32 tokens per response), so ``over_floor`` = measured / kernel floor per phase and for the step,
``over_in_order_floor`` = measured / in-order floor.

    python benchmarks/limit.py [--steps N] [--timed-steps N] [--compile] [--compile-decoding] [--frozen-encoder]
                               [--model-in DIR --tokenizer DIR --prompts FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map, tree_map_only

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import cpu_description  # noqa: E402
from ppo_step import build_trainer, tokenizer_and_prompts  # noqa: E402

aten = torch.ops.aten
MATMULS = {aten.mm.default, aten.addmm.default, aten.bmm.default}
SDPA = aten._scaled_dot_product_flash_attention_for_cpu.default
SDPA_BACKWARD = aten._scaled_dot_product_flash_attention_for_cpu_backward.default
ATTENTION_BACKWARD = 2.5  # flash backward: QK^T again, then dV, dP, dQ, dK: 5 matmuls to the forward's 2


def layout(t: torch.Tensor) -> tuple:
    return tuple(t.shape), tuple(t.stride()), t.dtype


class KernelRecorder(TorchDispatchMode):
    """Counts every matmul / attention call by (op, operand layouts) and the step's phase it ran in
    (the trainer's timed blocks: generate, score, forward, update); runs them unchanged. With
    ``trace=True`` it also keeps each call in order, its tensors as :class:`Operand` (for
    :func:`in_order_seconds`)."""

    def __init__(self, trace: bool = False):
        super().__init__()
        self.calls: Counter = Counter()  # (phase, func, layouts) -> count
        self.phase = "other"
        self.trace: list | None = [] if trace else None  # (phase, func, args, kwargs), tensors as Operand

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.trace is not None and (func in MATMULS or func in (SDPA, SDPA_BACKWARD)):
            self.trace.append((self.phase, func, as_operands(args), as_operands(kwargs)))
        if func in MATMULS:
            self.calls[(self.phase, func, tuple(layout(a) for a in args if isinstance(a, torch.Tensor)))] += 1
        elif func in (SDPA, SDPA_BACKWARD):
            q, k, v = (args[i] for i in ((0, 1, 2) if func is SDPA else (1, 2, 3)))
            mask = kwargs.get("attn_mask")
            key = (layout(q), layout(k), layout(v), None if mask is None else layout(mask))
            self.calls[(self.phase, func, key)] += 1
        return func(*args, **kwargs)

    def tag_phases(self, timer_cls):
        """A subclass of the trainer's ``Timer`` whose blocks also name the phase for this recorder."""
        recorder = self

        class PhaseTimer(timer_cls):
            @contextlib.contextmanager
            def __call__(self, name):
                recorder.phase = name
                try:
                    with super().__call__(name):
                        yield
                finally:
                    recorder.phase = "other"

        return PhaseTimer


def flops(func, layouts) -> float:
    if func in MATMULS:
        (a_shape, *_), (b_shape, *_) = layouts[-2], layouts[-1]
        batch = a_shape[0] if func is aten.bmm.default else 1
        m, k, n = a_shape[-2], a_shape[-1], b_shape[-1]
        return 2.0 * batch * m * k * n
    (q, *_), (k, *_) = layouts[0], layouts[1]
    forward = 4.0 * q[0] * q[1] * q[2] * k[2] * q[3]  # QK^T and PV
    return forward if func is SDPA else ATTENTION_BACKWARD * forward


def tensor_like(shape, stride, dtype) -> torch.Tensor:
    """Random values in the recorded layout (strides may be 0, as in a broadcast bias)."""
    size = 1 + sum((n - 1) * st for n, st in zip(shape, stride) if n > 0)
    return torch.randn(size, dtype=dtype).as_strided(shape, stride)


def standalone_seconds(func, layouts, reps: int = 5) -> float:
    """Fastest of ``reps`` standalone runs of one recorded call (an attention backward is timed as
    :data:`ATTENTION_BACKWARD` forwards at its shapes)."""
    if func in MATMULS:
        operands = [tensor_like(*lt) for lt in layouts]
        run = lambda: func(*operands)  # noqa: E731
        scale = 1.0
    else:
        q, k, v = (tensor_like(*lt) for lt in layouts[:3])
        mask = None if layouts[3] is None else tensor_like(*layouts[3])
        run = lambda: SDPA(q, k, v, attn_mask=mask)  # noqa: E731
        scale = 1.0 if func is SDPA else ATTENTION_BACKWARD
    return fastest(run, reps) * scale


class Operand(NamedTuple):
    """Where a recorded call's tensor lay: its storage (address and dtype, the key of the replay's
    buffer), the element offset and the layout."""

    storage: tuple
    offset: int
    shape: tuple
    stride: tuple


def as_operands(x):
    """``x`` (a call's args or kwargs) with each tensor replaced by its :class:`Operand`."""
    return tree_map_only(torch.Tensor, lambda t: Operand((t.untyped_storage().data_ptr(), t.dtype), t.storage_offset(),
                                                         tuple(t.shape), tuple(t.stride())), x)


def is_operand(x) -> bool:
    return isinstance(x, Operand)  # a leaf: pytree would otherwise walk into the named tuple


def in_order_seconds(trace: list, reps: int = 3) -> tuple[Counter, int]:
    """Seconds per phase of the recorded calls replayed **in order**, each tensor at a buffer that
    stands for the storage the step used (one per address and dtype): the weights are read again
    and again as in the step, an activation at an address the step reused lands where the last one
    did, and nothing runs between the kernels. The fastest of ``reps`` passes after a warm-up pass.
    This is the floor with the step's memory traffic: what the kernels cost in sequence rather
    than each alone on warm operands. Returns (seconds per phase, the buffers' bytes: one buffer
    per address the step used, so more than the step's peak memory)."""
    sizes: dict = {}
    for op in filter(is_operand, tree_leaves(trace, is_leaf=is_operand)):
        extent = op.offset + 1 + sum((n - 1) * st for n, st in zip(op.shape, op.stride) if n > 0)
        sizes[op.storage] = max(sizes.get(op.storage, 0), extent)
    buffers = {key: torch.randn(n, dtype=key[1]) if key[1].is_floating_point else torch.zeros(n, dtype=key[1])
               for key, n in sizes.items()}

    def tensors(x):
        return tree_map(lambda op: buffers[op.storage].as_strided(op.shape, op.stride, op.offset) if is_operand(op)
                        else op, x, is_leaf=is_operand)

    calls = [(phase, func, tensors(args), tensors(kwargs)) for phase, func, args, kwargs in trace]
    clock, passes = time.perf_counter, []
    for _ in range(reps + 1):  # the first pass warms up (first touch of every buffer)
        seconds: Counter = Counter()
        for phase, func, args, kwargs in calls:
            start = clock()
            func(*args, **kwargs)
            seconds[phase] += clock() - start
        passes.append(seconds)
    best = min(passes[1:] or passes, key=lambda seconds: sum(seconds.values()))
    return best, sum(b.numel() * b.element_size() for b in buffers.values())


def peak_gemm_gflops(dtype: torch.dtype = torch.float32, n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / fastest(lambda: a @ b, reps) / 1e9


def fastest(fn, reps: int) -> float:
    """Seconds of the fastest of ``reps`` calls of ``fn``, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def estimate_flops(trainer, query_tokens: float) -> float:
    """``rlhf estimate``'s analytic FLOPs per step for this model at ``query_tokens`` prompt tokens."""
    from rlhf.estimate import rl_step_flops, shape_of

    return rl_step_flops(shape_of(trainer.policy.lm), trainer.cfg, round(query_tokens))["total"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3, help="steps recorded (after one warm-up step)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timed-steps", type=int, default=3, help="unrecorded steps timed per phase (after a warm-up)")
    ap.add_argument("--compile", action="store_true", help="the timed steps' update compiled (rl.compile)")
    ap.add_argument("--compile-decoding", action="store_true",
                    help="the timed steps' decoding step compiled (model.compile_decoding)")
    ap.add_argument("--frozen-encoder", action="store_true")
    ap.add_argument("--mixed-precision", choices=("no", "bf16"), default="no",
                    help="bf16 autocast: the floor then replays the bf16 kernels it recorded")
    ap.add_argument("--model-in")
    ap.add_argument("--tokenizer")
    ap.add_argument("--prompts")
    ap.add_argument("--compare-json", default=str(Path(__file__).resolve().parent / "last_compare.json"),
                    help="bench-compare's summary, for the peer's step time on this machine")
    args = ap.parse_args()
    args.batch_size, args.new_tokens = 16, 32
    want_compile, want_compile_decoding = args.compile, args.compile_decoding
    args.compile = args.compile_decoding = False  # the recorded steps run eagerly
    from rlhf.runtime import flush_denormals

    flush_denormals()
    torch.set_num_threads(args.threads)
    tok, prompts = tokenizer_and_prompts(args.tokenizer, args.prompts,
                                         args.batch_size * (args.steps + 1 + args.timed_steps + 1))
    args.steps += 1
    trainer = build_trainer(args, tok, prompts)
    trainer.step()  # warm-up
    import rlhf.rl.trainer as trainer_module

    recorder, walls, query_tokens, phase_walls = KernelRecorder(), [], [], Counter()
    trainer_module.Timer = recorder.tag_phases(trainer_module.Timer)
    for step in range(1, args.steps):
        query_tokens.append(statistics.mean(len(tok(p).input_ids) for p in trainer.batch_prompts(step)))
        if step == args.steps - 1:
            recorder.trace = []  # the last recorded step's calls in order, for the in-order floor
        start = time.perf_counter()
        with recorder:
            stats = trainer.step()
        walls.append(time.perf_counter() - start)
        phase_walls.update({k.removeprefix("time/"): v for k, v in stats.items()
                            if k.startswith("time/") and k != "time/step"})
    n = args.steps - 1
    kernels = {(f, lts) for _, f, lts in recorder.calls}  # each distinct call replayed once, whatever its phases
    seconds = {k: standalone_seconds(*k) for k in kernels}
    phase_floor, phase_flops, matmul_flops = Counter(), Counter(), 0.0
    for (phase, f, lts), c in recorder.calls.items():
        phase_floor[phase] += seconds[f, lts] * c / n
        f_flops = flops(f, lts) * c / n
        phase_flops[phase] += f_flops
        matmul_flops += f_flops if f in MATMULS else 0.0
    total_flops = sum(phase_flops.values())
    floor = sum(phase_floor.values())
    in_order, buffer_bytes = in_order_seconds(recorder.trace)
    recorder.trace = None
    step_s = statistics.median(walls)
    result = {"cpu": cpu_description(), "threads": args.threads, "frozen_encoder": args.frozen_encoder,
              "mixed_precision": args.mixed_precision, "steps_recorded": n,
              "step_gflop": total_flops / 1e9, "matmul_share_of_flops": matmul_flops / total_flops,
              "estimate_gflop": estimate_flops(trainer, statistics.mean(query_tokens)) / 1e9,
              "distinct_kernels": len(kernels), "kernel_floor_s": floor, "in_order_floor_s": sum(in_order.values()),
              "in_order_buffers_mib": buffer_bytes / 2**20,
              "peak_gemm_gflops": peak_gemm_gflops(torch.bfloat16 if args.mixed_precision == "bf16" else torch.float32), "step_s_recorded": step_s,
              "achieved_gflops": total_flops / step_s / 1e9, "floor_over_step": floor / step_s,
              # per phase: the recorded steps' mean wall time (recorder overhead included) and kernel floor
              "phases": {p: {"recorded_s": phase_walls[p] / n, "kernel_floor_s": phase_floor[p],
                             "in_order_floor_s": in_order[p], "gflop": phase_flops[p] / 1e9}
                         for p in sorted(set(phase_walls) | set(phase_floor))}}
    result["peak_floor_s"] = total_flops / 1e9 / result["peak_gemm_gflops"]
    if args.timed_steps:
        timed = measured_phases(args, tok, prompts, want_compile, want_compile_decoding)
        result.update(compile=want_compile, compile_decoding=want_compile_decoding,
                      measured_step_s=timed.pop("step"), gen_tokens_per_s=timed.pop("gen_tokens_per_s"))
        result["step_over_floor"] = result["measured_step_s"] / floor
        result["step_over_in_order_floor"] = result["measured_step_s"] / result["in_order_floor_s"]
        for p, v in result["phases"].items():
            if p in timed and v["kernel_floor_s"] > 0 and v["in_order_floor_s"] > 0:
                v.update(measured_s=timed[p], over_floor=timed[p] / v["kernel_floor_s"],
                         over_in_order_floor=timed[p] / v["in_order_floor_s"])
    compare = Path(args.compare_json)
    if compare.is_file():
        peer = json.loads(compare.read_text())
        result["peer_step_s"] = peer["peer_median_step_s"]
        result["floor_over_peer"] = floor / peer["peer_median_step_s"]
    print(f"step {total_flops / 1e9:.0f} GFLOP ({matmul_flops / total_flops:.0%} matmul; rlhf estimate "
          f"{result['estimate_gflop']:.0f}); kernel floor {floor:.2f} s; peak floor {result['peak_floor_s']:.2f} s "
          f"(GEMM {result['peak_gemm_gflops']:.0f} GFLOP/s); in-order floor {result['in_order_floor_s']:.2f} s; "
          f"step {step_s:.2f} s (floor/step {floor / step_s:.2f})", flush=True)
    print("  by phase: " + ", ".join(f"{p} {v['recorded_s']:.2f} s (floor {v['kernel_floor_s']:.2f}, in order "
                                     f"{v['in_order_floor_s']:.2f}, {v['gflop']:.0f} GFLOP)"
                                     for p, v in result["phases"].items()), flush=True)
    if args.timed_steps:
        print(f"  measured (unrecorded, compile {want_compile}, compile_decoding {want_compile_decoding}): step "
              f"{result['measured_step_s']:.2f} s ({result['step_over_floor']:.2f}x floor, "
              f"{result['step_over_in_order_floor']:.2f}x in order); "
              + ", ".join(f"{p} {v['measured_s']:.2f} s ({v['over_floor']:.2f}x, {v['over_in_order_floor']:.2f}x in order)"
                          for p, v in result["phases"].items()
                          if "measured_s" in v), flush=True)
    print(json.dumps(result))


def measured_phases(args, tok, prompts, compile: bool, compile_decoding: bool) -> dict:
    """Median wall time per phase (and step) of ``args.timed_steps`` unrecorded steps after a
    warm-up (which pays any compile), from a trainer built with the compile flags asked for."""
    import argparse as _argparse

    timed_args = _argparse.Namespace(**{**vars(args), "compile": compile, "compile_decoding": compile_decoding,
                                        "steps": args.timed_steps + 1})
    trainer = build_trainer(timed_args, tok, prompts)
    trainer.step()  # warm-up
    rows = [trainer.step() for _ in range(args.timed_steps)]
    out = {k.removeprefix("time/"): statistics.median(r[k] for r in rows)
           for k in rows[0] if k.startswith("time/") and k != "time/step"}
    out["step"] = statistics.median(r["time/step"] for r in rows)
    out["gen_tokens_per_s"] = statistics.median(r["tokens_per_s"] for r in rows)
    return out


if __name__ == "__main__":
    main()
