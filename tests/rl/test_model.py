import dataclasses

import pytest
import torch

from rlhf.rl.model import ValueHead
from rlhf.rl.trainer import RLTrainer

from .conftest import WordCountScorer, make


def test_value_head_shape_and_zero_init():
    head = ValueHead(16)
    out = head(torch.randn(3, 5, 16))
    assert out.shape == (3, 5) and (out == 0).all()
    assert ValueHead(16, init_std=0.01)(torch.randn(2, 4, 16)).abs().sum() > 0


def test_frozen_encoder_refuses_a_full_policy_or_an_encoder_adapter(tmp_path):
    from rlhf.errors import UserError

    with pytest.raises(UserError, match="rl.frozen_encoder"):
        make(tmp_path, frozen_encoder=True, policy="full")
    trainer, config = make(tmp_path)  # LoRA in the encoder too
    frozen = dataclasses.replace(config.rl, frozen_encoder=True)
    with pytest.raises(UserError, match="encoder weights would train"):
        RLTrainer(trainer.policy, trainer.tokenizer, WordCountScorer(), trainer.prompts, frozen, seed=0,
                   max_input_length=256)


def test_compile_falls_back_to_eager_with_the_reason(tmp_path, monkeypatch):
    import rlhf.runtime

    monkeypatch.setattr(rlhf.runtime, "compile_unavailable", lambda device: "no C++ compiler on PATH")
    trainer, _ = make(tmp_path, compile=True, steps=1)
    assert trainer.compile_fallback == "no C++ compiler on PATH" and trainer.policy._train_forward is None
    assert trainer.step()["update/mini_batches"] == 4
    plain, _ = make(tmp_path / "plain")
    assert plain.compile_fallback is None and plain.policy._train_forward is None


def test_a_failed_compile_runs_eagerly_and_says_why(tmp_path, monkeypatch, capsys):
    import rlhf.runtime

    def broken(fn, **kwargs):
        def run(**inputs):
            raise RuntimeError("inductor could not lower an op\nsecond line")
        return run

    monkeypatch.setattr(rlhf.runtime, "compile_unavailable", lambda device: None)
    monkeypatch.setattr(torch, "compile", broken)
    trainer, _ = make(tmp_path, compile=True, steps=1)
    assert trainer.compile_fallback is None and trainer.policy.compiled
    assert trainer.step()["update/mini_batches"] == 4
    assert not trainer.policy.compiled
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rl:")]  # not a world build's
    assert err == ["rl: rl.compile: compiling the update failed (RuntimeError: inductor could not lower an op); "
                   "running eagerly"]
