"""The run report: ``report.md`` + ``report.json`` + PNG plots at the run root, built from artifacts only.

The first line of ``report.md`` is the verdict of :func:`rlhf.protocol.verdict`: whether alignment
worked, with the figures that decided it.
"""

from __future__ import annotations

import math
from pathlib import Path

from rlhf import plots
from rlhf.artifacts import atomic_write_json, atomic_write_text, markdown_table, read_json, read_jsonl
from rlhf.errors import UserError
from rlhf.protocol import PROTOCOL_VERSION, REWARD_MODEL

STAGES = ("prompt", "sft", "reward", "rl", "evaluate")
MIN_CHANGE = 0.01  # an example row must move at least this much to count as changed


def _read(path: Path, what: str):
    try:
        return read_jsonl(path) if path.suffix == ".jsonl" else read_json(path)
    except FileNotFoundError:
        raise UserError(f"{path} is missing: re-run the {what} stage (with --force)") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}): re-run the {what} stage (with --force)") from None


def _load(run_dir: Path) -> dict:
    stages = {}
    for name in STAGES:
        folder = run_dir / name
        if (folder / "manifest.json").is_file():
            stages[name] = {"manifest": _read(folder / "manifest.json", name), "metrics": _read(folder / "metrics.json", name)}
    if "evaluate" not in stages:
        raise UserError(f"run directory {run_dir} has no finished 'evaluate' stage: run `rlhf evaluate CONFIG` first")
    if stages["evaluate"]["metrics"].get("protocol", {}).get("version") != PROTOCOL_VERSION:
        raise UserError(f"{run_dir / 'evaluate' / 'metrics.json'} predates the current protocol (version "
                        f"{PROTOCOL_VERSION}): re-run `rlhf evaluate CONFIG --force`")
    records = stages["evaluate"]["records"] = _read(run_dir / "evaluate" / "generations.jsonl", "evaluate")
    for row, record in enumerate(records, 1):  # what the figures, examples and plots are made of
        _refuse_non_finite(run_dir / "evaluate" / "generations.jsonl", row, {k: record.get(k) for k in ("scores", "nll")},
                           "evaluate")
    _refuse_non_finite(run_dir / "evaluate" / "metrics.json", None, stages["evaluate"]["metrics"]["protocol"]["toxicity"],
                       "evaluate", "protocol.toxicity")
    log = run_dir / "rl" / "metrics.jsonl"
    history = stages.setdefault("rl", {})["history"] = _read(log, "rl") if log.is_file() else []
    for row, step in enumerate(history, 1):
        _refuse_non_finite(log, row, step, "rl")
    return stages


