"""Compute estimator: parameters, memory and FLOPs per stage, from the model config alone.

The model is built on the meta device (no weights, no memory). Memory terms, in bytes, for the
three ways a stage can hold its numbers (P = all parameters, T = trainable ones):

- ``fp32``: weights 4P, gradients 4T, AdamW moments 8T, fp32 activations.
- ``bf16_mixed`` (``model.mixed_precision: bf16``, what the lab config runs): fp32 master weights
  4P plus autocast's bf16 copies 2P, fp32 gradients 4T, fp32 moments 8T, bf16 activations.
- ``bf16_pure`` (``model.dtype: bfloat16``): weights 2P, gradients 2T, bf16 moments 4T.

Activations from Korthikanti et al. 2022 ("Reducing activation recomputation", eq. 1:
s*b*h*(34 + 5*a*s/h) bytes per layer at 2-byte precision), with decoder layers counted 1.5x for
cross-attention, plus the logits. FLOPs: 2 per parameter per token for a forward pass (Kaplan et
al. 2020), attention scores added; a backward pass costs 2x the forward with full fine-tuning and
about 1x with LoRA (input gradients only; the frozen weights get none).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from rlhf.config import ExperimentConfig
from rlhf.errors import UserError

GROUP_SIZE = 4  # responses per prompt the estimate prices RLOO and GRPO at when the config runs PPO
PRECISIONS = ("fp32", "bf16_mixed", "bf16_pure")
ACTIVATION_BYTES = {"fp32": 4, "bf16_mixed": 2, "bf16_pure": 2}
GIB = 2**30


@dataclass
class Shape:
    d_model: int
    n_heads: int
    enc_layers: int
    dec_layers: int
    vocab: int
    enc_params: int  # encoder transformer blocks
    dec_params: int  # decoder transformer blocks
    total: int       # everything, embeddings and lm_head included
    cross_kv: int = 0  # decoder cross-attention key/value weights: they run on the prompt's tokens
    attn_inner: int = 0  # heads x d_kv, the width of attention scores and values (0: d_model)

    @property
    def attention_width(self) -> int:
        return self.attn_inner or self.d_model


def model_shape(name: str, trust_remote_code: bool = False) -> tuple[Shape, torch.nn.Module]:
    from rlhf.models import meta_model

    cfg, model = meta_model(name, trust_remote_code)
    shape = shape_of(model)
    if cfg.model_type == "t5" and not getattr(cfg, "scale_decoder_outputs", True):
        # T5 v1.1 / Flan-T5 checkpoints carry their own lm_head; transformers 5 ties it when
        # building from a config, and unties it again when from_pretrained finds both tensors
        shape.total += cfg.vocab_size * cfg.d_model
    return shape, model


T5_KEYS = ("d_model", "num_heads", "d_kv", "num_layers", "num_decoder_layers", "vocab_size")
CROSS_KV = re.compile(r"EncDecAttention\.[kv]\.")


def shape_of(model: torch.nn.Module) -> Shape:
    """The :class:`Shape` of a T5-family seq2seq model (``encoder.block`` / ``decoder.block``
    parameter names, ``num_heads`` / ``num_layers`` config keys), PEFT-wrapped or not."""
    cfg = model.config
    missing = [k for k in T5_KEYS if getattr(cfg, k, None) is None]
    if missing:  # e.g. BART (encoder_attention_heads, ...): its layout is not counted here
        raise UserError(f"rlhf estimate counts T5-family models only: model type '{cfg.model_type}' has no "
                        f"config key {missing[0]}")
    named = [(n.removeprefix("base_model.model."), p) for n, p in model.named_parameters()]
    enc = sum(p.numel() for n, p in named if n.startswith("encoder.block"))
    dec = sum(p.numel() for n, p in named if n.startswith("decoder.block"))
    cross_kv = sum(p.numel() for n, p in named if n.startswith("decoder.block") and CROSS_KV.search(n)
                   and "lora_" not in n)
    total = sum(p.numel() for p in model.parameters())  # tied embeddings counted once, as in memory
    return Shape(cfg.d_model, cfg.num_heads, cfg.num_layers, cfg.num_decoder_layers, cfg.vocab_size, enc, dec,
                 total, cross_kv, cfg.num_heads * cfg.d_kv)


def lora_params(model: torch.nn.Module, lora_cfg, decoder_only: bool = False, key: str = "lora") -> int:
    from rlhf.models import apply_lora

    wrapped = apply_lora(model, lora_cfg, decoder_only=decoder_only, key=key)
    n = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    wrapped.unload()
    return n


def activation_bytes(s: Shape, batch: int, src: int, tgt: int, dtype: str, with_encoder: bool = True,
                     encoder_batch: int | None = None) -> float:
    """Activations kept for backward: transformer layers plus logits and their gradient
    (``with_encoder=False``: an update that runs the decoder alone, ``rl.frozen_encoder``;
    ``encoder_batch``: encoder rows when fewer than the decoder's, a group's prompt encoded once)."""
    def per_layer(seq: int, rows: int) -> float:
        return seq * rows * s.d_model * (34 + 5 * s.n_heads * seq / s.d_model)

    scale = ACTIVATION_BYTES[dtype] / 2
    enc_rows = batch if encoder_batch is None else encoder_batch
    layers = with_encoder * s.enc_layers * per_layer(src, enc_rows) + 1.5 * s.dec_layers * per_layer(tgt, batch)
    logits = 2 * batch * tgt * s.vocab * 4
    return layers * scale + logits


def encoder_flops(s: Shape, batch: int, src: int) -> float:
    """The encoder's share of a forward: 2 FLOPs per weight per token plus attention scores and
    their weighted values (2 x 2 FLOPs per query, key and heads x d_kv channel)."""
    return 2 * s.enc_params * src * batch + 4 * batch * s.attention_width * s.enc_layers * src * src


def forward_flops(s: Shape, batch: int, src: int, tgt: int) -> float:
    """One teacher-forced forward: 2 FLOPs per weight per token (cross-attention keys and values per
    prompt token), attention scores, and the lm_head."""
    decoder = (2 * (s.dec_params - s.cross_kv) * tgt + 2 * s.cross_kv * src) * batch \
        + 4 * batch * s.attention_width * s.dec_layers * (tgt * tgt + tgt * src)
    head = 2 * batch * tgt * s.d_model * s.vocab
    return encoder_flops(s, batch, src) + decoder + head


def memory(frozen: int, trainable: int, precision: str, act: float) -> dict[str, float]:
    """GiB of weights (``frozen`` + ``trainable`` parameters), gradients, optimizer states and
    activations (``act`` bytes) in ``precision``."""
    total = frozen + trainable
    # autocast keeps a bf16 copy of the weights that train (leaves with grad); frozen ones are cast per use
    weights = {"fp32": 4 * total, "bf16_mixed": 4 * total + 2 * trainable, "bf16_pure": 2 * total}[precision]
    grad_bytes, moment_bytes = (2, 4) if precision == "bf16_pure" else (4, 8)
    parts = {"weights": weights, "gradients": trainable * grad_bytes, "optimizer": trainable * moment_bytes,
             "activations": act}
    return {k: v / GIB for k, v in parts.items()} | {"total": sum(parts.values()) / GIB}


def configured_precision(config: ExperimentConfig) -> str:
    """The column of :func:`memory` that ``config`` runs."""
    if config.model.dtype in ("bfloat16", "float16"):
        return "bf16_pure"
    return "bf16_mixed" if config.model.mixed_precision != "no" else "fp32"


def reward_model_params(config: ExperimentConfig) -> int | None:
    """Parameters of the reward model, when its config can be read (None otherwise)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    name = config.reward.pretrained or config.reward.model
    try:
        cfg = AutoConfig.from_pretrained(name, trust_remote_code=config.reward.trust_remote_code)
    except Exception:
        return None
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(cfg)
    return sum(p.numel() for p in model.parameters())


