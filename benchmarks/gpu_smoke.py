"""Helpers of benchmarks/gpu_smoke.sh: check a command's config overrides, and print per-step time and
peak memory from the run folders it wrote.

    python benchmarks/gpu_smoke.py check CONFIG [key=value ...]     # exit 2 with one line if invalid
    python benchmarks/gpu_smoke.py device cuda|cpu                  # exit 2 unless torch sees that device
    python benchmarks/gpu_smoke.py report RUN_DIR[=NVSMI_LOG] ...   # the figures, one block per run

Peak GPU memory is the stages' own record (``torch.cuda.max_memory_allocated`` while PPO / SFT train,
in ``metrics.json``) and, when the script could sample it, ``nvidia-smi``'s memory.used over the whole
command (every stage, the CUDA context included).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def check(config: str, overrides: list[str]) -> int:
    from rlhf.config import load_config
    from rlhf.errors import UserError

    try:
        load_config(config, overrides)
    except UserError as err:
        print(f"error: {config}: {err}", file=sys.stderr)
        return 2
    return 0


def device(kind: str) -> int:
    import torch

    if kind == "cuda" and not torch.cuda.is_available():
        print(f"error: torch {torch.__version__} sees no CUDA device (a CPU build of torch, or no GPU visible); "
              f"install a CUDA build into the venv, or use --device cpu", file=sys.stderr)
        return 2
    if kind == "cuda" and not torch.cuda.is_bf16_supported():
        print(f"error: {torch.cuda.get_device_name(0)} has no bf16 support, which the smoke script's bf16 phases "
              f"need (model.mixed_precision=bf16)", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(0) if kind == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}")
    return 0


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def nvsmi_peak(log: Path | None) -> float | None:
    """Largest memory.used (MiB) in an ``nvidia-smi --query-gpu=memory.used -lms`` log."""
    if log is None or not log.is_file():
        return None
    values = [float(v) for v in log.read_text().split() if v.replace(".", "", 1).isdigit()]
    return max(values) if values else None


def run_lines(run_dir: Path, nvsmi_log: Path | None = None) -> list[str]:
    """Stage times, PPO step times and peak memory of one run folder, as printable lines."""
    lines = [f"== {run_dir.name} ({run_dir})"]
    stages = {s: read_json(run_dir / s / "manifest.json") for s in ("prompt", "sft", "reward", "rl", "evaluate")}
    done = {s: m["seconds"] for s, m in stages.items() if m}
    lines.append("stage seconds: " + (", ".join(f"{s} {t:.1f}" for s, t in done.items()) or "no stage finished"))
    log = run_dir / "rl" / "metrics.jsonl"
    rows = log.read_text().splitlines() if log.is_file() else []
    steps = [json.loads(line)["time/step"] for line in rows if line.strip()]
    if steps:
        rest = steps[1:] or steps
        lines.append(f"rl step seconds: first {steps[0]:.2f}, median of the rest {statistics.median(rest):.2f} "
                     f"({len(steps)} steps: {', '.join(f'{s:.2f}' for s in steps)})")
    rl = read_json(run_dir / "rl" / "metrics.json") or {}
    if "peak_memory_mb" in rl:
        lines.append(f"rl peak memory while training: {rl['peak_memory_mb']:.0f} MiB ({rl.get('precision', '?')})")
    sft = (read_json(run_dir / "sft" / "metrics.json") or {}).get("variants", {})
    for name, v in sft.items():
        if v.get("peak_memory_mb") is not None:
            lines.append(f"sft/{name} peak memory while training: {v['peak_memory_mb']:.0f} MiB, "
                         f"{v.get('train_seconds', float('nan')):.1f}s")
    if (peak := nvsmi_peak(nvsmi_log)) is not None:
        lines.append(f"nvidia-smi peak memory.used over the command: {peak:.0f} MiB")
    return lines


def report(args: list[str]) -> int:
    for arg in args:
        folder, _, log = arg.partition("=")
        print("\n".join(run_lines(Path(folder), Path(log) if log else None)))
    return 0


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "check":
        return check(argv[1], argv[2:])
    if len(argv) == 2 and argv[0] == "device" and argv[1] in ("cuda", "cpu"):
        return device(argv[1])
    if len(argv) >= 2 and argv[0] == "report":
        return report(argv[1:])
    print("error: usage: gpu_smoke.py check CONFIG [key=value ...] | device cuda|cpu | report RUN_DIR[=LOG] ...",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
