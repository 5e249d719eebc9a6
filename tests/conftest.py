"""What every test shares: a small tiny world (built once per session in a temp cache), small stage
settings (:func:`small_raw`), a finished small run (:func:`finished_run`) and a trained reward model."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import yaml

from rlhf.config import config_from_dict
from rlhf.runtime import flush_denormals

flush_denormals()  # as the CLI does by default, before any parallel torch op creates worker threads
# No test reaches a hub. Set before any test module imports huggingface_hub, which reads these once: set later,
# a hub id that is not a local folder waited ~20 s for the network before failing.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Small enough to build in seconds; the default experiment uses the full-size defaults.
SMALL_WORLD = {
    "seed": 0, "n_dialogues": 200, "n_toxicity_texts": 200, "vocab_size": 600, "d_model": 32,
    "d_ff": 64, "num_layers": 1, "num_heads": 2, "pretrain_steps": 10, "pretrain_batch_size": 8,
}


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    from rlhf.runtime import quiet_known_warnings

    quiet_known_warnings()  # the CLI's filter, so test output shows only warnings worth reading
    os.environ["RLHF_CACHE"] = str(tmp_path_factory.mktemp("rlhf_cache"))
    yield


# Stage sections sized for seconds-long runs on the small world.
SMALL_STAGES = {
    "sft": {"variants": [{"name": "lora", "method": "lora", "learning_rate": 1e-2}],
            "lora": {"r": 4, "alpha": 8, "target_modules": ["q", "v"]}, "max_steps": 4, "batch_size": 8,
            "eval_steps": 2, "save_steps": 2, "early_stopping_patience": None, "eval_n_dialogues": 4,
            "max_new_tokens": 8},
    "reward": {"model": "tinyworld", "from_scratch": True, "learning_rate": 2e-3, "epochs": 1, "batch_size": 16,
               "eval_steps": 10, "data": {"source": "tinyworld"}},
    "rl": {"start_from": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q", "v"]},
            "learning_rate": 1e-3, "steps": 3, "batch_size": 8, "mini_batch_size": 4, "epochs": 1,
            "max_new_tokens": 8, "save_steps": 2, "sample_steps": 2, "eval_n_dialogues": 6},
    "evaluate": {"n_dialogues": 8, "n_samples": 3, "bootstrap_resamples": 200},
}


def small_raw(tmp_path, **sections) -> dict:
    raw = {
        "run_name": "t", "output_dir": str(tmp_path / "runs"), "seed": 1,
        "tinyworld": dict(SMALL_WORLD), "model": {"name": "tinyworld", "max_input_length": 256},
        "data": {"source": "tinyworld", "toxic_column": "toxic", "key_facts_column": "key_facts"},
        "prompt": {"n_dialogues": 6, "shots": [0, 1], "max_new_tokens": 8, "batch_size": 4,
                   "n_examples_shown": 2,
                   "settings": [{"name": "greedy"}, {"name": "sample", "do_sample": True, "top_p": 0.9},
                                {"name": "beams_2", "num_beams": 2}]},
        **SMALL_STAGES,
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


@pytest.fixture
def small_config(tmp_path):
    return config_from_dict(small_raw(tmp_path))


def write_jsonl(path, rows) -> str:
    """Write ``rows`` as JSON lines to ``path``; returns the path as text."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def quiet(*_):
    """A ``log`` that says nothing (the tiny world's build lines)."""


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """A small tiny-world run whose sft, reward, ppo and evaluate stages finished, built once per
    session and shared by the tests that only read it (a test that changes a run works on
    :func:`copy_run`). Returns the run's resolved config."""
    from pipelines import evaluate, reward, rl, sft
    from rlhf.tinyworld.build import resolve_tinyworld

    config = resolve_tinyworld(config_from_dict(small_raw(tmp_path_factory.mktemp("finished"))), log=quiet)
    for stage in (sft, reward, rl, evaluate):
        stage.main(config)
    return config


def copy_run(config, tmp_path):
    """A copy of ``config``'s run folder under ``tmp_path`` and the config that points at it (a
    moved run folder is the same run: its stages stay finished)."""
    import dataclasses

    moved = dataclasses.replace(config, output_dir=str(tmp_path / "runs"))
    shutil.copytree(config.run_dir, moved.run_dir)
    return moved


def write(tmp_path, raw: dict, name="exp.yaml"):
    """``raw`` as a YAML config file in ``tmp_path``; returns its path."""
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


# SFT sized for seconds: both variants, so either can be resumed, compared or started from
SFT = {"variants": [{"name": "full", "method": "full", "learning_rate": 3e-3},
                    {"name": "lora", "method": "lora", "learning_rate": 1e-2}],
       "lora": {"r": 4, "alpha": 8, "target_modules": ["q", "v"]}, "max_steps": 6, "batch_size": 8,
       "eval_steps": 2, "save_steps": 2, "early_stopping_patience": None, "eval_n_dialogues": 6,
       "max_new_tokens": 8, "max_target_length": 32}


def sft_config(tmp_path, **sft):
    sft = {**SFT, **sft}
    raw = small_raw(tmp_path, sft=sft, rl={"start_from": sft["variants"][0]["name"]})  # a variant the config has
    from rlhf.tinyworld.build import resolve_tinyworld

    return resolve_tinyworld(config_from_dict(raw), log=quiet)


class Interrupt(Exception):
    """Raised by :func:`stop_at` to end a training run mid-way (a crash the resume must recover from)."""


def stop_at(step: int):
    """A Trainer callback that raises :class:`Interrupt` once training reaches ``step``."""
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise Interrupt

    return StopAt()


# A reward classifier trained long enough to separate the small world's texts
REWARD = {"model": "tinyworld", "from_scratch": True, "learning_rate": 2e-3, "epochs": 6, "batch_size": 16,
          "eval_steps": 10, "data": {"source": "tinyworld"}}


@pytest.fixture(scope="session")
def trained_reward(tmp_path_factory):
    """(config, metrics) of a finished reward stage trained with :data:`REWARD`, once per session."""
    from pipelines import reward
    from rlhf.tinyworld.build import resolve_tinyworld

    config = resolve_tinyworld(config_from_dict(small_raw(tmp_path_factory.mktemp("reward"), reward=REWARD)), log=quiet)
    return config, reward.main(config)
