"""Rollouts: queries -> sampled responses -> logprobs, values and reference logprobs (no grad)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf.ppo.core import entropy_from_logits, logprobs_from_logits, masked_mean
from rlhf.ppo.model import as_encoder_outputs


@dataclass
class Queries:
    input_ids: torch.Tensor       # [B, S] encoder inputs, right-padded (left padding breaks T5 PPO)
    attention_mask: torch.Tensor  # [B, S]


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


def decoder_inputs(responses: torch.Tensor, start_token_id: int) -> torch.Tensor:
    """Teacher-forcing decoder inputs [B, T]: the start token, then responses shifted right by one.

    Position t then predicts response token t, so every sampled token, the first included, gets
    its own logprob, value and advantage; the start token itself is not a response token.
    """
    start = torch.full_like(responses[:, :1], start_token_id)
    return torch.cat([start, responses[:, :-1]], dim=1)


@torch.no_grad()
def encoder_states(lm, queries: Queries, chunk_size: int) -> torch.Tensor:
    """[B, S, d] encoder outputs of ``lm``, computed in chunks of prompts of similar length, each
    cut to its longest prompt, so no work is spent on padding. Padding positions stay 0 (the
    decoder's cross-attention masks them out)."""
    lengths = queries.attention_mask.sum(-1)
    encoder, states = lm.get_encoder(), None
    for idx in torch.argsort(lengths, stable=True).split(chunk_size):
        width = int(lengths[idx].max())
        h = encoder(input_ids=queries.input_ids[idx, :width], attention_mask=queries.attention_mask[idx, :width])
        h = h.last_hidden_state
        if states is None:
            states = h.new_zeros(*queries.input_ids.shape, h.shape[-1])
        states[idx, :width] = h
    return states


class GumbelMax:
    """A logits processor that turns greedy search into sampling from softmax(scores): the argmax
    of scores + Gumbel(0, 1) noise is an exact sample (Gumbel 1954; Maddison et al. 2014,
    "A* Sampling"). Same distribution as ``do_sample=True`` at temperature 1 without top-k/top-p,
    but about 3x cheaper per step on CPU than ``torch.multinomial`` over a 32k vocabulary
    (benchmarks/RESULTS.md). Processors that ran before it (e.g. the EOS ban of
    ``min_new_tokens``) keep their -inf."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        uniform = torch.rand_like(scores, dtype=torch.float32)
        return scores.float() - uniform.log_().neg_().log_()  # + Gumbel noise = -log(-log U)


@torch.no_grad()
def sample_responses(lm, queries: Queries, max_new_tokens: int, eos_token_id: int, pad_token_id: int,
                     decoder_start_token_id: int, min_new_tokens: int = 0,
                     states: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One batched sampling call from the full softmax (top_k=0, top_p=1, temperature=1, no
    min_length by default) -> (responses, mask). ``states``: ``lm``'s encoder outputs for the queries, if already computed."""
    from transformers import GenerationConfig, LogitsProcessorList

    # sampling as greedy search over Gumbel-perturbed logits (GumbelMax), no top-k / top-p
    gen = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                           eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                           decoder_start_token_id=decoder_start_token_id)
    extra = {} if states is None else {"encoder_outputs": as_encoder_outputs(states)}
    out = lm.generate(input_ids=queries.input_ids, attention_mask=queries.attention_mask, generation_config=gen,
                      logits_processor=LogitsProcessorList([GumbelMax()]), **extra)
    responses = out[:, 1:]  # drop the decoder start token
    mask = response_mask_from(responses, eos_token_id)
    return responses.masked_fill(~mask, pad_token_id), mask


@dataclass
class Scored:
    logprobs: torch.Tensor      # [B, T]
    ref_logprobs: torch.Tensor  # [B, T]
    values: torch.Tensor        # [B, T]
    entropy: torch.Tensor       # scalar, mean over real tokens


@torch.no_grad()
def score_responses(policy, queries: Queries, responses: torch.Tensor, response_mask: torch.Tensor,
                    start_token_id: int, chunk_size: int, states: torch.Tensor | None = None,
                    shared_encoder: bool = False) -> Scored:
    """Policy logprobs, values and entropy, and reference logprobs, ``chunk_size`` prompts at a time
    (which bounds the [chunk, T, vocab] logits held at once).

    ``states``: the policy's encoder outputs from the rollout (the weights have not changed since),
    so only the decoder runs for the policy; the reference's encoder runs in length-cut chunks
    (:func:`encoder_states`), unless ``shared_encoder`` (no adapter in the encoder: the reference's
    encoder is the policy's, so its states are reused).
    """
    dec = decoder_inputs(responses, start_token_id)
    if states is None:
        states = encoder_states(policy.lm, queries, chunk_size)
    if shared_encoder:
        ref_states = states
    else:
        with policy.reference() as ref_lm:
            ref_states = encoder_states(ref_lm, queries, chunk_size)
    parts: dict[str, list[torch.Tensor]] = {"lp": [], "ref": [], "v": [], "ent": []}
    for i in range(0, responses.shape[0], chunk_size):
        sl = slice(i, i + chunk_size)
        out = policy(queries.input_ids[sl], queries.attention_mask[sl], dec[sl], encoder_states=states[sl])
        ref_logits = policy.ref_logits(queries.input_ids[sl], queries.attention_mask[sl], dec[sl],
                                       encoder_states=ref_states[sl])
        parts["lp"].append(logprobs_from_logits(out.logits, responses[sl]))
        parts["ref"].append(logprobs_from_logits(ref_logits, responses[sl]))
        parts["v"].append(out.values)
        parts["ent"].append(entropy_from_logits(out.logits))
    entropy = masked_mean(torch.cat(parts["ent"]), response_mask)
    return Scored(torch.cat(parts["lp"]), torch.cat(parts["ref"]), torch.cat(parts["v"]), entropy)
