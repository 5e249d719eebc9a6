import subprocess
import sys

import pytest
import yaml

from rlhf.cli import main as cli_main
from rlhf.runtime import denormals_flushed, flush_denormals

from .conftest import small_raw


def test_cli_runs_stage_then_skips_it(tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(small_raw(tmp_path, prompt={"settings": [{"name": "greedy"}]})))
    assert cli_main(["prompt", str(path), "prompt.n_dialogues=3"]) == 0
    assert cli_main(["prompt", str(path), "prompt.n_dialogues=3"]) == 0
    assert "already finished" in capsys.readouterr().out
    assert cli_main(["prompt", str(path)]) == 2  # a finished stage with other settings is not skipped
    assert "prompt.n_dialogues: 3 -> 6" in capsys.readouterr().err
    assert cli_main(["run", str(path), "--force"]) == 0


def test_python_dash_m_with_bad_config_exits_2(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(small_raw(tmp_path, data={"source": str(tmp_path / "missing.jsonl")})))
    out = subprocess.run([sys.executable, "-m", "pipelines.prompt", str(path)], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"error: data source not found: {tmp_path / 'missing.jsonl'}"]


def test_cli_flushes_denormals_unless_opted_out(monkeypatch, capsys):
    from rlhf.cli import main

    try:
        monkeypatch.setenv("RLHF_FLUSH_DENORMALS", "0")
        flush_denormals(False)
        assert main(["estimate"]) == 2  # usage error, after the flag was read
        assert not denormals_flushed()
        monkeypatch.delenv("RLHF_FLUSH_DENORMALS")
        assert main(["estimate"]) == 2
        assert denormals_flushed()
    finally:
        flush_denormals()
    capsys.readouterr()


def test_cli_rejects_a_bad_flush_denormals_value(monkeypatch, capsys):
    from rlhf.cli import main

    monkeypatch.setenv("RLHF_FLUSH_DENORMALS", "yes")
    assert main(["estimate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RLHF_FLUSH_DENORMALS: 'yes' is not 0 or 1" in err


@pytest.mark.parametrize("error, shown", [
    (PermissionError(13, "Permission denied", "/runs/t/rl/metrics.jsonl"), "/runs/t/rl/metrics.jsonl: Permission denied"),
    (OSError(28, "No space left on device"), "No space left on device"),
])
def test_file_system_refusals_anywhere_in_a_stage_are_one_line(error, shown, capsys, monkeypatch):
    """A write that fails mid-stage (read-only folder, full disk) ends like any other bad input."""
    import rlhf.cli

    def dispatch(argv):
        raise error

    monkeypatch.setattr(rlhf.cli, "dispatch", dispatch)
    assert cli_main(["prompt", "x.yaml"]) == 2
    assert capsys.readouterr().err == f"error: {shown}\n"


def test_other_os_errors_are_not_hidden(monkeypatch):
    import rlhf.cli

    def dispatch(argv):
        raise ConnectionResetError(104, "Connection reset by peer")

    monkeypatch.setattr(rlhf.cli, "dispatch", dispatch)
    with pytest.raises(ConnectionResetError):
        cli_main(["prompt", "x.yaml"])


def test_run_stage_skips_a_finished_stage_and_says_when_resume_does_not_apply(small_config, capsys):
    from rlhf.entrypoint import run_stage
    from rlhf.rundir import start_stage

    calls = []

    def keeps_no_checkpoints(config, force=False):
        calls.append(force)

    run_stage("prompt", keeps_no_checkpoints, small_config, resume=True)
    out = capsys.readouterr().out
    assert calls == [False] and "prompt: keeps no checkpoints, so --resume does not apply" in out
    start_stage(small_config, "prompt").finish()
    run_stage("prompt", keeps_no_checkpoints, small_config)
    assert calls == [False] and "already finished" in capsys.readouterr().out
    run_stage("prompt", keeps_no_checkpoints, small_config, force=True)
    assert calls == [False, True]


def test_guarded_turns_errors_into_exit_codes(capsys):
    from rlhf.entrypoint import guarded
    from rlhf.errors import UserError

    def refuse():
        raise UserError("config key 'x': bad")

    def interrupted():
        raise KeyboardInterrupt

    assert guarded(lambda: None) == 0
    assert guarded(refuse) == 2 and capsys.readouterr().err == "error: config key 'x': bad\n"
    assert guarded(interrupted) == 130 and capsys.readouterr().err == "interrupted\n"
