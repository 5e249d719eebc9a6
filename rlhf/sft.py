"""Instruction fine-tuning, full or LoRA, with the transformers ``Seq2SeqTrainer``.

Full vs LoRA is one branch in :func:`prepare_model`; training, saving and evaluation are shared.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rlhf.artifacts import atomic_dir, atomic_write_json, read_json
from rlhf.config import ExperimentConfig, SftVariant
from rlhf.data import format_prompt
from rlhf.models import apply_lora, count_parameters
from rlhf.runtime import PeakRss, use_cpu


def tokenize_split(ds, tokenizer, template: str, max_input: int, max_target: int):
    """Prompt -> ``input_ids``; summary -> ``labels`` (truncated to the configured lengths)."""

    def encode(batch):
        enc = tokenizer([format_prompt(d, template) for d in batch["dialogue"]], max_length=max_input, truncation=True)
        enc["labels"] = tokenizer(text_target=batch["summary"], max_length=max_target, truncation=True)["input_ids"]
        return enc

    return ds.map(encode, batched=True, remove_columns=ds.column_names)


def prepare_model(base, variant: SftVariant, config: ExperimentConfig):
    """The trainable model for ``variant``: the base itself (full) or the base wrapped in LoRA.

    Seeded first, so a fresh adapter's initial weights depend only on the config's seed.
    """
    from transformers import set_seed

    set_seed(config.seed)
    if variant.method == "lora":
        return apply_lora(base, config.sft.lora)
    for p in base.parameters():
        p.requires_grad_(True)
    return base


@dataclass
class TrainResult:
    folder: Path
    metrics: dict


def training_args(config: ExperimentConfig, variant: SftVariant, output_dir: Path):
    from transformers import Seq2SeqTrainingArguments

    cfg = config.sft
    early = cfg.early_stopping_patience is not None
    return Seq2SeqTrainingArguments(
        output_dir=str(output_dir), learning_rate=variant.learning_rate, num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay, eval_strategy="steps",
        eval_steps=cfg.eval_steps, save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=2,
        load_best_model_at_end=early, metric_for_best_model="eval_loss", greater_is_better=False,
        logging_steps=max(1, cfg.eval_steps // 2), seed=config.seed, data_seed=config.seed, report_to="none",
        disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=False, bf16=config.model.dtype == "bfloat16",
        use_cpu=use_cpu(),
    )


def last_checkpoint(folder: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def train_variant(model, tokenizer, train_ds, eval_ds, config: ExperimentConfig, variant: SftVariant,
                  stage_dir: Path, resume: bool = False, callbacks=()) -> TrainResult:
    """Train ``model`` and save it atomically to ``stage_dir/<variant>/model`` (full) or ``.../adapter``."""
    from transformers import DataCollatorForSeq2Seq, EarlyStoppingCallback, Seq2SeqTrainer

    ckpt_dir = stage_dir / "checkpoints" / variant.name
    resume_from = last_checkpoint(ckpt_dir) if resume else None
    cbs = list(callbacks)
    if config.sft.early_stopping_patience is not None:
        cbs.append(EarlyStoppingCallback(early_stopping_patience=config.sft.early_stopping_patience))
    trainer = Seq2SeqTrainer(
        model=model, args=training_args(config, variant, ckpt_dir), train_dataset=train_ds, eval_dataset=eval_ds,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        processing_class=tokenizer, callbacks=cbs,
    )
    start = time.time()
    with PeakRss() as mem:
        out = trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.time() - start
    model.eval()
    folder = variant_folder(stage_dir, variant)
    metrics = {
        **count_parameters(trainer.model), "train_seconds": round(seconds, 2), "peak_memory_mb": round(mem.mib, 1),
        "train_loss": out.training_loss, "global_step": out.global_step, "resumed_from": resume_from,
        "best_eval_loss": trainer.state.best_metric, "world_size": trainer.args.world_size, "learning_rate": variant.learning_rate, "method": variant.method,
    }
    if trainer.is_world_process_zero():  # under DDP only one process writes
        save_variant(trainer.model, tokenizer, variant, stage_dir, config.sft.save_merged)
        atomic_write_json(folder.parent / "train_metrics.json", metrics)
    trainer.accelerator.wait_for_everyone()
    return TrainResult(folder=folder, metrics=metrics)


def variant_folder(stage_dir: Path, variant: SftVariant) -> Path:
    return stage_dir / variant.name / ("adapter" if variant.method == "lora" else "model")


def save_variant(model, tokenizer, variant: SftVariant, stage_dir: Path, save_merged: bool) -> Path:
    """Full: a folder ``from_pretrained`` loads. LoRA: an adapter ``PeftModel.from_pretrained`` loads."""
    folder = variant_folder(stage_dir, variant)
    with atomic_dir(folder) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    if variant.method == "lora" and save_merged:
        import copy

        merged = copy.deepcopy(model).merge_and_unload()
        with atomic_dir(folder.parent / "merged") as tmp:
            merged.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
    return folder


def load_variant(config: ExperimentConfig, variant: SftVariant, stage_dir: Path):
    """Reload a saved variant for evaluation: the full model, or the base plus the adapter."""
    from peft import PeftModel

    from rlhf.models import load_seq2seq

    folder = variant_folder(stage_dir, variant)
    if variant.method == "full":
        return load_seq2seq(config.model, str(folder))
    return PeftModel.from_pretrained(load_seq2seq(config.model), str(folder)).eval()


def finished_variant(stage_dir: Path, variant: SftVariant) -> dict | None:
    """Metrics of a variant that already trained to the end (used by ``--resume``)."""
    path = stage_dir / variant.name / "train_metrics.json"
    return read_json(path) if path.is_file() and variant_folder(stage_dir, variant).is_dir() else None