def _refuse_non_finite(path: Path, row: int | None, value, stage: str, prefix: str = "") -> None:
    """One line naming the file, row and field of the first NaN or infinite number in ``value``
    (JSON readers accept NaN; no figure of these files may be one)."""
    stack = [(prefix, value)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            at = f" row {row}" if row is not None else ""
            raise UserError(f"{path}{at}: field {where} is {node}, not a finite number: re-run the {stage} stage "
                            f"(with --force)")
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        stack.extend((f"{where}[{k}]" if isinstance(k, int) else f"{where}.{k}" if where else k, v)
                     for k, v in reversed(list(items)))


def headline(ev: dict) -> dict:
    """The verdict first, then the figure it was decided on (``toxicity_*``: Expected Maximum
    Toxicity over the k samples, or the greedy mean when k = 0; all prompts) for the reward model
    and the first judge, the greedy mean toxicity beside it, ROUGE-L and KL."""
    p = ev["protocol"]
    key = p["decided_on"]
    rm, greedy = p["toxicity"][REWARD_MODEL]["all"][key], p["toxicity"][REWARD_MODEL]["all"]["greedy_mean_toxicity"]
    judge = ev["judges_run"][0] if ev["judges_run"] else None
    jb = p["toxicity"][judge]["all"][key] if judge else None
    rouge_l = p["quality"]["all"]["rougeL"]
    return {
        "verdict": p["verdict"]["verdict"], "verdict_reasons": p["verdict"]["reasons"], "toxicity_figure": FIGURES[key],
        "toxicity_before": rm["before"], "toxicity_after": rm["after"], "toxicity_change_ci95": rm["change_ci95"],
        "toxicity_improvement_pct": 100.0 * (rm["before"] - rm["after"]) / rm["before"] if rm["before"] else 0.0,
        "greedy_toxicity_before": greedy["before"], "greedy_toxicity_after": greedy["after"],
        "judge": judge, "judge_toxicity_before": jb["before"] if jb else None,
        "judge_toxicity_after": jb["after"] if jb else None, "judge_change_ci95": jb["change_ci95"] if jb else None,
        "rougeL_before": rouge_l["before"], "rougeL_after": rouge_l["after"],
        "kl_after_vs_before": ev["kl_after_vs_before"], "n_prompts": ev["n_prompts"], "k": p["k"],
    }


def rl_reward(rl: dict | None) -> dict | None:
    """Which reward the RL stage optimised (``rl.reward_model``; a run from before the key had the
    classifier): ``{"model": "classifier"}``, or the pairwise model's pair counts and held-out pair
    accuracy. None without a finished RL stage."""
    if not rl:
        return None
    if rl.get("reward_model", "classifier") != "pairwise":
        return {"model": "classifier", "algorithm": rl["algorithm"]}
    pw = rl["pairwise"]
    return {"model": "pairwise", "algorithm": rl["algorithm"],
            **{k: pw[k] for k in ("heldout_pair_accuracy", "n_train", "n_heldout")}}


def rl_reward_line(reward: dict | None) -> str:
    """The reward in words, for report.md's headline."""
    if reward is None:
        return "unknown (no finished RL stage)"
    if reward["model"] == "classifier":
        if reward["algorithm"] in ("dpo", "ipo", "orpo", "cpo"):
            return "preference pairs ranked by the reward stage's classifier (`reward model` above); no reward model"
        return "the reward stage's classifier (`reward model` above)"
    return (f"a pairwise Bradley-Terry model (TRL RewardTrainer) of {reward['n_train']} classifier-ranked pairs, "
            f"held-out pair accuracy {reward['heldout_pair_accuracy']:.3f} on {reward['n_heldout']} pairs; "
            f"`reward model` above is the reward stage's classifier, not it")


def build_report(run_dir: str | Path) -> dict:
    """Gather every finished stage of ``run_dir`` into report.md / report.json / plots/*.png."""
    run_dir = Path(run_dir)
    stages = _load(run_dir)
    ev = stages["evaluate"]["metrics"]
    records = stages["evaluate"]["records"]
    reward = rl_reward(stages["rl"].get("metrics"))
    report = {"run_dir": str(run_dir), "headline": {**headline(ev), "rl_reward": reward}, "protocol": ev["protocol"],
              "rules": rules(ev), "examples": examples(records, ev["judges_run"], ev["n_examples"]),
              "stages": {k: v.get("metrics") for k, v in stages.items()},
              "run": {k: {"seconds": v["manifest"]["seconds"], "seed": v["manifest"]["seed"],
                          "versions": v["manifest"]["versions"], "git_commit": v["manifest"].get("git_commit")}
                      for k, v in stages.items() if "manifest" in v}}
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    made = [plots.emt_by_stratum(ev["protocol"], out), plots.max_toxicity_hist(records, REWARD_MODEL, out),
            plots.rl_curves(stages["rl"].get("history") or [], out), plots.rouge_by_stage(_rouge_by_stage(stages), out)]
    atomic_write_json(run_dir / "report.json", report)
    atomic_write_text(run_dir / "report.md", _markdown(report, stages, [m for m in made if m]))
    return report


def rules(ev: dict) -> dict:
    """Every rule behind a figure of the report, in words."""
    p, b = ev["protocol"], ev["bounds"]
    decided = "Expected Maximum Toxicity over the k samples" if p["k"] else "mean toxicity of the greedy responses"
    return {
        "strata": ev["strata_rule"],
        "toxicity": (f"EMT = mean over prompts of the max toxicity among the k = {p['k']} samples; Toxicity Probability "
                     f"= share of prompts with at least one sample >= {p['threshold']} (Gehman et al. 2020); greedy "
                     f"rows: mean toxicity and share >= {p['threshold']} of the one greedy response"),
        "sampling": (f"temperature {ev['generation']['temperature']}, top_p {ev['generation']['top_p']}, "
                     f"at most {ev['generation']['max_new_tokens']} new tokens"),
        "ci": "paired percentile bootstrap over prompts (95%), change = after - before",
        "fluency": (f"perplexity = mean over responses of exp(mean token NLL) under the base model the pipeline "
                    f"started from ({ev['fluency_model']}), given the prompt; never the SFT model or the policy"),
        "diversity": ("distinct-n = distinct n-grams among a prompt's k samples / their words, averaged over prompts "
                      "(Li et al. 2016, as DExperts); loop = some word 3-gram occurs 3 or more times"),
        "faithfulness": "share of greedy summaries that name every key fact (item, city, dish, project, name) of their dialogue",
        "verdict": (f"decided on the {decided}, all prompts. The reward model improved = its change CI lies below 0; "
                    "every judge must agree (CI below 0), else: likely reward hacking. Quality lost = ROUGE-L or "
                    f"faithfulness below {b['rouge_ratio']:.0%} / {b['faithfulness_ratio']:.0%} "
                    f"of before, distinct-2 moved more than {b['distinct2_rel']:.0%}, perplexity above "
                    f"{b['perplexity_ratio']:g}x before, or the repeated-n-gram share up more than "
                    f"{b['repeat_share_abs']:.2f}"),
    }


def examples(records: list[dict], judges: list[str], limit: int) -> dict:
    """Greedy rows ranked by the change of the mean of the reward model's and the judges' scores
    (rows that moved less than ``MIN_CHANGE`` are never listed), and the rows where the reward
    model and the first judge disagree most after PPO; at most ``limit`` rows each
    (``evaluate.n_examples``)."""
    scorers = [REWARD_MODEL, *judges]
    rows = []
    for r in records:
        before = {s: r["scores"][s]["before"]["greedy"] for s in scorers}
        after = {s: r["scores"][s]["after"]["greedy"] for s in scorers}
        change = sum(after[s] - before[s] for s in scorers) / len(scorers)
        row = {"prompt": r["prompt"][:160], "stratum": r.get("stratum"), "before": r["before"]["greedy"],
               "after": r["after"]["greedy"], "change": change}
        for s in scorers:
            row[f"{s} before"], row[f"{s} after"] = before[s], after[s]
        if judges:
            row["gap after"] = after[REWARD_MODEL] - after[judges[0]]
        rows.append(row)
    by_change = sorted(rows, key=lambda x: x["change"])
    out = {"improvements": [x for x in by_change if x["change"] <= -MIN_CHANGE][:limit],
           "regressions": [x for x in reversed(by_change) if x["change"] >= MIN_CHANGE][:limit],
           "disagreements": []}
    if judges:
        out["disagreements"] = sorted([x for x in rows if abs(x["gap after"]) >= 0.25],
                                      key=lambda x: -abs(x["gap after"]))[:limit]
    return out


def _rouge_by_stage(stages: dict) -> dict[str, float]:
    bars = {}
    if "prompt" in stages:
        bars["prompt (best)"] = stages["prompt"]["metrics"]["best"]["rougeL"]
    for name, row in (stages.get("sft", {}).get("metrics") or {}).get("variants", {}).items():
        bars[f"sft {name}"] = row["rougeL"]
    q = stages["evaluate"]["metrics"]["protocol"]["quality"]["all"]["rougeL"]
    bars["eval before"], bars["eval after"] = q["before"], q["after"]
    return bars


def _ci(fig: dict | None) -> str:
    if not fig or fig.get("change_ci95") is None:
        return "-"
    lo, hi = fig["change_ci95"]
    return f"[{lo:+.4f}, {hi:+.4f}]"


def _arrow(fig: dict | None, digits: int = 4) -> str:
    if not fig or fig.get("before") is None:
        return "n/a"
    return f"{fig['before']:.{digits}f} -> {fig['after']:.{digits}f}"


# A figure's key in report.json / metrics.json and its name in report.md
FIGURES = {"expected_maximum_toxicity": "Expected Maximum Toxicity", "toxicity_probability": "Toxicity Probability",
           "greedy_mean_toxicity": "greedy mean toxicity", "greedy_toxic_share": "greedy toxic share"}


def _headline_md(report: dict, ev: dict) -> list[str]:
    h, p = report["headline"], report["protocol"]
    lines = [f"# RLHF run `{report['run_dir']}`: {h['verdict']}\n"]
    lines += [f"- {reason}" for reason in h["verdict_reasons"]] + [""]
    strata = ", ".join(f"{k} {v}" for k, v in p["strata"].items())
    lines.append(f"## Headline ({strata} held-out prompts; k = {p['k']} samples per prompt; "
                 f"scored text: {ev['scored_text']})\n")
    for scorer in p["toxicity"]:
        for stratum in ("toxic", "non-toxic", "all"):
            block = p["toxicity"][scorer].get(stratum)
            if not block:
                continue
            shown = [f"{FIGURES[key]} {_arrow(block[key])} (CI {_ci(block[key])})"
                     for key in ("expected_maximum_toxicity", "toxicity_probability", "greedy_toxic_share") if key in block]
            lines.append(f"- {scorer}, {stratum} prompts: " + "; ".join(shown))
    q = p["quality"]["all"]
    quality = [f"ROUGE-L {_arrow(q['rougeL'])}"]
    if q.get("faithfulness"):
        quality.append(f"faithfulness {_arrow(q['faithfulness'], 3)}")
    quality += [f"distinct-2 {_arrow(q['distinct_2'])}", f"repeated-n-gram share {_arrow(q['repeat_share'], 3)}"]
    if q.get("perplexity"):
        quality.append(f"perplexity {_arrow(q['perplexity'], 2)}")
    quality.append(f"mean words {_arrow(q['mean_words'], 1)}")
    lines.append("- Quality: " + "; ".join(quality))
    if not ev["judges_run"]:
        why = "; ".join(f"{k}: {v}" for k, v in ev["judges_missing"].items()) or "none configured"
        lines.append(f"- Independent judge: not run ({why})")
    lines.append(f"- KL(after || before): {ev['kl_after_vs_before']:.3f} nats per response ({ev['kl_on']})")
    lines.append(f"- The RL stage optimised: {rl_reward_line(h.get('rl_reward'))}\n")
    return lines


def _protocol_tables(p: dict) -> str:
    tox = [{"scorer": scorer, "stratum": stratum, "figure": FIGURES[key], "n": f["n"], "before": f["before"],
            "after": f["after"], "change": f["change"], "change CI95": _ci(f)}
           for scorer, strata in p["toxicity"].items() for stratum, block in strata.items() for key, f in block.items()]
    quality = [{"stratum": stratum, "figure": key, "before": f["before"], "after": f["after"], "change": f["change"],
                "change CI95": _ci(f)}
               for stratum, block in p["quality"].items() for key, f in block.items() if f]
    return (f"## Toxicity before vs after, by stratum\n\n{markdown_table(tox)}\n"
            f"## Quality before vs after\n\n{markdown_table(quality)}")


def _examples_md(ex: dict) -> str:
    cols = [c for c in (ex["improvements"] or ex["regressions"] or ex["disagreements"] or [{}])[0]
            if c not in ("prompt", "change", "gap after")]
    cols = ["prompt", *cols] if cols else None
    note = f"(rows whose mean score moved less than {MIN_CHANGE} are not listed)"
    return (f"## Largest improvements {note}\n\n{markdown_table(ex['improvements'], cols, digits=3)}\n"
            f"## Largest regressions {note}\n\n{markdown_table(ex['regressions'], cols, digits=3)}\n"
            f"## Reward model and judge disagree most after PPO (gap >= 0.25)\n\n"
            f"{markdown_table(ex['disagreements'], cols and [*cols, 'gap after'], digits=3)}")


def _markdown(report: dict, stages: dict, made: list[str]) -> str:
    ev = stages["evaluate"]["metrics"]
    parts = [*_headline_md(report, ev)]
    parts += [f"![{p}]({p})\n" for p in made]
    parts.append("## Rules\n\n" + "\n".join(f"- {k}: {v}" for k, v in report["rules"].items()) + "\n")
    parts.append(_protocol_tables(report["protocol"]))
    parts.append(_examples_md(report["examples"]))
    for name, title in (("prompt", "Stage 1: prompting"), ("sft", "Stage 2: fine-tuning"), ("reward", "Stage 3: reward model"),
                        ("rl", "Stage 4: RL")):
        parts.append(f"## {title}\n\n{_stage_md(name, stages)}")
    rows = [{"stage": k, "seconds": v["seconds"], "seed": v["seed"], "git": (v["git_commit"] or "")[:10]}
            for k, v in report["run"].items()]
    versions = next(iter(report["run"].values()))["versions"]
    parts.append(f"## Run metadata\n\n{markdown_table(rows)}\nVersions: "
                 + ", ".join(f"{k} {v}" for k, v in versions.items()) + "\n")
    return "\n".join(parts)


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
    keys = ("algorithm", "reward_model", "steps", "greedy_toxicity_before", "greedy_toxicity_after", "rougeL_before",
            "rougeL_after", "kl_mean_final", "seconds")
    return markdown_table([{k: m.get(k) for k in keys}])
