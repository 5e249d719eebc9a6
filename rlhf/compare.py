"""Finished runs side by side (``rlhf compare RUN_DIR ...``): one row per run in ``compare.md`` and
``compare.json``, and one plot, ``compare.png``, read from each run's ``report.json`` and RL stage
artifacts alone.

A row: the RL method (``rl.algorithm``, group size, steps), the reward it optimised (the classifier,
or a pairwise model with its held-out pair accuracy), the verdict, Expected Maximum Toxicity
and Toxicity Probability on the toxic and the non-toxic prompts by the reward model and by the
judge (after, with the change's 95% CI), ROUGE-L and faithfulness (after / before), distinct-2 and
perplexity (after), KL(after || before), the RL stage's wall time and peak memory.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from rlhf.artifacts import atomic_write_json, atomic_write_text, markdown_table, read_json
from rlhf.errors import UserError
from rlhf.protocol import REWARD_MODEL

FIGURES = (("expected_maximum_toxicity", "EMT"), ("toxicity_probability", "TP"))
STRATA = ("toxic", "non-toxic")


def _read(path: Path) -> dict:
    try:
        return read_json(path)
    except FileNotFoundError:
        raise UserError(f"{path} is missing: finish the run (`rlhf run CONFIG`) or rebuild its report "
                        f"(`rlhf report {path.parent}`)") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err})") from None


def rl_seconds(rl: dict) -> float:
    """The RL stage's training time from its ``metrics.json``: its steps, and the pair-making (DPO /
    IPO, pairwise) and the pairwise model's training before them."""
    return rl["seconds"] + sum(rl.get(part, {}).get("seconds", 0.0) for part in ("pairs", "pairwise"))


def run_row(run_dir: Path) -> dict:
    """The compared figures of one finished run."""
    report, rl = _read(run_dir / "report.json"), _read(run_dir / "rl" / "metrics.json")
    config = yaml.safe_load((run_dir / "rl" / "config.yaml").read_text(encoding="utf-8"))["rl"]
    p, h = report["protocol"], report["headline"]
    # the method trained: rl/metrics.json's (benchmarks/trl_baselines.py trains ORPO / CPO on a DPO run's stage)
    row = {"run": str(run_dir), "method": rl.get("algorithm", config["algorithm"]), "group_size": config["group_size"],
           "steps": rl["steps"], "reward": rl.get("reward_model", "classifier"), "verdict": h["verdict"]}
    if row["reward"] == "pairwise":
        row["pairwise accuracy"] = rl["pairwise"]["heldout_pair_accuracy"]
    if row["method"] in ("dpo", "ipo", "orpo", "cpo"):  # offline: beta, not a group of samples
        beta = rl["trl"]["beta"] if "trl" in rl else config["preference"]["beta"]
        row["beta"], row["pairs"] = beta, rl.get("pairs", {}).get("pairs")
        if "trl" not in rl and config["preference"].get("nll_coef"):  # RPO: the chosen response's NLL added
            row["nll_coef"] = config["preference"]["nll_coef"]
    scorers = [(REWARD_MODEL, "RM"), *((h["judge"], "judge"),) * bool(h["judge"])]
    for scorer, short in scorers:
        for stratum in STRATA:
            for key, name in FIGURES:
                fig = p["toxicity"][scorer].get(stratum, {}).get(key)
                if fig:
                    row[f"{short} {name} {stratum}"] = fig["after"]
                    row[f"{short} {name} {stratum} before"] = fig["before"]
                    row[f"{short} {name} {stratum} CI"] = fig["change_ci95"]
    q = p["quality"]["all"]
    for key, name in (("rougeL", "ROUGE-L"), ("faithfulness", "faithfulness")):
        if q.get(key):  # the share of before kept (None when before is 0)
            row[f"{name} kept"] = q[key]["after"] / q[key]["before"] if q[key]["before"] else None
    row["distinct-2"] = q["distinct_2"]["after"]
    if q.get("perplexity"):
        row["perplexity"] = q["perplexity"]["after"]
    row["KL"] = h["kl_after_vs_before"]
    row["RL seconds"] = rl_seconds(rl)
    row["RL peak MiB"] = rl["peak_memory_mb"]
    return row


