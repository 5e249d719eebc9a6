"""Our PPO step vs the classic TRL 0.11.4 seq2seq PPOTrainer, alternating runs on identical inputs.

The peer (../shared/peers/trl011/bench_trl.py, run in its own venv at $PEER/venv) writes the
initial weights, tokenizer and prompts first; both implementations then start from them. Runs
alternate (peer, ours, peer, ours, ...) because this kind of VM changes speed over time.

    python benchmarks/compare.py [--steps N] [--rounds R]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--peer", default=os.environ.get("PEER", str(Path.home() / "peer-trl011")))
    args = ap.parse_args()
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
    results = {"peer": [], "ours": []}
    first = ["--model-out", str(peer / "init_model"), "--prompts-out", str(peer / "prompts.jsonl")]
    for r in range(args.rounds):
        results["peer"].append(run(peer_cmd + (first if r == 0 else []), PEER_SCRIPT.parent))
        results["ours"].append(run(ours_cmd + (["--rollout-compare"] if r == 0 else []), ROOT))
        p, o = results["peer"][-1], results["ours"][-1]
        print(f"round {r}: peer {p['median_step_s_excl_first']:.2f}s/step, ours {o['median_step_s']:.2f}s/step, "
              f"ratio {o['median_step_s'] / p['median_step_s_excl_first']:.3f}", flush=True)
    peer_s = statistics.median(p["median_step_s_excl_first"] for p in results["peer"])
    ours_s = statistics.median(o["median_step_s"] for o in results["ours"])
    summary = {"cpu": cpu_description(), "peer_flushes_denormals": True, "peer_median_step_s": peer_s, "ours_median_step_s": ours_s, "ratio": ours_s / peer_s,
               "peer_peak_rss_mib": max(p["peak_rss_mib"] for p in results["peer"]),
               "ours_peak_rss_mib": max(o["peak_rss_mib"] for o in results["ours"]),
               "peer_generate_s": statistics.median(p["median_generate_s"] for p in results["peer"]),
               "ours_generate_s": statistics.median(o["generate_s"] for o in results["ours"]),
               "rollout_speedup_vs_per_prompt": results["ours"][0].get("rollout_speedup"), "rounds": results}
    print(json.dumps({k: v for k, v in summary.items() if k != "rounds"}))
    (ROOT / "benchmarks" / "last_compare.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
