"""Shared fixtures: a small tiny world built once per test session, in a temp cache."""

from __future__ import annotations

import os

import pytest

from rlhf.config import config_from_dict

# Small enough to build in seconds; the default experiment uses the full-size defaults.
SMALL_WORLD = {
    "seed": 0, "n_dialogues": 200, "n_toxicity_texts": 200, "vocab_size": 600, "d_model": 32,
    "d_ff": 64, "num_layers": 1, "num_heads": 2, "pretrain_steps": 10, "pretrain_batch_size": 8,
}


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    os.environ["RLHF_CACHE"] = str(tmp_path_factory.mktemp("rlhf_cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    yield


def small_raw(tmp_path, **sections) -> dict:
    raw = {
        "run_name": "t", "output_dir": str(tmp_path / "runs"), "seed": 1,
        "tinyworld": dict(SMALL_WORLD), "model": {"name": "tinyworld", "max_input_length": 256},
        "data": {"source": "tinyworld"},
        "prompt": {"n_dialogues": 6, "shots": [0, 1], "max_new_tokens": 8, "batch_size": 4,
                   "n_examples_shown": 2,
                   "settings": [{"name": "greedy"}, {"name": "sample", "do_sample": True, "top_p": 0.9},
                                {"name": "beams_2", "num_beams": 2}]},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


@pytest.fixture
def small_config(tmp_path):
    return config_from_dict(small_raw(tmp_path))
