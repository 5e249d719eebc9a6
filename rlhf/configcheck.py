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
    _check_rl(config.rl)
    check_update_plan(config.rl, 1)  # one process; a multi-process run checks its own count when it starts
    if config.rl.toxic_share is not None and not config.data.toxic_column:
        raise UserError(f"config key 'rl.toxic_share': value {config.rl.toxic_share} needs data.toxic_column, "
                        f"the column that marks the toxic training prompts")
    variants = [v.name for v in config.sft.variants]
    if config.rl.start_from not in ("base", *variants):
        raise UserError(f"config key 'rl.start_from': {shown(config.rl.start_from)} is not an SFT variant "
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


def _check_rl(rl) -> None:
    k = rl.group_size
    if rl.algorithm == "ppo" and k != 1:
        raise UserError(f"config key 'rl.group_size': value {k} needs a group method (rl.algorithm rloo or grpo); "
                        f"ppo samples one response per prompt")
    if rl.algorithm in ("dpo", "ipo") and k != 2:
        raise UserError(f"config key 'rl.group_size': value {k} must be 2 for rl.algorithm {rl.algorithm}: each "
                        f"prompt's rows are its pair (chosen, rejected)")
    if rl.algorithm in ("dpo", "ipo") and rl.toxic_share is not None:
        raise UserError(f"config key 'rl.toxic_share': value {rl.toxic_share} is for the online methods; "
                        f"rl.algorithm {rl.algorithm} trains on its pairs as they come (set it to null)")
    if rl.algorithm in ("dpo", "ipo") and rl.target_kl is not None:
        raise UserError(f"config key 'rl.target_kl': value {rl.target_kl} stops the clipped methods' epochs; "
                        f"rl.algorithm {rl.algorithm} has no ratio to watch (set it to null)")
    if rl.algorithm in ("dpo", "ipo") and rl.reward_model != "classifier":
        raise UserError(f"config key 'rl.reward_model': value {shown(rl.reward_model)} is for the online methods "
                        f"(ppo, rloo, grpo); rl.algorithm {rl.algorithm} trains on its pairs with no reward model "
                        f"(set it to classifier)")
    if rl.algorithm not in ("dpo", "ipo") and rl.preference.nll_coef:
        raise UserError(f"config key 'rl.preference.nll_coef': value {rl.preference.nll_coef} weighs the chosen "
                        f"response's NLL in DPO / IPO; rl.algorithm {rl.algorithm} has no pairs (set it to 0)")
    if rl.pairs.source == "corpus" and not rl.pairs.corpus_column:
        raise UserError("config key 'rl.pairs.corpus_column': rl.pairs.source corpus needs the column of the "
                        "training data that holds the preferred rewording of each reference summary")
    if rl.algorithm != "ppo" and k < 2:
        raise UserError(f"config key 'rl.group_size': value {k} must be >= 2 for rl.algorithm {rl.algorithm} (its "
                        f"baseline comes from the other responses to the same prompt)")
    for key in ("batch_size", "mini_batch_size"):
        if getattr(rl, key) % k:
            raise UserError(f"config key 'rl.{key}': value {getattr(rl, key)} must be a multiple of rl.group_size "
                            f"({k}): a prompt's responses stay together")
    if rl.batch_size % rl.mini_batch_size:
        raise UserError(f"config key 'rl.batch_size': value {rl.batch_size} must be a multiple of "
                        f"rl.mini_batch_size ({rl.mini_batch_size})")
    if rl.kl.controller == "adaptive" and 5 * rl.kl.horizon <= rl.batch_size:
        raise UserError(f"config key 'rl.kl.horizon': value {rl.kl.horizon} must be > 0.2 x rl.batch_size "
                        f"({rl.batch_size}): the adaptive controller scales the coefficient by 1 - 0.2 x "
                        f"batch_size / horizon when the KL is low, which would make it zero or negative")
    if rl.toxic_per_batch is not None and not 0 < rl.toxic_per_batch < rl.prompts_per_batch:
        raise UserError(f"config key 'rl.toxic_share': value {rl.toxic_share} gives {rl.toxic_per_batch} of "
                        f"{rl.prompts_per_batch} prompts per batch; both toxic and clean ones are needed")
    if rl.frozen_encoder and rl.policy != "lora":
        raise UserError("config key 'rl.frozen_encoder': needs rl.policy lora (a full policy trains the encoder)")


def check_update_plan(rl, world: int) -> None:
    """One line naming the key when the processes' updates could differ, or gradients outlive the
    update whose rollouts made them. DDP reduces gradients inside every backward, so every process
    must run as many mini-batch passes, and an accumulation must end within its update."""
    if rl.prompts_per_batch % world:
        groups = f" ({rl.prompts_per_batch} prompts x {rl.group_size})" if rl.group_size > 1 else ""
        raise UserError(f"config key 'rl.batch_size': {rl.batch_size} rollouts{groups} do not split evenly over {world} "
                        f"processes (each must run as many mini-batch passes; a group stays on one process)")
    accumulate = rl.gradient_accumulation_steps
    if accumulate > 1:
        n = rl.mini_batches_per_update(world)
        if n % accumulate:
            raise UserError(f"config key 'rl.gradient_accumulation_steps': {accumulate} does not divide the {n} "
                            f"mini-batch passes of an update: the last ones' gradients would be applied in the next "
                            f"step, to its rollouts")
        if rl.target_kl is not None:
            raise UserError(f"config key 'rl.target_kl': an early stop would leave gradients accumulated "
                            f"(rl.gradient_accumulation_steps {accumulate}) for the next step; set one of them")
