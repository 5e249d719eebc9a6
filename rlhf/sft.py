"""Instruction fine-tuning, full or LoRA, with the transformers ``Seq2SeqTrainer``.

Full vs LoRA is one branch in :func:`prepare_model`; training, saving and evaluation are shared.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rlhf.artifacts import atomic_dir, atomic_write_json, atomic_write_text, read_json, truncate_jsonl
from rlhf.checkpoints import CheckpointError, numbered, read_json_state, read_safetensors, read_torch, require_files
from rlhf.config import ExperimentConfig, SftVariant, config_from_dict, to_dict, to_yaml
from rlhf.configdiff import resume_changes
from rlhf.errors import UserError
from rlhf.models import apply_lora, count_parameters
from rlhf.progress import quiet_trainer, trainer_callback
from rlhf.prompts import fit_prompts
from rlhf.runtime import PeakRss, precision_note, use_cpu
from rlhf.trackers import Trackers, trainer_logger

# What an SFT resume may change: how long to train (sft.max_steps / sft.epochs: the Trainer builds
# its learning-rate schedule for the new length and continues it from the restored step) and what
# is used only after training (ROUGE evaluation, the merged save). Every other setting a variant's
# training reads (seed, model, data, tinyworld, sft, the variant itself) must match its checkpoint:
# the Trainer restores the optimizer (learning rate, weight decay), the eval / save intervals and the
# early-stopping state from the checkpoint and would silently ignore new values, and the rest (LoRA
# shape, batch sizes, lengths, warmup, model, data, seed) change the model or the maths.
SAFE_ON_RESUME = frozenset({"sft.epochs", "sft.max_steps", "sft.eval_batch_size", "sft.eval_n_dialogues",
                            "sft.max_new_tokens", "sft.save_merged", "sft.report_to"})
SECTIONS = ("seed", "model", "data", "tinyworld", "sft")
HF_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth")


SHORTENED = "prompt_shortened"  # a tokenized split's column: the Trainer drops it (no forward argument)


def tokenize_split(ds, tokenizer, template: str, max_input: int, max_target: int):
    """Prompt -> ``input_ids`` (over-long dialogues shortened inside the template, :func:`fit_prompts`,
    marked in the :data:`SHORTENED` column); summary -> ``labels`` (truncated to ``max_target``)."""

    def encode(batch):
        prompts, shortened = fit_prompts(batch["dialogue"], template, tokenizer, max_input)
        enc = tokenizer(prompts, max_length=max_input, truncation=True)
        enc["labels"] = tokenizer(text_target=batch["summary"], max_length=max_target, truncation=True)["input_ids"]
        enc[SHORTENED] = shortened
        return enc

    return ds.map(encode, batched=True, remove_columns=ds.column_names)


def count_shortened(ds) -> int | None:
    """How many prompts of a :func:`tokenize_split` split were shortened (None: not recorded)."""
    return sum(ds[SHORTENED]) if SHORTENED in ds.column_names else None


def prepare_model(base, variant: SftVariant, config: ExperimentConfig):
    """The trainable model for ``variant``: the base itself (full) or the base wrapped in LoRA.

    Seeded first, so a fresh adapter's initial weights depend only on the config's seed.
    """
    from transformers import set_seed

    set_seed(config.seed)
    if variant.method == "lora":
        return apply_lora(base, config.sft.lora, key="sft.lora")
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
        max_steps=variant.max_steps or cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay, eval_strategy="steps",
        eval_steps=cfg.eval_steps, save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=2,
        load_best_model_at_end=early, metric_for_best_model="eval_loss", greater_is_better=False,
        logging_steps=max(1, cfg.eval_steps // 2), seed=config.seed, data_seed=config.seed, report_to="none",
        disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=False, use_cpu=use_cpu(),
        # mixed precision the standard way: fp32 master weights, autocast compute (pure bf16 weights
        # only when model.dtype asks for them; precision_note says which in the metrics)
        bf16=config.model.mixed_precision == "bf16" or config.model.dtype == "bfloat16",
        fp16=config.model.mixed_precision == "fp16",
    )


def verify_checkpoint(folder: Path, step: int) -> None:
    """A Trainer checkpoint is usable: every file present, readable with safetensors or
    ``torch.load(weights_only=True)``, finite, and at ``step``; else :class:`CheckpointError`."""
    from transformers.trainer_pt_utils import safe_globals

    require_files(folder, HF_FILES)
    if read_json_state(folder / "trainer_state.json").get("global_step") != step:
        raise CheckpointError(f"trainer_state.json is not at step {step}")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise CheckpointError("no .safetensors weights")
    for path in weights:
        read_safetensors(path)
    read_torch(folder / "optimizer.pt")
    read_torch(folder / "scheduler.pt")
    with safe_globals():  # numpy's RNG state, as the Trainer itself loads it
        read_torch(folder / "rng_state.pth")


def record_path(stage_dir: Path, variant: SftVariant) -> Path:
    """The resolved config a variant's checkpoints (and trained model) were written under."""
    return stage_dir / "checkpoints" / variant.name / "config.yaml"


