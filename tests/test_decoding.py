"""The static-cache T5 decoder draws what ``generate`` draws, under the same noise."""

import pytest
import torch
from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration

import rlhf.decoding as decoding
import rlhf.generation as generation
from rlhf.config import GenerationSetting, LoraConfig
from rlhf.decoding import Decoder, decoder_for
from rlhf.pickers import gumbel_max, nucleus
from rlhf.models import apply_lora
from rlhf.seq2seq import Queries, _generate, reference, repeat_rows, response_mask_from, sample_responses

EOS, PAD, START = 1, 0, 0


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from transformers import AutoTokenizer

    from rlhf.config import TinyWorldConfig
    from rlhf.tinyworld.build import ensure_tinyworld

    from .conftest import SMALL_WORLD, quiet

    return AutoTokenizer.from_pretrained(ensure_tinyworld(TinyWorldConfig(**SMALL_WORLD), log=quiet) / "tokenizer")


def t5(gated: bool = True, layers: int = 2, seed: int = 0, vocab: int = 97) -> T5ForConditionalGeneration:
    """A random T5: gated-GELU and untied (Flan-T5's kind) or ReLU with a tied head (T5 1.0's)."""
    torch.manual_seed(seed)
    config = T5Config(vocab_size=vocab, d_model=16, d_kv=4, d_ff=32, num_layers=layers, num_heads=3, dropout_rate=0.0,
                      feed_forward_proj="gated-gelu" if gated else "relu", tie_word_embeddings=not gated,
                      relative_attention_num_buckets=8, relative_attention_max_distance=16,
                      decoder_start_token_id=START, eos_token_id=EOS, pad_token_id=PAD)
    return T5ForConditionalGeneration(config).eval()


