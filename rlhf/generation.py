"""Batched, seeded generation for seq2seq models (never one prompt at a time)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from rlhf.config import GenerationSetting


@dataclass
class Generations:
    texts: list[str]
    seconds: float
    new_tokens: int


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
             batch_size: int, max_input_length: int, seed: int, desc: str | None = None) -> Generations:
    """Generate for ``prompts`` in length-sorted batches; outputs come back in prompt order.

    Encoder inputs are right-padded (T5's native side). Special tokens are stripped from the text.
    """
    torch.manual_seed(seed)
    kwargs = generation_kwargs(setting, max_new_tokens)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts: list[str | None] = [None] * len(prompts)
    new_tokens = 0
    start = time.perf_counter()
    device = next(model.parameters()).device
    batches = range(0, len(order), batch_size)
    for b in tqdm(batches, desc=desc or setting.name, leave=False, disable=None if desc else True):
        idx = order[b:b + batch_size]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                        max_length=max_input_length).to(device)
        out = model.generate(**enc, **kwargs, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        new_tokens += int((out[:, 1:] != tokenizer.pad_token_id).sum())
        for i, text in zip(idx, tokenizer.batch_decode(out, skip_special_tokens=True)):
            texts[i] = text.strip()
    return Generations(texts=texts, seconds=time.perf_counter() - start, new_tokens=new_tokens)
