"""Every bad input a user can hand the CLI ends in one line on stderr naming the problem, exit code
2, no traceback, and no stage marked finished.

Each case builds its input under ``tmp_path`` and returns the argv; the test runs ``rlhf`` in process.
"""

from __future__ import annotations

import json
import os

import pytest
import yaml

from rlhf.cli import main as cli_main
from rlhf.config import load_config
from rlhf.rundir import start_stage
from rlhf.tinyworld.build import resolve_tinyworld

from .conftest import copy_run, small_raw, write, write_jsonl

ROOT = os.geteuid() == 0  # root ignores file permissions: the read-only cases need another user


def exp(tmp_path, *overrides, **sections) -> list[str]:
    """A small tiny-world experiment file, then ``overrides``."""
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(small_raw(tmp_path, **sections)))
    return [str(path), *overrides]


def text_file(tmp_path, name: str, content: str | bytes) -> str:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def finished(tmp_path, stages, *overrides):
    """Mark ``stages`` finished under the config of ``exp`` (as a real run records it)."""
    config = resolve_tinyworld(load_config(exp(tmp_path)[0], list(overrides)), log=lambda *_: None)
    for stage in stages:
        start_stage(config, stage).finish()
    return config


def dialogues(n=12, **extra):
    return [{"dialogue": f"#Person1#: hello number {i}. #Person2#: hi there.", "summary": f"They greet {i}.", **extra}
            for i in range(n)]


class Payload:
    """Creates ``marker`` when unpickled: loading it would run code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def pickle_model_folder(tmp_path, kind: str) -> str:
    """A model folder whose only weights are a pickle payload (``pytorch_model.bin``)."""
    import torch
    from transformers import BertConfig, T5Config

    folder = tmp_path / f"pickled_{kind}"
    if kind == "t5":
        T5Config(d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4, vocab_size=50).save_pretrained(folder)
    else:
        BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
                   num_labels=2, architectures=["BertForSequenceClassification"]).save_pretrained(folder)
    torch.save({"weight": Payload(tmp_path / "pickle_ran")}, folder / "pytorch_model.bin")
    return str(folder)


def with_stray_safetensors(folder: str) -> str:
    """``folder`` plus a safetensors file that is not the model's weights (a value head)."""
    import torch
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, f"{folder}/value_head.safetensors")
    return folder


def report_dir(tmp_path, metrics: str | None) -> str:
    run = tmp_path / "runs" / "t"
    (run / "evaluate").mkdir(parents=True)
    (run / "evaluate" / "manifest.json").write_text(json.dumps({"status": "finished"}))
    if metrics is not None:
        (run / "evaluate" / "metrics.json").write_text(metrics)
    return str(run)


def fake_checkpoints(tmp_path, stage: str, sub: str) -> list[str]:
    finished(tmp_path, ["sft", "reward"] if stage == "rl" else [])
    (tmp_path / "runs" / "t" / stage / "checkpoints" / sub).mkdir(parents=True)
    return exp(tmp_path)


