
import torch

from rlhf.rl import ppo

MASK = torch.tensor([[True, True, True], [True, True, False]])


def loop_gae(rewards, values, lengths, gamma, lam):
    """Plain-Python GAE, one row at a time, straight from Schulman et al. 2016 eq. 16."""
    out_adv, out_ret = [], []
    for r, v, n in zip(rewards.tolist(), values.tolist(), lengths):
        adv = [0.0] * len(r)
        running = 0.0
        for t in reversed(range(n)):
            next_v = v[t + 1] if t + 1 < n else 0.0
            running = r[t] + gamma * next_v - v[t] + gamma * lam * running
            adv[t] = running
        out_adv.append(adv)
        out_ret.append([a + (v[t] if t < n else 0.0) for t, a in enumerate(adv)])
    return torch.tensor(out_adv), torch.tensor(out_ret)


def test_gae_matches_plain_loop():
    torch.manual_seed(0)
    rewards, values = torch.randn(2, 3), torch.randn(2, 3)
    rewards = rewards * MASK
    adv, ret = ppo.gae(rewards, values, MASK, gamma=0.9, lam=0.8)
    exp_adv, exp_ret = loop_gae(rewards, values, [3, 2], 0.9, 0.8)
    torch.testing.assert_close(adv, exp_adv)
    torch.testing.assert_close(ret, exp_ret)


def test_gae_by_hand():
    # one token: A = r - V; two tokens, gamma = lam = 1: A_1 = r_1 - V_1, A_0 = r_0 + V_1 - V_0 + A_1
    adv, ret = ppo.gae(torch.tensor([[0.0, 2.0]]), torch.tensor([[0.5, 1.0]]), torch.tensor([[True, True]]), 1.0, 1.0)
    torch.testing.assert_close(adv, torch.tensor([[1.5, 1.0]]))
    torch.testing.assert_close(ret, torch.tensor([[2.0, 2.0]]))


def test_gae_ignores_padding_values():
    mask = torch.tensor([[True, False]])
    a1, _ = ppo.gae(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.2, 99.0]]), mask, 1.0, 0.95)
    a2, _ = ppo.gae(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.2, -5.0]]), mask, 1.0, 0.95)
    torch.testing.assert_close(a1, a2)
    assert a1[0, 1] == 0


def test_whitening_over_real_tokens_only():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]])
    w = ppo.masked_whiten(x, MASK)
    real = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    expected = (real - real.mean()) / real.std()
    torch.testing.assert_close(w[MASK], expected, atol=1e-4, rtol=1e-4)
    assert w[1, 2] == 0
    unshifted = ppo.masked_whiten(x, MASK, shift_mean=False)
    torch.testing.assert_close(unshifted[MASK], expected + real.mean(), atol=1e-4, rtol=1e-4)




def test_rewards_put_score_on_last_real_token():
    lp = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -1.0, -7.0]])
    ref = torch.tensor([[-2.0, -1.0, -1.5], [-1.0, -3.0, -9.0]])
    rewards, kl = ppo.compute_rewards(torch.tensor([10.0, 20.0]), lp, ref, MASK, kl_coef=0.5)
    torch.testing.assert_close(kl, torch.tensor([[1.0, 0.0, 0.5], [0.0, 2.0, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.5, 0.0, 10.0 - 0.25], [0.0, 20.0 - 1.0, 0.0]]))




def test_value_loss_clipping():
    mask = torch.tensor([[True, True]])
    old, ret = torch.zeros(1, 2), torch.tensor([[1.0, 1.0]])
    new = torch.tensor([[0.5, 2.0]])
    loss, stats = ppo.value_loss(new, old, ret, mask, cliprange_value=0.2)
    # token 0: max((0.5-1)^2, (0.2-1)^2) = 0.64; token 1: max((2-1)^2, (0.2-1)^2) = 1.0
    torch.testing.assert_close(loss, torch.tensor(0.5 * (0.64 + 1.0) / 2))
    assert stats["clipfrac"] == 0.5
