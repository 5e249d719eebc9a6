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
