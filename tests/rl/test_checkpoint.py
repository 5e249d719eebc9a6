"""PPO checkpoints: never written from non-finite state; a resume verifies, falls back and checks settings."""

import copy
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from rlhf.checkpoints import clean_stray
from rlhf.config import to_dict
from rlhf.errors import UserError
from rlhf.rl.checkpoint import find_resumable, read_checkpoint
from rlhf.rl.trainer import NonFiniteError

from .conftest import make


def trained(folder, steps=2, **ppo):
    """A trainer after ``steps`` steps, each checkpointed to ``folder/ck/step-N``."""
    torch.manual_seed(0)
    trainer, config = make(folder, **ppo)
    trainer.config_record = to_dict(config)
    for _ in range(steps):
        trainer.step()
        trainer.save_checkpoint(folder / "ck" / f"step-{trainer.step_count}")
    return trainer, config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two checkpointed steps, shared (read-only) by the tests that copy them."""
    folder = tmp_path_factory.mktemp("ppo_ckpt")
    trainer, config = trained(folder)
    shapes = {k: v.shape for k, v in trainer.policy.trainable_state_dict().items()}
    return folder / "ck", shapes, to_dict(config)


def copy_of(run, tmp_path):
    ck, shapes, config = run
    shutil.copytree(ck, tmp_path / "ck")
    return tmp_path / "ck", shapes, copy.deepcopy(config)


def test_exploding_learning_rate_stops_before_a_non_finite_checkpoint(tmp_path):
    """The issue's run: lr 1e6, a checkpoint every step. It stops at the first non-finite step,
    naming it (1-based) and the last good checkpoint; every checkpoint on disk is finite."""
    with pytest.raises(NonFiniteError) as err:
        trained(tmp_path, steps=8, learning_rate=1e6, batch_size=4, mini_batch_size=4, epochs=1)
    m = re.fullmatch(r"RL step (\d+): (.+) is not finite; stopping \(last good checkpoint: (.+)\)", str(err.value))
    assert m, str(err.value)
    step, written = int(m.group(1)), sorted((tmp_path / "ck").iterdir())
    assert [p.name for p in written] == [f"step-{i}" for i in range(1, step)]
    assert m.group(3) == str(tmp_path / "ck" / f"step-{step - 1}")
    for folder in written:
        read_checkpoint(folder)  # raises if anything in it is not finite


def test_nan_weights_are_never_written(tmp_path):
    trainer, _ = make(tmp_path)
    trainer.step()
    next(p for p in trainer.policy.parameters() if p.requires_grad).data[0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"RL step 1: weights \(.+\) is not finite; stopping \(no checkpoint yet\)"):
        trainer.save_checkpoint(tmp_path / "ck" / "step-1")
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").iterdir())


def test_nan_optimizer_state_is_never_written(tmp_path):
    trainer, _ = trained(tmp_path, steps=1)
    state = next(iter(trainer.optimizer.state.values()))
    state["exp_avg"].view(-1)[0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"RL step 1: optimizer_state \(optimizer\.state\..*exp_avg\) is not "
                                             r"finite; stopping \(last good checkpoint: .*step-1\)"):
        trainer.save_checkpoint(tmp_path / "ck" / "step-1b")
    assert not (tmp_path / "ck" / "step-1b").exists()


class Payload:
    """Runs a shell command when unpickled (what ``weights_only=True`` must refuse)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def _cut(n):
    def cut(folder):
        path = folder / "trainable.safetensors"
        path.write_bytes(path.read_bytes()[:n])
    return cut


def _nan_weights(folder):
    tensors = load_file(str(folder / "trainable.safetensors"))
    next(iter(tensors.values()))[0] = float("nan")
    save_file(tensors, str(folder / "trainable.safetensors"))


def _edit_state(folder, **values):
    import json

    path = folder / "trainer_state.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | values))  # json writes NaN as NaN


