import copy

import torch
from transformers import T5Config, T5ForConditionalGeneration
from transformers.activations import GELUTanh

from rlhf.models import fuse_gelu


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
