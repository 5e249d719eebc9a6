import math

import pytest
import torch

from rlhf.rl import objectives


def test_kl_estimators():
    lp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    torch.testing.assert_close(objectives.kl_penalty(lp, ref, "k1"), torch.tensor([0.5, -1.0]))
    # k3 = (q/p - 1) - log(q/p), log(q/p) = ref - lp
    expected = torch.tensor([math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0])
    torch.testing.assert_close(objectives.kl_penalty(lp, ref, "k3"), expected)
    assert (objectives.kl_penalty(torch.randn(100), torch.randn(100), "k3") >= 0).all()
    with pytest.raises(ValueError):
        objectives.kl_penalty(lp, ref, "k2")


def test_policy_loss_clipping():
    old = torch.zeros(1, 2)
    adv = torch.tensor([[1.0, -1.0]])
    mask = torch.tensor([[True, True]])
    new = torch.log(torch.tensor([[1.5, 0.5]]))  # ratios 1.5 and 0.5
    loss, stats = objectives.policy_loss(new, old, adv, mask, cliprange=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(0.5, 0.8) = 0.8 (clipped)
    torch.testing.assert_close(loss, torch.tensor(-0.2))
    assert stats["clipfrac"] == 1.0
    loss, stats = objectives.policy_loss(torch.log(torch.tensor([[1.1, 0.95]])), old, adv, mask, 0.2)
    torch.testing.assert_close(loss, torch.tensor((-1.1 + 0.95) / 2))
    assert stats["clipfrac"] == 0.0
    ignored, _ = objectives.policy_loss(new, old, adv, torch.tensor([[True, False]]), 0.2)
    torch.testing.assert_close(ignored, torch.tensor(-1.2))




def test_normalisers_by_hand():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    assert objectives.normalise(per_token, mask, "token").item() == pytest.approx(10 / 4)  # PPO: over all tokens
    assert objectives.normalise(per_token, mask, "sequence").item() == pytest.approx((6 / 3 + 4 / 1) / 2)  # GRPO
    assert objectives.normalise(per_token, mask, "constant", max_tokens=5).item() == pytest.approx(10 / (2 * 5))


def test_sequence_level_ratio_is_reinforce_on_fresh_samples():
    """One pass on fresh samples (r = 1): the loss is -mean A and its gradient A_i / B on every real
    token of response i: REINFORCE, A * grad sum_t log pi (Ahmadian et al. 2024)."""
    lp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -9.0]], requires_grad=True)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    adv = torch.tensor([2.0, -1.0])
    loss, stats = objectives.policy_loss(lp, lp.detach(), adv, mask, cliprange=0.2, level="sequence")
    assert loss.item() == pytest.approx(-(2.0 - 1.0) / 2) and stats["clipfrac"].item() == 0.0
    loss.backward()
    assert lp.grad.tolist() == [[-1.0, -1.0, -1.0], [0.5, 0.5, 0.0]]  # d loss / d lp = -A_i / B on real tokens


def test_sequence_level_ratio_clips_the_product_of_token_ratios():
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[1.2, 1.1]]))  # sequence ratio 1.32 > 1.2: clipped for a positive advantage
    loss, stats = objectives.policy_loss(new, old, torch.tensor([1.0]), torch.ones(1, 2, dtype=torch.bool), 0.2,
                                         level="sequence")
    assert loss.item() == pytest.approx(-1.2) and stats["clipfrac"].item() == 1.0
    token, _ = objectives.policy_loss(new, old, torch.ones(1, 2), torch.ones(1, 2, dtype=torch.bool), 0.2)
    assert token.item() == pytest.approx(-(1.2 + 1.1) / 2)  # per token neither is clipped


def test_grpo_kl_term_adds_to_every_token_before_normalising():
    lp, mask = torch.zeros(2, 2), torch.tensor([[True, True], [True, False]])
    kl = torch.tensor([[0.2, 0.4], [1.0, 5.0]])
    base, _ = objectives.policy_loss(lp, lp, torch.ones(2, 2), mask, 0.2, normaliser="sequence")
    with_kl, _ = objectives.policy_loss(lp, lp, torch.ones(2, 2), mask, 0.2, normaliser="sequence", kl=kl, kl_coef=0.5)
    assert with_kl.item() - base.item() == pytest.approx(0.5 * ((0.2 + 0.4) / 2 + 1.0) / 2)
