import pytest
import torch

from rlhf.rl.rloo import leave_one_out_advantages, sequence_rewards


def loop_loo(rewards: list[float], k: int) -> list[float]:
    out = []
    for g in range(0, len(rewards), k):
        group = rewards[g:g + k]
        out += [r - sum(o for j, o in enumerate(group) if j != i) / (k - 1) for i, r in enumerate(group)]
    return out


def test_leave_one_out_baseline_by_hand():
    # group 1: baselines (2 + 6) / 2 = 4, (1 + 6) / 2 = 3.5, (1 + 2) / 2 = 1.5; group 2: k = 3 of equal rewards
    adv = leave_one_out_advantages(torch.tensor([1.0, 2.0, 6.0, 5.0, 5.0, 5.0]), k=3)
    assert adv.tolist() == [-3.0, -1.5, 4.5, 0.0, 0.0, 0.0]


def test_two_responses_are_each_others_baseline():
    assert leave_one_out_advantages(torch.tensor([0.25, -1.0]), k=2).tolist() == [1.25, -1.25]


@pytest.mark.parametrize("k", [2, 3, 5])
def test_leave_one_out_matches_a_plain_loop_and_sums_to_zero_per_group(k):
    torch.manual_seed(k)
    rewards = torch.randn(4 * k, dtype=torch.float64)
    adv = leave_one_out_advantages(rewards, k)
    torch.testing.assert_close(adv, torch.tensor(loop_loo(rewards.tolist(), k), dtype=torch.float64))
    torch.testing.assert_close(adv.view(-1, k).sum(-1), torch.zeros(4, dtype=torch.float64))


def test_one_response_has_no_baseline():
    with pytest.raises(ValueError, match="k >= 2"):
        leave_one_out_advantages(torch.tensor([1.0, 2.0]), k=1)


def test_the_kl_to_the_reference_is_taken_from_the_whole_response():
    scores = torch.tensor([1.0, 2.0])
    lp, ref = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 9.0]]), torch.tensor([[-1.5, -2.5, -3.0], [-2.0, -1.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    rewards, kl = sequence_rewards(scores, lp, ref, mask, kl_coef=0.5)
    assert kl.tolist() == [[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]  # padding contributes nothing
    assert rewards.tolist() == [1.0 - 0.5 * 1.0, 2.0 - 0.5 * 1.0]
