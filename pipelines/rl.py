"""Stage 4: RL (PPO, RLOO or GRPO: rl.algorithm) against the reward model, from the SFT policy, held near it by a KL
term; or DPO / IPO on classifier-ranked pairs of the SFT policy's samples, made first (rl/pairs.jsonl). With
rl.reward_model pairwise the online method optimises a Bradley-Terry model trained first on those pairs
(rl/pairwise_rm/); the classifier still makes the pairs and the stage's before/after figures."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from rlhf.artifacts import atomic_dir, atomic_write_text, truncate_jsonl
from rlhf.checkpoints import clean_stray
from rlhf.config import ExperimentConfig, to_dict
from rlhf.data import group_dialogues, load_splits, toxic_flags
from rlhf.entrypoint import stage_command
from rlhf.errors import UserError
from rlhf.models import load_tokenizer
from rlhf.pairwise import PairwiseScorer, load_pairwise, train_pairwise, with_learning_rate
from rlhf.rl.checkpoint import PREFIX, checkpoint_names, find_resumable
from rlhf.rl.evaluation import before_after
from rlhf.pairs import corpus_pairs, draw_prompts, make_pairs, pairs_jsonl, read_pairs
from rlhf.rl.model import build_policy
from rlhf.rl.preference import PreferenceTrainer
from rlhf.rl.ptx import ptx_pairs
from rlhf.rl.trainer import RLTrainer
from rlhf.progress import Progress
from rlhf.prompts import fit_prompts
from rlhf.reward import load_scorer, reward_model_path
from rlhf.rundir import keep_or_discard, require_stage, stage_dir, start_stage
from rlhf.runtime import PeakRss, default_device, precision_note, rss_mib, use_cpu
from rlhf.tinyworld.build import resolve_tinyworld
from rlhf.trackers import Trackers

SHOWN = ("objective/scores", "objective/kl", "objective/kl_coef", "policy/clipfrac", "preference/accuracy")


def main(config: ExperimentConfig, resume: bool = False, force: bool = False) -> dict:
    """``resume``: continue from the newest good checkpoint (settings checked against it);
    ``force``: discard an earlier run's checkpoints, which a plain re-run refuses to do."""
    from accelerate import PartialState

    config = resolve_tinyworld(config)
    before_models_mib = rss_mib()  # for checking `rlhf estimate` against the peak (benchmarks/RESULTS.md)
    cfg = config.rl
    sft_dir = require_stage(config, "sft", "rl") if cfg.start_from != "base" else None
    reward_dir = require_stage(config, "reward", "rl")
    splits = load_splits(config.data, config.seed)  # bad data fails before the stage folder is touched
    wants_pairs = cfg.algorithm in ("dpo", "ipo") or cfg.reward_model == "pairwise"
    column = cfg.pairs.corpus_column if wants_pairs and cfg.pairs.source == "corpus" else None
    if column and column not in splits["train"].column_names:
        raise UserError(f"config key 'rl.pairs.corpus_column': column '{column}' is not in the training data "
                        f"(columns: {', '.join(splits['train'].column_names)})")
    wants_flags = cfg.toxic_share is not None or (cfg.ptx_coef > 0 and config.data.toxic_column)
    toxic = toxic_flags(splits["train"], config.data, "train") if wants_flags else None
    main_process = PartialState(cpu=use_cpu()).is_main_process
    say = print if main_process else (lambda *_: None)
    ckpt_dir = stage_dir(config, "rl") / "checkpoints"
    if not resume and not force:  # an earlier run's checkpoints: refused at once (kept)
        keep_or_discard("rl", ckpt_dir, checkpoint_names(ckpt_dir), force, log=say)
    tokenizer = load_tokenizer(config.model)
    policy = build_policy(config, sft_dir)
    scorer = load_scorer(config.reward, reward_dir, strip_tokens=tuple(tokenizer.all_special_tokens))
    prompts, shortened = fit_prompts(list(splits["train"]["dialogue"]), config.data.template, tokenizer,
                                     config.model.max_input_length)  # as SFT trained on them
    n_shortened = _report_shortened(shortened, config.model.max_input_length, say)
    ptx = (ptx_pairs(prompts, list(splits["train"]["summary"]), toxic, cfg.ptx_coef, config.sft.max_target_length)
           if cfg.ptx_coef > 0 else None)
    # the models and data loaded (a bad path or file has failed by now): only then is anything discarded
    if not resume and force:
        keep_or_discard("rl", ckpt_dir, checkpoint_names(ckpt_dir), force, log=say)
    if main_process:  # what a killed write left, and folders that are not checkpoints
        clean_stray(ckpt_dir, PREFIX, log=say, stage="rl")
    stage = start_stage(config, "rl")
    common = dict(seed=config.seed, max_input_length=config.model.max_input_length, config_record=to_dict(config),
                  score_with_prompt=config.reward.score_with_prompt, mixed_precision=config.model.mixed_precision,
                  ptx=ptx, compile_decoding=config.model.compile_decoding)
    pair_counts = pairwise = None
    if wants_pairs:
        pairs, pair_counts = _pairs(policy, tokenizer, scorer, prompts, splits["train"], config, stage.dir, resume,
                                    main_process, say)
    if cfg.algorithm in ("dpo", "ipo"):
        trainer = PreferenceTrainer(policy, tokenizer, scorer, pairs, cfg, **common)
    else:  # the reward the method optimises: the classifier, or the pairwise model of the pairs
        drives = scorer
        if cfg.reward_model == "pairwise":
            drives, pairwise = _pairwise(pairs, config, reward_dir, stage.dir / "pairwise_rm", resume, main_process,
                                         say)
        trainer = RLTrainer(policy, tokenizer, drives, prompts, cfg, toxic=toxic, **common)
    if trainer.compile_fallback:
        say(f"rl: rl.compile: torch.compile is unavailable here ({trainer.compile_fallback}); the update runs eagerly")
    log_path = stage.dir / "metrics.jsonl"
    if resume:
        _resume(trainer, ckpt_dir, config, say)
    if main_process:  # a resumed run logs the steps after its checkpoint again
        truncate_jsonl(log_path, lambda row: isinstance(row.get("step"), int) and row["step"] <= trainer.step_count)
    test = group_dialogues(splits["test"], config.data)[:cfg.eval_n_dialogues]
    progress = Progress("rl", cfg.steps, start=trainer.step_count, enabled=main_process)
    trackers = Trackers(config.trackers("rl"), config.run_name, "rl", stage.dir, to_dict(config))
    with PeakRss() as mem:
        _train(trainer, scorer, progress, cfg, config, test, stage.dir, ckpt_dir, log_path, trackers)
    progress.close()
    trainer.accelerator.wait_for_everyone()
    if not main_process:
        return {}
    _save_policy(trainer.policy, tokenizer, stage.dir)
    result = before_after(trainer.policy, tokenizer, scorer, test, config)
    history = [json.loads(line) for line in log_path.open()]
    metrics = {"algorithm": cfg.algorithm, "group_size": cfg.group_size, "reward_model": cfg.reward_model,
               **result["summary"], **({"pairs": pair_counts} if pair_counts is not None else {}),
               **({"pairwise": pairwise} if pairwise is not None else {}),
               "steps": trainer.step_count, "kl_mean_final": history[-1].get("objective/kl"),
               "seconds": round(sum(h["time/step"] for h in history), 2), "start_from": cfg.start_from,
               "policy": cfg.policy, "reference": "adapter-disabled policy (= SFT model)" if cfg.policy == "lora" else "frozen copy",
               "frozen_encoder": cfg.frozen_encoder,
               "compiled": trainer.policy.compiled,
               "memory_before_models_mb": round(before_models_mib, 1), "peak_memory_mb": round(mem.mib, 1),
               "train_prompts_shortened": n_shortened,
               "precision": precision_note(config.model.dtype, config.model.mixed_precision)}
    stage.write_metrics(metrics)
    atomic_write_text(stage.dir / "before_after.json", json.dumps(result["rows"], indent=1))
    trackers.log(metrics, trainer.step_count)
    trackers.finish()
    stage.finish()
    print(f"rl: greedy mean toxicity (reward model) {metrics['greedy_toxicity_before']:.4f} -> "
          f"{metrics['greedy_toxicity_after']:.4f}, ROUGE-L "
          f"{metrics['rougeL_before']:.4f} -> {metrics['rougeL_after']:.4f}"
          + (f", final KL {metrics['kl_mean_final']:.3f}" if metrics["kl_mean_final"] is not None else ""))
    return metrics


