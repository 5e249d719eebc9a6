"""Generation alone: ``transformers``' ``generate`` vs our static-cache decoder, eager and compiled.

Two shapes, each timed in alternating rounds (generate, eager, compiled, generate, ...) so a VM's
drifting speed hits every side alike; the median over rounds is reported:

- **rollout**: the PPO step's generation at the classic TRL peer's settings (benchmarks/ppo_step.py):
  a flan-t5-small-shaped T5 (random weights, or ``--model-in``), LoRA r=32 on q,v, 16 prompts of
  130-220 tokens, exactly 32 new tokens (EOS banned until then), fp32, Gumbel-max sampling; the
  encoder pass included (as the trainer's ``generate`` phase). ``--k`` samples per prompt.
  Its **kernel floor**: on a CPU every matmul and attention call of one eager decoding, each replayed
  alone (benchmarks/limit.py), summed, and beside it the in-order floor (the same calls replayed in
  sequence over the memory they used); on a GPU the device time of the kernels those calls launched
  in one eager decoding, from the CUDA profiler (and the compiled call's busy time: every kernel).
- **evaluate** (``--world``): the evaluate stage's sampled responses on the default tiny world:
  32 test prompts x 25 nucleus samples (top-p 0.9) through ``rlhf.generation.generate``; and one
  step's nucleus choice at that shape: the top-p cut and the draw, ``transformers``' and ours.

Also the share of tokens the compiled step draws identically to the eager one (kernels may round
differently), and the compile's one-off cost. Compiled, the encoder pass is compiled too (as
``model.compile_decoding`` does); on a GPU the compiled step runs as CUDA graphs.

    python benchmarks/decoding.py [--rounds R] [--device cpu|cuda] [--shape small|base] [--k K] [--world]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from compare import cpu_description  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> tuple[float, object]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def rollout_model(args, device: torch.device):
    from ppo_step import flan_t5_small, tokenizer_and_prompts
    from standins import random_t5

    from rlhf.config import LoraConfig
    from rlhf.models import apply_lora, fuse_gelu
    from rlhf.seq2seq import encode_queries

    tok, prompts = tokenizer_and_prompts(args.tokenizer, args.prompts, args.batch_size)
    if args.shape == "small":
        lm = flan_t5_small(args.model_in)
    else:
        lm = random_t5("base")
        fuse_gelu(lm)  # as rlhf.models.load_seq2seq does
    torch.manual_seed(0)
    lm = apply_lora(lm, LoraConfig(r=32, alpha=32, dropout=0.0, target_modules=["q", "v"])).to(device).eval()
    return lm, tok, encode_queries(tok, prompts[:args.batch_size], 512, device)


def rollout(args, device: torch.device) -> dict:
    """The trainer's generate phase at the peer's shapes: each side from the same random state."""
    from rlhf.decoding import Decoder
    from rlhf.pickers import gumbel_max
    from rlhf.seq2seq import _generate, repeat_rows, response_mask_from

    lm, tok, q = rollout_model(args, device)
    T, k = args.new_tokens, args.k
    gen = (tok.eos_token_id, tok.pad_token_id, lm.config.decoder_start_token_id)

    def encoder():
        return lm.get_encoder()(input_ids=q.input_ids, attention_mask=q.attention_mask).last_hidden_state

    def with_generate():
        r = _generate(lm, *repeat_rows(q, encoder(), k), T, *gen, min_new_tokens=T)
        return r.masked_fill(~response_mask_from(r, gen[0]), gen[1])

    decoders = {"eager": Decoder(lm), "compiled": Decoder(lm, compile=True)}
    sides = {"generate": with_generate,
             **{name: (lambda d=d: d(d.encode(q.input_ids, q.attention_mask), q.attention_mask, k, T, gumbel_max, *gen,
                                     min_new_tokens=T))  # compiled, the encoder too (model.compile_decoding)
                for name, d in decoders.items()}}
    with torch.no_grad():
        torch.manual_seed(1)
        first_compiled_s, _ = timed(sides["compiled"], device)  # the compile, paid once
        seconds: dict[str, list[float]] = {s: [] for s in sides}
        outs = {}
        for _ in range(args.rounds):
            for name, fn in sides.items():
                torch.manual_seed(1)
                s, outs[name] = timed(fn, device)
                seconds[name].append(s)
    tokens = q.input_ids.shape[0] * k * T
    result = {"prompts": q.input_ids.shape[0], "k": k, "new_tokens": T, "shape": args.shape,
              "compiled": decoders["compiled"].compiled, "why_eager": decoders["compiled"].why_eager,
              "encoder_compiled": decoders["compiled"].compiled_encoder is not None,
              "first_compiled_call_s": first_compiled_s,
              "eager_equals_generate": bool(torch.equal(outs["eager"], outs["generate"])),
              "compiled_identical_share": float((outs["compiled"] == outs["eager"]).float().mean()),
              "sides": {name: {"median_s": statistics.median(v), "rounds_s": [round(x, 4) for x in v],
                               "tokens_per_s": tokens / statistics.median(v)} for name, v in seconds.items()}}
    if device.type == "cpu":
        result["kernel_floor_s"], result["in_order_floor_s"] = kernel_floor(lambda: sides["eager"]())
    else:
        with torch.no_grad():
            result["kernel_floor_s"] = cuda_kernel_seconds(sides["eager"])["floor"]
            result["compiled_gpu_busy_s"] = cuda_kernel_seconds(sides["compiled"])["busy"]
    for side in result["sides"].values():
        side["over_floor"] = side["median_s"] / result["kernel_floor_s"]
        if "in_order_floor_s" in result:
            side["over_in_order_floor"] = side["median_s"] / result["in_order_floor_s"]
    return result


FLOOR_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::_efficient_attention_forward",
             "aten::_flash_attention_forward", "aten::_cudnn_attention_forward")


def cuda_kernel_seconds(fn) -> dict[str, float]:
    """One call of ``fn`` under the CUDA profiler -> {"floor": device seconds of the kernels its matmul
    and attention ops launched (:data:`FLOOR_OPS`, as they ran in place: the GPU's kernel floor),
    "busy": device seconds of every kernel}. The rest of the wall time is the GPU idle: launches,
    host work and syncs."""
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = prof.key_averages()
    floor = sum(e.self_device_time_total for e in events if e.key in FLOOR_OPS)
    busy = sum(e.self_device_time_total for e in events  # kernels, not the spans annotating them (inductor's)
               if e.device_type == torch.autograd.DeviceType.CUDA and not e.is_user_annotation)
    return {"floor": floor / 1e6, "busy": busy / 1e6}


def kernel_floor(fn) -> tuple[float, float]:
    """Seconds of every matmul / attention call ``fn`` makes, each replayed alone, and all of them
    replayed in order over the memory they used (limit.py's kernel floor and in-order floor)."""
    from limit import KernelRecorder, in_order_seconds, standalone_seconds

    recorder = KernelRecorder(trace=True)
    recorder.phase = "generate"
    with torch.no_grad(), recorder:
        fn()
    alone = sum(standalone_seconds(f, lts) * c for (_, f, lts), c in recorder.calls.items())
    with torch.no_grad():
        return alone, sum(in_order_seconds(recorder.trace)[0].values())


def evaluate_shape(args, device: torch.device) -> dict:
    """The evaluate stage's nucleus samples on the default tiny world, through rlhf.generation."""
    import rlhf.generation as generation
    from rlhf.config import GenerationSetting, load_config
    from rlhf.data import load_splits
    from rlhf.models import load_seq2seq, load_tokenizer
    from rlhf.prompts import fit_prompts

    from rlhf.tinyworld.build import resolve_tinyworld

    config = resolve_tinyworld(load_config(ROOT / "configs" / "tiny.yaml"), log=lambda *_: None)
    splits = load_splits(config.data, config.seed)
    tok = load_tokenizer(config.model)
    prompts = fit_prompts(list(splits["test"]["dialogue"])[:32], config.data.template, tok,
                          config.model.max_input_length)[0]
    lm = load_seq2seq(config.model).to(device).eval()
    setting = GenerationSetting("sampled", do_sample=True, temperature=config.evaluate.temperature,
                                top_p=config.evaluate.top_p)
    kw = dict(max_new_tokens=config.evaluate.max_new_tokens or config.sft.max_new_tokens,
              batch_size=config.evaluate.batch_size, max_input_length=config.model.max_input_length, seed=config.seed,
              num_return_sequences=config.evaluate.n_samples)
    real = generation.decoder_for
    sides = {"generate": dict(decoder=lambda *a, **k: None), "eager": dict(compile=False),
             "compiled": dict(compile=True)}

    def run(side):
        generation.decoder_for = sides[side].get("decoder", real)
        try:
            return generation.generate(lm, tok, prompts, setting, compile=sides[side].get("compile", False), **kw)
        finally:
            generation.decoder_for = real

    first_compiled_s, _ = timed(lambda: run("compiled"), device)
    seconds, outs = {s: [] for s in sides}, {}
    for _ in range(args.rounds):
        for side in sides:
            s, outs[side] = timed(lambda: run(side), device)
            seconds[side].append(s)
    flat = {s: [t for row in g.samples for t in row] for s, g in outs.items()}
    return {"prompts": len(prompts), "k": config.evaluate.n_samples, "new_tokens": outs["eager"].new_tokens,
            "pickers": pickers(min(config.evaluate.batch_size, len(prompts) * config.evaluate.n_samples), len(tok),
                               config.evaluate.top_p, args.rounds),
            "first_compiled_call_s": first_compiled_s,
            "eager_equals_generate": flat["eager"] == flat["generate"],
            "compiled_identical_text_share": sum(a == b for a, b in zip(flat["compiled"], flat["eager"])) / len(flat["eager"]),
            "sides": {s: {"median_s": statistics.median(v), "rounds_s": [round(x, 4) for x in v],
                          "tokens_per_s": outs[s].new_tokens / statistics.median(v)} for s, v in seconds.items()}}


def pickers(rows: int, vocab: int, top_p: float, rounds: int) -> dict:
    """One decoding step's nucleus choice at [rows, vocab] (fp32 logits of spread 3), each side in
    alternating rounds of 20 calls: ``transformers``' top-p warper vs ``rlhf.pickers.top_p_filter``,
    ``torch.multinomial`` vs ``rlhf.pickers.draw``, and whether each pair gives the same tokens
    from the same random state."""
    from transformers import TopPLogitsWarper

    from rlhf.pickers import draw, top_p_filter

    scores = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(0)) * 3
    probs = top_p_filter(scores, top_p).softmax(-1)
    warper = TopPLogitsWarper(top_p)
    sides = {"top_p_warper": lambda: warper(None, scores), "top_p_filter": lambda: top_p_filter(scores, top_p),
             "multinomial": lambda: torch.multinomial(probs, 1), "draw": lambda: draw(probs)}
    ms: dict[str, list[float]] = {s: [] for s in sides}
    for _ in range(rounds):
        for side, fn in sides.items():
            fn()
            start = time.perf_counter()
            for _ in range(20):
                fn()
            ms[side].append((time.perf_counter() - start) / 20 * 1e3)

    def tokens(fn, seed):
        torch.manual_seed(seed)
        return fn().reshape(-1), torch.rand(4)

    same_draws = all(all(map(torch.equal, tokens(lambda: torch.multinomial(probs, 1), seed), tokens(lambda: draw(probs), seed)))
                     for seed in range(5))
    return {"rows": rows, "vocab": vocab, "top_p": top_p, "median_ms": {s: statistics.median(v) for s, v in ms.items()},
            "top_p_equal": torch.equal(warper(None, scores), top_p_filter(scores, top_p)), "draws_equal": same_draws}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--shape", choices=("small", "base"), default="small", help="flan-t5's shape of the rollout model")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--k", type=int, default=1, help="samples per prompt (RLOO/GRPO groups)")
    ap.add_argument("--world", action="store_true", help="also the evaluate stage's shape on the tiny world")
    ap.add_argument("--model-in")
    ap.add_argument("--tokenizer")
    ap.add_argument("--prompts")
    args = ap.parse_args()
    from rlhf.runtime import flush_denormals

    flush_denormals()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    result = {"cpu": cpu_description(), "threads": args.threads, "device": str(device),
              "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
              "rollout": rollout(args, device)}
    if args.world:
        result["evaluate"] = evaluate_shape(args, device)
    for name in ("rollout", "evaluate"):
        if name in result:
            r = result[name]
            floor = f"; kernel floor {r['kernel_floor_s']:.3f} s" if "kernel_floor_s" in r else ""
            if "in_order_floor_s" in r:
                floor += f" (in order {r['in_order_floor_s']:.3f} s)"
            if "compiled_gpu_busy_s" in r:
                floor += f"; compiled call's GPU busy {r['compiled_gpu_busy_s']:.3f} s"
            print(f"{name}: " + ", ".join(
                f"{s} {v['median_s']:.3f} s ({v['tokens_per_s']:.0f} tok/s"
                + (f", {v['over_floor']:.2f}x floor" if "over_floor" in v else "") + ")"
                for s, v in r["sides"].items()) + f"{floor}; first compiled call {r['first_compiled_call_s']:.1f} s",
                flush=True)
    if "evaluate" in result:
        p = result["evaluate"]["pickers"]
        print(f"pickers at [{p['rows']}, {p['vocab']}] (ms per call): " + ", ".join(
            f"{s} {v:.2f}" for s, v in p["median_ms"].items()) + f"; same cut {p['top_p_equal']}, same draws "
            f"{p['draws_equal']}", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
