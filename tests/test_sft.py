import dataclasses

import pytest
import torch

from rlhf.data import load_splits
from rlhf.errors import UserError
from rlhf.models import load_seq2seq, load_tokenizer
from rlhf.prompts import format_prompt
from rlhf.sft import prepare_model, tokenize_split, train_variant

from .conftest import SFT, Interrupt, sft_config, stop_at


def test_over_long_prompts_keep_the_template_ending(tmp_path):
    """SFT inputs follow the prompt stage's rule: the dialogue is cut inside the template."""
    from rlhf.sft import count_shortened, fit_prompts

    config = sft_config(tmp_path)
    tokenizer = load_tokenizer(config.model)
    train = load_splits(config.data, config.seed)["train"].select(range(8))
    short = tokenize_split(train, tokenizer, "summarize", 40, 32)
    for ids in short["input_ids"]:
        assert len(ids) <= 40 and tokenizer.decode(ids, skip_special_tokens=True).endswith("Summary:")
    assert count_shortened(short) == 8
    prompts, shortened = fit_prompts(train["dialogue"], "summarize", tokenizer, 40)
    assert short["input_ids"] == tokenizer(prompts).input_ids and shortened == [True] * 8
    fits = tokenize_split(train, tokenizer, "summarize", 256, 32)  # prompts that fit: untouched
    assert fits["input_ids"] == tokenizer([format_prompt(d, "summarize") for d in train["dialogue"]]).input_ids
    assert count_shortened(fits) == 0 and fit_prompts(train["dialogue"], "summarize", tokenizer, 256)[1] == [False] * 8


def test_resume_falls_back_past_a_broken_checkpoint_and_checks_settings(tmp_path, capsys):
    config = sft_config(tmp_path, max_steps=6)
    variant = config.sft.variants[1]  # lora
    tokenizer = load_tokenizer(config.model)
    ds = tokenize_split(load_splits(config.data, config.seed)["train"], tokenizer, "summarize", 256, 32)

    def run(cfg, **kw):
        model = prepare_model(load_seq2seq(cfg.model), variant, cfg)
        return train_variant(model, tokenizer, ds, ds.select(range(8)), cfg, variant, tmp_path / "sft", **kw)

    with pytest.raises(Interrupt):
        run(config, callbacks=[stop_at(5)])
    ckpts = tmp_path / "sft" / "checkpoints" / "lora"
    (ckpts / "checkpoint-4" / "trainer_state.json").unlink()  # killed while the Trainer wrote it
    capsys.readouterr()
    changed_lr = sft_config(tmp_path, max_steps=6, variants=[SFT["variants"][0], {**SFT["variants"][1], "learning_rate": 0.5}])
    with pytest.raises(UserError, match=r"sft/lora: cannot resume from .*checkpoint-2: "
                                        r"sft.variants\['lora'\].learning_rate: 0.01 -> 0.5 changed"):
        run(changed_lr, resume=True)
    resumed = run(sft_config(tmp_path, max_steps=8), resume=True)
    assert resumed.metrics["resumed_from"].endswith("checkpoint-2") and resumed.metrics["global_step"] == 8
    out = capsys.readouterr().out.splitlines()
    assert f"sft/lora: skipping checkpoint {ckpts / 'checkpoint-4'}: trainer_state.json missing" in out
    assert "sft/lora: resume applies sft.max_steps: 6 -> 8" in out
    assert f"sft/lora: resuming from {ckpts / 'checkpoint-2'} (step 2)" in out


def test_bf16_autocast_step_moves_weights_like_an_fp32_step(tmp_path):
    """Mixed precision keeps fp32 master weights: one bf16-autocast step at a small learning rate
    changes the weights as an fp32 step does (same sign, same order of magnitude), where pure bf16
    weights would round most of the update away."""
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer

    from rlhf.sft import training_args

    deltas = {}
    for mp in ("no", "bf16"):
        config = sft_config(tmp_path / mp, max_steps=1, eval_steps=1, save_steps=1, warmup_ratio=0.0,
                            variants=[{"name": "full", "method": "full", "learning_rate": 1e-4}])
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, mixed_precision=mp))
        tokenizer = load_tokenizer(config.model)
        splits = load_splits(config.data, config.seed)
        args = (tokenizer, config.data.template, config.model.max_input_length, config.sft.max_target_length)
        train = tokenize_split(splits["train"].select(range(8)), *args)
        torch.manual_seed(0)
        model = prepare_model(load_seq2seq(config.model), config.sft.variants[0], config)
        before = {k: v.detach().clone() for k, v in model.named_parameters()}
        trainer = Seq2SeqTrainer(model=model, args=training_args(config, config.sft.variants[0], tmp_path / mp / "out"),
                                 train_dataset=train, eval_dataset=train,
                                 data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100))
        trainer.train()
        assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
        deltas[mp] = torch.cat([(p.detach() - before[k]).flatten() for k, p in model.named_parameters()])
    fp32, bf16 = deltas["no"], deltas["bf16"]
    moved = fp32.abs() > 1e-6
    assert moved.float().mean() > 0.5
    assert (torch.sign(fp32[moved]) == torch.sign(bf16[moved])).float().mean() > 0.9
    ratio = bf16[moved].norm() / fp32[moved].norm()
    assert 0.5 < ratio < 2.0