def _train(trainer, scorer, progress, cfg, config, test, stage_dir: Path, ckpt_dir: Path, log_path: Path,
           trackers) -> None:
    """The PPO steps: log each (metrics.jsonl and the trackers), checkpoint every ``save_steps``, write
    samples every ``sample_steps`` (their toxicity by ``scorer``, the classifier)."""
    main_process = trainer.accelerator.is_main_process
    for _ in range(trainer.step_count, cfg.steps):
        stats = trainer.step()
        progress.update(1, **{k.split("/")[-1]: stats[k] for k in SHOWN if k in stats})
        trackers.log(stats, stats["step"])
        if main_process:
            with log_path.open("a") as f:
                f.write(json.dumps(stats) + "\n")
        if trainer.step_count % cfg.save_steps == 0 or trainer.step_count == cfg.steps:
            trainer.save_checkpoint(ckpt_dir / f"step-{trainer.step_count}")
        if trainer.step_count % cfg.sample_steps == 0 and main_process:
            with torch.random.fork_rng():  # sampling reseeds; training's RNG stream stays as a resume restores it
                _write_samples(trainer, scorer, test, config, stage_dir / "samples" / f"step-{trainer.step_count}.md")


def _pairs_made_with(config: ExperimentConfig) -> dict:
    """The settings the pairs are made under, recorded beside them (and the pairwise model trained on
    them): a --resume reuses them only when these are the same."""
    cfg = config.rl
    return {"seed": config.seed, "start_from": cfg.start_from, "max_new_tokens": cfg.max_new_tokens,
            "pairs": to_dict(cfg.pairs)}


