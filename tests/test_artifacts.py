import json

import pytest

from rlhf.artifacts import (
    atomic_dir,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    ensure_dir,
    markdown_table,
    read_jsonl,
    remove_leftovers,
)
from rlhf.errors import UserError


def test_atomic_writes_leave_no_temp_files(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"a": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    assert json.loads((tmp_path / "a.json").read_text()) == {"a": 1}


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_beside_it(tmp_path):
    atomic_write_text(tmp_path / "m.json", "old")

    class Unwritable:
        def __str__(self):
            raise RuntimeError("disk gone")

    with pytest.raises(TypeError):
        atomic_write_text(tmp_path / "m.json", Unwritable())  # f.write refuses a non-str
    assert (tmp_path / "m.json").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_atomic_dir_keeps_old_folder_on_failure(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("killed")
    assert (target / "weights").read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("newer")
    assert (target / "weights").read_text() == "newer" and [p.name for p in tmp_path.iterdir()] == ["model"]


def test_jsonl_and_csv_round_trip(tmp_path):
    rows = [{"a": 1, "text": "café"}, {"a": 2, "b": None}]
    atomic_write_jsonl(tmp_path / "r.jsonl", rows)
    assert read_jsonl(tmp_path / "r.jsonl") == rows
    atomic_write_csv(tmp_path / "r.csv", rows)
    assert (tmp_path / "r.csv").read_text().splitlines() == ["a,text,b", "1,café,", "2,,"]


def test_leftovers_of_a_killed_write_are_removed_and_named(tmp_path):
    (tmp_path / ".model.x1.tmp").mkdir()
    (tmp_path / ".metrics.json.y2.tmp").write_text("half")
    (tmp_path / ".model.old").mkdir()
    (tmp_path / "model").mkdir()
    assert remove_leftovers(tmp_path) == [".metrics.json.y2.tmp", ".model.old", ".model.x1.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert remove_leftovers(tmp_path / "absent") == []


def test_ensure_dir_names_a_file_in_the_way(tmp_path):
    (tmp_path / "f").write_text("x")
    assert ensure_dir(tmp_path / "a" / "b", "output_dir") == tmp_path / "a" / "b"
    with pytest.raises(UserError, match=r"^output_dir .*/f/runs: .*/f is a file, not a folder$"):
        ensure_dir(tmp_path / "f" / "runs", "output_dir")


def test_markdown_table_rounds_floats_and_escapes_pipes():
    table = markdown_table([{"name": "a|b", "x": 0.123456}, {"name": "c\nd", "x": 2}], digits=2)
    assert table.splitlines() == ["| name | x |", "|---|---|", "| a\\|b | 0.12 |", "| c d | 2 |"]
    assert markdown_table([]) == "_(no rows)_\n"
