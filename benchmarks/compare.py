"""Our PPO step vs the classic TRL 0.11.4 seq2seq PPOTrainer, alternating runs on identical inputs.

The peer (../shared/peers/trl011/bench_trl.py, run in its own venv at $PEER/venv) writes the
initial weights, tokenizer and prompts first; both implementations then start from them (the same
base weights and prompt token ids; the fresh LoRA A matrices and value head are each side's own
draw, and our batches are a seeded permutation of the prompts, not the peer's order: about 1% apart
in tokens per measured step). Runs
alternate (peer, ours, peer, ours, ...) because this kind of VM changes speed over time. Each
round runs the peer, then our step with the peer's settings and numerics (fp32) eagerly and with
``rl.compile`` (the headline ratio when it compiled), then two variants that are not like for
like: bf16 autocast, and the frozen encoder (LoRA on the decoder only, a different trainable set).

    python benchmarks/compare.py [--steps N] [--rounds R] [--variants fp32,compiled,bf16,frozen_encoder]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEER_SCRIPT = ROOT.parent / "shared" / "peers" / "trl011" / "bench_trl.py"


def last_json(out: str) -> dict:
    for line in reversed(out.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON line in output:\n{out[-2000:]}")


def cpu_description() -> dict:
    """CPU model, core count and the flags that change these timings (AVX-512, bf16, AMX)."""
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return {"model": model, "cores": os.cpu_count(), "flags": [f for f in wanted if f in flags]}


def run(cmd: list[str], cwd: Path) -> dict:
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return last_json(proc.stdout)


VARIANTS = {  # our step, each run in every round right after the peer's
    "fp32": [],  # the peer's settings exactly, eager
    "compiled": ["--compile"],  # the same, with rl.compile (fp32, same settings: the headline ratio)
    "bf16": ["--mixed-precision", "bf16"],  # bf16 autocast over fp32 master weights
    "frozen_encoder": ["--frozen-encoder"],  # LoRA on the decoder's q,v only (a different trainable set)
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--variants", default="fp32,compiled,bf16,frozen_encoder",
                    help=f"comma-separated, of {', '.join(VARIANTS)}; fp32 is always run (the headline)")
    ap.add_argument("--peer", default=os.environ.get("PEER", str(Path.home() / "peer-trl011")))
    args = ap.parse_args()
    variants = ["fp32"] + [v for v in args.variants.split(",") if v and v != "fp32"]
    if unknown := [v for v in variants if v not in VARIANTS]:
        ap.error(f"--variants: unknown {unknown[0]!r} (choose from {', '.join(VARIANTS)})")
    peer = Path(args.peer)
    peer_py = peer / "venv" / "bin" / "python"
    if not peer_py.exists() or not PEER_SCRIPT.exists():
        sys.exit(f"peer venv {peer_py} or script {PEER_SCRIPT} missing: run `make peer-venv` (see {PEER_SCRIPT.parent}/README.md)")
    shared = ["--tokenizer", str(peer / "tokenizer")]
    # both sides flush subnormals (ours always does): the ratio then compares implementations, not
    # how much a given CPU charges for subnormal arithmetic
    peer_cmd = [str(peer_py), str(PEER_SCRIPT), "--steps", str(args.steps), "--lora", "--flush-denormals", *shared]
    ours_cmd = [sys.executable, str(ROOT / "benchmarks" / "ppo_step.py"), "--steps", str(args.steps), *shared,
                "--model-in", str(peer / "init_model"), "--prompts", str(peer / "prompts.jsonl")]
    results: dict[str, list] = {"peer": [], **{v: [] for v in variants}}
    first = ["--model-out", str(peer / "init_model"), "--prompts-out", str(peer / "prompts.jsonl")]
    for r in range(args.rounds):
        results["peer"].append(run(peer_cmd + (first if r == 0 else []), PEER_SCRIPT.parent))
        peer_step = results["peer"][-1]["median_step_s_excl_first"]
        line = [f"round {r}: peer {peer_step:.2f}s/step"]
        for v in variants:
            extra = VARIANTS[v] + (["--rollout-compare"] if r == 0 and v == "fp32" else [])
            results[v].append(run(ours_cmd + extra, ROOT))
            ours = results[v][-1]["median_step_s"]
            line.append(f"{v} {ours:.2f}s/step (ratio {ours / peer_step:.3f})")
        print(", ".join(line), flush=True)
    med = lambda rows, key: statistics.median(row[key] for row in rows)  # noqa: E731
    peer_s = med(results["peer"], "median_step_s_excl_first")
    rows = {v: {"median_step_s": med(results[v], "median_step_s"),
                "ratio": med(results[v], "median_step_s") / peer_s,
                "round_ratios": [o["median_step_s"] / p["median_step_s_excl_first"]
                                 for o, p in zip(results[v], results["peer"])],
                "generate_s": med(results[v], "generate_s"), "forward_s": med(results[v], "forward_s"),
                "update_s": med(results[v], "update_s"),
                "peak_rss_mib": max(o["peak_rss_mib"] for o in results[v])} for v in variants}
    # the headline: our step at the peer's settings and numerics (fp32), compiled when that was run
    head = "compiled" if "compiled" in rows and all(o.get("compiled") for o in results["compiled"]) else "fp32"
    summary = {"cpu": cpu_description(), "peer_flushes_denormals": True, "peer_median_step_s": peer_s,
               "headline": head, "ours_median_step_s": rows[head]["median_step_s"], "ratio": rows[head]["ratio"],
               "peer_peak_rss_mib": max(p["peak_rss_mib"] for p in results["peer"]),
               "ours_peak_rss_mib": rows[head]["peak_rss_mib"],
               "peer_generate_s": med(results["peer"], "median_generate_s"),
               "peer_ppo_step_s": med(results["peer"], "median_ppo_step_s"),
               "ours_generate_s": rows[head]["generate_s"], "variants": rows,
               # generation's tokens per second: the peer's batch x new tokens per step, and ours (ppo_step.py)
               "peer_gen_tokens_per_s": (results["peer"][0]["batch_size"] * results["peer"][0]["max_new_tokens"]
                                         / med(results["peer"], "median_generate_s")),
               "ours_gen_tokens_per_s": med(results[head], "gen_tokens_per_s"),
               "rollout_speedup_vs_per_prompt": results["fp32"][0].get("rollout_speedup"), "rounds": results}
    for v, row in rows.items():
        print(f"{v:>15}: {row['median_step_s']:.2f} s/step vs peer {peer_s:.2f}: ratio {row['ratio']:.3f} "
              f"(rounds {', '.join(f'{x:.3f}' for x in row['round_ratios'])}); peak RSS {row['peak_rss_mib']:.0f} "
              f"vs {summary['peer_peak_rss_mib']:.0f} MiB", flush=True)
    print(f"headline ({head}, fp32, the peer's settings): ratio {summary['ratio']:.3f}; generation "
          f"{summary['ours_gen_tokens_per_s']:.0f} tok/s vs the peer's {summary['peer_gen_tokens_per_s']:.0f}", flush=True)
    print(json.dumps({k: v for k, v in summary.items() if k != "rounds"}))
    (ROOT / "benchmarks" / "last_compare.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