def prompts(b: int = 6, s: int = 11, seed: int = 1) -> Queries:
    """``b`` right-padded prompts of random lengths 2..s."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, s + 1, (b,), generator=g)
    mask = (torch.arange(s)[None] < lengths[:, None]).long()
    return Queries(torch.randint(2, 97, (b, s), generator=g) * mask, mask)


def both(lm, q: Queries, n: int, max_new: int, min_new: int = 0, seed: int = 3):
    """(generate's responses, the decoder's) for the same prompts from the same random state."""
    out = []
    for use_decoder in (False, True):
        torch.manual_seed(seed)
        if use_decoder:
            r, _ = sample_responses(lm, q, max_new, EOS, PAD, START, min_new, n=n)
        else:
            states = lm.get_encoder()(input_ids=q.input_ids, attention_mask=q.attention_mask).last_hidden_state
            r = _generate(lm, *repeat_rows(q, states, n), max_new, EOS, PAD, START, min_new)
            r = r.masked_fill(~response_mask_from(r, EOS), PAD)
        out.append(r)
    return out


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("n,min_new", [(1, 0), (4, 0), (3, 5)])
def test_the_decoder_samples_generates_tokens(gated, n, min_new):
    expected, got = both(t5(gated), prompts(), n, max_new=24, min_new=min_new)
    assert got.shape == expected.shape and torch.equal(got, expected)
    assert (got != PAD).sum() > got.shape[0]  # sampled text, not only EOS
    if min_new:
        assert (got[:, :min_new] != EOS).all()


def test_the_decoder_stops_when_every_row_has_ended():
    """Even rows end at the first step, odd rows at the third: three steps, pad after each EOS."""
    lm, q = t5(), prompts()
    states = lm.get_encoder()(input_ids=q.input_ids, attention_mask=q.attention_mask).last_hidden_state
    calls = []

    def pick(scores):
        calls.append(scores.shape)
        step, rows = len(calls) - 1, torch.arange(scores.shape[0])
        ends = (rows % 2 == 0) if step == 0 else (step == 2)
        return torch.where(torch.as_tensor(ends), EOS, 7)

    got = Decoder(lm)(states, q.attention_mask, 2, 24, pick, EOS, PAD, START)
    assert len(calls) == 3 and calls[0] == (12, 97)
    assert got[0].tolist() == [EOS, PAD, PAD] and got[1].tolist() == [7, 7, EOS]


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the lagged check's own path)")


@pytest.mark.parametrize("device, picker", [("cpu", gumbel_max), pytest.param("cuda", gumbel_max, marks=CUDA),
                                            pytest.param("cuda", nucleus(top_p=0.9), marks=CUDA)],
                         ids=["cpu", "cuda-gumbel_max", "cuda-nucleus"])
def test_the_lagged_end_check_leaves_tokens_and_generator_as_the_immediate_one(monkeypatch, device, picker):
    """On a GPU the loop reads whether every row has ended one step late (no sync per token): the
    extra step's tokens are dropped and its random draws given back. Forced on the CPU, and on a GPU
    (pinned flags, events, the CUDA generator's state), three calls in a row whose rows end early
    give the immediate check's tokens and leave the generator where it does."""
    device = torch.device(device)
    lm, q, end_check = t5().to(device), prompts(), decoding.EndCheck
    mask = q.attention_mask.to(device)
    states = lm.get_encoder()(input_ids=q.input_ids.to(device), attention_mask=mask).last_hidden_state

    def pick(scores):  # the picker's draw, and a row ends with probability 0.3 at each step
        return torch.where(torch.rand(scores.shape[0], device=device) < 0.3, EOS, picker(scores))

    runs = []
    for lagged in (False, True):
        monkeypatch.setattr(decoding, "EndCheck", lambda d, lagged=lagged: end_check(d, lagged))
        torch.manual_seed(5)
        out = [Decoder(lm)(states, mask, n, 24, pick, EOS, PAD, START) for n in (1, 3, 2)]
        runs.append((out, torch.rand(4, device=device)))
    (plain, after_plain), (lagged, after_lagged) = runs
    assert all(torch.equal(a, b) for a, b in zip(plain, lagged)) and torch.equal(after_plain, after_lagged)
    assert all(r.shape[1] < 24 for r in plain)  # every call ended early: the overshoot was dropped each time


def test_adapter_on_and_off_each_match_generate():
    """The policy (LoRA on) and its reference (LoRA off) from one model and one decoder."""
    lm = apply_lora(t5(), LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=["q", "k", "v", "o"]))
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained adapter: the two models differ
    on, ref_on = both(lm, prompts(), 2, 16)
    with reference(lm):
        off, ref_off = both(lm, prompts(), 2, 16)
    assert torch.equal(on, ref_on) and torch.equal(off, ref_off)
    assert not torch.equal(on, off)
    assert decoder_for(lm) is decoder_for(lm)  # one decoder per model


@pytest.mark.parametrize("setting", [GenerationSetting("greedy"),
                                     GenerationSetting("nucleus", do_sample=True, top_p=0.8),
                                     GenerationSetting("warm", do_sample=True, temperature=0.7, top_k=20)])
def test_generation_draws_what_generate_draws(setting, monkeypatch, tiny_tokenizer):
    texts = ["a b c d", "e f", "g h i j k l m", "n"] * 3
    lm, k = t5(vocab=len(tiny_tokenizer)), (1 if not setting.do_sample else 3)
    kw = dict(max_new_tokens=12, batch_size=6, max_input_length=32, seed=7, num_return_sequences=k)
    ours = generation.generate(lm, tiny_tokenizer, texts, setting, **kw)
    monkeypatch.setattr(generation, "decoder_for", lambda *a, **k: None)
    theirs = generation.generate(lm, tiny_tokenizer, texts, setting, **kw)
    assert (ours.texts, ours.samples, ours.new_tokens) == (theirs.texts, theirs.samples, theirs.new_tokens)


