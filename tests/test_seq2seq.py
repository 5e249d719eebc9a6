import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from rlhf.config import LoraConfig
from rlhf.models import apply_lora
from rlhf.seq2seq import (
    GumbelMax,
    Queries,
    decoder_inputs,
    encoder_states,
    entropy_from_logits,
    logprobs_from_logits,
    masked_mean,
    reference,
    repeat_rows,
    response_mask_from,
    response_nll,
    sample_responses,
    text_logprobs,
    token_logprobs,
)

EOS, PAD, START = 1, 0, 0


def tiny_t5(vocab: int = 50, seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    return T5ForConditionalGeneration(T5Config(vocab_size=vocab, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2,
                                               decoder_start_token_id=START, eos_token_id=EOS, pad_token_id=PAD,
                                               dropout_rate=0.0)).eval()


def queries() -> Queries:
    """Three right-padded prompts of lengths 5, 2 and 4."""
    ids = torch.tensor([[5, 6, 7, 8, 1], [9, 1, 0, 0, 0], [10, 11, 12, 1, 0]])
    return Queries(ids, (torch.arange(5) < torch.tensor([[5], [2], [4]])).long())


def test_response_mask_ends_at_first_eos():
    responses = torch.tensor([[5, 6, 1, 0, 0], [5, 1, 7, 1, 0], [5, 6, 7, 8, 9], [1, 0, 0, 0, 0]])
    assert response_mask_from(responses, EOS).tolist() == [[True, True, True, False, False],
                                                          [True, True, False, False, False],
                                                          [True] * 5, [True, False, False, False, False]]


def test_decoder_inputs_shift_in_the_start_token():
    assert decoder_inputs(torch.tensor([[5, 6, 1]]), 0).tolist() == [[0, 5, 6]]


def test_masked_mean_counts_only_real_positions():
    x, mask = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]]), torch.tensor([[1, 1, 0], [1, 0, 0]]).bool()
    assert masked_mean(x, mask).item() == pytest.approx(2.0)
    assert masked_mean(x, mask, dim=1).tolist() == [1.5, 3.0]
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0  # no real token: 0, not NaN


def test_logprobs_and_entropy_match_the_definitions():
    """Wide logits (a spread past exp's underflow) against the textbook formulas in float64."""
    torch.manual_seed(0)
    logits, tokens = torch.randn(2, 5, 300) * 40, torch.randint(0, 300, (2, 5))
    ref = logits.double().log_softmax(-1)
    expected_lp = ref.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logprobs_from_logits(logits, tokens).double(), expected_lp, rtol=0, atol=1e-4)
    expected_ent = -(ref.exp() * ref).sum(-1)
    torch.testing.assert_close(entropy_from_logits(logits).double(), expected_ent, rtol=0, atol=1e-4)
    assert logprobs_from_logits(logits.bfloat16(), tokens).dtype == torch.float32


def test_logprobs_gradient_is_softmax_minus_onehot():
    logits = torch.randn(1, 1, 7, requires_grad=True)
    logprobs_from_logits(logits, torch.tensor([[3]])).sum().backward()
    expected = -logits.detach().softmax(-1)
    expected[0, 0, 3] += 1
    torch.testing.assert_close(logits.grad, expected)


def test_gumbel_max_samples_from_the_softmax():
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, float("-inf")]])
    n = 40_000
    picks = GumbelMax()(None, logits.expand(n, -1)).argmax(-1)
    freq = torch.bincount(picks, minlength=5).float() / n
    assert freq[4] == 0  # a banned token (-inf) is never drawn
    # 5 standard errors at n = 40k is below 0.012 for every probability
    torch.testing.assert_close(freq, logits.softmax(-1)[0], atol=0.012, rtol=0)


@pytest.mark.parametrize("chunk_size", [1, 2, 3])
def test_chunked_encoder_states_equal_one_pass_on_every_real_token(chunk_size):
    lm, q = tiny_t5(), queries()
    states = encoder_states(lm, q, chunk_size)
    with torch.no_grad():
        plain = lm.get_encoder()(input_ids=q.input_ids, attention_mask=q.attention_mask).last_hidden_state
    real = q.attention_mask.bool()
    torch.testing.assert_close(states[real], plain[real], atol=1e-5, rtol=1e-5)
    if chunk_size == 1:  # every prompt cut to its own length: no work on its padding
        assert (states[~real] == 0).all()


