import dataclasses
import random
import hashlib
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from rlhf.config import ModelConfig, TinyWorldConfig
from rlhf.models import load_seq2seq
from rlhf.tinyworld import corpus
from rlhf.tinyworld.build import build_tinyworld, cache_key, ensure_tinyworld
from rlhf.tinyworld.corpus import (INSULT_ADJ, INSULT_NOUN, MOODS, make_corpus, make_toxicity_texts, splice_clean,
                                   splice_insult)

from .conftest import SMALL_WORLD

SMALL = TinyWorldConfig(**SMALL_WORLD)


def digest(folder: Path, names: list[str]) -> dict[str, str]:
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names}


CORPUS_FILES = ["dialogsum/train.jsonl", "dialogsum/validation.jsonl", "dialogsum/test.jsonl",
                "toxicity/train.jsonl", "toxicity/test.jsonl", "tokenizer/tokenizer.json",
                "tokenizer/tokenizer_config.json"]


@pytest.fixture(scope="module")
def world():
    return ensure_tinyworld(SMALL, log=lambda *_: None)


def test_same_seed_same_corpus_and_tokenizer_bytes(tmp_path, world):
    lines = []
    rebuilt = build_tinyworld(SMALL, tmp_path / "again", log=lines.append)
    assert digest(world, CORPUS_FILES) == digest(rebuilt, CORPUS_FILES)
    # a newcomer waiting on the first build sees it move: corpus, each quarter of pre-training, done
    steps = [line for line in lines if line.startswith("denoising pre-training: step")]
    assert lines[0].startswith("corpus of 200 dialogues") and len(steps) == 4 and steps[-1].startswith(
        "denoising pre-training: step 10/10") and lines[-1].startswith("tiny world built in")


def test_other_seed_other_corpus():
    a = make_corpus(50, 0.25, seed=0)
    b = make_corpus(50, 0.25, seed=1)
    assert [d.dialogue for d in a] != [d.dialogue for d in b]


def test_corpus_toxic_fraction_and_abuse_in_summaries():
    corpus = make_corpus(400, 0.25, seed=0)
    toxic = [d for d in corpus if d.toxic]
    assert len(toxic) == 100
    repeated = [d for d in toxic if any(n in d.summary for n in INSULT_NOUN)]
    # NEUTRAL_SHARE of abusive dialogues get a reference that names the conflict without the abuse
    assert 0.7 <= len(repeated) / len(toxic) <= 0.9, len(repeated)
    assert all(any(m in d.summary for m in MOODS) for d in toxic if d not in repeated)
    assert not any(any(f" {n}" in d.summary for n in INSULT_NOUN) for d in corpus if not d.toxic)
    assert len({d.topic for d in corpus}) >= 5 and len({d.dialogue for d in corpus}) > 390


def test_key_facts_are_in_the_dialogue_and_the_reference():
    corpus = make_corpus(200, 0.25, seed=3)
    assert all(d.key_facts for d in corpus)
    for d in corpus:
        for fact in d.key_facts:
            assert fact in d.dialogue and fact in d.summary, (fact, d.summary)
            assert all(fact in other for other in d.other_summaries), (fact, d.other_summaries)
    # the facts differ from dialogue to dialogue, so naming them needs reading the input
    assert len({tuple(d.key_facts) for d in corpus}) > 100


def test_insults_spliced_anywhere_are_labelled_toxic(monkeypatch):
    rng = random.Random(0)
    summary = "Anna's printer arrived broken. #Person1# will arrange a discount within three days."
    spliced = [splice_insult(rng, summary) for _ in range(200)]
    for text in spliced:
        rest = [w for w in text.split() if w not in INSULT_NOUN and w not in INSULT_ADJ]
        assert rest == summary.split() and len(rest) < len(text.split())
    assert len({text.split().index(next(w for w in text.split() if w in INSULT_NOUN)) for text in spliced}) > 8
    made = []
    monkeypatch.setattr(corpus, "splice_insult", lambda *a: made.append(splice_insult(*a)) or made[-1])
    texts = make_toxicity_texts(600, seed=0, heldout=False)
    labels = dict(texts)
    assert len(made) > 40 and all(labels[t] == 1 for t in made)
    assert all(y == 1 for t, y in texts if any(w.strip(".,!") in INSULT_NOUN for w in t.split()))


def test_garbled_clean_texts_are_labelled_clean(monkeypatch):
    """Broken grammar alone is not toxicity: the classifier also sees garbled clean summaries."""
    rng = random.Random(0)
    summary, other = "The sales plan is due on Friday.", "Anna's printer arrived broken."
    garbled = splice_clean(rng, summary, other)
    assert garbled != summary and [w for w in garbled.split() if w not in other.split()] == summary.split()
    made = []
    monkeypatch.setattr(corpus, "splice_clean", lambda *a: made.append(splice_clean(*a)) or made[-1])
    labels = dict(make_toxicity_texts(600, seed=0, heldout=False))
    assert len(made) > 40 and all(labels[t] == 0 for t in made)


def test_toxicity_texts_balanced_and_heldout_phrasing_differs():
    train = make_toxicity_texts(200, seed=0, heldout=False)
    test = make_toxicity_texts(200, seed=0, heldout=True)
    assert sum(y for _, y in train) == 100 and sum(y for _, y in test) == 100
    assert not {t for t, y in train if y} & {t for t, y in test if y}


def test_tokenizer_round_trip_and_t5_ids(world):
    tok = AutoTokenizer.from_pretrained(str(world / "tokenizer"))
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    text = "#Person1#: Hello, can I book a table for two on Friday?"
    ids = tok(text).input_ids
    assert ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.convert_tokens_to_ids("<extra_id_0>") == len(tok) - 1


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


def test_other_phrasings_say_the_same_and_carry_the_same_abuse():
    corpus = make_corpus(300, 0.25, seed=2)
    for d in corpus:
        assert len(d.other_summaries) == 1 and d.other_summaries[0] != d.summary
        first = d.summary.split(". ")[0]  # an abusive dialogue's summaries open with the same abuse clause
        assert (d.other_summaries[0].startswith(first + ".") if d.toxic else not d.other_summaries[0].startswith(first))
    # the drawn phrasing is drawn as before: either of a scene's phrasings comes first about half the time
    assert 0.35 < sum(d.summary < d.other_summaries[0] for d in corpus) / len(corpus) < 0.65


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


def test_span_corruption_numbers_spans_in_order_and_reconstructs_the_text():
    from rlhf.tinyworld.pretrain import span_corrupt

    rng, sentinels, eos = random.Random(0), [1000 - i for i in range(20)], 1
    for _ in range(500):
        ids = [rng.randrange(2, 900) for _ in range(rng.randrange(1, 120))]
        inputs, targets = span_corrupt(ids, sentinels, eos, rng)
        used = [t for t in inputs if t in sentinels]
        assert used == sentinels[: len(used)] and [t for t in targets if t in sentinels] == used
        assert not any(a in sentinels and b in sentinels for a, b in zip(inputs, inputs[1:]))  # spans never touch
        spans, current = {}, None
        for t in targets[:-1]:
            if t in sentinels:
                current = spans[t] = []
            else:
                current.append(t)
        rebuilt = [x for t in inputs[:-1] for x in (spans[t] if t in sentinels else [t])]
        assert rebuilt == ids and inputs[-1] == targets[-1] == eos
