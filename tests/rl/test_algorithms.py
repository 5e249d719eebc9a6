import pytest
import torch

from rlhf.config import PreferenceSettings, RlConfig
from rlhf.rl import grpo, ppo, rloo
from rlhf.rl.algorithms import GRPO, PPO, RLOO, MiniBatch, make_algorithm
from rlhf.rl.objectives import kl_penalty

MASK = torch.tensor([[True, True, True], [True, True, False], [True, False, False], [True, True, True]])


def rollouts(seed: int = 0):
    torch.manual_seed(seed)
    lp, ref = -torch.rand(4, 3) * 3, -torch.rand(4, 3) * 3
    return torch.tensor([1.0, -2.0, 0.5, 0.5]), lp, ref, torch.randn(4, 3)


def test_each_algorithm_by_name_and_whether_it_needs_a_critic():
    assert isinstance(make_algorithm(RlConfig()), PPO) and PPO.value_head
    assert not RLOO.value_head and not GRPO.value_head
    assert PPO.kl_in_reward and RLOO.kl_in_reward and not GRPO.kl_in_reward


def test_ppo_targets_are_kl_shaped_rewards_through_gae_then_whitened():
    cfg = RlConfig()
    scores, lp, ref, values = rollouts()
    t = PPO(cfg).targets(scores, lp, ref, values, MASK, kl_coef=0.3)
    rewards, kl = ppo.compute_rewards(scores, lp, ref, MASK, 0.3)
    adv, ret = ppo.gae(rewards, values, MASK, cfg.ppo.gamma, cfg.ppo.lam)
    torch.testing.assert_close(t.advantages, ppo.masked_whiten(adv, MASK))
    torch.testing.assert_close(t.returns, ret)
    torch.testing.assert_close(t.kl, kl)


def test_rloo_targets_are_leave_one_out_over_score_minus_kl():
    cfg = RlConfig(algorithm="rloo", group_size=2)
    scores, lp, ref, _ = rollouts(1)
    t = RLOO(cfg).targets(scores, lp, ref, None, MASK, kl_coef=0.3)
    rewards = scores - 0.3 * ((lp - ref) * MASK).sum(-1)
    torch.testing.assert_close(t.advantages, rloo.leave_one_out_advantages(rewards, 2))
    assert t.returns is None and t.advantages.shape == (4,)


def test_grpo_targets_spread_each_groups_advantage_over_the_response_tokens():
    cfg = RlConfig(algorithm="grpo", group_size=2)
    scores, lp, ref, _ = rollouts(2)
    t = GRPO(cfg).targets(scores, lp, ref, None, MASK, kl_coef=cfg.grpo.kl_coef)
    per_response = grpo.group_advantages(scores, 2)
    torch.testing.assert_close(t.advantages, per_response.unsqueeze(-1) * MASK)
    torch.testing.assert_close(t.kl, kl_penalty(lp, ref, "k3") * MASK)


@pytest.mark.parametrize("name", ["ppo", "rloo", "grpo"])
def test_on_fresh_samples_each_loss_pushes_up_the_better_response(name):
    """One gradient step on a policy whose logprobs are the parameters: the response with the higher
    score (row 0 of each group) gains probability, the other loses it."""
    cfg = RlConfig(algorithm=name, group_size=1 if name == "ppo" else 2)
    algo = make_algorithm(cfg)
    scores, lp, ref, values = rollouts(3)
    scores = torch.tensor([2.0, -2.0, 1.0, -1.0])
    t = algo.targets(scores, lp, lp, values if name == "ppo" else None, MASK, kl_coef=0.0)
    param = lp.clone().requires_grad_(True)
    mb = MiniBatch(lp, lp, values if name == "ppo" else None, t.advantages, t.returns, MASK)
    loss, terms = algo.loss(param, values if name == "ppo" else None, mb)
    loss.backward()
    step = -(param.grad * MASK).sum(-1)  # the direction gradient descent moves each response's logprob
    assert step[0] > 0 > step[1] and step[2] > 0 > step[3]
    assert "policy/approxkl" in terms and (("loss/value" in terms) == (name == "ppo"))


@pytest.mark.parametrize("algorithm", ["dpo", "ipo"])
def test_preference_loss_adds_the_chosen_nll_by_hand(algorithm):
    """Rows 0, 2 are the pairs' chosen, 1, 3 the rejected; with nll_coef 0.5 the loss is the pair
    loss plus half the chosen responses' mean per-token NLL (RPO, eq. 3)."""
    _, lp, ref, _ = rollouts(5)
    plain = make_algorithm(RlConfig(algorithm=algorithm, group_size=2))
    rpo = make_algorithm(RlConfig(algorithm=algorithm, group_size=2, preference=PreferenceSettings(nll_coef=0.5)))
    mb = MiniBatch(lp, ref, None, torch.zeros(4), None, MASK)
    pair_loss, _ = plain.loss(lp, None, mb)
    loss, terms = rpo.loss(lp, None, mb)
    nll = ((-(lp[0] * MASK[0]).sum() / 3) + (-(lp[2] * MASK[2]).sum() / 1)) / 2
    assert terms["loss/chosen_nll"].item() == pytest.approx(nll.item())
    assert loss.item() == pytest.approx(pair_loss.item() + 0.5 * nll.item())