def test_repeat_rows_keeps_each_prompts_samples_together():
    q = queries()
    states = torch.arange(3.0).view(3, 1, 1).expand(3, 5, 2)
    rq, rs = repeat_rows(q, states, 2)
    assert rq.input_ids[:, 0].tolist() == [5, 5, 9, 9, 10, 10] and rs[:, 0, 0].tolist() == [0, 0, 1, 1, 2, 2]
    assert repeat_rows(q, None, 1) == (q, None)


def test_n_samples_per_prompt_run_the_encoder_once_per_prompt():
    lm, q = tiny_t5(), queries()
    calls = []
    lm.get_encoder().register_forward_pre_hook(lambda mod, args, kwargs: calls.append(kwargs["input_ids"].shape[0]),
                                               with_kwargs=True)
    torch.manual_seed(0)
    responses, mask = sample_responses(lm, q, 6, EOS, PAD, START, n=4)
    assert calls == [3]  # three prompts encoded once, not twelve rows
    assert responses.shape[0] == 12 and mask.shape == responses.shape
    assert (responses[~mask] == PAD).all() and mask[:, 0].all()
    calls.clear()
    states = encoder_states(lm, q, chunk_size=3)
    calls.clear()
    sample_responses(lm, q, 6, EOS, PAD, START, states=states, n=2)
    assert calls == []  # states given: the encoder does not run at all


def test_one_sample_per_prompt_from_precomputed_states_draws_what_generate_draws():
    """The PPO rollout passes its encoder states: the tokens are those of a plain call under the same noise."""
    lm, q = tiny_t5(), queries()
    torch.manual_seed(3)
    plain, _ = sample_responses(lm, q, 8, EOS, PAD, START)
    torch.manual_seed(3)
    reused, _ = sample_responses(lm, q, 8, EOS, PAD, START, states=encoder_states(lm, q, chunk_size=3))
    assert torch.equal(plain, reused)


def test_token_logprobs_under_the_policy_and_the_adapter_disabled_reference():
    base = tiny_t5()
    q, responses = queries(), torch.tensor([[5, 6, 1], [7, 1, 0], [8, 9, 10]])
    with torch.no_grad():
        expected = token_logprobs(base, q, responses, START)
    lm = apply_lora(base, LoraConfig(r=2, alpha=4, dropout=0.0, target_modules=["q", "v"]), key="lora")
    for name, p in lm.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # the adapter now changes the policy
    with torch.no_grad():
        policy = token_logprobs(lm, q, responses, START)
        with reference(lm) as ref:
            ref_lp = token_logprobs(ref, q, responses, START, states=encoder_states(ref, q, chunk_size=3))
    torch.testing.assert_close(ref_lp, expected, atol=1e-5, rtol=1e-5)  # the reference is the model before the adapter
    assert not torch.allclose(policy, expected, atol=1e-3)
    assert lm.base_model.model.decoder.block[0].layer[0].SelfAttention.q.disable_adapters is False  # adapter back on


def test_response_nll_reuses_the_encoder_and_matches_a_plain_pass():
    from transformers import AutoTokenizer

    from rlhf.config import TinyWorldConfig
    from rlhf.tinyworld.build import ensure_tinyworld

    from .conftest import SMALL_WORLD, quiet

    tok = AutoTokenizer.from_pretrained(str(ensure_tinyworld(TinyWorldConfig(**SMALL_WORLD), log=quiet) / "tokenizer"))
    lm = tiny_t5(vocab=len(tok))
    prompts = ["Summarize: Anna books a train.", "Summarize: a much longer dialogue about a coffee machine here"]
    responses = [["Anna books a train.", "A train.", ""], ["The coffee machine is broken.", "Coffee."]]
    grouped = response_nll(lm, tok, prompts, responses, max_input=64, batch_size=3)
    assert [len(r) for r in grouped] == [3, 2]
    for prompt, rows, got in zip(prompts, responses, grouped):
        plain = text_logprobs(lm, tok, [prompt] * len(rows), rows, max_input=64, batch_size=8)
        for lp, (nll, n) in zip(plain, got):
            assert n == lp.numel() and nll == pytest.approx(float(-lp.sum()), rel=1e-5, abs=1e-5)
