"""Stage 1: zero/one/few-shot prompting x a sweep of generation settings, scored with ROUGE."""

from __future__ import annotations

import dataclasses
import sys

from rlhf.artifacts import atomic_write_csv, atomic_write_json, atomic_write_text, markdown_table
from rlhf.config import ExperimentConfig
from rlhf.data import group_dialogues, load_splits
from rlhf.entrypoint import stage_command
from rlhf.generation import generate
from rlhf.metrics import mean_words, rouge
from rlhf.models import load_seq2seq, load_tokenizer
from rlhf.prompts import build_prompts
from rlhf.rundir import start_stage
from rlhf.tinyworld.build import resolve_tinyworld

TABLE_COLUMNS = ["mode", "asked", "n_prompts", "setting", "rouge1", "rouge2", "rougeL", "rougeLsum", "mean_words",
                 "gen_seconds", "tokens_per_s"]


def mode_name(shots: int) -> str:
    return {0: "zero-shot", 1: "one-shot"}.get(shots, f"{shots}-shot")


def main(config: ExperimentConfig) -> dict:
    config = resolve_tinyworld(config)
    cfg = config.prompt
    splits = load_splits(config.data, config.seed)  # bad data fails before the stage folder is touched
    stage = start_stage(config, "prompt")
    tokenizer, model = load_tokenizer(config.model), load_seq2seq(config.model)
    test = group_dialogues(splits["test"], config.data)[:cfg.n_dialogues]
    dialogues, references = [d.dialogue for d in test], [d.references for d in test]

    rows, samples, prompt_stats = [], [], {}
    for shots in cfg.shots:
        prompts, stats = build_prompts(dialogues, shots, splits["train"], config.data.template, tokenizer,
                                       config.model.max_input_length, config.seed)
        prompt_stats[mode_name(shots)] = {k: v for k, v in dataclasses.asdict(stats).items() if k != "shots_used"}
        for setting in cfg.settings:
            gens = generate(model, tokenizer, prompts, setting, max_new_tokens=cfg.max_new_tokens,
                            batch_size=cfg.batch_size, max_input_length=config.model.max_input_length,
                            seed=config.seed, desc=f"{mode_name(shots)} / {setting.name}",
                            compile=config.model.compile_decoding)
            rows += _rows_by_shots_held(shots, stats.shots_used, setting.name, gens, references)
            samples += [{"index": i, "mode": mode_name(stats.shots_used[i]), "asked": mode_name(shots),
                         "setting": setting.name, "output": text} for i, text in enumerate(gens.texts[: cfg.n_examples_shown])]

    best = max([r for r in rows if r["mode"] == r["asked"]] or rows, key=lambda r: r["rougeL"])
    metrics = {"n_dialogues": len(dialogues), "rows": rows, "best": best, "prompt_stats": prompt_stats}
    atomic_write_csv(stage.dir / "results.csv", rows)
    atomic_write_text(stage.dir / "results.md", _results_md(rows, best, prompt_stats, len(dialogues)))
    atomic_write_text(stage.dir / "samples.md", _samples_md(samples, dialogues, references, cfg.n_examples_shown))
    atomic_write_json(stage.dir / "samples.json", samples)
    stage.write_metrics(metrics)
    stage.finish()
    print(f"prompt: best ROUGE-L {best['rougeL']:.4f} ({best['mode']}, {best['setting']}); table in {stage.dir / 'results.md'}")
    return metrics


def _rows_by_shots_held(asked: int, held: list[int], setting: str, gens, references) -> list[dict]:
    """One row per number of in-context examples the prompts really hold. Prompts that could not
    hold ``asked`` examples within the input length get their own row, labelled with what they
    hold and what was asked, never merged into the asked-for row."""
    rows = []
    for shots in sorted(set(held), reverse=True):
        idx = [i for i, h in enumerate(held) if h == shots]
        texts = [gens.texts[i] for i in idx]
        rows.append({"mode": mode_name(shots), "asked": mode_name(asked), "n_prompts": len(idx), "setting": setting,
                     **rouge(texts, [references[i] for i in idx]), "mean_words": mean_words(texts),
                     "gen_seconds": round(gens.seconds, 3),
                     "tokens_per_s": round(gens.new_tokens / max(gens.seconds, 1e-9), 1)})
    return rows


def _results_md(rows: list[dict], best: dict, prompt_stats: dict, n: int) -> str:
    over = "\n".join(f"- {mode}: {s['prompts_with_dropped_examples']} prompts lost in-context examples "
                     f"({s['examples_dropped']} examples dropped), {s['dialogues_truncated']} dialogues truncated"
                     for mode, s in prompt_stats.items())
    return (f"# Stage 1: prompting and generation settings\n\n{n} test dialogues; ROUGE F-measures vs the "
            f"reference summaries. A row holds the prompts with that many in-context examples (`mode`); prompts "
            f"that could not hold the `asked` number within the input length are in their own rows.\n\n"
            f"{markdown_table(rows, TABLE_COLUMNS)}\n"
            f"Best ROUGE-L (rows that hold what was asked): {best['rougeL']:.4f} ({best['mode']}, {best['setting']}).\n\n"
            f"Over-length prompts (rule: drop in-context examples, then truncate the dialogue):\n{over}\n")


def _samples_md(samples: list[dict], dialogues: list[str], references: list[list[str]], shown: int) -> str:
    parts = ["# Sample generations\n"]
    for i in range(min(shown, len(dialogues))):
        rows = [{"mode": s["mode"], "asked": s["asked"], "setting": s["setting"], "output": s["output"]}
                for s in samples if s["index"] == i]
        parts.append(f"## Dialogue {i}\n\n```\n{dialogues[i]}\n```\n\n**Reference:** {' / '.join(references[i])}\n\n"
                     f"{markdown_table(rows)}")
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(stage_command("prompt", main))
