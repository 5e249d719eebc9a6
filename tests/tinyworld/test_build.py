import dataclasses
import hashlib
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from rlhf.config import ModelConfig, TinyWorldConfig
from rlhf.errors import UserError
from rlhf.models import load_seq2seq
from rlhf.tinyworld.build import build_tinyworld, cache_key, ensure_tinyworld

from ..conftest import SMALL_WORLD

SMALL = TinyWorldConfig(**SMALL_WORLD)


def digest(folder: Path, names: list[str]) -> dict[str, str]:
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names}


CORPUS_FILES = ["dialogsum/train.jsonl", "dialogsum/validation.jsonl", "dialogsum/test.jsonl",
                "toxicity/train.jsonl", "toxicity/test.jsonl", "tokenizer/tokenizer.json",
                "tokenizer/tokenizer_config.json"]


def test_same_seed_same_corpus_and_tokenizer_bytes(tmp_path, world):
    lines = []
    rebuilt = build_tinyworld(SMALL, tmp_path / "again", log=lines.append)
    assert digest(world, CORPUS_FILES) == digest(rebuilt, CORPUS_FILES)
    # a newcomer waiting on the first build sees it move: corpus, each quarter of pre-training, done
    steps = [line for line in lines if line.startswith("denoising pre-training: step")]
    assert lines[0].startswith("corpus of 200 dialogues") and len(steps) == 4 and steps[-1].startswith(
        "denoising pre-training: step 10/10") and lines[-1].startswith("tiny world built in")


def test_base_model_loads_through_from_pretrained(world):
    model = load_seq2seq(ModelConfig(name=str(world / "base_model")))
    assert model.config.is_encoder_decoder and not model.training
    assert model.config.vocab_size == len(AutoTokenizer.from_pretrained(str(world / "base_model")))


def test_cache_is_keyed_by_settings_and_reused(world):
    assert ensure_tinyworld(SMALL, log=lambda *_: pytest.fail("rebuilt")) == world
    other = dataclasses.replace(SMALL, seed=1)
    assert cache_key(other) != cache_key(SMALL)
    assert cache_key(dataclasses.replace(SMALL, cache_dir="/elsewhere")) == cache_key(SMALL)


def test_cache_key_follows_the_worlds_design(tmp_path, monkeypatch):
    import rlhf.tinyworld.build as build

    copies = []
    for path in build.DESIGN_FILES:
        copies.append(tmp_path / path.name)
        copies[-1].write_bytes(path.read_bytes())
    assert build.design_digest(tuple(copies)) == build.design_digest()
    copies[1].write_bytes(copies[1].read_bytes() + b"\n# one more comment\n")  # corpus.py edited: a new world
    assert build.design_digest(tuple(copies)) != build.design_digest()
    key = cache_key(SMALL)
    monkeypatch.setitem(build.TEMPLATES, "another", "Say it: {dialogue}")  # a template the tokenizer would learn
    assert cache_key(SMALL) != key


def test_a_build_that_another_process_finished_first_is_kept(tmp_path, monkeypatch):
    import rlhf.tinyworld.build as build

    tw = dataclasses.replace(SMALL, cache_dir=str(tmp_path))
    folder = build.cache_root(tw) / cache_key(tw)

    def racing_build(tw, out, log):  # the other process finishes while this one builds
        folder.mkdir(parents=True)
        (folder / "manifest.json").write_text("{}")
        (folder / "theirs").write_text("x")
        Path(out).mkdir(parents=True)
        (Path(out) / "manifest.json").write_text("{}")

    monkeypatch.setattr(build, "build_tinyworld", racing_build)
    assert ensure_tinyworld(tw, log=lambda *_: None) == folder
    assert (folder / "theirs").is_file() and sorted(p.name for p in folder.parent.iterdir()) == [folder.name]


def test_no_held_out_toxicity_text_is_also_a_training_text(world):
    import json

    rows = {split: [json.loads(line)["text"] for line in (world / "toxicity" / f"{split}.jsonl").open()]
            for split in ("train", "test")}
    assert rows["test"] and not set(rows["test"]) & set(rows["train"])


def test_test_split_has_every_phrasing_as_a_reference_and_nothing_training_has(world):
    import json

    from rlhf.config import DataConfig
    from rlhf.data import load_eval_dialogues

    rows = {split: [json.loads(line) for line in (world / "dialogsum" / f"{split}.jsonl").open()]
            for split in ("train", "validation", "test")}
    for split in ("train", "validation"):  # one row per dialogue, as drawn
        assert all("other_summaries" not in r for r in rows[split])
    dialogues = load_eval_dialogues(DataConfig(source=str(world / "dialogsum"), toxic_column="toxic",
                                               key_facts_column="key_facts"), seed=0)
    assert len(rows["test"]) == 2 * len(dialogues) and all(len(d.references) == 2 for d in dialogues)
    assert not {d.dialogue for d in dialogues} & {r["dialogue"] for s in ("train", "validation") for r in rows[s]}


def test_a_build_replaces_only_its_own_kind_and_clears_what_a_killed_build_left(tmp_path, world):
    import fcntl
    import os
    import shutil

    from rlhf.tinyworld.build import is_build, replace_build

    out = tmp_path / "w"
    shutil.copytree(world, out)
    assert is_build(out) and not is_build(tmp_path)
    (tmp_path / ".w.k1ll3d.tmp" / "dialogsum").mkdir(parents=True)  # a build killed inside atomic_dir
    lines = []
    replace_build(SMALL, out, log=lines.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"] and is_build(out)
    assert lines[0] == f"removing {tmp_path / '.w.k1ll3d.tmp'}, left by a build that did not finish"
    (out / "notes.txt").write_text("mine")  # the user's file: the folder is no longer only a build
    assert not is_build(out)
    with pytest.raises(UserError, match=r"is not empty and not a tiny world built here"):
        replace_build(SMALL, out, log=lines.append)
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    (out / "manifest.json").write_text('{"stage": "sft", "status": "finished"}')  # a stage's manifest, same name
    assert not is_build(out)
    fd = os.open(tmp_path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another build writing beside it
    try:
        with pytest.raises(UserError, match=r"another build is writing in"):
            replace_build(SMALL, tmp_path / "v", log=lines.append)
    finally:
        os.close(fd)