def test_a_model_that_is_not_a_t5_decodes_with_generate():
    torch.manual_seed(0)
    bart = BartForConditionalGeneration(BartConfig(vocab_size=97, d_model=16, encoder_layers=1, decoder_layers=1,
                                                   encoder_attention_heads=2, decoder_attention_heads=2,
                                                   encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
                                                   pad_token_id=PAD, eos_token_id=EOS, bos_token_id=2,
                                                   decoder_start_token_id=2, forced_eos_token_id=None)).eval()
    assert decoder_for(bart) is None
    r, mask = sample_responses(bart, prompts(), 8, EOS, PAD, 2, n=2)
    assert r.shape[0] == 12 and mask.shape == r.shape


def test_compile_unavailable_decodes_eagerly_saying_why(monkeypatch, capsys):
    import rlhf.runtime

    monkeypatch.setattr(rlhf.runtime, "compile_unavailable", lambda device: "no C++ compiler on PATH")
    lm = t5()
    decoder = Decoder(lm, compile=True)
    assert not decoder.compiled
    assert capsys.readouterr().err.strip() == ("decoding runs eagerly: torch.compile is unavailable "
                                               "(no C++ compiler on PATH)")


def break_compile(monkeypatch) -> None:
    """torch.compile available, but every compiled function raises when called (an op inductor
    cannot lower)."""
    import rlhf.runtime

    def broken(fn, **kwargs):
        def run(*args, **kwargs):
            raise RuntimeError("inductor cannot lower this\nsecond line")
        return run

    monkeypatch.setattr(rlhf.runtime, "compile_unavailable", lambda device: None)
    monkeypatch.setattr(torch, "compile", broken)


def test_a_compile_that_fails_falls_back_to_eager_once(monkeypatch, capsys):
    break_compile(monkeypatch)
    lm, q = t5(), prompts()
    decoder = Decoder(lm, compile=True)
    assert decoder.compiled
    states = lm.get_encoder()(input_ids=q.input_ids, attention_mask=q.attention_mask).last_hidden_state
    torch.manual_seed(3)
    got = decoder(states, q.attention_mask, 2, 10, gumbel_max, EOS, PAD, START)
    assert not decoder.compiled
    assert capsys.readouterr().err.count("decoding runs eagerly: compiling the step failed (RuntimeError: inductor "
                                         "cannot lower this)") == 1
    torch.manual_seed(3)
    assert torch.equal(got, Decoder(lm)(states, q.attention_mask, 2, 10, gumbel_max, EOS, PAD, START))


def test_the_compiled_step_matches_the_eager_one_where_compile_runs():
    """Compiled, kernels may round differently: nearly every token the same (the share on the tiny
    world is in benchmarks/RESULTS.md). Skipped where this machine cannot compile."""
    from rlhf.runtime import compile_unavailable

    why = compile_unavailable(torch.device("cpu"))
    if why:
        pytest.skip(f"torch.compile unavailable: {why}")
    lm, q = t5(), prompts()
    states = lm.get_encoder()(input_ids=q.input_ids, attention_mask=q.attention_mask).last_hidden_state
    out = []
    for compiled in (False, True):
        torch.manual_seed(3)
        out.append(Decoder(lm, compile=compiled)(states, q.attention_mask, 3, 12, gumbel_max, EOS, PAD, START))
    assert out[0].shape == out[1].shape and (out[0] == out[1]).float().mean() >= 0.95



