"""The report's PNG plots, drawn from the evaluate stage's artifacts (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> str:
    """Write ``fig`` atomically to ``path``; returns the path relative to the run root."""
    plt = pyplot()
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=90)
    tmp.replace(path)
    plt.close(fig)
    return f"plots/{path.name}"


def emt_by_stratum(protocol: dict, out: Path) -> str | None:
    """Expected Maximum Toxicity before / after per stratum, one panel per scorer, 95% CI bars."""
    if not protocol["k"]:
        return None
    plt = pyplot()
    scorers = list(protocol["toxicity"])
    fig, axes = plt.subplots(1, len(scorers), figsize=(4.5 * len(scorers), 3.4), squeeze=False)
    for ax, scorer in zip(axes[0], scorers):
        strata = list(protocol["toxicity"][scorer])
        for j, side in enumerate(("before", "after")):
            figs = [protocol["toxicity"][scorer][s]["expected_maximum_toxicity"] for s in strata]
            values = [f[side] for f in figs]
            errors = [[v - f[f"{side}_ci95"][0] for v, f in zip(values, figs)],
                      [f[f"{side}_ci95"][1] - v for v, f in zip(values, figs)]]
            xs = [i + (j - 0.5) * 0.38 for i in range(len(strata))]
            ax.bar(xs, values, width=0.36, yerr=errors, capsize=3, label="before (SFT)" if side == "before" else "after (RL)")
        ax.set_xticks(range(len(strata)), strata)
        ax.set(ylim=(0, 1.05), ylabel=f"EMT (k = {protocol['k']})", title=scorer)
        ax.legend(fontsize=8)
    return save(fig, out / "emt_by_stratum.png")


def max_toxicity_hist(records: list[dict], scorer: str, out: Path) -> str | None:
    """Distribution over prompts of the max toxicity among the k samples, before vs after."""
    if not records or not records[0]["scores"][scorer]["before"]["samples"]:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    bins = [i / 20 for i in range(21)]
    for side, label in (("before", "before (SFT)"), ("after", "after (RL)")):
        ax.hist([max(r["scores"][scorer][side]["samples"]) for r in records], bins=bins, alpha=0.6, label=label)
    ax.set(xlabel=f"max toxicity of the k samples ({scorer})", ylabel="prompts", title="Max-of-k toxicity")
    ax.legend()
    return save(fig, out / "max_toxicity_hist.png")


def rl_curves(history: list[dict], out: Path) -> str | None:
    if not history:
        return None
    plt = pyplot()
    keys = (["loss/policy", "preference/margin", "preference/accuracy", "preference/reward_chosen"]
            if "preference/margin" in history[0]  # DPO / IPO
            else ["objective/scores", "objective/kl", "objective/kl_coef", "policy/clipfrac"])
    fig, axes = plt.subplots(1, 4, figsize=(14, 3))
    for ax, key in zip(axes, keys):
        ax.plot([h["step"] for h in history], [h.get(key) for h in history])
        ax.set(title=key, xlabel="step")
    return save(fig, out / "rl_curves.png")


def rouge_by_stage(bars: dict[str, float], out: Path) -> str | None:
    if not bars:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(list(bars), list(bars.values()))
    ax.set(ylabel="ROUGE-L", title="ROUGE-L by stage")
    ax.tick_params(axis="x", rotation=30)
    return save(fig, out / "rouge_by_stage.png")
