"""Batched, seeded generation for seq2seq models (never one prompt at a time)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from rlhf.config import GenerationSetting
from rlhf.decoding import decoder_for
from rlhf.pickers import greedy, nucleus
from rlhf.progress import Progress


@dataclass
class Generations:
    texts: list[str]        # one per prompt (the first of its ``k`` when k > 1)
    seconds: float
    new_tokens: int
    samples: list[list[str]] | None = None  # [n prompts][k] when ``num_return_sequences`` = k > 1


def generation_kwargs(setting: GenerationSetting, max_new_tokens: int) -> dict:
    kwargs = {"max_new_tokens": setting.max_new_tokens or max_new_tokens, "num_beams": setting.num_beams,
              "do_sample": setting.do_sample}
    if setting.do_sample:
        kwargs.update(temperature=setting.temperature, top_k=setting.top_k, top_p=setting.top_p)
    else:
        kwargs.update(temperature=None, top_k=None, top_p=None)
    return kwargs


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], setting: GenerationSetting, *, max_new_tokens: int,
             batch_size: int, max_input_length: int, seed: int, desc: str | None = None,
             num_return_sequences: int = 1, compile: bool = False) -> Generations:
    """Generate for ``prompts`` in length-sorted batches; outputs come back in prompt order.

    Encoder inputs are right-padded (T5's native side) and go to the model's device. Special
    tokens are stripped from the text. With ``num_return_sequences`` = k > 1 (sampling), the
    encoder runs once per prompt and each prompt gets k responses; ``batch_size`` then counts
    responses, so a batch holds ``batch_size // k`` prompts (at least one). A T5 decodes greedy and
    sampled settings with :class:`rlhf.decoding.Decoder` (the same tokens as ``generate`` from the
    same random state; its step compiled with ``compile``); beam search goes through ``generate``.
    """
    torch.manual_seed(seed)
    k = num_return_sequences
    kwargs = generation_kwargs(setting, max_new_tokens)
    if k > 1:
        kwargs["num_return_sequences"] = k
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    samples: list[list[str]] = [[] for _ in prompts]
    new_tokens = 0
    start = time.perf_counter()
    device = next(model.parameters()).device
    per_batch = max(1, batch_size // k)
    batches = range(0, len(order), per_batch)
    progress = Progress(desc or setting.name, len(batches), enabled=desc is not None, final_line=False)
    for b in batches:
        idx = order[b:b + per_batch]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                        max_length=max_input_length).to(device)
        out = _decode(model, tokenizer, enc, setting, kwargs, k, compile)
        new_tokens += int((out[:, 1:] != tokenizer.pad_token_id).sum())
        texts = [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]
        for j, i in enumerate(idx):
            samples[i] = texts[j * k:(j + 1) * k]
        progress.update(1)
    progress.close()
    return Generations(texts=[s[0] for s in samples], seconds=time.perf_counter() - start, new_tokens=new_tokens,
                       samples=samples if k > 1 else None)


def _decode(model, tokenizer, enc, setting: GenerationSetting, kwargs: dict, k: int, compile: bool) -> torch.Tensor:
    """One batch -> [rows, 1 + T] token ids, the decoder start token first, as ``generate`` returns."""
    decoder = decoder_for(model, compile) if setting.num_beams == 1 and not _extra_processors(model) else None
    if decoder is None:
        return model.generate(**enc, **kwargs, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    start = model.generation_config.decoder_start_token_id
    start = model.config.decoder_start_token_id if start is None else start
    states = decoder.encode(enc.input_ids, enc.attention_mask)
    pick = nucleus(setting.temperature, setting.top_k, setting.top_p) if setting.do_sample else greedy
    responses = decoder(states, enc.attention_mask, k, kwargs["max_new_tokens"], pick, tokenizer.eos_token_id,
                        tokenizer.pad_token_id, start)
    return torch.cat([responses.new_full((responses.shape[0], 1), start), responses], dim=1)


# generation_config fields that make ``generate`` add a logits processor our decoder does not apply
PROCESSOR_FIELDS = ("repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size",
                    "encoder_no_repeat_ngram_size", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens",
                    "forced_bos_token_id", "forced_eos_token_id", "min_length", "min_new_tokens", "min_p",
                    "typical_p", "epsilon_cutoff", "eta_cutoff", "top_h", "exponential_decay_length_penalty",
                    "sequence_bias", "renormalize_logits", "guidance_scale", "watermarking_config")


def _extra_processors(model) -> list[str]:
    """The fields of ``model``'s generation config that ``generate`` would turn into processors
    beyond the setting's own (then ``generate`` decodes, so every one of them is honoured)."""
    from transformers import GenerationConfig

    config, default = getattr(model, "generation_config", None), GenerationConfig()
    if config is None:
        return []
    return [f for f in PROCESSOR_FIELDS if getattr(config, f, None) != getattr(default, f, None)]
