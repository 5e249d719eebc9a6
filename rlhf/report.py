"""The run report: ``report.md`` + ``report.json`` + PNG plots at the run root, built from artifacts only."""

from __future__ import annotations

import json
from pathlib import Path

from rlhf.artifacts import atomic_write_json, atomic_write_text, markdown_table, read_json
from rlhf.errors import UserError

STAGES = ("prompt", "sft", "reward", "ppo", "evaluate")


def _load(run_dir: Path) -> dict:
    stages = {}
    for name in STAGES:
        folder = run_dir / name
        if (folder / "manifest.json").is_file():
            stages[name] = {"manifest": read_json(folder / "manifest.json"), "metrics": read_json(folder / "metrics.json")}
    if "evaluate" not in stages:
        raise UserError(f"run directory {run_dir} has no finished 'evaluate' stage: run `rlhf evaluate CONFIG` first")
    log = run_dir / "ppo" / "metrics.jsonl"
    stages.setdefault("ppo", {})["history"] = [json.loads(x) for x in log.open()] if log.is_file() else []
    return stages


def headline(ev: dict) -> dict:
    rm = ev["rm"]["greedy"]
    judge = ev["judges_run"][0] if ev["judges_run"] else None
    jb = ev[judge]["greedy"] if judge else None
    q = ev["quality"]
    return {
        "toxicity_before": rm["before"]["mean"], "toxicity_after": rm["after"]["mean"],
        "toxicity_change_ci95": rm["change_ci95"], "toxicity_improvement_pct": rm["improvement_pct"],
        "judge": judge, "judge_toxicity_before": jb["before"]["mean"] if jb else None,
        "judge_toxicity_after": jb["after"]["mean"] if jb else None, "judge_change_ci95": jb["change_ci95"] if jb else None,
        "rougeL_before": q["rouge_before"]["rougeL"], "rougeL_after": q["rouge_after"]["rougeL"],
        "kl_after_vs_before": q["kl_after_vs_before"], "n_samples": ev["n_samples"],
    }


def build_report(run_dir: str | Path) -> dict:
    """Gather every finished stage of ``run_dir`` into report.md / report.json / plots/*.png."""
    run_dir = Path(run_dir)
    stages = _load(run_dir)
    report = {"run_dir": str(run_dir), "headline": headline(stages["evaluate"]["metrics"]),
              "stages": {k: v.get("metrics") for k, v in stages.items()},
              "run": {k: {"seconds": v["manifest"]["seconds"], "seed": v["manifest"]["seed"],
                          "versions": v["manifest"]["versions"], "git_commit": v["manifest"].get("git_commit")}
                      for k, v in stages.items() if "manifest" in v}}
    plots = _plots(run_dir, stages)
    atomic_write_json(run_dir / "report.json", report)
    atomic_write_text(run_dir / "report.md", _markdown(report, stages, plots))
    return report


