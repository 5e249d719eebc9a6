import pytest
import torch
from transformers import T5Config

from rlhf.config import config_from_dict
from rlhf.estimate import GIB, estimate, format_estimate


@pytest.fixture
def flan_base_config(tmp_path):
    T5Config(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12,
             feed_forward_proj="gated-gelu", vocab_size=32128, tie_word_embeddings=False).save_pretrained(tmp_path / "m")
    return config_from_dict({"model": {"name": str(tmp_path / "m")}, "reward": {"model": str(tmp_path / "none")},
                             "sft": {"lora": {"r": 32, "alpha": 32, "target_modules": ["q", "v"]}}})


def test_estimate_flan_t5_base_shape(flan_base_config):
    est = estimate(flan_base_config, prompt_tokens=200)
    # flan-t5-base itself; with the r=32 q,v adapter peft reports 3,538,944 of 251,116,800
    assert est["total_params"] == 247_577_856
    assert est["stages"]["sft_lora"]["trainable_params"] == 3_538_944 == 251_116_800 - 247_577_856
    full = est["stages"]["sft_full"]
    assert full["fp32"]["weights"] == pytest.approx(247_577_856 * 4 / GIB)
    assert full["fp32"]["optimizer"] == pytest.approx(2 * full["fp32"]["weights"])
    assert full["bf16_pure"]["weights"] == pytest.approx(full["fp32"]["weights"] / 2)
    # mixed precision keeps the fp32 master weights (plus autocast's bf16 copies) and fp32 moments
    assert full["bf16_mixed"]["weights"] == pytest.approx(1.5 * full["fp32"]["weights"])
    assert full["bf16_mixed"]["optimizer"] == full["fp32"]["optimizer"] == 2 * full["bf16_pure"]["optimizer"]
    assert full["bf16_mixed"]["activations"] < 0.6 * full["fp32"]["activations"]  # fp32 logits kept
    # with LoRA only the adapter's weights get autocast's kept bf16 copy; the frozen base is cast per use
    assert est["stages"]["sft_lora"]["bf16_mixed"]["weights"] == pytest.approx((251_116_800 * 4 + 3_538_944 * 2) / GIB)  # adapter counted
    assert est["configured"] == "fp32"
    lora = est["stages"]["sft_lora"]["fp32"]
    assert lora["gradients"] < 0.02 * full["fp32"]["gradients"]
    ppo = est["stages"]["rl_ppo"]
    assert ppo["reference"] == "adapter-disabled policy" and ppo["reward_params"] is None
    flops = est["rl_step_flops"]["ppo"]
    assert flops["total"] == pytest.approx(flops["generate"] + flops["forward_no_grad"] + flops["update"])
    # 4 epochs x (fwd + bwd) with LoRA = 8 forwards; the no-grad pass is 2 forwards less one encoder
    assert 4 * flops["forward_no_grad"] < flops["update"] < 8 * flops["forward_no_grad"]
    assert flops["generate"] == pytest.approx(flops["update"] / 8)
    text = format_estimate(est)
    assert "RL step (ppo):" in text and "RL step (grpo, k = 4):" in text and "\nrl_rloo: " in text
    # a group method: no value head, each prompt encoded once for its k responses
    grpo, rloo = est["rl_step_flops"]["grpo"], est["rl_step_flops"]["rloo"]
    assert grpo == rloo | {"algorithm": "grpo"} and grpo["total"] < flops["total"]
    assert est["stages"]["rl_grpo"]["trainable_params"] == ppo["trainable_params"] - 769  # 768 + 1: the value head
    assert est["stages"]["rl_grpo"]["fp32"]["activations"] < ppo["fp32"]["activations"]


def test_cli_estimate(flan_base_config, tmp_path, capsys):
    import yaml

    from rlhf.cli import main
    from rlhf.config import to_dict

    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(to_dict(flan_base_config)))
    assert main(["estimate", str(path), "--prompt-tokens", "150"]) == 0
    assert "247,577,856 parameters" in capsys.readouterr().out


