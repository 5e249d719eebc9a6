import pytest

from rlhf.rl.kl import AdaptiveKLController, FixedKLController


def test_fixed_kl_controller():
    ctl = FixedKLController(0.3)
    assert ctl.update(100.0, 16) == 0.3


def test_adaptive_kl_controller_by_hand():
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    # KL 12: error clipped to 0.2 -> 0.2 * (1 + 0.2 * 16 / 10000)
    assert ctl.update(12.0, 16) == pytest.approx(0.2 * (1 + 0.2 * 16 / 10000))
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=100)
    assert ctl.update(5.4, 10) == pytest.approx(0.2 * (1 - 0.1 * 10 / 100))
    assert ctl.update(6.0, 10) == pytest.approx(0.2 * (1 - 0.1 * 10 / 100))
