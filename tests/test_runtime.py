import torch

from rlhf.runtime import flush_denormals


def test_flush_denormals_turns_subnormal_results_to_zero():
    tiny = torch.tensor(1e-30)
    torch.set_flush_denormal(False)
    assert (tiny * 1e-10).item() > 0.0  # 1e-40 is subnormal in float32
    assert flush_denormals()  # leaves it on, as the test session runs (conftest)
    assert (tiny * 1e-10).item() == 0.0
