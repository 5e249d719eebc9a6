import dataclasses
import json

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration, TrainerCallback

from pipelines import sft as sft_stage
from rlhf.config import GenerationSetting, LoraConfig, ModelConfig, SftVariant, config_from_dict
from rlhf.data import format_prompt, load_splits
from rlhf.errors import UserError
from rlhf.generation import generate
from rlhf.models import apply_lora, count_parameters, load_seq2seq, load_tokenizer
from rlhf.sft import load_variant, prepare_model, tokenize_split, train_variant
from rlhf.tinyworld.build import resolve_tinyworld

from .conftest import small_raw

SFT = {"variants": [{"name": "full", "method": "full", "learning_rate": 3e-3},
                    {"name": "lora", "method": "lora", "learning_rate": 1e-2}],
       "lora": {"r": 4, "alpha": 8, "target_modules": ["q", "v"]}, "max_steps": 6, "batch_size": 8,
       "eval_steps": 2, "save_steps": 2, "early_stopping_patience": None, "eval_n_dialogues": 6,
       "max_new_tokens": 8, "max_target_length": 32}


def sft_config(tmp_path, **sft):
    sft = {**SFT, **sft}
    raw = small_raw(tmp_path, sft=sft, ppo={"start_from": sft["variants"][0]["name"]})  # a variant the config has
    return resolve_tinyworld(config_from_dict(raw), log=lambda *_: None)


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


def test_sft_stage_writes_comparison_and_loadable_models(tmp_path):
    config = sft_config(tmp_path)
    metrics = sft_stage.main(config)
    folder = config.run_dir / "sft"
    assert set(metrics["variants"]) == {"base", "full", "lora"}
    for row in metrics["variants"].values():
        assert {"rouge1", "rouge2", "rougeL", "rougeLsum", "trainable_params", "total_params", "trainable_pct",
                "train_seconds", "train_memory_mb", "peak_memory_mb"} <= set(row)
    lora, full = metrics["variants"]["lora"], metrics["variants"]["full"]
    assert lora["trainable_params"] < 0.1 * lora["total_params"]
    assert full["trainable_params"] == full["total_params"]
    assert json.loads((folder / "metrics.json").read_text())["variants"]["lora"]["trainable_params"] == lora["trainable_params"]
    assert (folder / "full" / "model" / "model.safetensors").is_file()
    assert (folder / "lora" / "adapter" / "adapter_model.safetensors").is_file()
    assert "| variant |" in (folder / "results.md").read_text() and (folder / "manifest.json").is_file()


def test_adapter_round_trip_gives_identical_generations(tmp_path):
    config = sft_config(tmp_path, max_steps=3, variants=[SFT["variants"][1]])
    variant = config.sft.variants[0]
    tokenizer = load_tokenizer(config.model)
    splits = load_splits(config.data, config.seed)
    ds = tokenize_split(splits["train"], tokenizer, "summarize", 256, 32)
    short = tokenize_split(splits["validation"].select(range(8)), tokenizer, "summarize", 40, 32)
    model = prepare_model(load_seq2seq(config.model), variant, config)
    result = train_variant(model, tokenizer, ds, short, config, variant, tmp_path / "sft")
    assert (result.metrics["train_prompts_shortened"], result.metrics["eval_prompts_shortened"]) == (0, 8)
    reloaded = load_variant(config, variant, tmp_path / "sft")
    prompts = [format_prompt(d, "summarize") for d in splits["test"]["dialogue"][:6]]
    kwargs = dict(max_new_tokens=10, batch_size=3, max_input_length=256, seed=0)
    assert generate(model.eval(), tokenizer, prompts, GenerationSetting(), **kwargs).texts == \
        generate(reloaded, tokenizer, prompts, GenerationSetting(), **kwargs).texts


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


class Interrupt(Exception):
    pass


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Interrupt


@pytest.mark.parametrize("method", ["lora", "full"])
def test_resume_after_interruption_matches_straight_run(tmp_path, method):
    config = sft_config(tmp_path, max_steps=6)
    variant = SftVariant(name=method, method=method, learning_rate=5e-3)
    tokenizer = load_tokenizer(config.model)
    ds = tokenize_split(load_splits(config.data, config.seed)["train"], tokenizer, "summarize", 256, 32)

    def run(folder, **kw):
        model = prepare_model(load_seq2seq(config.model), variant, config)
        return train_variant(model, tokenizer, ds, ds.select(range(8)), config, variant, folder, **kw), model

    straight, straight_model = run(tmp_path / "a")
    with pytest.raises(Interrupt):
        run(tmp_path / "b", callbacks=[StopAt(5)])
    assert not (tmp_path / "b" / method).exists()  # nothing left looking finished
    resumed, resumed_model = run(tmp_path / "b", resume=True)
    assert resumed.metrics["resumed_from"].endswith("checkpoint-4") and resumed.metrics["global_step"] == 6
    for (name, a), b in zip(straight_model.state_dict().items(), resumed_model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_sft_under_torchrun_two_processes(tmp_path):
    """DDP on two CPU processes (gloo): the Trainer sees world size 2, one process writes."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(small_raw(tmp_path)))
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", "--master_port",
                           "29519", "-m", "pipelines.sft", str(path)], capture_output=True, text=True, env=env,
                          cwd=root, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "runs" / "t" / "sft"
    assert json.loads((folder / "lora" / "train_metrics.json").read_text())["world_size"] == 2
    assert (folder / "manifest.json").is_file() and (folder / "lora" / "adapter" / "adapter_config.json").is_file()


def test_resume_falls_back_past_a_broken_checkpoint_and_checks_settings(tmp_path, capsys):
    config = sft_config(tmp_path, max_steps=6)
    variant = config.sft.variants[1]  # lora
    tokenizer = load_tokenizer(config.model)
    ds = tokenize_split(load_splits(config.data, config.seed)["train"], tokenizer, "summarize", 256, 32)

    def run(cfg, **kw):
        model = prepare_model(load_seq2seq(cfg.model), variant, cfg)
        return train_variant(model, tokenizer, ds, ds.select(range(8)), cfg, variant, tmp_path / "sft", **kw)

    with pytest.raises(Interrupt):
        run(config, callbacks=[StopAt(5)])
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
