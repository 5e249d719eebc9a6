"""The encoder-decoder core every training method and the evaluation share.

An encoder-decoder model reads a prompt once (the encoder) and writes a response token by token
(the decoder, cross-attending to the encoder's states). Everything a method needs from the model
goes through here:

- **encode** prompts once (:func:`encode_queries`, :func:`encoder_states`: length-sorted chunks,
  each cut to its longest prompt);
- **sample** responses from those states (:func:`sample_responses`, ``n`` per prompt from one
  encoder pass, a T5 decoding over a static cache: :mod:`rlhf.decoding`) with their
  :func:`response_mask_from`;
- **score** given responses: per-token logprobs and entropy under a model (:func:`token_logprobs`),
  with a LoRA adapter on (the policy) or off (the reference, :func:`reference`); and the same for
  response *texts* (:func:`text_logprobs`, :func:`response_nll`).

Shapes: B rows, S prompt tokens, T response tokens, V vocabulary, d model width. Masks are bool
and True marks a real token. Logprobs, entropy and NLL are fp32 whatever the model computes in.
Every tensor goes to the device of the model that consumes it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from rlhf.decoding import decoder_for
from rlhf.pickers import GumbelMax, gumbel_max

# --------------------------------------------------------------------------------------------
# Token maths on model outputs
# --------------------------------------------------------------------------------------------


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """[B, T, V] logits, [B, T] token ids -> [B, T] log p(token), in fp32 whatever the logits' dtype
    (a bf16 logprob is spaced 0.016-0.031 nats apart at typical values; PPO's clip range is 0.2).

    ``log_softmax`` then ``gather``, not TRL's ``selective_log_softmax``: its fp32 path is
    ``x - logsumexp(x)``, and on CPU ``exp`` of logits far below the row's max (< -88, which a
    32k vocabulary always has) falls into a slow underflow path, about 35x slower forward and
    backward than the fused ``log_softmax`` kernel (benchmarks/RESULTS.md). The price is one
    [B, T, V] tensor per call, which callers bound by their chunk size.
    """
    return logits.float().log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """[B, T, V] -> [B, T]: -sum_v p_v log p_v, with fused ``softmax``/``log_softmax`` kernels (the
    same underflow reason as :func:`logprobs_from_logits`)."""
    logits = logits.float()
    return -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is True; ``dim=None`` = over all of them."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


@dataclass
class Queries:
    """Encoder inputs, right-padded (T5's native side; left padding breaks T5 PPO)."""

    input_ids: torch.Tensor       # [B, S]
    attention_mask: torch.Tensor  # [B, S], 1 = a real prompt token


def encode_queries(tokenizer, prompts: list[str], max_length: int, device: torch.device | str | None = None) -> Queries:
    """Right-padded encoder inputs on ``device`` (the device of the model that consumes them)."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, truncation=True, max_length=max_length,
                    padding_side="right")
    return Queries(enc.input_ids.to(device), enc.attention_mask.to(device))


def response_mask_from(responses: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """[B, T] -> bool [B, T]: True up to and including the first EOS (all True if none)."""
    is_eos = (responses == eos_token_id).long()
    after_first_eos = (is_eos.cumsum(-1) - is_eos) > 0
    return ~after_first_eos


def encode_responses(tokenizer, texts: list[str], max_tokens: int | None = None,
                     device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Response texts (preference pairs', or any to score) as the sampler's output would hold them
    -> (responses [B, T], response mask [B, T]): each tokenised with its EOS (cut to ``max_tokens``,
    the EOS kept last), right-padded with the pad token, the mask True up to and including the EOS."""
    cut = {} if max_tokens is None else {"truncation": True, "max_length": max_tokens}
    r = tokenizer(texts, return_tensors="pt", padding=True, padding_side="right", **cut).input_ids
    return r.to(device), response_mask_from(r, tokenizer.eos_token_id).to(device)


def decoder_inputs(responses: torch.Tensor, start_token_id: int) -> torch.Tensor:
    """Teacher-forcing decoder inputs [B, T]: the start token, then responses shifted right by one.

    Position t then predicts response token t, so every sampled token, the first included, gets
    its own logprob (and value, and advantage); the start token itself is not a response token.
    """
    start = torch.full_like(responses[:, :1], start_token_id)
    return torch.cat([start, responses[:, :-1]], dim=1)


def as_encoder_outputs(states: torch.Tensor | None):
    """[B, S, d] encoder states -> the ``encoder_outputs`` argument of a transformers seq2seq model."""
    from transformers.modeling_outputs import BaseModelOutput

    return None if states is None else BaseModelOutput(last_hidden_state=states)


# --------------------------------------------------------------------------------------------
# Encode once
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def encoder_states(lm, queries: Queries, chunk_size: int, compile: bool = False) -> torch.Tensor:
    """[B, S, d] encoder outputs of ``lm``, computed in chunks of ``chunk_size`` prompts of similar
    length, each cut to its longest prompt, so little work is spent on padding. Positions past a
    chunk's longest prompt stay 0; the decoder's cross-attention masks every padding position out.
    ``compile``: a T5's encoder runs compiled with its decoding step (``model.compile_decoding``;
    :meth:`rlhf.decoding.Decoder.encode`)."""
    lengths = queries.attention_mask.sum(-1)
    decoder = decoder_for(lm, compile=True) if compile else None
    encoder, states = lm.get_encoder(), None
    for idx in torch.argsort(lengths, stable=True).split(chunk_size):
        width = int(lengths[idx].max())
        ids, mask = queries.input_ids[idx, :width], queries.attention_mask[idx, :width]
        if decoder is not None:
            h = decoder.encode(ids, mask)
        else:
            h = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        if states is None:
            states = h.new_zeros(*queries.input_ids.shape, h.shape[-1])
        states[idx, :width] = h
    return states


def repeat_rows(queries: Queries, states: torch.Tensor | None, n: int) -> tuple[Queries, torch.Tensor | None]:
    """Each prompt's row ``n`` times in a row ([B, ...] -> [B * n, ...]): the k samples of a group
    share their prompt's encoder states, computed once."""
    if n == 1:
        return queries, states
    repeat = (lambda t: t.repeat_interleave(n, dim=0))
    return Queries(repeat(queries.input_ids), repeat(queries.attention_mask)), None if states is None else repeat(states)


# --------------------------------------------------------------------------------------------
# Sample
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_responses(lm, queries: Queries, max_new_tokens: int, eos_token_id: int, pad_token_id: int,
                     decoder_start_token_id: int, min_new_tokens: int = 0, states: torch.Tensor | None = None,
                     n: int = 1, compile: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` responses per query, sampled in one batched call from the full softmax (top_k=0,
    top_p=1, temperature=1; no min_length by default: forcing tokens past EOS lets an RL policy
    earn reward through negative KL) -> (responses [B * n, T], response mask [B * n, T]); rows
    ``i * n .. i * n + n - 1`` belong to query i. Padding after EOS is ``pad_token_id``.

    ``states``: ``lm``'s encoder outputs for the queries, if already computed (the encoder then
    does not run again; with ``n`` > 1 the samples of a query share its states). A T5 decodes with
    :class:`rlhf.decoding.Decoder` (the same tokens as ``generate`` under the same noise; its step
    compiled with ``compile``), any other model with ``generate``.
    """
    decoder = decoder_for(lm, compile)
    if states is None and decoder is not None:  # encode each prompt once, not once per sample
        states = decoder.encode(queries.input_ids, queries.attention_mask)
    elif states is None and n > 1:
        states = lm.get_encoder()(input_ids=queries.input_ids, attention_mask=queries.attention_mask).last_hidden_state
    if decoder is not None:  # T5: the static-cache step; the n samples of a prompt share its cross-attention
        responses = decoder(states, queries.attention_mask, n, max_new_tokens, gumbel_max, eos_token_id, pad_token_id,
                            decoder_start_token_id, min_new_tokens)
    else:
        responses = _generate(lm, *repeat_rows(queries, states, n), max_new_tokens, eos_token_id, pad_token_id,
                              decoder_start_token_id, min_new_tokens)
    mask = response_mask_from(responses, eos_token_id)
    return responses.masked_fill(~mask, pad_token_id), mask


def _generate(lm, queries: Queries, states: torch.Tensor | None, max_new_tokens: int, eos_token_id: int,
              pad_token_id: int, decoder_start_token_id: int, min_new_tokens: int) -> torch.Tensor:
    """:func:`sample_responses` through ``transformers``' ``generate`` (a model that is not a T5)."""
    from transformers import GenerationConfig, LogitsProcessorList

    # sampling as greedy search over Gumbel-perturbed logits (GumbelMax), no top-k / top-p
    gen = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                           eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                           decoder_start_token_id=decoder_start_token_id)
    extra = {} if states is None else {"encoder_outputs": as_encoder_outputs(states)}
    out = lm.generate(input_ids=queries.input_ids, attention_mask=queries.attention_mask, generation_config=gen,
                      logits_processor=LogitsProcessorList([GumbelMax()]), **extra)
    return out[:, 1:]  # drop the decoder start token


# --------------------------------------------------------------------------------------------
# Score: the policy (adapter on) and the reference (adapter off)
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def reference(lm, ref_lm=None):
    """The reference model: ``lm`` with its LoRA adapter disabled (the model the adapter started
    from, exactly, at every step, with no second copy of the weights), or the frozen copy
    ``ref_lm`` when the policy trains all its weights."""
    if ref_lm is None:
        with lm.disable_adapter():
            yield lm
    else:
        yield ref_lm


def decoder_logits(lm, queries: Queries, decoder_input_ids: torch.Tensor,
                   states: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T, V] logits of ``lm`` for teacher-forced ``decoder_input_ids`` [B, T]; ``states`` [B, S, d]:
    ``lm``'s own encoder outputs for the queries, if already computed (then only the decoder runs)."""
    return lm(input_ids=queries.input_ids, attention_mask=queries.attention_mask, decoder_input_ids=decoder_input_ids,
              encoder_outputs=as_encoder_outputs(states), use_cache=False).logits


def token_logprobs(lm, queries: Queries, responses: torch.Tensor, start_token_id: int,
                   states: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T] fp32 log p(response token t | prompt, tokens < t) under ``lm`` (padding positions hold
    the pad token's logprob: mask them). Builds a graph when grad is enabled; wrap in
    :func:`reference` for the reference's."""
    logits = decoder_logits(lm, queries, decoder_inputs(responses, start_token_id), states)
    return logprobs_from_logits(logits, responses)


def _text_logprobs(lm, tokenizer, texts: list[str], **inputs) -> list[torch.Tensor]:
    """Per-token logprobs (fp32, on the CPU) of each of ``texts``, tokenised with its EOS, under
    ``lm`` given ``inputs`` (prompt ids or encoder states, one row per text, on ``lm``'s device)."""
    r, mask = encode_responses(tokenizer, texts)
    r = r.to(next(lm.parameters()).device)
    logits = lm(**inputs, decoder_input_ids=decoder_inputs(r, lm.config.decoder_start_token_id), use_cache=False).logits
    lp = logprobs_from_logits(logits.float(), r).cpu()
    return [row[m] for row, m in zip(lp, mask)]


@torch.no_grad()
def text_logprobs(lm, tokenizer, prompts: list[str], responses: list[str], max_input: int,
                  batch_size: int) -> list[torch.Tensor]:
    """Per-token logprobs (fp32, on the CPU) of each response text, tokenised with its EOS, under
    ``lm`` given its prompt, ``batch_size`` pairs at a time."""
    device = next(lm.parameters()).device
    out = []
    for i in range(0, len(prompts), batch_size):
        q = encode_queries(tokenizer, prompts[i:i + batch_size], max_input, device)
        out += _text_logprobs(lm, tokenizer, responses[i:i + batch_size], input_ids=q.input_ids,
                              attention_mask=q.attention_mask)
    return out


@torch.no_grad()
def response_nll(lm, tokenizer, prompts: list[str], responses: list[list[str]], max_input: int,
                 batch_size: int) -> list[list[tuple[float, int]]]:
    """[n prompts][m responses] -> (sum of token NLL, tokens) of each response under ``lm`` given
    its prompt (tokens include the EOS): what a perplexity is computed from. The encoder runs once
    per prompt; its states serve all of the prompt's responses. ``batch_size`` counts responses."""
    device = next(lm.parameters()).device
    m = max((len(r) for r in responses), default=1) or 1
    per_batch = max(1, batch_size // m)
    out: list[list[tuple[float, int]]] = []
    for i in range(0, len(prompts), per_batch):
        q = encode_queries(tokenizer, prompts[i:i + per_batch], max_input, device)
        states = lm.get_encoder()(input_ids=q.input_ids, attention_mask=q.attention_mask).last_hidden_state
        rows = responses[i:i + per_batch]
        owner = torch.tensor([j for j, row in enumerate(rows) for _ in row], device=device)
        flat = [t for row in rows for t in row]
        if not flat:
            out += [[] for _ in rows]
            continue
        lps = _text_logprobs(lm, tokenizer, flat, attention_mask=q.attention_mask[owner],
                             encoder_outputs=as_encoder_outputs(states[owner]))
        nll = [(float(-lp.sum()), lp.numel()) for lp in lps]
        pos = 0
        for row in rows:
            out.append(nll[pos:pos + len(row)])
            pos += len(row)
    return out
