"""The pickers choose what ``generate``'s warpers and ``torch.multinomial`` choose, token for token."""

import pytest
import torch
from transformers import TopPLogitsWarper

import rlhf.pickers as pickers
from rlhf.pickers import draw, greedy, gumbel_max, nucleus, top_p_filter


def test_greedy_gumbel_max_and_top_k():
    scores = torch.tensor([[0.0, 3.0, -1.0], [float("-inf"), 0.0, 1.0]])
    assert greedy(scores).tolist() == [1, 2]
    torch.manual_seed(0)
    draws = torch.stack([gumbel_max(scores) for _ in range(4000)])
    assert (draws[:, 1] != 0).all()  # -inf is never drawn
    share = (draws[:, 0] == 1).float().mean().item()  # softmax([0, 3, -1])[1] = 0.936
    assert share == pytest.approx(0.936, abs=0.02)
    assert nucleus(top_k=1)(scores).tolist() == [1, 2]


def random_scores(seed: int, rows: int = 64, vocab: int = 300) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(rows, vocab, generator=g) * (1 + seed % 4)
    if seed % 3 == 0:
        scores = scores.round()  # many ties
    if seed % 3 == 1:
        scores[:, 7] = float("-inf")  # a banned token
    return scores


@pytest.fixture
def warper_rows(monkeypatch):
    """The rows the top-p warper itself is asked to cut (transformers' own, spied on)."""
    import transformers

    rows, real = [], transformers.TopPLogitsWarper.__call__
    monkeypatch.setattr(transformers.TopPLogitsWarper, "__call__",
                        lambda self, ids, scores: rows.append(scores.shape[0]) or real(self, ids, scores))
    return rows


@pytest.mark.parametrize("top_p", [0.0, 0.3, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("seed", range(6))
def test_top_p_filter_is_the_warper(seed, top_p, warper_rows):
    scores = random_scores(seed)
    want = TopPLogitsWarper(top_p)(None, scores)
    warper_rows.clear()
    assert torch.equal(top_p_filter(scores, top_p), want)
    if seed % 3:  # no ties: the cut came from the sorted values alone
        assert warper_rows == []
    assert torch.equal(top_p_filter(scores.t().contiguous().t(), top_p), want)  # any layout


def test_top_p_filter_sends_only_a_row_tied_across_the_cut_to_the_warper(warper_rows):
    # row 0: cumulative 0.017, 0.035, 0.052, 1: at top_p 0.97 the cut falls between two equal
    # scores, where only the sort's order among equals says which token goes
    scores = torch.tensor([[1.0, 1.0, 1.0, 5.0], [0.5, -1.0, 3.0, 2.0]])
    out = top_p_filter(scores, 0.97)
    assert torch.equal(out, TopPLogitsWarper(0.97)(None, scores)) and out[0].isinf().sum() == 1
    assert warper_rows[0] == 1  # the tied row alone
    with_nan = torch.tensor([[0.0, float("nan"), 2.0], [0.0, 1.0, 2.0]])
    torch.testing.assert_close(top_p_filter(with_nan, 0.5), TopPLogitsWarper(0.5)(None, with_nan),
                               rtol=0, atol=0, equal_nan=True)
    with pytest.raises(ValueError, match="top_p"):
        top_p_filter(scores, 1.5)


def multinomial_and_after(probs: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    tokens = torch.multinomial(probs, 1).squeeze(1)
    return tokens, torch.rand(4)  # the generator's state after


def draw_and_after(probs: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    tokens = draw(probs)
    return tokens, torch.rand(4)


@pytest.mark.parametrize("seed", range(8))
def test_draw_is_multinomial(seed):
    probs = random_scores(seed, rows=96, vocab=500 + 61 * seed).softmax(-1)
    assert all(map(torch.equal, draw_and_after(probs, seed), multinomial_and_after(probs, seed)))
    assert pickers._exponential_is_aten_cpu()  # so the race above was ours, not multinomial's


def test_draw_in_many_blocks_with_every_clock_recomputed_and_in_any_layout(monkeypatch):
    probs = random_scores(5, rows=40, vocab=50).softmax(-1)
    want = multinomial_and_after(probs, 3)
    monkeypatch.setattr(pickers, "BLOCK", 120)  # two rows per block
    assert all(map(torch.equal, draw_and_after(probs, 3), want))
    monkeypatch.setattr(pickers, "NEAR_ULPS", pickers.MIDPOINT)  # every clock by the C library's log1p
    assert all(map(torch.equal, draw_and_after(probs, 3), want))
    transposed = probs.t().contiguous().t()  # multinomial draws its clocks in memory order
    assert all(map(torch.equal, draw_and_after(transposed, 3), multinomial_and_after(transposed, 3)))
    empty = torch.empty(0, 5)
    assert draw(empty).shape == multinomial_and_after(empty, 0)[0].shape == (0,)


def test_clocks_near_a_float_midpoint_come_from_the_c_library_and_zero_is_positive(monkeypatch):
    import math

    f = torch.tensor([0.7, 1.3, 5.0, 0.01]).double()
    ulp = torch.nextafter(f.float(), torch.tensor(math.inf)).double() - f
    near = 1 - torch.exp(-(f + ulp / 2))  # clocks within a few ulps of a rounding midpoint
    far = 1 - torch.exp(-(f + ulp / 4))
    uniform = torch.cat([near, far, torch.zeros(1, dtype=torch.float64)])
    calls, log1p = [], math.log1p
    monkeypatch.setattr(math, "log1p", lambda x: calls.append(x) or log1p(x))
    clocks = pickers.clocks_from(uniform)
    assert torch.equal(clocks, torch.tensor([-1.0 * log1p(-u) for u in uniform.tolist()], dtype=torch.float64).float())
    assert len(calls) == len(near)  # the near ones only
    assert not torch.signbit(clocks[-1])  # +0.0, as ATen's (-1.0) * log1p(-0.0)
    torch.manual_seed(0)
    aten = torch.empty(3).exponential_(1)
    torch.manual_seed(0)
    assert torch.equal(pickers.clocks_from(torch.rand(3, dtype=torch.float64)), aten)


def test_draw_refuses_what_multinomial_refuses():
    for bad, message in ((torch.tensor([[0.5, -0.1, 0.6]]), "element < 0"),
                         (torch.tensor([[0.0, 0.0, 0.0]]), "sum of probabilities")):
        with pytest.raises(RuntimeError, match=message):
            draw(bad)
