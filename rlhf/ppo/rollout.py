"""PPO's no-grad pass over a batch of rollouts: policy logprobs, values and entropy, and the
reference's logprobs, from the seq2seq core (:mod:`rlhf.seq2seq`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf.seq2seq import (
    Queries,
    decoder_inputs,
    encoder_states,
    entropy_from_logits,
    logprobs_from_logits,
    masked_mean,
    token_logprobs,
)


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
    (:func:`rlhf.seq2seq.encoder_states`), unless ``shared_encoder`` (no adapter in the encoder:
    the reference's encoder is the policy's, so its states are reused).
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
        chunk = Queries(queries.input_ids[sl], queries.attention_mask[sl])
        out = policy(chunk.input_ids, chunk.attention_mask, dec[sl], encoder_states=states[sl])
        with policy.reference() as ref_lm:
            parts["ref"].append(token_logprobs(ref_lm, chunk, responses[sl], start_token_id, ref_states[sl]))
        parts["lp"].append(logprobs_from_logits(out.logits, responses[sl]))
        parts["v"].append(out.values)
        parts["ent"].append(entropy_from_logits(out.logits))
    entropy = masked_mean(torch.cat(parts["ent"]), response_mask)
    return Scored(torch.cat(parts["lp"]), torch.cat(parts["ref"]), torch.cat(parts["v"]), entropy)
