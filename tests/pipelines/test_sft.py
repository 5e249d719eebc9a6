import json

import pytest
import torch

from pipelines import sft as sft_stage
from rlhf.config import GenerationSetting, SftVariant
from rlhf.data import load_splits
from rlhf.generation import generate
from rlhf.models import load_seq2seq, load_tokenizer
from rlhf.prompts import format_prompt
from rlhf.sft import load_variant, prepare_model, tokenize_split, train_variant, variant_folder

from ..conftest import SFT, Interrupt, sft_config, small_raw, stop_at


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
        run(tmp_path / "b", callbacks=[stop_at(5)])
    assert not (tmp_path / "b" / method / "train_metrics.json").exists()  # nothing left looking finished
    assert not variant_folder(tmp_path / "b", variant).exists()
    resumed, resumed_model = run(tmp_path / "b", resume=True)
    assert resumed.metrics["resumed_from"].endswith("checkpoint-4") and resumed.metrics["global_step"] == 6
    for (name, a), b in zip(straight_model.state_dict().items(), resumed_model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)

    def logged(folder):  # the variant's metrics.jsonl: the steps of each row and their figures (not timings)
        rows = [json.loads(line) for line in (folder / method / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r.get("loss"), r.get("eval_loss")) for r in rows if "train_runtime" not in r]

    straight_rows, resumed_rows = logged(tmp_path / "a"), logged(tmp_path / "b")  # steps 5, 6 once, not twice
    assert [r[0] for r in resumed_rows] == [r[0] for r in straight_rows] and len(straight_rows) == 9
    for (_, *a), (_, *b) in zip(straight_rows, resumed_rows):
        assert [x is None for x in a] == [x is None for x in b]
        assert [x for x in a if x is not None] == pytest.approx([x for x in b if x is not None], rel=1e-4, abs=1e-6)


def test_sft_under_torchrun_two_processes(tmp_path):
    """DDP on two CPU processes (gloo): the Trainer sees world size 2, one process writes."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
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
