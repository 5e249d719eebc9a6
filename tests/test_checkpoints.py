import pytest
import torch
from safetensors.torch import save_file

from rlhf.checkpoints import (
    CheckpointError,
    clean_stray,
    first_non_finite,
    numbered,
    read_json_state,
    read_safetensors,
    read_torch,
    require_files,
    shape_mismatch,
)


def test_numbered_folders_newest_first_and_strays_apart(tmp_path):
    for name in ("step-2", "step-10", "step-x", ".step-3.abc.tmp"):
        (tmp_path / name).mkdir()
    (tmp_path / "step-4").write_text("a file, not a checkpoint")
    found, strays = numbered(tmp_path, "step")
    assert [n for n, _ in found] == [10, 2]
    assert sorted(p.name for p in strays) == ["step-4", "step-x"]  # leftovers of a write are not strays
    assert numbered(tmp_path / "absent", "step") == ([], [])


def test_clean_stray_removes_what_is_not_a_checkpoint_and_says_so(tmp_path):
    for name in ("step-1", "step-final", ".step-2.x.tmp"):
        (tmp_path / name).mkdir()
    lines = []
    clean_stray(tmp_path, "step", log=lines.append, stage="rl")
    assert [p.name for p in tmp_path.iterdir()] == ["step-1"]
    assert lines == [f"rl: removed .step-2.x.tmp, step-final from {tmp_path} (not a checkpoint)"]


def test_non_finite_values_are_found_by_name_in_nested_state():
    assert first_non_finite({"a": torch.ones(2), "b": [torch.zeros(1), {"c": torch.tensor([1.0, float("nan")])}]}) == "b.1.c"
    assert first_non_finite({"steps": torch.tensor([3]), "w": torch.ones(2)}) is None  # integer tensors never count
    assert first_non_finite(torch.tensor(float("inf"))) == "tensor"


def test_readers_refuse_unreadable_and_non_finite_files(tmp_path):
    save_file({"w": torch.tensor([1.0, float("inf")])}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match=r"^bad.safetensors holds non-finite values \(w\)$"):
        read_safetensors(tmp_path / "bad.safetensors")
    (tmp_path / "cut.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(CheckpointError, match=r"^cut.pt is unreadable"):
        read_torch(tmp_path / "cut.pt")
    torch.save({"step": torch.tensor(1.0)}, tmp_path / "ok.pt")
    assert read_torch(tmp_path / "ok.pt")["step"].item() == 1.0
    (tmp_path / "s.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="is not a JSON object"):
        read_json_state(tmp_path / "s.json")
    with pytest.raises(CheckpointError, match=r"^a.pt, b.json missing$"):
        require_files(tmp_path, ("ok.pt", "a.pt", "b.json"))


def test_shape_mismatch_names_the_first_difference():
    expected = {"a": torch.Size([2, 3]), "b": torch.Size([4])}
    assert shape_mismatch({"a": torch.zeros(2, 3), "b": torch.zeros(4)}, expected) is None
    assert shape_mismatch({"a": torch.zeros(3, 2), "b": torch.zeros(4)}, expected) == \
        "a has shape [3, 2], the configured model [2, 3]"
    assert shape_mismatch({"a": torch.zeros(2, 3)}, expected).startswith("1 tensors missing (e.g. ['b'])")
