import pytest
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
    assert est["configured"] == "fp32"
    lora = est["stages"]["sft_lora"]["fp32"]
    assert lora["gradients"] < 0.02 * full["fp32"]["gradients"]
    ppo = est["stages"]["ppo"]
    assert ppo["reference"] == "adapter-disabled policy" and ppo["reward_params"] is None
    flops = est["ppo_step_flops"]
    assert flops["total"] == pytest.approx(flops["generate"] + flops["forward_no_grad"] + flops["update"])
    # 4 epochs x (fwd + bwd) with LoRA = 8 forwards; the no-grad pass is 2 forwards less one encoder
    assert 4 * flops["forward_no_grad"] < flops["update"] < 8 * flops["forward_no_grad"]
    assert flops["generate"] == pytest.approx(flops["update"] / 8)
    assert "PPO step:" in format_estimate(est)


def test_cli_estimate(flan_base_config, tmp_path, capsys):
    import yaml

    from rlhf.cli import main
    from rlhf.config import to_dict

    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(to_dict(flan_base_config)))
    assert main(["estimate", str(path), "--prompt-tokens", "150"]) == 0
    assert "247,577,856 parameters" in capsys.readouterr().out
