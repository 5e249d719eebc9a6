import pytest

from rlhf.config import DataConfig
from rlhf.data import load_splits
from rlhf.errors import UserError

from .conftest import write_jsonl


def rows(n, prefix="d"):
    return [{"dialogue": f"{prefix}{i}: " + "word " * (i % 7 + 1), "summary": f"s{i}"} for i in range(n)]


def test_folder_with_own_splits_is_used_as_is(tmp_path):
    for split, n in (("train", 20), ("validation", 5), ("test", 4)):
        write_jsonl(tmp_path / f"{split}.jsonl", rows(n, split))
    splits = load_splits(DataConfig(source=str(tmp_path)), seed=0)
    assert {k: len(v) for k, v in splits.items()} == {"train": 20, "validation": 5, "test": 4}
    assert splits["test"][0]["dialogue"].startswith("test0")


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "json", "parquet"])
def test_single_file_split_deterministically_by_seed(tmp_path, fmt):
    import datasets

    path = tmp_path / f"data.{fmt}"
    ds = datasets.Dataset.from_list(rows(50))
    {"csv": ds.to_csv, "jsonl": ds.to_json, "json": ds.to_json, "parquet": ds.to_parquet}[fmt](str(path))
    cfg = DataConfig(source=str(path), validation_fraction=0.2, test_fraction=0.2)
    a, b, c = load_splits(cfg, seed=0), load_splits(cfg, seed=0), load_splits(cfg, seed=1)
    assert a["test"]["dialogue"] == b["test"]["dialogue"] != c["test"]["dialogue"]
    assert len(a["test"]) == 10 and len(a["validation"]) == 8 and len(a["train"]) == 32
    assert not set(a["test"]["dialogue"]) & set(a["train"]["dialogue"])


def test_custom_columns_and_filters_and_cap(tmp_path):
    items = [{"conv": "x" * n, "abstract": "s"} for n in range(1, 61)]
    path = write_jsonl(tmp_path / "d.jsonl", items)
    cfg = DataConfig(source=str(path), dialogue_column="conv", summary_column="abstract",
                     min_chars=10, max_chars=40, max_samples=5, validation_fraction=0.2, test_fraction=0.2)
    splits = load_splits(cfg, seed=0)
    for ds in splits.values():
        assert all(10 <= len(d) <= 40 for d in ds["dialogue"])
        assert len(ds) <= 5 and ds.column_names[:2] == ["dialogue", "summary"]


def test_missing_column_names_it(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "summary": "b"}] * 10)
    with pytest.raises(UserError, match=r"no column 'dialogue' \(columns: text, summary\)"):
        load_splits(DataConfig(source=str(path)), seed=0)


