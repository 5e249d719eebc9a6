"""Loading tokenizers and seq2seq models through ``from_pretrained``, with one-line errors.

The same code path loads ``google/flan-t5-base`` from the hub and the tiny world's local folder.
``trust_remote_code`` stays off unless the config opts in.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rlhf.config import ModelConfig
from rlhf.errors import UserError, first_line
from rlhf.runtime import default_device

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def looks_like_missing_path(name: str) -> bool:
    """``name`` is not an existing folder and reads as a path rather than a hub id (``org/model``):
    it starts with '.', '/' or '~', ends with '/', or has more than one '/'."""
    if Path(name).expanduser().exists():
        return False
    return name.startswith((".", "/", "~")) or name.endswith("/") or name.count("/") > 1 or "\\" in name


def check_local(name: str, what: str) -> None:
    """One line for a local ``name`` that cannot be a model folder: missing, or a file."""
    if looks_like_missing_path(name):
        raise UserError(f"{what} path does not exist: {name}")
    if Path(name).is_file():
        raise UserError(f"{what} path {name} is a file; name a folder written by save_pretrained (safetensors)")


def load_tokenizer(cfg: ModelConfig, path: str | None = None):
    from transformers import AutoTokenizer

    name = path or cfg.tokenizer or cfg.name
    check_local(name, "tokenizer" if name == cfg.tokenizer else "model")
    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=cfg.trust_remote_code)
    except Exception as err:
        raise UserError(f"could not load tokenizer '{name}': {first_line(err)}") from None


def check_seq2seq(name: str, trust_remote_code: bool = False) -> None:
    """Fail with one line unless ``name`` is an encoder-decoder model config."""
    from transformers import AutoConfig

    check_local(name, "model")
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except Exception as err:
        raise UserError(f"could not load model config '{name}': {first_line(err)}") from None
    if not getattr(config, "is_encoder_decoder", False):
        raise UserError(f"model '{name}' is a {config.model_type} model, not a seq2seq (encoder-decoder) model")


def load_seq2seq(cfg: ModelConfig, path: str | None = None):
    """The seq2seq LM at ``path`` (default ``cfg.name``), in eval mode."""
    from transformers import AutoModelForSeq2SeqLM

    name = path or cfg.name
    check_seq2seq(name, cfg.trust_remote_code)
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(
            name, dtype=DTYPES[cfg.dtype], trust_remote_code=cfg.trust_remote_code, use_safetensors=True,
            use_kernels=False,  # Hub kernels are code fetched from the Hub and run (on by default on a GPU)
        )
    except Exception as err:
        raise UserError(f"could not load seq2seq model '{name}': {first_line(err)}") from None
    fuse_gelu(model)
    return model.to(default_device()).eval()


def fuse_gelu(model: torch.nn.Module) -> int:
    """Swap transformers' ``NewGELUActivation`` (T5's gated-gelu, written as 7 tensor ops) for
    ``GELUTanh``: the same tanh formula in one fused kernel, forward and backward (equal to within
    float rounding; about 2x faster on CPU, benchmarks/RESULTS.md). Returns how many were swapped."""
    from transformers.activations import GELUTanh, NewGELUActivation

    swapped = 0
    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) is NewGELUActivation:
                setattr(module, name, GELUTanh())
                swapped += 1
    return swapped


class Fp32Linear(torch.nn.Linear):
    """A ``Linear`` that computes in fp32 under autocast (same parameters, same state dict); without
    autocast it is a plain ``Linear`` (pure bf16 weights stay bf16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_autocast_enabled(x.device.type):
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            bias = None if self.bias is None else self.bias.float()
            return torch.nn.functional.linear(x.float(), self.weight.float(), bias)


def fp32_output_layer(model: torch.nn.Module) -> bool:
    """Make the LM head compute its logits in fp32 under bf16/fp16 autocast: logits rounded to bf16
    (spaced 0.125 apart near 20) would put errors of ~0.06 nats into every logprob, KL and policy
    ratio, which ``.float()`` afterwards cannot take back. Without autocast nothing changes (the
    same ``linear`` on the same fp32 tensors). Returns whether the head was a plain ``Linear``."""
    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        return False
    head.__class__ = Fp32Linear  # in place: parameters, tying and state-dict keys stay as they are
    return True


def count_parameters(model: torch.nn.Module) -> dict[str, float]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": trainable, "total_params": total,
            "trainable_pct": round(100.0 * trainable / max(1, total), 4)}


def lora_target_candidates(model: torch.nn.Module) -> list[str]:
    """Name suffixes of the model's Linear layers: what LoRA ``target_modules`` may name."""
    return sorted({name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)})


ENCODER_MODULES = r"(.*\.)?encoder\..*"  # peft exclude_modules regex: every module inside the encoder


def trainable_encoder_weights(model: torch.nn.Module) -> list[str]:
    """Names of trainable parameters that the encoder uses (its own, or an embedding it shares)."""
    encoder = model.get_encoder()
    enc_ids = {id(p) for p in encoder.parameters()}
    return [n for n, p in model.named_parameters() if p.requires_grad and id(p) in enc_ids]


def refuse_trainable_encoder(model: torch.nn.Module) -> None:
    """``rl.frozen_encoder`` reuses the rollout's encoder states for the reference and every update:
    refuse (one line) if training would change any weight the encoder uses."""
    if trainable := trainable_encoder_weights(model):
        raise UserError(f"config key 'rl.frozen_encoder': {len(trainable)} encoder weights would train, "
                        f"e.g. {trainable[0]}")


def refuse_missing_targets(model: torch.nn.Module, cfg, key: str) -> None:
    """One line naming ``key`` when LoRA ``cfg.target_modules`` names a module ``model`` lacks."""
    candidates = lora_target_candidates(model)
    missing = [m for m in cfg.target_modules if m not in candidates]
    if missing:
        raise UserError(f"config key '{key}.target_modules': {missing} are not in the model; it has Linear modules: "
                        f"{', '.join(candidates)}")


def meta_model(name: str, trust_remote_code: bool = False):
    """(config, the seq2seq model built from it on the meta device: shapes, no weights read), or one
    line naming ``model.name`` when its config cannot be read."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    check_local(name, "model")
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except Exception as err:  # an unreachable hub id, a folder without config.json, ...
        raise UserError(f"config key 'model.name': cannot read the config of {name!r}: {first_line(err)}") from None
    with torch.device("meta"):
        return config, AutoModelForSeq2SeqLM.from_config(config, trust_remote_code=trust_remote_code)


def check_lora_targets(model_cfg: ModelConfig, cfg, key: str) -> None:
    """:func:`refuse_missing_targets` on the model's shape alone (:func:`meta_model`), so a stage
    can refuse before it trains anything."""
    refuse_missing_targets(meta_model(model_cfg.name, model_cfg.trust_remote_code)[1], cfg, key)


def apply_lora(model: torch.nn.Module, cfg, task_type: str = "SEQ_2_SEQ_LM", decoder_only: bool = False,
               key: str = "lora"):
    """Wrap ``model`` with a fresh trainable LoRA adapter (peft); base weights frozen.
    ``decoder_only``: no adapter inside the encoder (``exclude_modules``); ``key``: the config
    section ``cfg`` came from, named in a refusal."""
    from peft import LoraConfig, get_peft_model

    refuse_missing_targets(model, cfg, key)
    config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules),
                        bias=cfg.bias, task_type=task_type, exclude_modules=ENCODER_MODULES if decoder_only else None)
    return get_peft_model(model, config)
