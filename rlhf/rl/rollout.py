"""The RL stage's no-grad pass over a batch of rollouts: policy logprobs, values and entropy, and the
reference's logprobs, from the seq2seq core (:mod:`rlhf.seq2seq`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf.seq2seq import (Queries, decoder_inputs, encoder_states, entropy_from_logits, logprobs_from_logits,
                          masked_mean, repeat_rows, token_logprobs)


@dataclass
class Scored:
    logprobs: torch.Tensor      # [B, T]
    ref_logprobs: torch.Tensor  # [B, T]
    values: torch.Tensor | None  # [B, T]; None without a value head
    entropy: torch.Tensor       # scalar, mean over real tokens


@torch.no_grad()
def score_responses(policy, queries: Queries, responses: torch.Tensor, response_mask: torch.Tensor,
                    start_token_id: int, chunk_size: int, states: torch.Tensor | None = None,
                    shared_encoder: bool = False, group_size: int = 1) -> Scored:
    """Policy logprobs, values (with a value head) and entropy, and reference logprobs,
    ``chunk_size`` responses at a time (which bounds the [chunk, T, vocab] logits held at once).

    ``queries`` [P, S] are the prompts, ``responses`` [P x group_size, T] their responses in groups
    (rows ``i * k .. i * k + k - 1`` answer prompt i). ``states``: the policy's encoder outputs for
    the prompts from the rollout (the weights have not changed since; with ``model.compile_decoding``
    from the compiled encoder, an eager pass's to rounding), so only the decoder runs for
    the policy; the reference's encoder runs once per prompt in length-cut chunks
    (:func:`rlhf.seq2seq.encoder_states`), unless ``shared_encoder`` (no adapter in the encoder: the
    reference's encoder is the policy's, so its states are reused).
    """
    dec = decoder_inputs(responses, start_token_id)
    if states is None:
        states = encoder_states(policy.lm, queries, chunk_size)
    if shared_encoder:
        ref_states = states
    else:
        with policy.reference() as ref_lm:
            ref_states = encoder_states(ref_lm, queries, chunk_size)
    queries, states = repeat_rows(queries, states, group_size)
    ref_states = repeat_rows(queries, ref_states, group_size)[1] if group_size > 1 else ref_states
    parts: dict[str, list[torch.Tensor]] = {"lp": [], "ref": [], "v": [], "ent": []}
    for i in range(0, responses.shape[0], chunk_size):
        sl = slice(i, i + chunk_size)
        chunk = Queries(queries.input_ids[sl], queries.attention_mask[sl])
        out = policy(chunk.input_ids, chunk.attention_mask, dec[sl], encoder_states=states[sl])
        with policy.reference() as ref_lm:
            parts["ref"].append(token_logprobs(ref_lm, chunk, responses[sl], start_token_id, ref_states[sl]))
        parts["lp"].append(logprobs_from_logits(out.logits, responses[sl]))
        if out.values is not None:
            parts["v"].append(out.values)
        parts["ent"].append(entropy_from_logits(out.logits))
    entropy = masked_mean(torch.cat(parts["ent"]), response_mask)
    values = torch.cat(parts["v"]) if parts["v"] else None
    return Scored(torch.cat(parts["lp"]), torch.cat(parts["ref"]), values, entropy)