def test_the_compiled_encoder_matches_the_eager_one_at_every_width_where_compile_runs():
    """With the step, the prompts' encoder runs compiled (widths padded to a multiple of 8 and cut
    back): the same states to rounding, and after the first compile no other graph for new widths
    or batches of two or more prompts (dynamo specialises a batch of one: a second graph). Also
    with the adapter on and off. Skipped where this machine cannot compile."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from rlhf.runtime import compile_unavailable
    from rlhf.seq2seq import encoder_states

    why = compile_unavailable(torch.device("cpu"))
    if why:
        pytest.skip(f"torch.compile unavailable: {why}")
    lm = apply_lora(t5(), LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=["q", "v"]))
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained adapter: on and off differ
    graphs = counters["stats"]["unique_graphs"]

    def check(q: Queries, recompile: bool) -> torch.Tensor:
        with torch._dynamo.config.patch(error_on_recompile=not recompile), torch.no_grad():
            compiled = encoder_states(lm, q, 2, compile=True)
            eager = encoder_states(lm, q, 2)
        assert compiled.shape == eager.shape == (*q.input_ids.shape, 16)
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
        return eager

    def padded_widths(q: Queries) -> set[int]:
        return {w + -w % 8 for w in (int(c.max()) for c in q.attention_mask.sum(-1).sort().values.split(2))}

    first, later = prompts(6, 11), [prompts(6, 23, seed=2), prompts(6, 40, seed=3), prompts(6, 5, seed=4)]
    on = check(first, recompile=True)
    assert counters["stats"]["unique_graphs"] > graphs  # it compiled
    assert set().union(*map(padded_widths, later)) - padded_widths(first)  # widths the first compile never saw
    for q in later:
        check(q, recompile=False)
    with reference(lm):  # the adapter off: its own graph, not the adapter-on one reused
        off = check(first, recompile=True)
    assert not torch.allclose(on, off)
    assert decoder_for(lm, compile=True).compiled_encoder is not None  # no fallback to eager on the way


def test_an_encoder_compile_that_fails_encodes_eagerly_saying_why_once(monkeypatch, capsys):
    break_compile(monkeypatch)
    lm, q = t5(), prompts()
    decoder = Decoder(lm, compile=True)
    with torch.no_grad():
        eager = lm.get_encoder()(input_ids=q.input_ids, attention_mask=q.attention_mask).last_hidden_state
    for _ in range(2):
        assert torch.equal(decoder.encode(q.input_ids, q.attention_mask), eager)
    assert decoder.compiled_encoder is None
    assert capsys.readouterr().err.count("encoding runs eagerly: compiling the encoder failed (RuntimeError: "
                                         "inductor cannot lower this)") == 1


def test_under_bf16_autocast_one_sample_per_prompt_is_exact_and_groups_nearly():
    """The RL stage samples under autocast with model.mixed_precision=bf16. One sample per prompt:
    generate's tokens exactly. With n > 1 the n queries of a prompt attend as one block, which bf16
    kernels round differently from n separate rows: nearly every token the same (97-98% here)."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        single = both(t5(), prompts(b=16, s=20), 1, max_new=24)
        group = both(t5(), prompts(b=16, s=20), 4, max_new=24)
    assert torch.equal(*single)
    assert group[0].shape == group[1].shape and (group[0] == group[1]).float().mean() >= 0.95


def test_a_decoded_model_is_freed_with_its_decoder():
    import gc
    import weakref

    lm = t5()
    sample_responses(lm, prompts(), 4, EOS, PAD, START, n=2)
    assert decoder_for(lm) is decoder_for(lm)
    gone = weakref.ref(lm)
    del lm
    gc.collect()
    assert gone() is None


def test_a_deep_copy_gets_its_own_decoder():
    import copy

    lm = t5()
    decoder = decoder_for(lm)
    twin = copy.deepcopy(lm)
    assert decoder_for(twin) is not decoder and decoder_for(twin).step.model is twin


def test_a_generation_config_with_its_own_processors_decodes_with_generate(monkeypatch, tiny_tokenizer):
    """A checkpoint's repetition penalty (or any processor generate adds) is honoured: generate runs."""
    lm = t5(vocab=len(tiny_tokenizer))
    lm.generation_config.repetition_penalty = 1.5
    kw = dict(max_new_tokens=12, batch_size=6, max_input_length=32, seed=7)
    texts = ["a b c d", "e f", "g h i j k l m"]
    ours = generation.generate(lm, tiny_tokenizer, texts, GenerationSetting("greedy"), **kw)
    assert lm.__dict__.get(decoding.ATTRIBUTE) is None  # the decoder was never built
    monkeypatch.setattr(generation, "decoder_for", lambda *a, **k: None)
    assert ours.texts == generation.generate(lm, tiny_tokenizer, texts, GenerationSetting("greedy"), **kw).texts