def variant_view(config: dict, name: str) -> dict:
    """What one variant's training reads: the shared sections, ``sft`` without the other variants."""
    sft = {k: v for k, v in config["sft"].items() if k != "variants"}
    variant = next((v for v in config["sft"]["variants"] if v["name"] == name), None)
    return {**{k: config.get(k) for k in SECTIONS[:-1]}, "sft": {**sft, f"variants[{name!r}]": variant}}


def check_record(stage_dir: Path, config: ExperimentConfig, variant: SftVariant, source: str, log=print) -> None:
    """Refuse (one :class:`UserError` line) to continue ``source`` when a setting outside
    :data:`SAFE_ON_RESUME` differs from the variant's record; report the changes that apply."""
    import yaml

    path, label = record_path(stage_dir, variant), f"sft/{variant.name}"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raise UserError(f"{label}: {source} has no readable config record {path}, so a resume cannot be checked "
                        f"against yours: drop --resume and add --force to start over") from None
    try:
        raw = to_dict(config_from_dict(raw))
    except (UserError, TypeError):
        pass  # a record from an older version: compared as written
    old, new = variant_view(raw, variant.name), variant_view(to_dict(config), variant.name)
    for line in resume_changes(label, old, new, SECTIONS, SAFE_ON_RESUME, source):
        log(line)


def resume_checkpoint(stage_dir: Path, config: ExperimentConfig, variant: SftVariant, log=print) -> str | None:
    """The newest usable checkpoint of ``variant`` (saying which were skipped and why), after
    checking its config record; None (said) when there is none."""
    ckpt_dir, label = stage_dir / "checkpoints" / variant.name, f"sft/{variant.name}"
    candidates, _ = numbered(ckpt_dir, "checkpoint")
    for step, path in candidates:
        try:
            verify_checkpoint(path, step)
        except CheckpointError as err:
            log(f"{label}: skipping checkpoint {path}: {err}")
            continue
        check_record(stage_dir, config, variant, f"checkpoint {path}", log)
        log(f"{label}: resuming from {path} (step {step})")
        return str(path)
    log(f"{label}: --resume: no {'usable ' if candidates else ''}checkpoint in {ckpt_dir}; training from step 0")
    return None


def leftovers(stage_dir: Path) -> list[str]:
    """What an earlier sft run left that a fresh start would discard: checkpoints, trained variants."""
    found = []
    root = stage_dir / "checkpoints"
    for sub in sorted(root.iterdir()) if root.is_dir() else []:
        found += [f"{sub.name}/{p.name}" for _, p in numbered(sub, "checkpoint")[0]]
    found += [f"{p.parent.name} (trained)" for p in sorted(stage_dir.glob("*/train_metrics.json"))]
    return found