CORRUPTIONS = {
    "weights_cut_to_1000_bytes": (_cut(1000), "trainable.safetensors is unreadable"),
    "weights_empty": (_cut(0), "trainable.safetensors is unreadable"),
    "weights_nan": (_nan_weights, "trainable.safetensors holds non-finite values"),
    "state_broken": (lambda f: (f / "trainer_state.json").write_text('{"step": '), "trainer_state.json is unreadable"),
    "state_wrong_step": (lambda f: (f / "trainer_state.json").write_text(
        (f / "trainer_state.json").read_text().replace('"step": 2', '"step": 7')), "trainer_state.json says step 7"),
    "state_nan_kl_coef": (lambda f: _edit_state(f, kl_controller={"value": float("nan")}),
                          "trainer_state.json: kl_controller value nan is not a finite number"),
    "state_bad_python_random": (lambda f: _edit_state(f, python_random=7),
                                "trainer_state.json: python_random is not a Python random state"),
    "rng_without_torch_state": (lambda f: save_file({"x": torch.zeros(3)}, str(f / "rng.safetensors")),
                                "rng.safetensors lacks a torch generator state"),
    "optimizer_missing": (lambda f: (f / "optimizer.pt").unlink(), "optimizer.pt missing"),
    "optimizer_empty": (lambda f: (f / "optimizer.pt").write_bytes(b""), "optimizer.pt is unreadable"),
    "optimizer_pickle_payload": (lambda f: torch.save({"optimizer": Payload(f.parent / "pickle_ran"), "scheduler": {}},
                                                      f / "optimizer.pt"), "optimizer.pt is unreadable"),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_resume_skips_a_corrupt_checkpoint_and_cleans_leftovers(run, tmp_path, corruption):
    ck, shapes, config = copy_of(run, tmp_path)
    damage, reason = CORRUPTIONS[corruption]
    damage(ck / "step-2")
    (ck / "step-final").mkdir()  # a stray folder
    (ck / ".step-3.abc123.tmp").mkdir()  # a kill during a checkpoint write
    lines = []
    clean_stray(ck, "step", log=lines.append, stage="rl")
    ckpt = find_resumable(ck, shapes, config, log=lines.append)
    assert ckpt is not None and ckpt.folder == ck / "step-1" and ckpt.step == 1
    assert lines[0] == f"rl: removed .step-3.abc123.tmp, step-final from {ck} (not a checkpoint)"
    assert lines[1].startswith(f"rl: skipping checkpoint {ck / 'step-2'}: {reason}")
    assert sorted(p.name for p in ck.iterdir()) == ["step-1", "step-2"]  # pickle_ran absent: nothing executed


def test_no_usable_checkpoint_says_so(run, tmp_path):
    ck, shapes, config = copy_of(run, tmp_path)
    for name in ("step-1", "step-2"):
        (ck / name / "optimizer.pt").unlink()
    lines = []
    assert find_resumable(ck, shapes, config, log=lines.append) is None
    assert lines[-1] == f"rl: --resume: no usable checkpoint in {ck}; starting from step 0"
    assert find_resumable(tmp_path / "none", shapes, config, log=lines.append) is None
    assert lines[-1] == f"rl: --resume: no checkpoint in {tmp_path / 'none'}; starting from step 0"


def test_resume_applies_a_new_learning_rate_and_says_so(run, tmp_path):
    ck, shapes, config = copy_of(run, tmp_path)
    old = config["rl"]["learning_rate"]
    config["rl"]["learning_rate"], config["rl"]["steps"] = 1e-4, 9
    lines = []
    ckpt = find_resumable(ck, shapes, config, log=lines.append)
    assert lines == [f"rl: resume applies rl.learning_rate: {old!r} -> 0.0001", "rl: resume applies rl.steps: 4 -> 9"]
    trainer, _ = make(tmp_path / "new", learning_rate=1e-4, steps=9)
    trainer.apply_checkpoint(ckpt)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [1e-4]
    assert trainer.step()["update/learning_rate"] == 1e-4


@pytest.mark.parametrize("key, value, shown", [
    (("rl", "lora", "r"), 8, "rl.lora.r: 4 -> 8"),
    (("rl", "policy"), "full", "rl.policy: 'lora' -> 'full'"),
    (("rl", "mini_batch_size"), 2, "rl.mini_batch_size: 4 -> 2"),
    (("rl", "kl", "estimator"), "k3", "rl.kl.estimator: 'k1' -> 'k3'"),
    (("seed",), 5, "seed: 1 -> 5"),
])
def test_resume_refuses_settings_that_change_the_model_or_maths(run, tmp_path, key, value, shown):
    ck, shapes, config = copy_of(run, tmp_path)
    node = config
    for part in key[:-1]:
        node = node[part]
    node[key[-1]] = value
    with pytest.raises(UserError, match=rf"^rl: cannot resume from {re.escape(str(ck / 'step-2'))}: "
                                        rf"{re.escape(shown)} changed since it was written"):
        find_resumable(ck, shapes, config, log=lambda _: None)


def test_resume_refuses_fewer_steps_than_done_and_unrecorded_configs(run, tmp_path):
    ck, shapes, config = copy_of(run, tmp_path)
    config["rl"]["steps"] = 1
    with pytest.raises(UserError, match=r"rl.steps=1 is below its step 2"):
        find_resumable(ck, shapes, config, log=lambda _: None)
    config["rl"]["steps"] = 4
    state = (ck / "step-2" / "trainer_state.json")
    state.write_text(state.read_text().replace('"config": {', '"config_": {'))
    with pytest.raises(UserError, match=r"records no config"):
        find_resumable(ck, shapes, config, log=lambda _: None)