def _pairs(policy, tokenizer, scorer, prompts: list[str], train, config: ExperimentConfig, folder: Path,
           resume: bool, main_process: bool, say) -> tuple[list, dict]:
    """DPO / IPO's preference pairs for the training ``prompts`` (rows of ``train``): made from the
    starting policy's samples (the reference: the SFT model) or read from the data's own
    (``rl.pairs.source``), and written to ``pairs.jsonl`` (counts and settings in ``pairs.json``);
    on ``--resume`` read back when they were made under the same settings. Every process makes the
    same pairs (the same seed); the main one writes them."""
    path, counts_path = folder / "pairs.jsonl", folder / "pairs.json"
    cfg, made_with = config.rl, _pairs_made_with(config)
    if resume and path.is_file() and counts_path.is_file():
        counts = json.loads(counts_path.read_text(encoding="utf-8"))
        if counts.get("made_with") == made_with:
            pairs = read_pairs(path)
            say(f"rl: {len(pairs)} preference pairs read from {path}")
            return pairs, counts
    summaries, start = list(train["summary"]), time.perf_counter()
    if cfg.pairs.source == "corpus":
        pairs, counts = corpus_pairs(scorer, prompts, summaries, list(train[cfg.pairs.corpus_column]),
                                     config.reward.score_with_prompt)
        how = f"the data's own ({cfg.pairs.corpus_column} over summary)"
    else:
        idx = draw_prompts(len(prompts), cfg.pairs, config.seed)
        with policy.reference() as lm:
            pairs, counts = make_pairs(lm, tokenizer, scorer, [prompts[i] for i in idx], [summaries[i] for i in idx],
                                       cfg.pairs, max_new_tokens=cfg.max_new_tokens,
                                       max_input_length=config.model.max_input_length, seed=config.seed,
                                       score_with_prompt=config.reward.score_with_prompt, log=say,
                                       compile_decoding=config.model.compile_decoding)
        how = f"{counts['k']} samples of each"
    counts["seconds"], counts["made_with"] = round(time.perf_counter() - start, 2), made_with
    if main_process:
        atomic_write_text(path, pairs_jsonl(pairs))
        atomic_write_text(counts_path, json.dumps(counts, indent=1))
    say(f"rl: {counts['pairs']} preference pairs from {counts['prompts']} prompts, {how} ({path})")
    return pairs, counts