def train_variant(model, tokenizer, train_ds, eval_ds, config: ExperimentConfig, variant: SftVariant,
                  stage_dir: Path, resume: bool = False, callbacks=(), trackers: Trackers | None = None) -> TrainResult:
    """Train ``model`` and save it atomically to ``stage_dir/<variant>/model`` (full) or ``.../adapter``.

    ``resume``: continue from the newest usable checkpoint, settings checked against its record.
    The Trainer's log rows go to ``stage_dir/<variant>/metrics.jsonl`` and to ``trackers`` (under
    ``<variant>/``)."""
    from transformers import DataCollatorForSeq2Seq, EarlyStoppingCallback, Seq2SeqTrainer

    ckpt_dir = stage_dir / "checkpoints" / variant.name
    cbs = [*callbacks, trainer_callback(f"sft/{variant.name}")]
    if config.sft.early_stopping_patience is not None:
        cbs.append(EarlyStoppingCallback(early_stopping_patience=config.sft.early_stopping_patience))
    trainer = Seq2SeqTrainer(
        model=model, args=training_args(config, variant, ckpt_dir), train_dataset=train_ds, eval_dataset=eval_ds,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        processing_class=tokenizer, callbacks=cbs,
    )
    quiet_trainer(trainer)
    say = print if trainer.is_world_process_zero() else (lambda *_: None)
    resume_from = resume_checkpoint(stage_dir, config, variant, log=say) if resume else None
    start = int(Path(resume_from).name.split("-")[1]) if resume_from else 0
    log_path = stage_dir / variant.name / "metrics.jsonl"
    if trainer.is_world_process_zero():  # a resumed variant logs the steps after its checkpoint again
        log_path.parent.mkdir(parents=True, exist_ok=True)
        truncate_jsonl(log_path, lambda row: isinstance(row.get("step"), int) and row["step"] <= start)
    trainer.add_callback(trainer_logger(log_path, trackers, prefix=f"{variant.name}/"))
    shortened = {"train_prompts_shortened": count_shortened(train_ds),  # over-long dialogues cut inside the
                 "eval_prompts_shortened": count_shortened(eval_ds)}       # template (tokenize_split)
    if shortened["train_prompts_shortened"]:
        say(f"sft/{variant.name}: {shortened['train_prompts_shortened']} of {len(train_ds)} training prompts are "
            f"longer than model.max_input_length={config.model.max_input_length} tokens; their dialogues are shortened")
    if trainer.is_world_process_zero():
        atomic_write_text(record_path(stage_dir, variant), to_yaml(config))
    trainer.accelerator.wait_for_everyone()
    start = time.time()
    with PeakRss(settle=True) as mem:  # the previous variant's memory freed first
        out = trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.time() - start
    model.eval()
    folder = variant_folder(stage_dir, variant)
    metrics = {
        **count_parameters(trainer.model), "train_seconds": round(seconds, 2), "peak_memory_mb": round(mem.mib, 1),
        "train_memory_mb": round(mem.increase_mib, 1),  # above the loaded model: gradients, optimizer, activations
        "precision": precision_note(config.model.dtype, config.model.mixed_precision),
        "train_loss": out.training_loss, "global_step": out.global_step, "resumed_from": resume_from,
        # transformers' train_loss is the mean over the steps this process trained: after a resume, from here on
        "train_loss_since_step": start,
        **shortened,
        "best_eval_loss": trainer.state.best_metric, "world_size": trainer.args.world_size, "learning_rate": variant.learning_rate, "method": variant.method,
    }
    if trainer.is_world_process_zero():  # under DDP only one process writes
        save_variant(trainer.model, tokenizer, variant, stage_dir, config.sft.save_merged)
        atomic_write_json(folder.parent / "train_metrics.json", metrics)
    trainer.accelerator.wait_for_everyone()
    return TrainResult(folder=folder, metrics=metrics)


def variant_folder(stage_dir: Path, variant: SftVariant) -> Path:
    return stage_dir / variant.name / ("adapter" if variant.method == "lora" else "model")


def start_paths(config: ExperimentConfig, sft_dir: Path | None) -> tuple[str, str | None]:
    """(base model path, SFT adapter path or None) of the model that RL starts from and compares
    against: ``rl.start_from`` names an SFT variant (checked when the config loads) or 'base'."""
    name = config.rl.start_from
    if name == "base":
        return config.model.name, None
    variant = next(v for v in config.sft.variants if v.name == name)
    folder = variant_folder(sft_dir, variant)
    return (str(folder), None) if variant.method == "full" else (config.model.name, str(folder))


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