def _plots(run_dir: Path, stages: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    made = []
    per_sample = run_dir / "evaluate" / "per_sample.json"
    if per_sample.is_file():
        data = read_json(per_sample)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        bins = [i / 20 for i in range(21)]
        ax.hist(data["rm_before"], bins=bins, alpha=0.6, label="before (SFT)")
        ax.hist(data["rm_after"], bins=bins, alpha=0.6, label="after (PPO)")
        ax.set(xlabel="reward-model toxic probability (greedy)", ylabel="responses", title="Toxicity before / after")
        ax.legend()
        made.append(_save(fig, out / "toxicity_hist.png"))
    history = stages["ppo"].get("history") or []
    if history:
        keys = ["objective/scores", "objective/kl", "objective/kl_coef", "ppo/policy/clipfrac"]
        fig, axes = plt.subplots(1, 4, figsize=(14, 3))
        for ax, key in zip(axes, keys):
            ax.plot([h["step"] for h in history], [h[key] for h in history])
            ax.set(title=key, xlabel="step")
        made.append(_save(fig, out / "ppo_curves.png"))
    bars = _rouge_by_stage(stages)
    if bars:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.bar(list(bars), list(bars.values()))
        ax.set(ylabel="ROUGE-L", title="ROUGE-L by stage")
        ax.tick_params(axis="x", rotation=30)
        made.append(_save(fig, out / "rouge_by_stage.png"))
    return made


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    tmp.replace(path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f"plots/{path.name}"


def _rouge_by_stage(stages: dict) -> dict[str, float]:
    bars = {}
    if "prompt" in stages:
        bars["prompt (best)"] = stages["prompt"]["metrics"]["best"]["rougeL"]
    for name, row in (stages.get("sft", {}).get("metrics") or {}).get("variants", {}).items():
        bars[f"sft {name}"] = row["rougeL"]
    q = stages["evaluate"]["metrics"]["quality"]
    bars["eval before"], bars["eval after"] = q["rouge_before"]["rougeL"], q["rouge_after"]["rougeL"]
    return bars


def _markdown(report: dict, stages: dict, plots: list[str]) -> str:
    h, ev = report["headline"], stages["evaluate"]["metrics"]
    lo, hi = h["toxicity_change_ci95"]
    parts = [f"# RLHF run report: `{report['run_dir']}`\n",
             "## Headline (greedy responses, held-out test split)\n",
             f"- Reward-model toxicity: **{h['toxicity_before']:.4f} -> {h['toxicity_after']:.4f}** "
             f"(after - before 95% CI [{lo:+.4f}, {hi:+.4f}]; improvement {h['toxicity_improvement_pct']:.1f}%)",
             _judge_line(h, ev),
             f"- ROUGE-L: {h['rougeL_before']:.4f} -> {h['rougeL_after']:.4f}; "
             f"KL(after || before): {h['kl_after_vs_before']:.3f} nats per response ({ev['quality']['kl_on']})",
             f"- {h['n_samples']} prompts; scored text: {ev['scored_text']}.\n"]
    parts += [f"![{p}]({p})\n" for p in plots]
    parts.append(_toxicity_tables(ev))
    parts.append(_examples_md(ev["examples"]))
    for name, title in (("prompt", "Stage 1: prompting"), ("sft", "Stage 2: fine-tuning"), ("reward", "Stage 3: reward model"),
                        ("ppo", "Stage 4: PPO")):
        parts.append(f"## {title}\n\n{_stage_md(name, stages)}")
    rows = [{"stage": k, "seconds": v["seconds"], "seed": v["seed"], "git": (v["git_commit"] or "")[:10]}
            for k, v in report["run"].items()]
    versions = next(iter(report["run"].values()))["versions"]
    parts.append(f"## Run metadata\n\n{markdown_table(rows)}\nVersions: "
                 + ", ".join(f"{k} {v}" for k, v in versions.items()) + "\n")
    return "\n".join(parts)


def _judge_line(h: dict, ev: dict) -> str:
    if not h["judge"]:
        why = "; ".join(f"{k}: {v}" for k, v in ev["judges_missing"].items()) or "none configured"
        return f"- Independent judge: not run ({why})"
    lo, hi = h["judge_change_ci95"]
    return (f"- Independent judge `{h['judge']}` toxicity: **{h['judge_toxicity_before']:.4f} -> "
            f"{h['judge_toxicity_after']:.4f}** (after - before 95% CI [{lo:+.4f}, {hi:+.4f}])")


def _toxicity_tables(ev: dict) -> str:
    rows = []
    for scorer in ["rm", *ev["judges_run"]]:
        for mode, b in ev[scorer].items():
            rows.append({"scorer": "reward model" if scorer == "rm" else scorer, "responses": mode,
                         "mean before": b["before"]["mean"], "mean after": b["after"]["mean"],
                         "std before": b["before"]["std"], "std after": b["after"]["std"],
                         "median after": b["after"]["median"], f"share >= {ev['threshold']} before": b["before"]["share_toxic"],
                         f"share >= {ev['threshold']} after": b["after"]["share_toxic"],
                         "change CI95": f"[{b['change_ci95'][0]:+.4f}, {b['change_ci95'][1]:+.4f}]",
                         "mean improvement %": b["improvement_pct"], "std improvement %": b["std_improvement_pct"]})
    return f"## Toxicity before vs after\n\n{markdown_table(rows)}"


def _examples_md(examples: dict) -> str:
    cols = ["prompt", "before", "after", "toxicity_before", "toxicity_after"]
    return (f"## Largest improvements\n\n{markdown_table(examples['improvements'], cols, digits=3)}\n"
            f"## Largest regressions\n\n{markdown_table(examples['regressions'], cols, digits=3)}")


def _stage_md(name: str, stages: dict) -> str:
    m = stages.get(name, {}).get("metrics")
    if not m:
        return "_not run_\n"
    if name == "prompt":
        return markdown_table(m["rows"], ["mode", "setting", "rouge1", "rouge2", "rougeL", "mean_words", "gen_seconds"])
    if name == "sft":
        return markdown_table([{"variant": k, **v} for k, v in m["variants"].items()],
                              ["variant", "rouge1", "rouge2", "rougeL", "trainable_params", "trainable_pct",
                               "train_seconds", "peak_memory_mb"])
    if name == "reward":
        keys = [k for k in ("accuracy", "precision", "recall", "f1", "roc_auc", "ece") if k in m]
        return markdown_table([{k: m[k] for k in keys}]) if keys else f"pretrained `{m['pretrained']}`\n"
    keys = ("steps", "toxicity_before", "toxicity_after", "rougeL_before", "rougeL_after", "kl_mean_final", "seconds")
    return markdown_table([{k: m.get(k) for k in keys}])
