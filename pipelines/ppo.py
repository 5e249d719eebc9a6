"""Stage 4: PPO against the reward model, from the SFT policy, with a KL penalty to it."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file
from tqdm.auto import tqdm

from rlhf.artifacts import atomic_dir, atomic_write_text
from rlhf.config import ExperimentConfig
from rlhf.data import format_prompt, load_splits
from rlhf.models import load_tokenizer
from rlhf.ppo.evaluation import before_after
from rlhf.ppo.model import build_policy
from rlhf.ppo.trainer import PPOTrainer, latest_checkpoint
from rlhf.reward import load_scorer
from rlhf.rundir import require_stage, start_stage
from rlhf.runtime import PeakRss, rss_mib
from rlhf.tinyworld.build import resolve_tinyworld

SHOWN = ("objective/scores", "objective/kl", "objective/kl_coef", "ppo/policy/clipfrac")


def main(config: ExperimentConfig, resume: bool = False) -> dict:
    config = resolve_tinyworld(config)
    before_models_mib = rss_mib()  # for checking `rlhf estimate` against the peak (benchmarks/RESULTS.md)
    cfg = config.ppo
    sft_dir = require_stage(config, "sft", "ppo") if cfg.start_from != "base" else None
    reward_dir = require_stage(config, "reward", "ppo")
    stage = start_stage(config, "ppo")
    splits = load_splits(config.data, config.seed)
    tokenizer = load_tokenizer(config.model)
    policy = build_policy(config, sft_dir)
    scorer = load_scorer(config.reward, reward_dir, strip_tokens=tuple(tokenizer.all_special_tokens))
    prompts = [format_prompt(d, config.data.template) for d in splits["train"]["dialogue"]]
    trainer = PPOTrainer(policy, tokenizer, scorer, prompts, cfg, seed=config.seed,
                         max_input_length=config.model.max_input_length, score_with_prompt=config.reward.score_with_prompt,
                         log_dir=stage.dir / "trackers")
    ckpt_dir, log_path = stage.dir / "checkpoints", stage.dir / "metrics.jsonl"
    last = latest_checkpoint(ckpt_dir) if resume else None
    if last is not None:
        trainer.load_checkpoint(last)
        print(f"ppo: resumed from {last}")
    _truncate_log(log_path, trainer.step_count)
    test = splits["test"]
    if cfg.eval_n_dialogues:
        test = test.select(range(min(cfg.eval_n_dialogues, len(test))))
    main_process = trainer.accelerator.is_main_process
    bar = tqdm(range(trainer.step_count, cfg.steps), desc="ppo", disable=not main_process)
    with PeakRss() as mem:
        _train(trainer, bar, cfg, config, test, stage.dir, ckpt_dir, log_path)
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    if not main_process:
        return {}
    _save_policy(trainer.policy, tokenizer, stage.dir)
    result = before_after(trainer.policy, tokenizer, scorer, test, config)
    history = [json.loads(line) for line in log_path.open()]
    metrics = {**result["summary"], "steps": trainer.step_count, "kl_mean_final": history[-1]["objective/kl"],
               "seconds": round(sum(h["time/step"] for h in history), 2), "start_from": cfg.start_from,
               "policy": cfg.policy, "reference": "adapter-disabled policy (= SFT model)" if cfg.policy == "lora" else "frozen copy",
               "memory_before_models_mb": round(before_models_mib, 1), "peak_memory_mb": round(mem.mib, 1)}
    stage.write_metrics(metrics)
    atomic_write_text(stage.dir / "before_after.json", json.dumps(result["rows"], indent=1))
    stage.finish()
    print(f"ppo: toxicity {metrics['toxicity_before']:.4f} -> {metrics['toxicity_after']:.4f}, ROUGE-L "
          f"{metrics['rougeL_before']:.4f} -> {metrics['rougeL_after']:.4f}, final KL {metrics['kl_mean_final']:.3f}")
    return metrics


def _train(trainer, bar, cfg, config, test, stage_dir: Path, ckpt_dir: Path, log_path: Path) -> None:
    """The PPO steps: log each, checkpoint every ``save_steps``, write samples every ``sample_steps``."""
    main_process = trainer.accelerator.is_main_process
    for _ in bar:
        stats = trainer.step()
        bar.set_postfix({k.split("/")[-1]: f"{stats[k]:.3f}" for k in SHOWN})
        trainer.log(stats)
        if main_process:
            with log_path.open("a") as f:
                f.write(json.dumps(stats) + "\n")
        if trainer.step_count % cfg.save_steps == 0 or trainer.step_count == cfg.steps:
            trainer.save_checkpoint(ckpt_dir / f"step-{trainer.step_count}")
        if trainer.step_count % cfg.sample_steps == 0 and main_process:
            _write_samples(trainer, test, config, stage_dir / "samples" / f"step-{trainer.step_count}.md")


def _truncate_log(path: Path, step: int) -> None:
    """Drop logged steps past ``step`` (a resumed run logs them again)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    atomic_write_text(path, "".join(line + "\n" for line in keep))


def _save_policy(policy, tokenizer, folder: Path) -> None:
    """The policy adapter (or full weights) and value head; with LoRA also the SFT-merged base it
    applies to (``policy/base``), so ``PeftModel.from_pretrained(base, policy)`` loads it."""
    import copy

    if policy.is_lora:
        with atomic_dir(folder / "policy_base") as tmp:
            copy.deepcopy(policy.lm).unload().save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
    with atomic_dir(folder / "policy") as tmp:
        policy.lm.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        save_file({k: v.detach().cpu().contiguous() for k, v in policy.value_head.state_dict().items()},
                  str(tmp / "value_head.safetensors"))


def _write_samples(trainer, test, config, path: Path, n: int = 6) -> None:
    result = before_after(trainer.policy, trainer.tokenizer, trainer.scorer, test.select(range(min(n, len(test)))), config)
    lines = [f"# Samples after step {trainer.step_count}\n"]
    for r in result["rows"]:
        lines.append(f"**Prompt:** {r['dialogue'][:300]}\n\n- before ({r['toxicity_before']:.3f}): {r['before']}\n"
                     f"- after ({r['toxicity_after']:.3f}): {r['after']}\n")
    atomic_write_text(path, "\n".join(lines))


if __name__ == "__main__":
    from rlhf.cli import stage_entry

    stage_entry("ppo")
