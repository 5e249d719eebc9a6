"""``make smoke-lab``: the lab config's five stages through the CLI on hub-shaped stand-ins, on CPU,
then its RL and evaluate stages again with RLOO, with GRPO and with DPO (on pairs it makes of the
SFT model's samples).

Builds the stand-ins (benchmarks/standins.py: random flan-t5-small-shaped T5 with the real T5
tokenizer, DialogSum in the Hub's layout, a random roberta-shaped classifier labelled
nothate/hate) into a work folder outside the repository, then runs

    rlhf run configs/flan_t5_base_dialogsum.yaml model.name=... data.source=... reward.pretrained=... (sizes)

with its output piped (not a terminal), and checks what a real user would hit: no special-token
text (``<extra_id_N>``, ``<pad>``, ...) in any generation, the reward's label names, the Hub test
split grouped into one record per dialogue holding all its references (and ROUGE on all of them),
and progress lines without a terminal. Exit 0 when every check passes, 1 otherwise; skips (exit 0,
one line) only where ../shared/data is absent.

    python benchmarks/smoke_lab.py [--work DIR] [--keep] [--shared DIR] [--timeout S]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.standins import SHARED_DATA, build, missing_shared  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "flan_t5_base_dialogsum.yaml"
RUN_NAME = "smoke-lab"
SPECIAL = re.compile(r"<extra_id_\d+>|<pad>|</s>|<unk>|<s>|<mask>")
PROGRESS = re.compile(r"^(?P<desc>[\w/. -]+): (?P<n>\d+)/(?P<total>\d+) \((?P<pct>\d+)%\)")
SIZES = [  # a few dialogues, few steps, short generations; the lab's structure otherwise
    "model.mixed_precision=no", "data.max_samples=16",  # dialogues: the test split keeps its 3 rows each
    "prompt.n_dialogues=4", "prompt.max_new_tokens=8", "prompt.batch_size=4", "prompt.n_examples_shown=2",
    ("prompt.settings=[{name: greedy}, {name: sample_t1.0, do_sample: true, temperature: 1.0}, "
     "{name: beams_2, num_beams: 2}]"),
    "sft.max_steps=2", "sft.batch_size=2", "sft.eval_batch_size=8", "sft.eval_steps=2", "sft.save_steps=2",
    "sft.eval_n_dialogues=4", "sft.max_new_tokens=8",
    "rl.steps=3", "rl.batch_size=4", "rl.mini_batch_size=2", "rl.epochs=2", "rl.max_new_tokens=8",
    "rl.save_steps=2", "rl.sample_steps=2", "rl.eval_n_dialogues=4", "rl.eval_batch_size=8",
    "evaluate.n_samples=2", "evaluate.batch_size=16", "evaluate.bootstrap_resamples=200",
]


def overrides(standins: Path, output_dir: Path) -> list[str]:
    return [f"model.name={standins / 't5'}", f"data.source={standins / 'dialogsum'}",
            f"reward.pretrained={standins / 'roberta-hate'}", f"output_dir={output_dir}", f"run_name={RUN_NAME}",
            *SIZES]


def child_env(work: Path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               RLHF_CACHE=str(work / "cache"), PYTHONUNBUFFERED="1")
    env.pop("RLHF_FLUSH_DENORMALS", None)  # the CLI's default, as a user gets it
    return env


def run_cli(args: list[str], env: dict, timeout: float, echo: bool = True) -> tuple[int, str]:
    """``rlhf ARGS`` with stdout and stderr on a pipe (what a log file or CI sees); echoed live."""
    script = Path(sys.executable).parent / "rlhf"  # the console script a user runs
    cmd = [str(script), *args] if script.is_file() else [sys.executable, "-m", "rlhf.cli", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(timeout, proc.kill)  # also when the command hangs without printing
    watchdog.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if echo:
                print(f"  | {line}", end="", flush=True)
        rc = proc.wait()
    finally:
        watchdog.cancel()
    if rc < 0:
        lines.append(f"smoke-lab: `rlhf {args[0]}` killed after {timeout:.0f}s\n")
    return rc, "".join(lines)


# --------------------------------------------------------------------------------------------
# Checks: each returns a list of problems (empty = passed) and notes what it looked at
# --------------------------------------------------------------------------------------------


def special_token_problems(texts: dict[str, list[str]]) -> list[str]:
    """Every text holding special-token text, by where it came from."""
    problems = []
    for where, items in texts.items():
        for text in items:
            if hit := SPECIAL.search(text):
                problems.append(f"special token {hit.group()!r} in {where}: {text[:120]!r}")
    return problems


def generated_texts(run_dir: Path) -> dict[str, list[str]]:
    """The generations each stage wrote, by artifact."""
    out: dict[str, list[str]] = {}
    out["prompt/samples.json"] = [s["output"] for s in json.loads((run_dir / "prompt" / "samples.json").read_text())]
    out["sft/samples.md"] = (run_dir / "sft" / "samples.md").read_text().splitlines()
    rows = json.loads((run_dir / "rl" / "before_after.json").read_text())
    out["rl/before_after.json"] = [r[k] for r in rows for k in ("before", "after")]
    out["rl/samples"] = [line for p in sorted((run_dir / "rl" / "samples").glob("*.md"))
                          for line in p.read_text().splitlines()]
    out["evaluate/generations.jsonl"] = [t for r in read_records(run_dir) for side in ("before", "after")
                                         for t in [r[side]["greedy"], *r[side]["samples"]]]
    return out


def read_records(run_dir: Path) -> list[dict]:
    with (run_dir / "evaluate" / "generations.jsonl").open() as f:
        return [json.loads(line) for line in f if line.strip()]


def label_problems(run_dir: Path) -> list[str]:
    metrics = json.loads((run_dir / "reward" / "metrics.json").read_text())
    if metrics.get("non_toxic_label") != "nothate":
        return [f"reward stage used non-toxic label {metrics.get('non_toxic_label')!r}, not the lab model's 'nothate'"]
    return []


def wrong_label_problems(args: list[str], env: dict, timeout: float) -> list[str]:
    """The project's default label name on the lab's classifier: one line on stderr, exit 2."""
    rc, out = run_cli(args, env, timeout, echo=False)
    lines = [line for line in out.splitlines() if line.strip()]
    if rc != 2 or not lines or "nothate" not in lines[-1] or "Traceback" in out:
        return [f"reward.non_toxic_label=non-toxic on a nothate/hate classifier: exit {rc}, output {out[-300:]!r}"]
    return []


def expected_groups(test_rows: list[dict]) -> dict[str, list[str]]:
    """First row id -> the summaries of that dialogue's rows, one per row, in order (Hub layout)."""
    first_ids: dict[str, str] = {}
    groups: dict[str, list[str]] = {}
    for row in test_rows:
        groups.setdefault(first_ids.setdefault(row["dialogue"], str(row["id"])), []).append(row["summary"])
    return groups