# name: (argv builder, substrings the error line must contain)
CASES = {
    # ---- the config file and its keys
    "empty_yaml": (lambda t: ["prompt", text_file(t, "e.yaml", "")], ["e.yaml is empty"]),
    "invalid_yaml": (lambda t: ["prompt", text_file(t, "b.yaml", "seed: 1\nmodel: x\n  name: y\n")],
                     ["b.yaml is not valid YAML (line 3"]),
    "python_tag": (lambda t: ["prompt", text_file(t, "p.yaml", f"seed: !!python/object/apply:os.system "
                                                             f"['touch {t / 'pickle_ran'}']\n")],
                   ["p.yaml is not valid YAML", "python/object/apply:os.system"]),
    "top_level_list": (lambda t: ["prompt", text_file(t, "l.yaml", "- a\n- b\n")], ["expected a mapping"]),
    "yaml_not_utf8": (lambda t: ["prompt", text_file(t, "u.yaml", b"seed: 1\nrun_name: caf\xe9\n")],
                      ["u.yaml is not valid UTF-8", "line 2, byte offset 21: 0xe9"]),
    "config_missing": (lambda t: ["prompt", str(t / "nope.yaml")], ["config file not found", "nope.yaml"]),
    "unknown_key": (lambda t: ["prompt", *exp(t, "sede=1")], ["unknown config key 'sede'", "'seed'"]),
    "unknown_nested_key": (lambda t: ["rl", *exp(t, "rl.lora.rank=4")], ["'rank'", "section 'rl.lora'", "valid: r,"]),
    "wrong_type": (lambda t: ["prompt", *exp(t, "seed=abc")], ["'seed'", "'abc'"]),
    "seed_overflow": (lambda t: ["run", *exp(t, "seed=99999999999999999999")], ["'seed'", "99999999999999999999"]),
    "seed_beyond_numpy": (lambda t: ["run", *exp(t, "seed=4294967296")], ["'seed'", "4294967296", "must be in"]),
    "seed_negative": (lambda t: ["run", *exp(t, "seed=-1")], ["'seed'", "-1"]),
    "huge_int": (lambda t: ["prompt", *exp(t, "prompt.max_new_tokens=99999999999999999999999")],
                 ["'prompt.max_new_tokens'", "out of range"]),
    "lr_inf": (lambda t: ["rl", *exp(t, "rl.learning_rate=.inf")], ["'rl.learning_rate'", "inf", "not a finite"]),
    "kl_coef_inf": (lambda t: ["rl", *exp(t, "rl.kl.init_kl_coef=.inf")], ["'rl.kl.init_kl_coef'", "inf"]),
    "clean_at_zero": (lambda t: ["reward", *exp(t, "reward.clean_at=0")], ["'reward.clean_at'", "0"]),
    "clean_at_above_one": (lambda t: ["rl", *exp(t, "reward.clean_at=1.5")], ["'reward.clean_at'", "1.5"]),
    "frozen_encoder_not_bool": (lambda t: ["rl", *exp(t, "rl.frozen_encoder=maybe")],
                                ["'rl.frozen_encoder'", "maybe"]),
    "toxic_share_one": (lambda t: ["rl", *exp(t, "rl.toxic_share=1")], ["'rl.toxic_share'", "must be in (0, 1)"]),
    "toxic_share_without_column": (lambda t: ["rl", *exp(t, "rl.toxic_share=0.5", "data.toxic_column=null")],
                                   ["'rl.toxic_share'", "needs data.toxic_column"]),
    "ptx_coef_negative": (lambda t: ["rl", *exp(t, "rl.ptx_coef=-0.5")], ["'rl.ptx_coef'", "-0.5"]),
    "compile_not_bool": (lambda t: ["rl", *exp(t, "rl.compile=sometimes")], ["'rl.compile'", "sometimes"]),
    "grad_norm_nan": (lambda t: ["rl", *exp(t, "rl.max_grad_norm=.nan")], ["'rl.max_grad_norm'", "nan"]),
    "epochs_inf_text": (lambda t: ["sft", *exp(t, "sft.epochs=inf")], ["'sft.epochs'", "inf", "not a finite"]),
    "yaml_inf_in_file": (lambda t: ["reward", *exp(t, reward={"learning_rate": float("inf")})],
                         ["'reward.learning_rate'", "inf"]),
    "run_name_escapes": (lambda t: ["prompt", *exp(t, "run_name=../../x")], ["'run_name'", "'../../x'"]),
    "run_name_with_slash": (lambda t: ["prompt", *exp(t, "run_name=a/b")], ["'run_name'", "'a/b'"]),
    "run_name_from_hidden_file": (lambda t: ["prompt", text_file(t, ".hidden.yaml", "seed: 1\n")],
                                  ["'run_name'", "'.hidden'"]),
    "variant_name_escapes": (lambda t: ["sft", *exp(t, "sft.variants=[{name: ../x, method: lora}]")],
                             ["'sft.variants[0].name'", "'../x'"]),
    "output_dir_empty": (lambda t: ["prompt", *exp(t, "output_dir=")], ["'output_dir'", "''"]),
    "toxic_value_yes": (lambda t: ["reward", *exp(t, "reward.data.toxic_value=yes")],
                        ["'reward.data.toxic_value'", "True", "quote the value"]),
    "batch_not_multiple": (lambda t: ["rl", *exp(t, "rl.batch_size=6")], ["'rl.batch_size'", "6", "multiple"]),
    "kl_horizon_below_batch_fifth": (lambda t: ["rl", *exp(t, "rl.kl.horizon=1")],
                                     ["'rl.kl.horizon'", "value 1", "0.2 x rl.batch_size (8)"]),
    "prompt_shots_empty": (lambda t: ["prompt", *exp(t, "prompt.shots=[]")], ["'prompt.shots'", "must not be empty"]),
    "prompt_settings_empty": (lambda t: ["prompt", *exp(t, "prompt.settings=[]")],
                              ["'prompt.settings'", "must not be empty"]),
    "save_steps_not_multiple": (lambda t: ["sft", *exp(t, "sft.save_steps=3")], ["'sft.save_steps'", "3"]),
    "template_unknown": (lambda t: ["prompt", *exp(t, "data.template=poem")], ["'data.template'", "'poem'"]),
    "override_without_value": (lambda t: ["prompt", *exp(t, "seed")], ["'seed'", "key.sub=value"]),
    # ---- bounded configs: refused before anything is built from them, values quoted short
    "yaml_alias_bomb": (lambda t: ["prompt", text_file(t, "bomb.yaml", alias_bomb())],
                        ["bomb.yaml holds more than 50000 values", "aliases"]),
    "yaml_nested_too_deep": (lambda t: ["prompt", text_file(t, "deep.yaml", "seed: " + "[" * 20000 + "]" * 20000)],
                             ["deep.yaml nests values more than 16 levels deep"]),
    "override_nested_too_deep": (lambda t: ["prompt", *exp(t, "seed=" + "[" * 3000 + "]" * 3000)],
                                 ["override 'seed=[[[", "nests values more than 16 levels deep"]),
    "config_file_too_large": (lambda t: ["prompt", text_file(t, "big.yaml", "seed: 1\n" + "# padding\n" * 120_000)],
                              ["big.yaml is 1,200,008 bytes; a config is at most 1,000,000"]),
    "long_value_quoted_short": (lambda t: ["prompt", *exp(t, "data.template=" + "x" * 5000)],
                                ["'data.template'", "...", "is not one of 'summarize', 'what_happened'"]),
    "run_name_too_long": (lambda t: ["prompt", *exp(t, "run_name=" + "r" * 300)],
                          ["'run_name'", "is 300 bytes long; a folder name here is at most 200"]),
    "variant_name_too_long": (lambda t: ["sft", *exp(t, "sft.variants=[{name: " + "v" * 250 + ", method: lora}]",
                                                     "rl.start_from=base")], ["'sft.variants[0].name'", "250 bytes"]),
    "output_dir_name_too_long": (lambda t: ["prompt", *exp(t, f"output_dir={t}/{'o' * 300}/runs")],
                                 ["'output_dir'", "is 300 bytes long; file systems allow 255"]),
    "data_jsonl_cut_last_line": (lambda t: ["prompt", *exp(t, data={"source": text_file(
        t, "cut.jsonl", '{"dialogue": "a", "summary": "b"}\n' * 12 + '{"dialogue": "a", "summ'),
        "toxic_column": None, "key_facts_column": None})], ["cut.jsonl line 13 is not one JSON value"]),
    # ---- command line
    "unknown_command": (lambda t: ["frobnicate", *exp(t)], ["unknown command 'frobnicate'"]),
    "unknown_option": (lambda t: ["run", *exp(t), "--bogus"], ["unrecognized arguments: --bogus"]),
    "stage_without_config": (lambda t: ["prompt"], ["usage: rlhf prompt CONFIG"]),
    "estimate_negative_tokens": (lambda t: ["estimate", *exp(t), "--prompt-tokens", "-5"],
                                 ["--prompt-tokens", "-5", "must be > 0"]),
    "estimate_text_tokens": (lambda t: ["estimate", *exp(t), "--prompt-tokens", "many"], ["--prompt-tokens", "'many'"]),
    "tinyworld_seed_text": (lambda t: ["tinyworld", "--out", str(t / "w"), "--seed", "abc"], ["--seed", "'abc'"]),
    "tinyworld_seed_negative": (lambda t: ["tinyworld", "--out", str(t / "w"), "--seed", "-1"], ["--seed", "-1"]),
    "tinyworld_out_is_file": (lambda t: ["tinyworld", "--out", text_file(t, "f", "x")], ["--out", "is a file"]),
    "tinyworld_out_under_file": (lambda t: ["tinyworld", "--out", text_file(t, "f", "x") + "/w"], ["is a file"]),
    "tinyworld_out_not_empty": (lambda t: ["tinyworld", "--out", os.path.dirname(text_file(t, "home/notes", "x"))],
                                ["--out", "home", "not empty and not a tiny world built here"]),
    "tinyworld_out_is_a_stage_folder": (lambda t: ["tinyworld", "--out", os.path.dirname(text_file(
        t, "runs/t/sft/manifest.json", '{"stage": "sft", "status": "finished"}'))], ["not a tiny world built here"]),
    "flush_denormals_env": (lambda t: ["prompt", *exp(t)], ["RLHF_FLUSH_DENORMALS", "'2'"]),
    # ---- rlhf report
    "report_without_run": (lambda t: ["report"], ["usage: rlhf report RUN_DIR"]),
    "report_missing_dir": (lambda t: ["report", str(t / "nope")], ["run directory not found"]),
    "report_no_evaluate": (lambda t: ["report", str(t)], ["no finished 'evaluate' stage"]),
    "report_metrics_missing": (lambda t: ["report", report_dir(t, None)], ["evaluate/metrics.json is missing"]),
    "report_metrics_corrupt": (lambda t: ["report", report_dir(t, '{"protocol": ')],
                               ["evaluate/metrics.json is not valid JSON"]),
    # ---- where a run writes
    "output_dir_is_file": (lambda t: ["prompt", *exp(t, f"output_dir={text_file(t, 'f', 'x')}")],
                           ["output_dir", "is a file, not a folder"]),
    "output_dir_under_file": (lambda t: ["prompt", *exp(t, f"output_dir={text_file(t, 'f', 'x')}/runs")],
                              ["output_dir", "is a file, not a folder"]),
    "output_dir_read_only": (lambda t: ["prompt", *exp(t, f"output_dir={read_only(t)}/runs")],
                             ["output_dir", "ro", "cannot be created"]),
    "tinyworld_out_read_only": (lambda t: ["tinyworld", "--out", f"{read_only(t)}/w"], ["--out", "not writable"]),
    # ---- data
    "data_empty_jsonl": (lambda t: ["prompt", *exp(t, data={"source": text_file(t, "d/train.jsonl", "")})],
                         ["train.jsonl is empty"]),
    "data_blank_jsonl": (lambda t: ["prompt", *exp(t, data={"source": text_file(t, "d.jsonl", "\n \n")})],
                         ["d.jsonl is empty"]),
    "data_not_utf8": (lambda t: ["prompt", *exp(t, data={"source": text_file(
        t, "d.jsonl", b'{"dialogue": "a", "summary": "b"}\n' * 2 + b'{"dialogue": "caf\xe9", "summary": "b"}\n')})],
                      ["d.jsonl line 3 is not valid UTF-8", "0xe9"]),
    "data_missing_file": (lambda t: ["prompt", *exp(t, data={"source": "./nope.jsonl"})],
                          ["data source not found: ./nope.jsonl"]),
    "data_missing_column": (lambda t: ["prompt", *exp(t, data={"source": write_jsonl(
        t / "d.jsonl", [{"dialogue": "x", "text": "y"}] * 12), "toxic_column": None, "key_facts_column": None})],
                            ["has no column 'summary'"]),
    "data_unsupported_type": (lambda t: ["prompt", *exp(t, data={"source": text_file(t, "d.txt", "x")})],
                              ["unsupported file type '.txt'"]),
    "data_split_left_empty": (lambda t: ["prompt", *exp(t, "data.test_fraction=0.9", data={"source": write_jsonl(
        t / "d.jsonl", dialogues(5)), "toxic_column": None, "key_facts_column": None})],
                              ["d.jsonl", "'test' split", "data.test_fraction=0.9", "leaves 0 for 'train'"]),
    "data_empty_after_filter": (lambda t: ["prompt", *exp(t, "data.min_chars=1000000")],
                                ["is empty after filtering", "min_chars=1000000"]),
    "yaml_duplicate_key": (lambda t: ["prompt", text_file(t, "dup.yaml", "seed: 1\nrl: {steps: 2}\nrl: {steps: 3}\n")],
                           ["dup.yaml", "line 3", "key 'rl' is given twice"]),
    "ppo_start_from_typo_keeps_a_finished_ppo": (  # refused before --force discards anything
        lambda t: (finished(t, ["sft", "reward", "rl"]), ["rl", "--force", *exp(t, "rl.start_from=fulll")])[1],
        ["'rl.start_from'", "'fulll' is not an SFT variant"]),
    "ppo_start_from_typo_before_any_stage": (lambda t: ["run", *exp(t, "rl.start_from=fulll")],
                                             ["'rl.start_from'", "'fulll' is not an SFT variant"]),
    "ppo_frozen_encoder_full_policy": (lambda t: ["run", *exp(t, "rl.frozen_encoder=true", "rl.policy=full")],
                                       ["'rl.frozen_encoder'", "needs rl.policy lora"]),
    "ppo_accumulation_not_dividing_the_update": (lambda t: ["run", *exp(t, "rl.gradient_accumulation_steps=3")],
                                                 ["'rl.gradient_accumulation_steps': 3 does not divide the 2"]),
    "lora_target_modules_empty": (lambda t: ["sft", *exp(t, "sft.lora.target_modules=[]")],
                                  ["'sft.lora.target_modules'", "must not be empty"]),
    "lora_target_module_unknown": (lambda t: ["sft", *exp(t, "sft.lora.target_modules=[query]")],  # before any training
                                   ["'sft.lora.target_modules'", "['query'] are not in the model"]),
    "lora_target_module_unknown_estimate": (lambda t: ["estimate", *exp(t, "rl.lora.target_modules=[query]")],
                                            ["'rl.lora.target_modules'", "['query'] are not in the model"]),
    "sft_variant_named_like_a_stage_file": (
        lambda t: ["sft", *exp(t, "sft.variants=[{name: checkpoints, method: full}]", "rl.start_from=base")],
        ["'sft.variants'", "checkpoints"]),
    "option_for_another_command": (lambda t: ["run", *exp(t), "--seed", "7"], ["option --seed does not apply to `rlhf run`"]),
    "estimate_model_missing": (lambda t: ["estimate", *exp(t, "model.name=models/none")],
                               ["'model.name'", "cannot read the config of 'models/none'"]),
    "data_error_keeps_a_finished_stage": (  # checked before --force reopens the stage folder
        lambda t: (finished(t, ["prompt"]), ["prompt", "--force", *exp(t, "data.min_chars=1000000")])[1],
        ["is empty after filtering"]),
    # ---- models
    "model_missing_relative": (lambda t: ["prompt", *exp(t, "model.name=models/my/t5")],
                               ["model path does not exist: models/my/t5"]),
    "model_missing_dot": (lambda t: ["prompt", *exp(t, "model.name=./nothing")], ["model path does not exist: ./nothing"]),
    "model_is_file": (lambda t: ["prompt", *exp(t, f"model.name={text_file(t, 'm.pkl', 'x')}",
                                                "model.tokenizer=tinyworld")], ["m.pkl is a file"]),
    "model_not_seq2seq": (lambda t: ["prompt", *exp(t, f"model.name={pickle_model_folder(t, 'bert')}",
                                                    "model.tokenizer=tinyworld")], ["is a bert model, not a seq2seq"]),
    "model_pickle_weights": (lambda t: ["prompt", *exp(t, f"model.name={pickle_model_folder(t, 't5')}",
                                                       "model.tokenizer=tinyworld")],
                             ["could not load seq2seq model", "pickled_t5"]),
    "model_custom_code": (lambda t: ["prompt", *exp(t, f"model.name={custom_code_folder(t)}", "model.tokenizer=tinyworld")],
                          ["could not load model config", "custom"]),
    # ---- reward model and its data
    "reward_pretrained_pickle": (lambda t: ["reward", *exp(t, f"reward.pretrained={pickle_model_folder(t, 'bert')}")],
                                 ["has no .safetensors weights", "pytorch_model.bin", "never loaded"]),
    "reward_pretrained_stray_safetensors": (lambda t: ["reward", *exp(
        t, f"reward.pretrained={with_stray_safetensors(pickle_model_folder(t, 'bert'))}")],
                                            ["no model.safetensors", "pytorch_model.bin", "never loaded"]),
    "reward_pretrained_file": (lambda t: ["reward", *exp(t, f"reward.pretrained={text_file(t, 'r.pkl', 'x')}")],
                               ["reward model path", "r.pkl is a file"]),
    "reward_pretrained_missing": (lambda t: ["reward", *exp(t, "reward.pretrained=./nothing")],
                                  ["reward model path does not exist: ./nothing"]),
    "reward_labels_undeclared": (lambda t: ["reward", *exp(t, 'reward.data.toxic_value="yes"')],
                                 ["column 'label' has values", "toxic='yes'"]),
    "reward_single_class": (lambda t: ["reward", *exp(t, reward={"data": {"source": write_jsonl(
        t / "r.jsonl", [{"text": f"fine {i}", "label": 0} for i in range(20)])}})], ["single class"]),
    "reward_split_left_empty": (lambda t: ["reward", *exp(t, "reward.data.test_fraction=0.9", reward={"data": {
        "source": write_jsonl(t / "r.jsonl", [{"text": f"t {i}", "label": i % 2} for i in range(5)])}})],
                                ["r.jsonl", "'test' split", "reward.data.test_fraction=0.9", "leaves 0 for 'train'"]),
    # ---- stages and their order
    "ppo_before_sft": (lambda t: ["rl", *exp(t)], ["stage 'rl' needs the 'sft' stage", "rlhf sft CONFIG"]),
    "finished_stage_changed": (lambda t: (finished(t, ["prompt"]), ["prompt", *exp(t, "prompt.n_dialogues=3")])[1],
                               ["prompt: finished in", "prompt.n_dialogues: 6 -> 3", "--force"]),
    "run_with_changed_rl": (lambda t: (finished(t, ["prompt", "sft", "reward", "rl", "evaluate"]),
                                        ["run", *exp(t, "rl.learning_rate=0.5")])[1],
                             ["rl (rl.learning_rate: 0.001 -> 0.5)", "evaluate (rl.learning_rate", "--force"]),
    "unfinished_ppo_has_checkpoints": (lambda t: ["rl", *fake_checkpoints(t, "rl", "step-2")],
                                       ["rl: an earlier run left checkpoints", "step-2", "--resume", "--force"]),
    "unfinished_sft_has_checkpoints": (lambda t: ["sft", *fake_checkpoints(t, "sft", "lora/checkpoint-2")],
                                       ["sft: an earlier run left checkpoints", "lora/checkpoint-2", "--resume"]),
}