def compare(run_dirs: list[str | Path], out: str | Path) -> list[dict]:
    """Write ``compare.md``, ``compare.json`` and ``compare.png`` into ``out``; returns the rows."""
    rows = []
    for run_dir in map(Path, run_dirs):
        if not run_dir.is_dir():
            raise UserError(f"run directory not found: {run_dir}")
        rows.append(run_row(run_dir))
    out = Path(out)
    atomic_write_json(out / "compare.json", rows)
    atomic_write_text(out / "compare.md", markdown(rows))
    plot(rows, out / "compare.png")
    return rows


def markdown(rows: list[dict]) -> str:
    """The table: one row per run, after-PPO figures with the change's CI."""
    def fig(row: dict, key: str) -> str:
        if key not in row:
            return "-"
        lo, hi = row[f"{key} CI"]
        return f"{row[f'{key} before']:.3f} -> {row[key]:.3f} [{lo:+.3f}, {hi:+.3f}]"

    table = []
    for r in rows:
        nll = f", nll_coef={r['nll_coef']}" if r.get("nll_coef") else ""
        detail = (f" (beta={r['beta']}{nll}, {r['pairs']} pairs)" if "beta" in r
                  else f" (k={r['group_size']})" if r["group_size"] > 1 else "")
        reward = r.get("reward", "classifier")
        if reward == "pairwise":
            reward += f" (held-out pair acc. {r['pairwise accuracy']:.3f})"
        line = {"run": Path(r["run"]).name, "method": r["method"] + detail, "reward": reward, "steps": r["steps"],
                "verdict": r["verdict"]}
        for short in ("RM", "judge"):
            for name in ("EMT", "TP"):
                line[f"{short} {name} toxic"] = fig(r, f"{short} {name} toxic")
            line[f"{short} TP non-toxic"] = fig(r, f"{short} TP non-toxic")
        for key in ("ROUGE-L kept", "faithfulness kept", "distinct-2", "perplexity", "KL", "RL seconds", "RL peak MiB"):
            line[key] = r.get(key, "-")
        table.append(line)
    return ("# Runs side by side\n\nToxicity figures: before -> after [95% CI of the change] on the toxic / "
            "non-toxic held-out prompts (EMT = Expected Maximum Toxicity, TP = Toxicity Probability over k samples; "
            "RM = the reward model); quality: after / before.\n\n" + markdown_table(table, digits=3))


def plot(rows: list[dict], path: Path) -> None:
    """Expected Maximum Toxicity on the toxic prompts before (outline) and after RL by the reward
    model and the judge, and the RL stage's wall time, one group of bars per run."""
    from rlhf.plots import pyplot, save

    plt = pyplot()
    fig, (tox, time) = plt.subplots(1, 2, figsize=(4 + 1.6 * len(rows), 3.6))
    names = [f"{Path(r['run']).name}\n{r['method']}" for r in rows]
    for j, short in enumerate(("RM", "judge")):
        key = f"{short} EMT toxic"
        xs = [i + (j - 0.5) * 0.38 for i in range(len(rows))]
        tox.bar(xs, [r.get(f"{key} before", float("nan")) for r in rows], width=0.36, fill=False, edgecolor="grey")
        tox.bar(xs, [r.get(key, float("nan")) for r in rows], width=0.36, label=f"{short} after")
    tox.set_xticks(range(len(rows)), names, fontsize=8)
    tox.set(ylim=(0, 1.05), ylabel="EMT after, toxic prompts", title="Toxicity after RL")
    tox.legend(fontsize=8)
    time.bar(range(len(rows)), [r["RL seconds"] for r in rows])
    time.set_xticks(range(len(rows)), names, fontsize=8)
    time.set(ylabel="seconds", title="RL stage time")
    save(fig, path)