def grouping_problems(records: list[dict], groups: dict[str, list[str]]) -> list[str]:
    """One record per dialogue of the test rows used, each with all its references."""
    problems = []
    if len(records) != len(groups):
        problems.append(f"evaluate wrote {len(records)} records for {len(groups)} distinct test dialogues")
    if len({r["id"] for r in records}) != len(records):
        problems.append("evaluate records repeat an id")
    for r in records:
        if r["id"] not in groups:
            problems.append(f"record {r['id']} is not the first row of a test dialogue")
        elif r["references"] != groups[r["id"]]:
            problems.append(f"record {r['id']} has {len(r['references'])} references, the Hub rows give "
                            f"{len(groups[r['id']])}")
    if groups and max(len(v) for v in groups.values()) < 3:
        problems.append("no test dialogue had 3 references: the stand-in's test split is not the Hub's layout")
    return problems


def rouge_problems(records: list[dict], report: dict) -> tuple[list[str], str]:
    """The report's ROUGE-L (before) is the mean over all references, not the first one's."""
    from rlhf.metrics import rouge_per_prediction

    greedy = [r["before"]["greedy"] for r in records]
    every = [s["rougeL"] for s in rouge_per_prediction(greedy, [r["references"] for r in records])]
    first = [s["rougeL"] for s in rouge_per_prediction(greedy, [r["references"][:1] for r in records])]
    reported = report["protocol"]["quality"]["all"]["rougeL"]["before"]
    all_refs, first_ref = sum(every) / len(every), sum(first) / len(first)
    note = f"ROUGE-L before: reported {reported:.4f}, all references {all_refs:.4f}, first reference {first_ref:.4f}"
    if abs(reported - all_refs) > 1e-9:
        return [f"report's ROUGE-L {reported:.6f} is not the all-references mean {all_refs:.6f}"], note
    if every == first:  # the stand-in T5 favours common summary tokens so that this does not happen
        return ["ROUGE check cannot tell all references from the first: every response scores the same"], note
    return [], note