def alias_bomb(levels: int = 9) -> str:
    """A few hundred bytes of YAML whose aliases stand for 10 ** levels values."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nseed: [{', '.join([f'*l{levels - 1}'] * 10)}]\n"


def read_only(tmp_path) -> str:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    return str(folder)


def custom_code_folder(tmp_path) -> str:
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "custom_t5", "auto_map": {
        "AutoConfig": "configuration_custom.CustomConfig"}}))
    (folder / "configuration_custom.py").write_text(f"import os\nos.system('touch {tmp_path / 'pickle_ran'}')\n")
    return str(folder)


NEEDS_OTHER_USER = {"output_dir_read_only", "tinyworld_out_read_only"}


def manifests(tmp_path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in tmp_path.rglob("manifest.json") if "rlhf_cache" not in str(p)}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.skipif(
    ROOT and n in NEEDS_OTHER_USER, reason="root may write read-only folders")) for n in CASES])
def test_bad_input_is_one_line_and_exit_2(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build, expected = CASES[name]
    argv = build(tmp_path)
    if name == "flush_denormals_env":
        monkeypatch.setenv("RLHF_FLUSH_DENORMALS", "2")
    before = manifests(tmp_path)
    capsys.readouterr()
    code = cli_main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err[:2000]
    assert len(err) < 700, err[:2000]  # values are quoted short, whatever their size
    for part in expected:
        assert part in err, f"{part!r} not in {err!r}"
    assert manifests(tmp_path) == before  # nothing newly marked finished
    assert not (tmp_path / "pickle_ran").exists()  # no payload ran


def test_a_bad_setting_under_force_keeps_a_finished_ppo_and_its_checkpoints(tmp_path, capsys, monkeypatch):
    """--force discards an earlier run's checkpoints only once the policy, reward model and data loaded."""
    monkeypatch.chdir(tmp_path)
    finished(tmp_path, ["sft", "reward", "rl"])
    step = tmp_path / "runs" / "t" / "rl" / "checkpoints" / "step-2"
    step.mkdir(parents=True)
    assert cli_main(["rl", "--force", *exp(tmp_path, "rl.start_from=fulll")]) == 2
    assert "'fulll' is not an SFT variant" in capsys.readouterr().err
    assert step.is_dir() and (tmp_path / "runs" / "t" / "rl" / "manifest.json").is_file()


