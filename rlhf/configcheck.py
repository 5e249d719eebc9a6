"""Every check that reads more than one config key, in one place: :func:`validate`, which loading
calls (:func:`rlhf.config.load_config`, :func:`rlhf.config.config_from_dict`). Each failure is one
:class:`UserError` line naming the key, its value and the key it conflicts with.

A single key's own rules (types, ranges, names) sit beside its declaration in :mod:`rlhf.config`.
"""

from __future__ import annotations

from typing import Iterable

from rlhf.errors import UserError, shown

# What the sft stage's folder holds besides one folder per variant (a variant may not be named so)
SFT_STAGE_ENTRIES = frozenset({"checkpoints", "config.yaml", "manifest.json", "metrics.json", "results.csv",
                               "results.md", "samples.md"})


def validate(config, stages: Iterable[str] = ()) -> None:
    """Refuse a config whose keys contradict each other. ``stages``: the stages about to run, for
    the settings only a stage needs (the reward stage's labelled data)."""
    _check_sft(config.sft)
    _check_ppo(config.ppo)
    check_update_plan(config.ppo, 1)  # one process; a multi-process run checks its own count when it starts
    if config.ppo.toxic_share is not None and not config.data.toxic_column:
        raise UserError(f"config key 'ppo.toxic_share': value {config.ppo.toxic_share} needs data.toxic_column, "
                        f"the column that marks the toxic training prompts")
    variants = [v.name for v in config.sft.variants]
    if config.ppo.start_from not in ("base", *variants):
        raise UserError(f"config key 'ppo.start_from': {shown(config.ppo.start_from)} is not an SFT variant "
                        f"({', '.join(variants)}) or 'base'")
    if "reward" in stages and config.reward.pretrained is None and config.reward.data.source is None:
        raise UserError("config key 'reward.data.source' is not set: the reward stage needs labelled data to train "
                        "on (or name a classifier in reward.pretrained)")


def _check_sft(sft) -> None:
    if sft.save_steps % sft.eval_steps:
        raise UserError(f"config key 'sft.save_steps': value {sft.save_steps} must be a multiple of "
                        f"sft.eval_steps ({sft.eval_steps}) for early stopping to keep the best checkpoint")
    names = [v.name for v in sft.variants]
    if len(set(names)) != len(names) or "base" in names or set(names) & SFT_STAGE_ENTRIES:
        raise UserError(f"config key 'sft.variants': names {names} must be unique, and neither "
                        f"'base' nor a file of the stage's folder ({', '.join(sorted(SFT_STAGE_ENTRIES))})")


def _check_ppo(ppo) -> None:
    if ppo.batch_size % ppo.mini_batch_size:
        raise UserError(f"config key 'ppo.batch_size': value {ppo.batch_size} must be a multiple of "
                        f"ppo.mini_batch_size ({ppo.mini_batch_size})")
    if ppo.kl.controller == "adaptive" and 5 * ppo.kl.horizon <= ppo.batch_size:
        raise UserError(f"config key 'ppo.kl.horizon': value {ppo.kl.horizon} must be > 0.2 x ppo.batch_size "
                        f"({ppo.batch_size}): the adaptive controller scales the coefficient by 1 - 0.2 x "
                        f"batch_size / horizon when the KL is low, which would make it zero or negative")
    if ppo.toxic_per_batch is not None and not 0 < ppo.toxic_per_batch < ppo.batch_size:
        raise UserError(f"config key 'ppo.toxic_share': value {ppo.toxic_share} gives {ppo.toxic_per_batch} of "
                        f"{ppo.batch_size} prompts per batch; both toxic and clean ones are needed")
    if ppo.frozen_encoder and ppo.policy != "lora":
        raise UserError("config key 'ppo.frozen_encoder': needs ppo.policy lora (a full policy trains the encoder)")


def check_update_plan(ppo, world: int) -> None:
    """One line naming the key when the processes' updates could differ, or gradients outlive the
    update whose rollouts made them. DDP reduces gradients inside every backward, so every process
    must run as many mini-batch passes, and an accumulation must end within its update."""
    if ppo.batch_size % world:
        raise UserError(f"config key 'ppo.batch_size': {ppo.batch_size} rollouts do not split evenly over {world} "
                        f"processes (each must run as many mini-batch passes)")
    accumulate = ppo.gradient_accumulation_steps
    if accumulate > 1:
        n = ppo.mini_batches_per_update(world)
        if n % accumulate:
            raise UserError(f"config key 'ppo.gradient_accumulation_steps': {accumulate} does not divide the {n} "
                            f"mini-batch passes of an update: the last ones' gradients would be applied in the next "
                            f"step, to its rollouts")
        if ppo.target_kl is not None:
            raise UserError(f"config key 'ppo.target_kl': an early stop would leave gradients accumulated "
                            f"(ppo.gradient_accumulation_steps {accumulate}) for the next step; set one of them")