def estimate(config: ExperimentConfig, prompt_tokens: int | None = None) -> dict:
    """Per-stage parameters and memory (each of :data:`PRECISIONS`), and FLOPs per RL step, for each
    RL method (PPO; RLOO and GRPO in groups of ``rl.group_size``, or :data:`GROUP_SIZE` when the
    config runs PPO) at the configured batch."""
    s, model = model_shape(config.model.name, config.model.trust_remote_code)
    reward_params = reward_model_params(config)
    src = prompt_tokens or config.model.max_input_length
    out: dict = {"model": config.model.name, "total_params": s.total, "prompt_tokens": src, "stages": {},
                 "configured": configured_precision(config)}
    sft_tgt, sft_b = config.sft.max_target_length, config.sft.batch_size
    lora_sft = lora_params(model, config.sft.lora, key="sft.lora")
    lora_rl = lora_params(model, config.rl.lora, decoder_only=config.rl.frozen_encoder, key="rl.lora")
    for name, trainable in (("sft_full", s.total), ("sft_lora", lora_sft)):
        out["stages"][name] = {"trainable_params": trainable, **{
            dtype: memory(s.total - trainable if name == "sft_full" else s.total, trainable, dtype,
                          activation_bytes(s, sft_b, src, sft_tgt, dtype)) for dtype in PRECISIONS}}
    p = config.rl
    # frozen: the base under the adapter, or the reference copy of a full policy; and the reward model
    frozen = s.total + (reward_params or 0)
    k_group = p.group_size if p.group_size > 1 else GROUP_SIZE  # the critic-free methods at the configured batch
    ptx_rows = p.mini_batch_size if p.ptx_coef > 0 else 0  # ptx pairs ride along in every mini-batch
    tgt = max(p.max_new_tokens, sft_tgt if p.ptx_coef > 0 else 0)
    out["rl_step_flops"] = {}
    for name in ("ppo", "rloo", "grpo"):
        k = 1 if name == "ppo" else k_group
        trainable = (lora_rl if p.policy == "lora" else s.total) + (s.d_model + 1 if name == "ppo" else 0)  # value head
        out["stages"][f"rl_{name}"] = {
            "trainable_params": trainable, "group_size": k, "reward_params": reward_params,
            "reference": "adapter-disabled policy" if p.policy == "lora" else "frozen copy", **{
                dtype: memory(frozen, trainable, dtype, activation_bytes(
                    s, p.mini_batch_size + ptx_rows, src, tgt, dtype, not p.frozen_encoder,
                    encoder_batch=p.mini_batch_size // k + ptx_rows)) for dtype in PRECISIONS}}
        out["rl_step_flops"][name] = rl_step_flops(s, p, src, sft_tgt, name, k)
    return out


def rl_step_flops(s: Shape, p, src: int, ptx_target: int = 0, algorithm: str | None = None,
                  group_size: int | None = None) -> dict[str, float]:
    """FLOPs of one RL step with prompts of ``src`` tokens and ``max_new_tokens`` responses, for
    ``algorithm`` (default: the configured one) with ``group_size`` responses per prompt.

    The encoder runs once per prompt at rollout, and the policy's no-grad pass reuses its states;
    the reference's encoder runs once per prompt; every update encodes each of its prompts once for
    its k responses. With ``frozen_encoder`` the reference and every update reuse the rollout's
    states (no encoder after rollout). PPO's value head is a d_model x 1 projection (not counted).
    With ``ptx_coef`` every update also trains on as many supervised pairs (summaries of
    ``ptx_target`` tokens) as it has rollouts; their encoder runs without a graph when frozen. Each
    row set is priced at its own width: the padding of the joint forward is not counted."""
    algorithm = algorithm or p.algorithm
    k = group_size or p.group_size
    b, t = p.batch_size, p.max_new_tokens
    prompts = b // k
    dec = forward_flops(s, b, src, t) - encoder_flops(s, b, src)  # the decoder of every rollout
    enc = encoder_flops(s, prompts, src)  # the encoder of every prompt, once
    frozen = p.frozen_encoder
    generate = dec + enc  # encoder once + one decoder token at a time with a KV cache
    no_grad = 2 * dec + (0 if frozen else enc)  # policy (+ values) and reference
    backward_factor = 1.0 if p.policy == "lora" else 2.0
    update = p.epochs * (1 + backward_factor) * (dec if frozen else dec + enc)
    ptx = 0.0
    if p.ptx_coef > 0:
        fwd_ptx, enc_ptx = forward_flops(s, b, src, ptx_target), encoder_flops(s, b, src)
        ptx = p.epochs * ((1 + backward_factor) * (fwd_ptx - enc_ptx) + enc_ptx if frozen
                          else (1 + backward_factor) * fwd_ptx)
    return {"algorithm": algorithm, "group_size": k, "generate": generate, "forward_no_grad": no_grad,
            "update": update, "ptx": ptx, "total": generate + no_grad + update + ptx}


def format_estimate(est: dict) -> str:
    lines = [f"model {est['model']}: {est['total_params']:,} parameters"]
    for name, st in est["stages"].items():
        lines.append(f"\n{name}: {st['trainable_params']:,} trainable")
        for dtype in PRECISIONS:
            m = st[dtype]
            mark = " (configured)" if dtype == est["configured"] else ""
            lines.append(f"  {dtype}{mark}: weights {m['weights']:.3f} GiB, gradients {m['gradients']:.3f}, optimizer "
                         f"{m['optimizer']:.3f}, activations {m['activations']:.3f}, total {m['total']:.3f} GiB")
    for name, f in est["rl_step_flops"].items():
        group = f", k = {f['group_size']}" if f["group_size"] > 1 else ""
        lines.append(f"\nRL step ({name}{group}): {f['total'] / 1e12:.3f} TFLOP (generate {f['generate'] / 1e12:.3f}, "
                     f"no-grad forwards {f['forward_no_grad'] / 1e12:.3f}, updates {f['update'] / 1e12:.3f}"
                     + (f", ptx pairs {f['ptx'] / 1e12:.3f}" if f["ptx"] else "") + ")")
    return "\n".join(lines)
