"""A small T5 "base" model, briefly pre-trained by denoising dialogue text only.

Both objectives corrupt the input as T5's span corruption does (Raffel et al. 2020, sec. 3.1.4):
drop ~15% of the tokens in spans of mean length 3 and put one sentinel in each span's place.
T5's target is the dropped spans alone (``<extra_id_0> span0 <extra_id_1> span1 ... </s>``);
BART's text infilling (Lewis et al. 2020) rebuilds the whole text, which the tiny world uses by
default (``tinyworld.pretrain_infill_fraction``): a model this small pre-trained on the spans alone
learns no copying, and its fine-tuned summaries then ignore the dialogue (one template per
scenario, shared/notes/tiny-world-probes.md), while one that learnt to rebuild its input learns
to name the dialogue's own facts. The model never sees a summary, so prompting it yields
language-like text and fine-tuning has something to add.
"""

from __future__ import annotations

import random

import torch
from transformers import T5Config, T5ForConditionalGeneration

from rlhf.config import TinyWorldConfig


def tiny_t5_config(tw: TinyWorldConfig, vocab_size: int, max_length: int) -> T5Config:
    return T5Config(
        vocab_size=vocab_size, d_model=tw.d_model, d_kv=tw.d_model // tw.num_heads, d_ff=tw.d_ff,
        num_layers=tw.num_layers, num_decoder_layers=tw.num_layers, num_heads=tw.num_heads,
        feed_forward_proj="gated-gelu", dropout_rate=0.0,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, n_positions=max_length,
        relative_attention_num_buckets=16, relative_attention_max_distance=64,
    )  # tied embeddings with scaled decoder outputs (T5 v1.0 style): untied, a model this small
    # starts at loss ~70, and shrinking the init instead collapses the encoder to one vector.
    # No dropout: the corpus is plentiful, and with 0.1 the fine-tuned model learnt to copy the
    # dialogue's facts in some seeds only (faithfulness 0.77 vs 1.00 after 600-800 steps).


def span_corrupt(ids: list[int], sentinels: list[int], eos: int, rng: random.Random,
                 noise: float = 0.15, mean_span: float = 3.0) -> tuple[list[int], list[int]]:
    """One example: (input ids with sentinels, target ids). ``sentinels[0]`` is ``<extra_id_0>``.

    As T5 (Raffel et al. 2020, sec. 3.1.4), the spans are numbered in order with no gaps, and
    spans never touch: a start inside or right after the previous span is dropped, since two
    sentinels side by side would mean one span."""
    n = len(ids)
    n_noise = max(1, round(n * noise))
    n_spans = max(1, min(len(sentinels), round(n_noise / mean_span)))
    starts = sorted(rng.sample(range(n), n_spans))
    inputs, targets, pos, k = [], [], 0, 0
    for start in starts:
        if start < pos or (k and start == pos):
            continue
        length = max(1, min(n - start, round(rng.expovariate(1 / mean_span))))
        inputs += ids[pos:start] + [sentinels[k]]
        targets += [sentinels[k]] + ids[start:start + length]
        pos, k = start + length, k + 1
    inputs += ids[pos:] + [eos]
    targets += [eos]
    return inputs, targets


def text_infill(ids: list[int], sentinels: list[int], eos: int, rng: random.Random,
                noise: float = 0.15, mean_span: float = 3.0) -> tuple[list[int], list[int]]:
    """BART-style text infilling (Lewis et al. 2020, sec. 2.2): the input is corrupted as in
    :func:`span_corrupt`, the target is the whole original text, so the decoder learns to copy
    what it reads and to fill what is missing."""
    inputs, _ = span_corrupt(ids, sentinels, eos, rng, noise, mean_span)
    return inputs, ids + [eos]


def _pad(rows: list[list[int]]) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [0] * (width - len(r)) for r in rows])


def _example(ids: list[int], sentinels: list[int], eos: int, rng: random.Random, tw: TinyWorldConfig):
    """One pre-training pair from the objective mixture of ``tw``."""
    if rng.random() < tw.pretrain_infill_fraction:
        return text_infill(ids, sentinels, eos, rng)
    return span_corrupt(ids, sentinels, eos, rng)


def pretrain(model: T5ForConditionalGeneration, token_ids: list[list[int]], sentinels: list[int],
             eos: int, tw: TinyWorldConfig, seed: int, log=None) -> list[float]:
    """Train ``model`` in place with the objective mixture of ``tw``; returns the loss per step.
    ``log`` (if given) gets a progress line after each quarter of the steps."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    optim = torch.optim.AdamW(model.parameters(), lr=tw.pretrain_lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: min(1.0, (s + 1) / 20) * max(0.05, 1 - s / max(1, tw.pretrain_steps)))
    model.train()
    losses = []
    for _ in range(tw.pretrain_steps):
        pairs = [_example(rng.choice(token_ids), sentinels, eos, rng, tw) for _ in range(tw.pretrain_batch_size)]
        inputs, targets = _pad([p[0] for p in pairs]), _pad([p[1] for p in pairs])
        labels = targets.masked_fill(targets == 0, -100)
        loss = model(input_ids=inputs, attention_mask=(inputs != 0).long(), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        sched.step()
        optim.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if log is not None and 4 * len(losses) // tw.pretrain_steps > 4 * (len(losses) - 1) // tw.pretrain_steps:
            recent = losses[-20:]
            log(f"denoising pre-training: step {len(losses)}/{tw.pretrain_steps}, loss {sum(recent) / len(recent):.2f}")
    model.eval()
    return losses