def test_step_flops_count_cross_attention_per_prompt_token_and_skip_a_frozen_encoder(flan_base_config):
    from dataclasses import replace

    from rlhf.estimate import Shape, encoder_flops, forward_flops, rl_step_flops

    s = Shape(d_model=8, n_heads=2, enc_layers=1, dec_layers=1, vocab=10, enc_params=100, dec_params=300,
              total=500, cross_kv=128)
    # 2 FLOPs per weight per token: cross-attention keys/values on the 50 prompt tokens, the rest on 4
    no_attention = forward_flops(s, 1, 50, 4) - 4 * 8 * (4 * 4 + 4 * 50) - 4 * 8 * 50 * 50
    assert no_attention == 2 * 100 * 50 + 2 * 172 * 4 + 2 * 128 * 50 + 2 * 4 * 8 * 10
    p = flan_base_config.rl
    fwd, enc = forward_flops(s, p.batch_size, 50, p.max_new_tokens), encoder_flops(s, p.batch_size, 50)
    default = rl_step_flops(s, p, 50)
    frozen = rl_step_flops(s, replace(p, frozen_encoder=True), 50)
    assert default["forward_no_grad"] == 2 * fwd - enc and frozen["forward_no_grad"] == 2 * (fwd - enc)
    assert frozen["update"] == default["update"] * (fwd - enc) / fwd
    assert frozen["generate"] == default["generate"] == fwd
    assert default["ptx"] == frozen["ptx"] == 0
    ptx = rl_step_flops(s, replace(p, ptx_coef=0.5), 50, ptx_target=7)
    ptx_fwd = forward_flops(s, p.batch_size, 50, 7)  # as many pairs as rollouts, each epoch, with a backward
    assert ptx["ptx"] == p.epochs * 2 * ptx_fwd and ptx["total"] == default["total"] + ptx["ptx"]
    frozen_ptx = rl_step_flops(s, replace(p, ptx_coef=0.5, frozen_encoder=True), 50, ptx_target=7)
    assert frozen_ptx["ptx"] == p.epochs * (2 * (ptx_fwd - enc) + enc)  # the pairs' encoder runs without a graph
    group = rl_step_flops(s, p, 50, algorithm="grpo", group_size=4)  # a quarter of the prompts, as many rollouts
    enc_prompts = encoder_flops(s, p.batch_size // 4, 50)
    assert group["generate"] == fwd - enc + enc_prompts and group["forward_no_grad"] == 2 * (fwd - enc) + enc_prompts
    assert group["update"] == p.epochs * 2 * (fwd - enc + enc_prompts)


def test_shape_counts_t5_cross_attention_keys_and_values():
    from transformers import T5Config, T5ForConditionalGeneration

    from rlhf.estimate import shape_of

    cfg = T5Config(d_model=16, d_kv=4, d_ff=32, num_layers=2, num_decoder_layers=3, num_heads=2, vocab_size=40)
    with torch.device("meta"):
        s = shape_of(T5ForConditionalGeneration(cfg))
    assert s.cross_kv == 3 * 2 * 16 * 8  # 3 decoder layers x (k, v) x d_model x heads * d_kv
    assert s.attention_width == s.attn_inner == 8  # heads x d_kv: the width attention scores run at


def test_frozen_encoder_estimate_trains_and_keeps_the_decoder_only(flan_base_config):
    from dataclasses import replace

    frozen_config = replace(flan_base_config, rl=replace(flan_base_config.rl, frozen_encoder=True))
    default, frozen = (estimate(c, prompt_tokens=200)["stages"]["rl_ppo"] for c in (flan_base_config, frozen_config))
    # the default PPO LoRA (q,v) has 12 encoder and 12 decoder self-attention + 12 cross-attention layers
    assert frozen["trainable_params"] - 769 == (default["trainable_params"] - 769) * 24 // 36
    assert frozen["fp32"]["activations"] < 0.8 * default["fp32"]["activations"]


def test_a_model_outside_the_t5_family_is_refused_in_one_line(tmp_path):
    from transformers import BartConfig

    from rlhf.errors import UserError

    BartConfig(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
               encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=40).save_pretrained(tmp_path / "bart")
    config = config_from_dict({"model": {"name": str(tmp_path / "bart")}, "reward": {"model": str(tmp_path / "none")}})
    with pytest.raises(UserError, match="T5-family models only: model type 'bart' has no config key num_heads"):
        estimate(config)
