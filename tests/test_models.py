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