def _pairwise(pairs: list, config: ExperimentConfig, reward_dir: Path, folder: Path, resume: bool, main_process: bool,
              say) -> tuple[PairwiseScorer, dict]:
    """The pairwise reward model of ``pairs`` (rlhf.pairwise), trained from the reward stage's
    classifier and written whole to ``folder`` (model, tokenizer, ``pairwise.json``: its metrics and
    the settings it was trained under); on ``--resume`` loaded back when trained under the same
    settings. Every process trains (the Trainer shares the work); the main one writes."""
    import tempfile

    cfg = config.rl
    init, settings = reward_model_path(config.reward, reward_dir), with_learning_rate(cfg.pairwise,
                                                                                      config.reward.learning_rate)
    made_with = {**_pairs_made_with(config), "pairwise": to_dict(settings), "init_from": init,
                 "score_with_prompt": config.reward.score_with_prompt}
    info_path = folder / "pairwise.json"
    if resume and info_path.is_file():
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if info.get("made_with") == made_with:
            model, tokenizer = load_pairwise(folder, config.reward.trust_remote_code)
            say(f"rl: pairwise reward model read from {folder} (held-out pair accuracy "
                f"{info['heldout_pair_accuracy']:.3f})")
            return _pairwise_scorer(model, tokenizer, cfg), info
    with (atomic_dir(folder) if main_process else tempfile.TemporaryDirectory()) as tmp:
        model, tokenizer, info = train_pairwise(pairs, init, settings, seed=config.seed, out_dir=Path(tmp),
                                                score_with_prompt=config.reward.score_with_prompt,
                                                trust_remote_code=config.reward.trust_remote_code)
        info["made_with"] = made_with
        if main_process:
            model.save_pretrained(str(tmp))  # safetensors
            tokenizer.save_pretrained(str(tmp))
            atomic_write_text(Path(tmp) / "pairwise.json", json.dumps(info, indent=1))
    say(f"rl: pairwise reward model: held-out pair accuracy {info['heldout_pair_accuracy']:.3f} on "
        f"{info['n_heldout']} pairs (at init {info['heldout_pair_accuracy_at_init']:.3f}; trained on "
        f"{info['n_train']}, {info['seconds']:.0f} s) ({folder})")
    return _pairwise_scorer(model, tokenizer, cfg), info


def _pairwise_scorer(model, tokenizer, cfg) -> PairwiseScorer:
    """On the policy's device, as the classifier's scorer is: a forward pass per step."""
    return PairwiseScorer(model.to(default_device()), tokenizer, max_length=cfg.pairwise.max_length)


def _resume(trainer, ckpt_dir: Path, config: ExperimentConfig, say) -> None:
    """Continue from the newest good checkpoint; report what was skipped and applied."""
    ckpt = find_resumable(ckpt_dir, trainer.trainable_shapes(), to_dict(config), log=say)
    if ckpt is not None:
        trainer.apply_checkpoint(ckpt)
        say(f"rl: resumed from {ckpt.folder} (step {ckpt.step} of {config.rl.steps})")


def _report_shortened(shortened: list[bool], max_length: int, say) -> int:
    """How many training prompts were longer than ``model.max_input_length`` (their dialogues are
    shortened inside the template, :func:`rlhf.data.fit_prompts`); said once."""
    n = sum(shortened)
    if n:
        say(f"rl: {n} of {len(shortened)} training prompts are longer than model.max_input_length={max_length} "
            f"tokens; their dialogues are shortened inside the template")
    return n


def _save_policy(policy, tokenizer, folder: Path) -> None:
    """The policy adapter (or full weights) and PPO's value head; with LoRA also the SFT-merged base
    it applies to (``policy_base``), so ``PeftModel.from_pretrained(base, policy)`` loads it."""
    import copy

    if policy.is_lora:
        with atomic_dir(folder / "policy_base") as tmp:
            copy.deepcopy(policy.lm).unload().save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
    with atomic_dir(folder / "policy") as tmp:
        policy.lm.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        if policy.value_head is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in policy.value_head.state_dict().items()},
                      str(tmp / "value_head.safetensors"))


def _write_samples(trainer, scorer, test, config, path: Path, n: int = 6) -> None:
    result = before_after(trainer.policy, trainer.tokenizer, scorer, test[:n], config)
    lines = [f"# Samples after step {trainer.step_count}\n"]
    for r in result["rows"]:
        lines.append(f"**Prompt:** {r['dialogue'][:300]}\n\n- before ({r['greedy_toxicity_before']:.3f}): {r['before']}\n"
                     f"- after ({r['greedy_toxicity_after']:.3f}): {r['after']}\n")
    atomic_write_text(path, "\n".join(lines))


if __name__ == "__main__":
    sys.exit(stage_command("rl", main))
