import math

import pytest
import torch

from rlhf.rl.dpo import chosen_nll, dpo_loss, implicit_rewards, ipo_loss, preference_margin


def test_the_margin_by_hand():
    h = preference_margin(torch.tensor([-3.0]), torch.tensor([-5.0]), torch.tensor([-4.0]), torch.tensor([-4.5]))
    assert h.tolist() == [(-3.0 + 4.0) - (-5.0 + 4.5)]  # 1.0 - (-0.5) = 1.5


def test_dpo_loss_by_hand_and_its_gradient():
    h = torch.tensor([0.0, 1.5, -2.0], requires_grad=True)
    loss = dpo_loss(h, beta=0.1)
    expected = [math.log(2), -math.log(1 / (1 + math.exp(-0.15))), -math.log(1 / (1 + math.exp(0.2)))]
    assert loss.tolist() == pytest.approx(expected)
    loss.sum().backward()  # d/dh -log sigmoid(b h) = -b sigmoid(-b h): always pushes h up, less so once it is large
    assert h.grad.tolist() == pytest.approx([-0.1 * 0.5, -0.1 / (1 + math.exp(0.15)), -0.1 / (1 + math.exp(-0.2))])


def test_ipo_loss_has_its_minimum_at_one_over_two_beta():
    beta = 0.25
    h = torch.linspace(-1, 5, 601)
    assert h[ipo_loss(h, beta).argmin()].item() == pytest.approx(1 / (2 * beta), abs=0.01)
    assert ipo_loss(torch.tensor([0.0]), beta).item() == pytest.approx(4.0)


def test_implicit_rewards_rank_the_pair_as_the_margin_does():
    pc, pr, rc, rr = torch.tensor([-2.0]), torch.tensor([-6.0]), torch.tensor([-3.0]), torch.tensor([-4.0])
    chosen, rejected = implicit_rewards(pc, rc, 0.5), implicit_rewards(pr, rr, 0.5)
    assert (chosen - rejected).item() == pytest.approx(0.5 * preference_margin(pc, pr, rc, rr).item())


def test_chosen_nll_is_per_token_by_hand():
    assert chosen_nll(torch.tensor([-6.0, -1.0]), torch.tensor([3.0, 0.0])).tolist() == [2.0, 1.0]  # length 0 -> 1