def warning_notes(output: str) -> list[str]:
    """Distinct warning lines the user saw (reported, not failed: rlhf.runtime filters the harmless ones)."""
    seen: dict[str, int] = {}
    for line in output.splitlines():
        if "warn" in line.lower() or line.startswith("[transformers]"):
            seen[line.strip()[:140]] = seen.get(line.strip()[:140], 0) + 1
    return [f"printed {n}x: {line}" for line, n in seen.items()]


def progress_problems(output: str, sft_variants: list[str], rl_steps: int) -> list[str]:
    """Plain progress lines (no terminal): the PPO stage's and each SFT variant's, and no bar redraws."""
    seen = {m["desc"]: m for m in (PROGRESS.match(line) for line in output.splitlines()) if m}
    problems = [f"no progress line for {d}" for d in ["rl", *(f"sft/{v}" for v in sft_variants)] if d not in seen]
    if "rl" in seen and seen["rl"]["total"] != str(rl_steps):
        problems.append(f"rl progress counts to {seen['rl']['total']}, not rl.steps={rl_steps}")
    if "\r" in output:
        problems.append("carriage returns in the piped output: a progress bar drew on a non-terminal")
    return problems


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def test_rows_used(config) -> list[dict]:
    """The test rows the pipeline reads (filters and max_samples applied), straight from the files."""
    from rlhf.data import load_splits

    return [dict(r) for r in load_splits(config.data, config.seed)["test"]]


def all_checks(work: Path, output: str, env: dict, timeout: float) -> tuple[list[str], list[str]]:
    from rlhf.config import load_config

    args = overrides(work / "standins", work / "runs")
    config = load_config(CONFIG, args)
    run_dir = config.run_dir
    texts = generated_texts(run_dir)
    records = read_records(run_dir)
    report = json.loads((run_dir / "report.json").read_text())
    empty = sum(not t.strip() for t in texts["evaluate/generations.jsonl"])
    notes = [f"scanned {sum(map(len, texts.values()))} generated texts ({empty} evaluate responses empty)"]
    problems = special_token_problems(texts) + label_problems(run_dir)
    neg = ["reward", str(CONFIG), *args, f"output_dir={work / 'runs-label'}", "reward.non_toxic_label=non-toxic"]
    problems += wrong_label_problems(neg, env, timeout)
    problems += grouping_problems(records, expected_groups(test_rows_used(config)))
    rouge_issues, note = rouge_problems(records, report)
    problems += rouge_issues + progress_problems(output, [v.name for v in config.sft.variants], config.rl.steps)
    per_record = sorted({len(r["references"]) for r in records})
    notes += [note, f"{len(records)} evaluate records, references per record {per_record}", *warning_notes(output),
              *(line for line in output.splitlines() if re.match(r"^\w+: done in ", line))]
    return problems, notes


METHODS = {"rloo": ["rl.algorithm=rloo", "rl.group_size=2", "rl.epochs=1"],  # the critic-free methods, in groups
           "grpo": ["rl.algorithm=grpo", "rl.group_size=2"],
           # pairs of the stand-in SFT model's samples ranked by the random stand-in classifier, which gives every
           # text a toxicity of 0.474-0.477: a threshold inside that range and no margin split them; what is
           # checked is that pair-making and DPO run at this shape
           "dpo": ["rl.algorithm=dpo", "rl.group_size=2", "rl.epochs=1", "rl.pairs.k=4", "rl.pairs.margin=0",
                   "rl.pairs.clean_below=0.4755"]}


