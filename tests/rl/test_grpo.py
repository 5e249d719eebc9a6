import math

import pytest
import torch

from rlhf.rl.grpo import EPS, group_advantages


def loop_group(scores: list[float], k: int, scale: bool) -> list[float]:
    out = []
    for g in range(0, len(scores), k):
        group = scores[g:g + k]
        mean = sum(group) / k
        std = math.sqrt(sum((s - mean) ** 2 for s in group) / (k - 1))
        out += [(s - mean) / (std + EPS) if scale else s - mean for s in group]
    return out


def test_two_responses_by_hand():
    std = math.sqrt(2.0)  # of [1, 3], Bessel-corrected
    adv = group_advantages(torch.tensor([1.0, 3.0]), k=2)
    assert adv.tolist() == pytest.approx([-1 / (std + EPS), 1 / (std + EPS)])
    assert group_advantages(torch.tensor([1.0, 3.0]), k=2, scale=False).tolist() == [-1.0, 1.0]  # Dr. GRPO


def test_a_group_of_equal_rewards_gets_no_advantage_not_nan():
    adv = group_advantages(torch.tensor([-0.01, -0.01, -0.01, 2.0, 0.0, 1.0]), k=3)
    assert adv[:3].tolist() == [0.0, 0.0, 0.0] and torch.isfinite(adv).all()


@pytest.mark.parametrize("k, scale", [(2, True), (4, True), (4, False), (5, False)])
def test_group_advantages_match_a_plain_loop(k, scale):
    torch.manual_seed(k)
    scores = torch.randn(3 * k)
    torch.testing.assert_close(group_advantages(scores, k, scale), torch.tensor(loop_group(scores.tolist(), k, scale)),
                               atol=1e-5, rtol=1e-5)


def test_one_response_has_no_group():
    with pytest.raises(ValueError, match="k >= 2"):
        group_advantages(torch.tensor([1.0]), k=1)