def test_empty_after_filtering(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", rows(30))
    with pytest.raises(UserError, match="empty after filtering"):
        load_splits(DataConfig(source=str(path), min_chars=10_000), seed=0)


@pytest.mark.parametrize("n, fractions, message", [
    (5, {"test_fraction": 0.9}, r"cutting the 'test' split from 5 'train' rows with data.test_fraction=0.9 leaves 0 "
                                r"for 'train' and 5 for 'test'"),
    (4, {"test_fraction": 0.25, "validation_fraction": 0.7},  # test takes 1 of 4, validation then all 3 left
     r"cutting the 'validation' split from 3 'train' rows with data.validation_fraction=0.7 leaves 0 for 'train'"),
])
def test_a_fraction_that_leaves_a_split_empty_names_source_split_and_key(tmp_path, n, fractions, message):
    path = write_jsonl(tmp_path / "d.jsonl", rows(n))
    with pytest.raises(UserError, match=rf"data source {path}: {message}"):
        load_splits(DataConfig(source=path, **fractions), seed=0)


def test_small_data_cuts_splits_while_each_keeps_a_row(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", rows(5))
    splits = load_splits(DataConfig(source=path, test_fraction=0.5, validation_fraction=0.5), seed=0)
    assert {k: len(v) for k, v in splits.items()} == {"train": 1, "validation": 1, "test": 3}


def test_unreadable_and_missing_sources(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"dialogue": "a", "summary": "b"}\n{not json\n')
    with pytest.raises(UserError, match=r"bad.jsonl line 2 is not one JSON value \(Expecting property name"):
        load_splits(DataConfig(source=str(bad)), seed=0)
    whole = tmp_path / "bad.json"
    whole.write_text("{not json\n")
    with pytest.raises(UserError, match="could not read data source"):
        load_splits(DataConfig(source=str(whole)), seed=0)
    assert "Failed to load JSON" not in capsys.readouterr().err  # datasets' own log line is not printed before ours
    with pytest.raises(UserError, match="data source not found"):
        load_splits(DataConfig(source=str(tmp_path / "nope.jsonl")), seed=0)
    other = tmp_path / "d.txt"
    other.write_text("x")
    with pytest.raises(UserError, match="unsupported file type"):
        load_splits(DataConfig(source=str(other)), seed=0)


def test_hub_layout_groups_a_dialogue_and_its_references(tmp_path):
    """The Hub's DialogSum test split repeats each dialogue once per reference summary."""
    from rlhf.data import load_eval_dialogues

    write_jsonl(tmp_path / "train.jsonl", rows(6))
    write_jsonl(tmp_path / "validation.jsonl", rows(3))
    test = [{"id": f"t{i}_{j}", "dialogue": f"dialogue {i}", "summary": f"ref {i}.{j}"} for i in range(4) for j in range(3)]
    write_jsonl(tmp_path / "test.jsonl", test)
    dialogues = load_eval_dialogues(DataConfig(source=str(tmp_path)), seed=0)
    assert [d.dialogue for d in dialogues] == [f"dialogue {i}" for i in range(4)]
    assert dialogues[2].references == ["ref 2.0", "ref 2.1", "ref 2.2"] and dialogues[2].id == "t2_0"
    assert len(load_eval_dialogues(DataConfig(source=str(tmp_path)), seed=0, n=3)) == 3


def test_one_row_with_numbered_summaries(tmp_path):
    """DialogSum's own test file: one row per dialogue, references in summary1..summary3."""
    from rlhf.data import load_eval_dialogues

    write_jsonl(tmp_path / "train.jsonl", rows(6))
    write_jsonl(tmp_path / "validation.jsonl", rows(3))
    write_jsonl(tmp_path / "test.jsonl", [{"fname": f"test_{i}", "dialogue": f"d{i}", "summary1": f"a{i}",
                                            "summary2": f"b{i}", "summary3": f"c{i}"} for i in range(3)])
    splits = load_splits(DataConfig(source=str(tmp_path)), seed=0)
    assert splits["test"][1]["summary"] == "a1"
    dialogues = load_eval_dialogues(DataConfig(source=str(tmp_path)), seed=0)
    assert dialogues[1].references == ["a1", "b1", "c1"] and dialogues[1].id == "test_1"


def test_toxic_flag_and_key_facts_are_carried(tmp_path):
    from rlhf.data import load_eval_dialogues

    write_jsonl(tmp_path / "train.jsonl", rows(6))
    write_jsonl(tmp_path / "validation.jsonl", rows(3))
    write_jsonl(tmp_path / "test.jsonl", [{"dialogue": "a", "summary": "s", "toxic": True, "key_facts": ["x"]},
                                           {"dialogue": "b", "summary": "t", "toxic": False, "key_facts": ["y", "z"]}])
    cfg = DataConfig(source=str(tmp_path), toxic_column="toxic", key_facts_column="key_facts")
    dialogues = load_eval_dialogues(cfg, seed=0)
    assert [(d.toxic, d.key_facts) for d in dialogues] == [(True, ["x"]), (False, ["y", "z"])]
    with pytest.raises(UserError, match="no column 'abusive'"):
        load_eval_dialogues(DataConfig(source=str(tmp_path), toxic_column="abusive"), seed=0)
    write_jsonl(tmp_path / "test.jsonl", [{"dialogue": "a", "summary": "s", "toxic": "yes", "key_facts": ["x"]}])
    with pytest.raises(UserError, match="column 'toxic' has a non-boolean value 'yes'"):
        load_eval_dialogues(cfg, seed=0)


def test_toxic_flags_of_the_training_split_are_booleans_or_one_line(tmp_path):
    from rlhf.data import toxic_flags

    write_jsonl(tmp_path / "train.jsonl", [{**r, "toxic": i % 2 == 0} for i, r in enumerate(rows(4))])
    write_jsonl(tmp_path / "validation.jsonl", rows(2))
    write_jsonl(tmp_path / "test.jsonl", rows(2))
    cfg = DataConfig(source=str(tmp_path), toxic_column="toxic")
    train = load_splits(cfg, seed=0)["train"]
    assert toxic_flags(train, cfg, "train") == [True, False, True, False]
    with pytest.raises(UserError, match="split 'train' has no column 'abusive'"):
        toxic_flags(train, DataConfig(source=str(tmp_path), toxic_column="abusive"), "train")
    write_jsonl(tmp_path / "train.jsonl", [{**r, "toxic": 1} for r in rows(4)])
    with pytest.raises(UserError, match=r"column 'toxic' has a non-boolean value 1 \(split 'train', row 0\)"):
        toxic_flags(load_splits(cfg, seed=0)["train"], cfg, "train")


def hub_rows(n_dialogues, refs=3):
    """The Hub's DialogSum layout: each dialogue on ``refs`` rows, one per reference summary."""
    return [{"dialogue": f"#Person1#: topic {i} talk.", "summary": f"ref {k} of {i}"}
            for i in range(n_dialogues) for k in range(refs)]


def test_cut_splits_keep_every_row_of_a_dialogue_on_one_side(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", hub_rows(60))
    cfg = DataConfig(source=path)
    splits, again, other = load_splits(cfg, seed=42), load_splits(cfg, seed=42), load_splits(cfg, seed=1)
    seen = {name: set(ds["dialogue"]) for name, ds in splits.items()}
    assert {name: len(d) for name, d in seen.items()} == {"train": 48, "validation": 6, "test": 6}
    assert not seen["test"] & seen["train"] and not seen["validation"] & (seen["train"] | seen["test"])
    assert {name: len(ds) for name, ds in splits.items()} == {"train": 144, "validation": 18, "test": 18}
    assert splits["test"]["summary"] == again["test"]["summary"] != other["test"]["summary"]
    with pytest.raises(UserError, match=r"cutting the 'test' split from 2 distinct 'train' dialogues \(6 rows\) "
                                        r"with data.test_fraction=0.9 leaves 0 for 'train'"):
        load_splits(DataConfig(source=write_jsonl(tmp_path / "e.jsonl", hub_rows(2)), test_fraction=0.9), seed=0)


def test_cut_of_one_row_per_dialogue_is_the_row_cut():
    import datasets

    from rlhf.data import cut_split

    ds = datasets.Dataset.from_list(rows(50))
    grouped = cut_split(ds, "test", 0.2, 3, "w", "k", group_column="dialogue")
    plain = cut_split(ds, "test", 0.2, 3, "w", "k")
    assert [g["dialogue"] for g in grouped] == [p["dialogue"] for p in plain]


def test_max_samples_caps_dialogues_with_all_their_rows(tmp_path):
    from rlhf.data import load_eval_dialogues

    write_jsonl(tmp_path / "train.jsonl", rows(6))
    write_jsonl(tmp_path / "validation.jsonl", rows(3))
    write_jsonl(tmp_path / "test.jsonl", hub_rows(4))
    cfg = DataConfig(source=str(tmp_path), max_samples=2)
    splits = load_splits(cfg, seed=0)
    assert len(splits["test"]) == 6 and splits["train"]["dialogue"] == [r["dialogue"] for r in rows(2)]
    assert [d.references for d in load_eval_dialogues(cfg, seed=0)] == [[f"ref {k} of {i}" for k in range(3)]
                                                                        for i in range(2)]