def method_problems(work: Path, env: dict, timeout: float) -> tuple[list[str], list[str]]:
    """RLOO, GRPO and DPO through the CLI on the same stand-ins: each a run that starts from a copy of the
    PPO run's prompt, sft and reward stages (`rlhf run` skips them) and runs its RL and evaluate
    stages; checked for special-token text, the algorithm recorded, and its progress lines."""
    problems, notes = [], []
    for name, extra in METHODS.items():
        run_name = f"{RUN_NAME}-{name}"
        for stage in ("prompt", "sft", "reward"):
            shutil.copytree(work / "runs" / RUN_NAME / stage, work / "runs" / run_name / stage, dirs_exist_ok=True)
        args = [*overrides(work / "standins", work / "runs"), f"run_name={run_name}", *extra]
        rc, output = run_cli(["run", str(CONFIG), *args], env, timeout, echo=False)
        if rc != 0 or "Traceback" in output:
            problems.append(f"`rlhf run ... {' '.join(extra)}` exited {rc}: {output.strip().splitlines()[-1:]}")
            continue
        run_dir = work / "runs" / run_name
        metrics = json.loads((run_dir / "rl" / "metrics.json").read_text())
        if (metrics.get("algorithm"), metrics.get("group_size")) != (name, 2):
            problems.append(f"{run_name}: rl/metrics.json says {metrics.get('algorithm')!r}, "
                            f"k={metrics.get('group_size')}")
        problems += [f"{name}: {p}" for p in special_token_problems(
            {k: v for k, v in generated_texts(run_dir).items() if k.startswith(("rl/", "evaluate/"))})]
        problems += [f"{name}: {p}" for p in progress_problems(output, [], int(metrics["steps"]))]
        skipped = [s for s in ("prompt", "sft", "reward") if f"{s}: already finished" in output]
        notes.append(f"{name}: rl and evaluate in {run_dir} (reused {', '.join(skipped)}); verdict "
                     f"{json.loads((run_dir / 'report.json').read_text())['headline']['verdict']!r}")
    return problems, notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", help="work folder (default: a new temp folder, removed afterwards unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--shared", default=str(SHARED_DATA), help="the shared data folder (default ../shared/data)")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds the pipeline may run")
    args = ap.parse_args(argv)
    if reason := missing_shared(Path(args.shared)):
        print(f"smoke-lab: skipped: {reason}")
        return 0
    work = Path(args.work).expanduser().resolve() if args.work else Path(tempfile.mkdtemp(prefix="rlhf-smoke-lab-"))
    if work == ROOT or ROOT in work.parents:
        print(f"error: --work {work} is inside the repository; the stand-ins hold third-party data", file=sys.stderr)
        return 2
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")  # the checks read the data too
    start = time.monotonic()
    try:
        build(work / "standins", Path(args.shared), "small")
        env = child_env(work)
        pipeline_start = time.monotonic()
        rc, output = run_cli(["run", str(CONFIG), *overrides(work / "standins", work / "runs"), "--force"], env,
                             args.timeout)
        pipeline_s = time.monotonic() - pipeline_start
        if rc != 0 or "Traceback" in output:
            print(f"smoke-lab: FAILED: `rlhf run` exited {rc} after {pipeline_s:.0f}s")
            return 1
        problems, notes = all_checks(work, output, env, args.timeout)
        more, method_notes = method_problems(work, env, args.timeout)
        problems, notes = problems + more, notes + method_notes
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
    for note in notes:
        print(f"smoke-lab: {note}")
    for problem in problems:
        print(f"smoke-lab: FAILED: {problem}")
    print(f"smoke-lab: {'FAILED' if problems else 'passed'}: five stages in {pipeline_s:.0f}s, "
          f"{time.monotonic() - start:.0f}s in all (work folder {work}{'' if args.keep or args.work else ', removed'})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