def test_run_without_reward_data_fails_before_any_stage(tmp_path, capsys):
    import yaml

    from rlhf.cli import main

    from .conftest import small_raw

    raw = small_raw(tmp_path)
    raw["reward"] = {**raw["reward"], "data": {"source": None}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'reward.data.source' is not set" in err[0]
    assert not (tmp_path / "runs" / "t" / "prompt").exists()  # nothing ran


def test_cli_config_error_exits_2_with_one_line(tmp_path, capsys):
    path = write(tmp_path, {"prompt": {"batch_size": -1}})
    assert cli_main(["prompt", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "prompt.batch_size" in err and "Traceback" not in err


def test_a_bad_compile_decoding_value_exits_2_naming_the_key(tmp_path, capsys):
    assert cli_main(["run", str(write(tmp_path, {})), "model.compile_decoding=maybe"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config key 'model.compile_decoding': expected bool, got 'maybe'" in err


def test_a_negative_nll_coef_exits_2_naming_the_key(tmp_path, capsys):
    args = ["rl.algorithm=dpo", "rl.group_size=2", "rl.toxic_share=null", "rl.preference.nll_coef=-1"]
    assert cli_main(["run", str(write(tmp_path, {})), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config key 'rl.preference.nll_coef': value -1.0 must be >= 0" in err and "Traceback" not in err


def test_cli_unknown_stage(capsys, tmp_path):
    assert cli_main(["frobnicate", str(write(tmp_path, {}))]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["report", "/nonexistent/run"], "run directory not found: /nonexistent/run"),
    (["report"], "usage: rlhf report RUN_DIR"),
    (["estimate"], "usage: rlhf estimate CONFIG"),
    (["tinyworld"], "usage: rlhf tinyworld --out DIR"),
    (["prompt"], "usage: rlhf prompt CONFIG"),
])
def test_cli_usage_errors_exit_2_with_one_line(argv, message, capsys):
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


@pytest.mark.parametrize("command, shows", [
    ([], ["rlhf run [CONFIG]", "rlhf STAGE CONFIG", "rlhf config [CONFIG]", "rlhf tinyworld --out DIR"]),
    (["--help"], ["rlhf report RUN_DIR", "exits with code 2"]),
    (["rl", "--help"], ["usage: rlhf rl", "Stage 4: RL", "--resume", "--force"]),
    (["prompt", "-h"], ["usage: rlhf prompt", "Stage 1"]),
    (["run", "--help"], ["usage: rlhf run", "--resume"]),
    (["config", "--help"], ["usage: rlhf config", "--keys"]),
    (["estimate", "--help"], ["--prompt-tokens"]),
    (["tinyworld", "--help"], ["--out", "--seed"]),
])
def test_every_command_explains_itself(command, shows, capsys):
    assert cli_main(command) == 0
    out = capsys.readouterr().out
    for part in shows:
        assert part in out, part
    if command[:1] == ["prompt"]:
        assert "--resume" not in out  # the prompt stage keeps no checkpoints


def test_config_prints_the_resolved_config_and_its_keys(tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"seed": 7, "rl": {"kl": {"target": 3.0}}}))
    assert cli_main(["config", str(path), "rl.steps=9"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["seed"] == 7 and printed["rl"]["steps"] == 9 and printed["run_name"] == "exp"
    assert printed["rl"]["kl"]["target"] == 3.0 and printed["evaluate"]["n_samples"] == 25  # defaults filled in
    assert cli_main(["config", str(path), "--keys", "rl.kl"]) == 0
    assert "rl.kl.target: float = 6.0  (here: 3.0)" in capsys.readouterr().out
    assert cli_main(["config", "--keys", "evaluate.n_samples"]) == 0  # configs/tiny.yaml by default
    assert capsys.readouterr().out.startswith("evaluate.n_samples: int = 25\n")


@pytest.mark.parametrize("argv, message", [
    (["prompt", "x.yaml", "--resume"], "option --resume does not apply to `rlhf prompt` (only to: run, sft, rl)"),
    (["config", "--out", "x"], "option --out does not apply to `rlhf config` (only to: tinyworld, compare)"),
    (["--force", "run"], "the command comes first: unknown command '--force'"),
    (["sft", "x.yaml", "--bogus"], "unrecognized arguments: --bogus (see rlhf sft --help)"),
])
def test_options_are_checked_per_command(argv, message, capsys):
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_a_nan_in_the_generations_is_refused_by_the_report_naming_file_row_and_field(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path).run_dir
    path = run / "evaluate" / "generations.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[2]["scores"]["profanity_check"]["after"]["samples"][1] = float("nan")
    path.write_text("".join(json.dumps(r) + "\n" for r in records))  # json writes NaN, and reads it back
    assert cli_main(["report", str(run)]) == 2
    assert capsys.readouterr().err == (f"error: {path} row 3: field scores.profanity_check.after.samples[1] is nan, not "
                                       f"a finite number: re-run the evaluate stage (with --force)\n")


def test_one_writer_per_run_folder_and_a_killed_writer_never_blocks(tmp_path):
    """Two real processes: the holder of a run folder's lock, and a CLI that must refuse naming it."""
    import signal
    import subprocess
    import sys

    argv = exp(tmp_path, "prompt.settings=[{name: greedy}]", "prompt.n_dialogues=2")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from rlhf.config import load_config\n"
        "from rlhf.rundir import run_lock\n"
        f"with run_lock(load_config({argv[0]!r})):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        second = subprocess.run([sys.executable, "-m", "rlhf.cli", "prompt", *argv], capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2
        lines = second.stderr.splitlines()
        assert len(lines) == 1 and f"is in use by pid {holder.pid} (`-c`)" in lines[0], second.stderr
        assert not (tmp_path / "runs" / "t" / "prompt").exists()  # the refused process wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert cli_main(["prompt", *argv]) == 0  # the lock died with its holder
