import pytest
import torch
from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

from rlhf.config import GenerationSetting, TinyWorldConfig
from rlhf.generation import generate, generation_kwargs
from rlhf.tinyworld.build import ensure_tinyworld

from .conftest import SMALL_WORLD, quiet


@pytest.fixture(scope="module")
def model_and_tokenizer():
    """A random T5 over the small world's tokenizer: it writes many tokens (a trained small one stops at once)."""
    tok = AutoTokenizer.from_pretrained(ensure_tinyworld(TinyWorldConfig(**SMALL_WORLD), log=quiet) / "tokenizer")
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tok), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=0,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = T5ForConditionalGeneration(config).eval()
    with torch.no_grad():  # no special token wins the argmax, so greedy texts are not empty after stripping them
        model.lm_head.weight[[i for i in tok.all_special_ids if i != tok.eos_token_id]] = 0.0
    return model, tok


PROMPTS = ["Summarize: #Person1#: hello. #Person2#: hi, see you on Monday in Paris.", "Summarize: ok",
           "Summarize: #Person1#: the coffee machine arrived without the charger."]


def test_settings_become_generate_arguments():
    assert generation_kwargs(GenerationSetting("greedy"), 20) == {"max_new_tokens": 20, "num_beams": 1,
                                                                  "do_sample": False, "temperature": None,
                                                                  "top_k": None, "top_p": None}
    sampled = generation_kwargs(GenerationSetting("s", do_sample=True, temperature=0.7, top_p=0.9, max_new_tokens=5), 20)
    assert sampled == {"max_new_tokens": 5, "num_beams": 1, "do_sample": True, "temperature": 0.7, "top_k": 0,
                       "top_p": 0.9}


def test_outputs_come_back_in_prompt_order_whatever_the_batching(model_and_tokenizer):
    model, tok = model_and_tokenizer
    kwargs = dict(max_new_tokens=6, max_input_length=64, seed=0)
    one_by_one = [generate(model, tok, [p], GenerationSetting("greedy"), batch_size=1, **kwargs).texts[0]
                  for p in PROMPTS]
    batched = generate(model, tok, PROMPTS, GenerationSetting("greedy"), batch_size=2, **kwargs)
    assert batched.texts == one_by_one and batched.samples is None and batched.new_tokens > 0
    assert all(batched.texts)
    assert not any("<pad>" in t or "</s>" in t for t in batched.texts)  # special tokens stripped


def test_k_samples_per_prompt_are_seeded(model_and_tokenizer):
    model, tok = model_and_tokenizer
    setting = GenerationSetting("s", do_sample=True, top_p=0.9)
    first = generate(model, tok, PROMPTS, setting, max_new_tokens=6, batch_size=8, max_input_length=64, seed=5,
                     num_return_sequences=4)
    again = generate(model, tok, PROMPTS, setting, max_new_tokens=6, batch_size=8, max_input_length=64, seed=5,
                     num_return_sequences=4)
    assert [len(s) for s in first.samples] == [4, 4, 4] and first.samples == again.samples
    assert first.texts == [s[0] for s in first.samples]
    other = generate(model, tok, PROMPTS, setting, max_new_tokens=6, batch_size=8, max_input_length=64, seed=6,
                     num_return_sequences=4)
    assert other.samples != first.samples
    assert torch.initial_seed() == 6  # generate seeds the process (the stages reseed before each call)
