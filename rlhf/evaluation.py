"""Model-side measures for the before/after evaluation: response logprobs under a seq2seq LM, the
KL between the two policies, and the NLL behind the fluency figure. All in fp32."""

from __future__ import annotations

from statistics import mean

import torch

from rlhf.ppo.core import logprobs_from_logits
from rlhf.ppo.rollout import decoder_inputs, encode_queries, response_mask_from


def _token_logprobs(lm, tokenizer, texts: list[str], **inputs) -> list[torch.Tensor]:
    """Per-token logprobs (fp32, on the CPU) of each of ``texts``, tokenised with its EOS, under
    ``lm`` given ``inputs`` (prompt ids or encoder states, one row per text, on ``lm``'s device)."""
    r = tokenizer(texts, return_tensors="pt", padding=True, padding_side="right").input_ids
    mask = response_mask_from(r, tokenizer.eos_token_id)
    r = r.to(next(lm.parameters()).device)
    logits = lm(**inputs, decoder_input_ids=decoder_inputs(r, lm.config.decoder_start_token_id), use_cache=False).logits
    lp = logprobs_from_logits(logits.float(), r).cpu()
    return [row[m] for row, m in zip(lp, mask)]


@torch.no_grad()
def response_logprobs(lm, tokenizer, prompts: list[str], responses: list[str], max_input: int,
                      batch_size: int) -> list[torch.Tensor]:
    """Per-token logprobs (fp32, on the CPU) of each response, tokenised with its EOS, under ``lm``
    given its prompt. Inputs go to ``lm``'s device."""
    device = next(lm.parameters()).device
    out = []
    for i in range(0, len(prompts), batch_size):
        q = encode_queries(tokenizer, prompts[i:i + batch_size], max_input, device)
        out += _token_logprobs(lm, tokenizer, responses[i:i + batch_size], input_ids=q.input_ids,
                               attention_mask=q.attention_mask)
    return out


@torch.no_grad()
def response_nll(lm, tokenizer, prompts: list[str], responses: list[list[str]], max_input: int,
                 batch_size: int) -> list[list[tuple[float, int]]]:
    """[n prompts][m responses] -> (sum of token NLL, tokens) of each response under ``lm`` given
    its prompt: the input of :func:`rlhf.protocol.perplexity`. Tokens include the EOS. The encoder
    runs once per prompt; its states serve all of the prompt's responses. ``batch_size`` counts
    responses."""
    from rlhf.ppo.model import as_encoder_outputs

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
        lps = _token_logprobs(lm, tokenizer, flat, attention_mask=q.attention_mask[owner],
                              encoder_outputs=as_encoder_outputs(states[owner]))
        nll = [(float(-lp.sum()), lp.numel()) for lp in lps]
        pos = 0
        for row in rows:
            out.append(nll[pos:pos + len(row)])
            pos += len(row)
    return out


def sequence_kl(after_lp: list[torch.Tensor], before_lp: list[torch.Tensor]) -> float:
    """Mean over responses of sum_t (log p_after - log p_before): the k1 estimate of
    KL(after || before) when the responses were sampled from the after-policy."""
    return mean(float((a - b).sum()) for a, b in zip(after_lp, before_lp))
