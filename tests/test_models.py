import copy

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration
from transformers.activations import GELUTanh

from rlhf.config import LoraConfig, ModelConfig
from rlhf.errors import UserError
from rlhf.models import apply_lora, count_parameters, fuse_gelu, load_seq2seq


def test_fuse_gelu_swaps_every_gated_gelu_and_keeps_outputs_and_gradients():
    torch.manual_seed(0)
    config = T5Config(vocab_size=50, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_decoder_layers=3, num_heads=2,
                      feed_forward_proj="gated-gelu", decoder_start_token_id=0)
    plain = T5ForConditionalGeneration(config).eval()
    fused = copy.deepcopy(plain)
    assert fuse_gelu(fused) == 5
    assert sum(isinstance(m, GELUTanh) for m in fused.modules()) == 5
    ids, dec = torch.randint(2, 50, (2, 7)), torch.randint(2, 50, (2, 4))
    outs = []
    for model in (plain, fused):
        logits = model(input_ids=ids, decoder_input_ids=dec).logits
        logits.square().mean().backward()
        outs.append((logits.detach(), model.shared.weight.grad.clone()))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[0][1], outs[1][1], atol=1e-5, rtol=1e-4)
    assert fuse_gelu(fused) == 0  # nothing left to swap


def test_fp32_output_layer_gives_fp32_logits_under_bf16_autocast_and_changes_nothing_without():
    from rlhf.models import fp32_output_layer

    torch.manual_seed(0)
    config = T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2,
                      decoder_start_token_id=0, tie_word_embeddings=False)
    plain = T5ForConditionalGeneration(config).eval()
    plain.lm_head.weight.data.mul_(40)  # logits ~ +-20, where bf16 is spaced 0.125 apart
    patched = copy.deepcopy(plain)
    assert fp32_output_layer(patched) and not fp32_output_layer(patched)  # once
    assert patched.state_dict().keys() == plain.state_dict().keys()
    ids, dec = torch.randint(2, 64, (2, 7)), torch.randint(2, 64, (2, 4))
    exact = plain(input_ids=ids, decoder_input_ids=dec).logits
    assert torch.equal(patched(input_ids=ids, decoder_input_ids=dec).logits, exact)  # no autocast: unchanged
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rounded = plain(input_ids=ids, decoder_input_ids=dec).logits
        kept = patched(input_ids=ids, decoder_input_ids=dec).logits
    assert rounded.dtype == torch.bfloat16 and kept.dtype == torch.float32
    hidden_error = (kept - exact).abs().max()  # only the decoder's bf16 rounding, not the logits'
    assert hidden_error < (rounded.float() - exact).abs().max()
    assert copy.deepcopy(patched).lm_head.__class__ is patched.lm_head.__class__  # a full policy's reference copy


def test_lora_count_matches_flan_t5_base_formula():
    # flan-t5-base shape, built on the meta device: no download, no memory
    config = T5Config(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12,
                      feed_forward_proj="gated-gelu", vocab_size=32128, tie_word_embeddings=False)
    with torch.device("meta"):
        model = T5ForConditionalGeneration(config)
        # transformers 5 ties lm_head to the embeddings when building T5 from a config; the
        # flan-t5-base checkpoint has its own lm_head (from_pretrained unties it), so untie here too.
        model.lm_head.weight = torch.nn.Parameter(model.shared.weight.detach().clone())
    counts = count_parameters(apply_lora(model, LoraConfig(r=32, alpha=32, target_modules=["q", "v"])))
    # 2 targets x r x (d_in + d_out) x (12 encoder self + 12 decoder self + 12 decoder cross attentions)
    assert counts["trainable_params"] == 2 * 32 * (768 + 768) * 36 == 3_538_944
    assert counts["total_params"] == 251_116_800
    assert round(counts["trainable_pct"], 2) == 1.41


def test_lora_target_modules_missing_lists_candidates():
    model = T5ForConditionalGeneration(T5Config(d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4, vocab_size=50))
    with pytest.raises(UserError, match=r"\['query'\] are not in the model; it has Linear modules: .*\bq\b.*\bwo\b"):
        apply_lora(model, LoraConfig(target_modules=["q", "query"]))


def test_not_seq2seq_and_missing_model_paths(tmp_path):
    from transformers import BertConfig

    BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=8).save_pretrained(tmp_path / "bert")
    with pytest.raises(UserError, match="is a bert model, not a seq2seq"):
        load_seq2seq(ModelConfig(name=str(tmp_path / "bert")))
    with pytest.raises(UserError, match="model path does not exist"):
        load_seq2seq(ModelConfig(name=str(tmp_path / "nothing")))


def test_a_loaded_seq2seq_runs_no_hub_kernels(tmp_path):
    """transformers 5 turns Hub kernels on by default (with the ``kernels`` package, which it
    requires); on a GPU they are code fetched from the Hub, and offline ``.eval()`` crashes."""
    T5ForConditionalGeneration(T5Config(vocab_size=16, d_model=8, d_ff=8, d_kv=4, num_layers=1, num_heads=2,
                                        decoder_start_token_id=0)).save_pretrained(tmp_path / "t5")
    assert load_seq2seq(ModelConfig(name=str(tmp_path / "t5"))).use_kernels is False
