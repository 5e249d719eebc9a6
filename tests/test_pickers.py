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


@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.99])
@pytest.mark.parametrize("seed", range(6))
def test_top_p_filter_is_the_warper(seed, top_p):
    scores = random_scores(seed)
    assert torch.equal(top_p_filter(scores, top_p), TopPLogitsWarper(top_p)(None, scores))


def test_top_p_filter_a_tie_across_the_cut_and_nan_go_to_the_warper():
    # cumulative 0.017, 0.035, 0.052, 1: at top_p 0.97 the cut falls between two equal scores, where
    # only the sort's order among equals says which token goes
    scores = torch.tensor([[1.0, 1.0, 1.0, 5.0]])
    out = top_p_filter(scores, 0.97)
    assert torch.equal(out, TopPLogitsWarper(0.97)(None, scores))
    assert out.isinf().sum() == 1
    with_nan = torch.tensor([[0.0, float("nan"), 2.0]])
    torch.testing.assert_close(top_p_filter(with_nan, 0.9), TopPLogitsWarper(0.9)(None, with_nan),
                               rtol=0, atol=0, equal_nan=True)


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
    want = multinomial_and_after(probs, seed)
    got = draw_and_after(probs, seed)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_draw_in_many_blocks_and_with_every_clock_recomputed(monkeypatch):
    probs = random_scores(5, rows=40, vocab=50).softmax(-1)
    want = multinomial_and_after(probs, 3)
    monkeypatch.setattr(pickers, "BLOCK", 120)  # two rows per block
    assert all(map(torch.equal, draw_and_after(probs, 3), want))
    monkeypatch.setattr(pickers, "NEAR", pickers.MIDPOINT)  # every clock by the C library's log1p
    assert all(map(torch.equal, draw_and_after(probs, 3), want))


def test_draw_refuses_what_multinomial_refuses():
    for bad, message in ((torch.tensor([[0.5, -0.1, 0.6]]), "element < 0"),
                         (torch.tensor([[0.0, 0.0, 0.0]]), "sum of probabilities")):
        with pytest.raises(RuntimeError, match=message):
            draw(bad)
