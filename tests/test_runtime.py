import torch

from rlhf.runtime import flush_denormals


def test_flush_denormals_turns_subnormal_results_to_zero():
    tiny = torch.tensor(1e-30)
    assert (tiny * 1e-10).item() > 0.0  # 1e-40 is subnormal in float32; kept by default
    try:
        assert flush_denormals()
        assert (tiny * 1e-10).item() == 0.0
    finally:
        torch.set_flush_denormal(False)  # the test session, like the CLI, runs without it


def test_cli_flushes_denormals_only_when_asked(monkeypatch, capsys):
    from rlhf.cli import main

    tiny = torch.tensor(1e-30)
    try:
        monkeypatch.setenv("RLHF_FLUSH_DENORMALS", "0")
        assert main(["estimate"]) == 2  # usage error, after the flag was read
        assert (tiny * 1e-10).item() > 0.0
        monkeypatch.setenv("RLHF_FLUSH_DENORMALS", "1")
        assert main(["estimate"]) == 2
        assert (tiny * 1e-10).item() == 0.0
    finally:
        torch.set_flush_denormal(False)
    capsys.readouterr()


def test_cli_rejects_a_bad_flush_denormals_value(monkeypatch, capsys):
    from rlhf.cli import main

    monkeypatch.setenv("RLHF_FLUSH_DENORMALS", "yes")
    assert main(["estimate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RLHF_FLUSH_DENORMALS: 'yes' is not 0 or 1" in err
