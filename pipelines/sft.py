"""Stage 2: instruction fine-tuning, full vs LoRA, compared on ROUGE, parameters, time and memory."""

from __future__ import annotations

import sys

from accelerate import PartialState

from rlhf.artifacts import atomic_write_csv, atomic_write_text, markdown_table
from rlhf.config import ExperimentConfig, GenerationSetting, to_dict
from rlhf.data import group_dialogues, load_splits
from rlhf.entrypoint import stage_command
from rlhf.generation import generate
from rlhf.metrics import ROUGE_KEYS, mean_words, rouge
from rlhf.models import check_lora_targets, count_parameters, load_seq2seq, load_tokenizer
from rlhf.prompts import fit_prompts
from rlhf.rundir import keep_or_discard, start_stage
from rlhf.rundir import stage_dir as stage_folder
from rlhf.runtime import use_cpu
from rlhf.sft import (
    check_record,
    finished_variant,
    leftovers,
    load_variant,
    prepare_model,
    tokenize_split,
    train_variant,
)
from rlhf.tinyworld.build import resolve_tinyworld
from rlhf.trackers import Trackers

COLUMNS = ["variant", "rouge1", "rouge2", "rougeL", "rougeLsum", "rougeL_gain", "mean_words", "trainable_params",
           "total_params", "trainable_pct", "train_seconds", "train_memory_mb", "peak_memory_mb"]


def main(config: ExperimentConfig, resume: bool = False, force: bool = False) -> dict:
    """``resume``: continue each variant from its newest usable checkpoint (settings checked);
    ``force``: discard an earlier run's checkpoints and trained variants, which a plain re-run refuses."""
    config = resolve_tinyworld(config)
    state = PartialState(cpu=use_cpu())
    say = print if state.is_main_process else (lambda *_: None)
    stage_dir = stage_folder(config, "sft")
    splits = load_splits(config.data, config.seed)  # bad data fails before the stage folder is touched
    if any(v.method == "lora" for v in config.sft.variants):  # before the full variant trains for minutes
        check_lora_targets(config.model, config.sft.lora, "sft.lora")
    if not resume:  # before anything is written: an earlier run's work goes only with --force
        keep_or_discard("sft", stage_dir / "checkpoints", leftovers(stage_dir), force, log=say,
                        extra=tuple(stage_dir.glob("*/train_metrics.json")))
    state.wait_for_everyone()
    stage = start_stage(config, "sft") if state.is_main_process else None
    state.wait_for_everyone()
    tokenizer = load_tokenizer(config.model)
    args = (tokenizer, config.data.template, config.model.max_input_length, config.sft.max_target_length)
    train_ds, eval_ds = tokenize_split(splits["train"], *args), tokenize_split(splits["validation"], *args)

    trackers = Trackers(config.trackers("sft"), config.run_name, "sft", stage_dir, to_dict(config))
    trained = {}
    for variant in config.sft.variants:
        done = finished_variant(stage_dir, variant) if resume else None
        if done is not None:
            check_record(stage_dir, config, variant, "its trained model", log=say)
            say(f"sft/{variant.name}: already trained; kept")
        else:
            done = train_variant(prepare_model(load_seq2seq(config.model), variant, config), tokenizer, train_ds,
                                 eval_ds, config, variant, stage_dir, resume,
                                 trackers=trackers).metrics  # no name keeps the model alive
        trained[variant.name] = done
        print(f"sft/{variant.name}: {done['trainable_params']:,} trainable params "
              f"({done['trainable_pct']:.2f}%), {done['train_seconds']:.1f}s")
    state.wait_for_everyone()
    if not state.is_main_process:
        return {}

    test = group_dialogues(splits["test"], config.data)[:config.sft.eval_n_dialogues]
    prompts, shortened = fit_prompts([d.dialogue for d in test], config.data.template, tokenizer,
                                     config.model.max_input_length)  # over-long dialogues cut inside the template
    results, samples = {}, {}
    base = load_seq2seq(config.model)
    for name, model in [("base", base)] + [(v.name, load_variant(config, v, stage_dir)) for v in config.sft.variants]:
        gens = generate(model, tokenizer, prompts, GenerationSetting("greedy"), max_new_tokens=config.sft.max_new_tokens,
                        batch_size=config.sft.eval_batch_size, max_input_length=config.model.max_input_length,
                        seed=config.seed, desc=f"evaluate {name}", compile=config.model.compile_decoding)
        info = trained.get(name) or {**count_parameters(base), "trainable_params": 0, "trainable_pct": 0.0,
                                     "train_seconds": 0.0, "train_memory_mb": None,
                                     "peak_memory_mb": None}
        results[name] = {**rouge(gens.texts, [d.references for d in test]), "mean_words": mean_words(gens.texts), **info}
        samples[name] = gens.texts
    for r in results.values():
        r["rougeL_gain"] = r["rougeL"] - results["base"]["rougeL"]

    rows = [{"variant": name, **r} for name, r in results.items()]
    metrics = {"n_test_dialogues": len(test), "test_prompts_shortened": sum(shortened), "variants": results}
    atomic_write_csv(stage.dir / "results.csv", [{c: row.get(c) for c in COLUMNS} for row in rows])
    atomic_write_text(stage.dir / "results.md", _results_md(rows, len(test)))
    atomic_write_text(stage.dir / "samples.md", _samples_md(test, samples))
    stage.write_metrics(metrics)
    for name, r in results.items():  # each variant's test figures at its last step (base: step 0)
        trackers.log({f"{name}/{k}": r[k] for k in (*ROUGE_KEYS, "rougeL_gain", "mean_words")}, r.get("global_step", 0))
    trackers.finish()
    stage.finish()
    for name, r in results.items():
        print(f"sft: {name:>6} ROUGE-L {r['rougeL']:.4f}" + (f" ({r['rougeL_gain']:+.4f} vs base)" if name != "base" else ""))
    return metrics


def _results_md(rows: list[dict], n: int) -> str:
    return (f"# Stage 2: instruction fine-tuning, full vs LoRA\n\n{n} test dialogues, greedy generation, ROUGE "
            f"F-measures. Memory (peak GPU memory on CUDA): train_memory_mb, the peak while training above what was "
            f"resident before it (the loaded model; the previous variant freed first): its gradients, optimizer "
            f"state and activations; peak_memory_mb, the whole process's peak.\n\n"
            f"{markdown_table(rows, COLUMNS)}")


def _samples_md(test, samples: dict[str, list[str]], shown: int = 8) -> str:
    parts = ["# Sample generations (greedy)\n"]
    for i in range(min(shown, len(test))):
        table = markdown_table([{"model": k, "output": v[i]} for k, v in samples.items()])
        parts.append(f"## Dialogue {i}\n\n```\n{test[i].dialogue}\n```\n\n**Reference:** {test[i].references[0]}\n\n{table}")
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(stage_command("sft", main))
