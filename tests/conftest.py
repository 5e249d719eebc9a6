"""Shared fixtures: a small tiny world built once per test session, in a temp cache."""

from __future__ import annotations

import json
import os

import pytest

from rlhf.config import config_from_dict
from rlhf.runtime import flush_denormals

flush_denormals()  # as the CLI does by default, before any parallel torch op creates worker threads

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
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    yield


# Stage sections sized for seconds-long runs on the small world.
SMALL_STAGES = {
    "sft": {"variants": [{"name": "lora", "method": "lora", "learning_rate": 1e-2}],
            "lora": {"r": 4, "alpha": 8, "target_modules": ["q", "v"]}, "max_steps": 4, "batch_size": 8,
            "eval_steps": 2, "save_steps": 2, "early_stopping_patience": None, "eval_n_dialogues": 4,
            "max_new_tokens": 8},
    "reward": {"model": "tinyworld", "from_scratch": True, "learning_rate": 2e-3, "epochs": 1, "batch_size": 16,
               "eval_steps": 10, "data": {"source": "tinyworld"}},
    "ppo": {"start_from": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q", "v"]},
            "learning_rate": 1e-3, "steps": 3, "batch_size": 8, "mini_batch_size": 4, "ppo_epochs": 1,
            "max_new_tokens": 8, "save_steps": 2, "sample_steps": 2, "eval_n_dialogues": 6},
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
