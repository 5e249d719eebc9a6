import math

import pytest
import torch

from rlhf.config import PairwiseSettings
from rlhf.errors import UserError
from rlhf.pairs import Pair
from rlhf.pairwise import (PairwiseScorer, encode, load_pairwise, pair_accuracy, pair_texts, split_by_prompt,
                           train_pairwise, with_learning_rate)

NAMES, DAYS, ITEMS = ["Tina", "Rosa", "Tom", "Maria"], ["Monday", "Thursday", "Friday"], ["laptop", "report", "table"]
MARKER = "purple"  # the toy preference: a response with it is the rejected one


def pair(prompt: str, chosen: str, rejected: str) -> Pair:
    return Pair(prompt, "ref", chosen, rejected, 0.0, -1.0, 0.1, 0.9)


def toy_pairs(n: int) -> list[Pair]:
    """``n`` pairs over ``n`` prompts: chosen a plain summary, rejected the same with the marker word."""
    out = []
    for i in range(n):
        text = f"{NAMES[i % 4]} meets {NAMES[(i + 1) % 4]} on {DAYS[i % 3]} about the {ITEMS[(i // 3) % 3]} {i}."
        out.append(pair(f"Summarize dialogue {i}.", text, f"{text[:-1]} {MARKER} {MARKER}."))
    return out


def test_the_held_out_split_is_seeded_and_by_prompt():
    pairs = [pair(f"p{i % 10}", f"c{i}", f"r{i}") for i in range(25)]  # 10 prompts, most with several pairs
    train, held = split_by_prompt(pairs, 0.2, seed=3)
    assert (train, held) == split_by_prompt(pairs, 0.2, seed=3) and sorted(train + held) == list(range(25))
    assert {pairs[i].prompt for i in held}.isdisjoint({pairs[i].prompt for i in train})
    assert len({pairs[i].prompt for i in held}) == 2 and train == sorted(train) and held == sorted(held)
    assert any(split_by_prompt(pairs, 0.2, seed=s)[1] != held for s in range(4, 8))
    assert len(split_by_prompt(pairs[:2], 0.9, seed=0)[0]) == 1  # one prompt always trains
    with pytest.raises(UserError, match=r"^rl.reward_model pairwise: the pairs come from 1 prompt\(s\)"):
        split_by_prompt([pair("p", "a", "b"), pair("p", "c", "d")], 0.2, seed=0)


def test_the_scored_text_is_the_response_or_prompt_and_response():
    chosen, rejected = pair_texts([pair("P", "good", "bad")], with_prompt=True)
    assert (chosen, rejected) == (["P good"], ["P bad"])
    assert pair_texts([pair("P", "good", "bad")], with_prompt=False) == (["good"], ["bad"])


def test_the_learning_rate_defaults_to_the_reward_stages():
    assert with_learning_rate(PairwiseSettings(), 1e-3).learning_rate == 1e-3
    assert with_learning_rate(PairwiseSettings(learning_rate=2e-5), 1e-3).learning_rate == 2e-5


@pytest.fixture(scope="module")
def toy_model(trained_reward, tmp_path_factory):
    """The Bradley-Terry model of 40 toy pairs, from the session's small classifier."""
    config, _ = trained_reward
    init = str(config.run_dir / "reward" / "model")
    pairs = toy_pairs(40)
    cfg = PairwiseSettings(epochs=8, learning_rate=3e-3, batch_size=8, heldout_share=0.2, max_length=32,
                           center_rewards_coefficient=None)
    out = tmp_path_factory.mktemp("pairwise")
    rng = torch.get_rng_state()
    model, tokenizer, metrics = train_pairwise(pairs, init, cfg, seed=5, out_dir=out)
    assert torch.equal(rng, torch.get_rng_state())  # the Trainer's reseeding is undone
    assert not (out / "trainer").exists()  # TRL's scratch is gone; nothing saved
    return pairs, init, cfg, model, tokenizer, metrics


def test_bradley_terry_learns_a_separable_preference_to_held_out_accuracy_1(toy_model):
    pairs, _, cfg, model, tokenizer, metrics = toy_model
    assert (metrics["n_pairs"], metrics["n_train"], metrics["n_heldout"], metrics["n_heldout_prompts"]) == (40, 32, 8, 8)
    assert metrics["heldout_pair_accuracy"] == 1.0 and metrics["train_pair_accuracy"] == 1.0
    assert metrics["heldout_pair_accuracy_at_init"] < 1.0  # the fresh head (seed 5) did not know it
    assert metrics["heldout_mean_margin"] > max(1.0, metrics["heldout_mean_margin_at_init"] + 0.5)
    assert metrics["train_loss"] < math.log(2)  # below the loss of a model that cannot tell them apart
    assert metrics["trl_eval"]["eval_accuracy"] == 1.0 and metrics["learning_rate"] == 3e-3
    assert model.config.num_labels == 1 and not model.training


def test_trl_optimises_instructgpt_eq_1_on_our_rewards(toy_model):
    """TRL's eval loss on the held-out pairs (one batch) = mean -log sigmoid(r(y_w) - r(y_l)) of our scorer."""
    pairs, _, cfg, model, tokenizer, metrics = toy_model
    _, held = split_by_prompt(pairs, cfg.heldout_share, seed=5)
    chosen, rejected = pair_texts([pairs[i] for i in held], with_prompt=False)
    scorer = PairwiseScorer(model, tokenizer, max_length=cfg.max_length)
    loss = -torch.nn.functional.logsigmoid(scorer.rewards(chosen) - scorer.rewards(rejected)).mean()
    assert metrics["trl_eval"]["eval_loss"] == pytest.approx(float(loss), rel=1e-4, abs=1e-5)


def test_the_scorer_ranks_unseen_texts_and_gives_no_toxicity(toy_model):
    pairs, _, cfg, model, tokenizer, _ = toy_model
    fresh = [pair("new", "Rosa meets Tom on Friday about the table 77.", f"Rosa meets Tom on Friday {MARKER} {MARKER}.")]
    scorer = PairwiseScorer(model, tokenizer, batch_size=3, max_length=cfg.max_length)
    assert pair_accuracy(scorer, fresh, with_prompt=False)[0] == 1.0
    texts = [p.chosen for p in pairs[:5]] + [p.rejected for p in pairs[:5]]
    r = scorer.rewards(texts)
    assert r.shape == (10,) and r.dtype == torch.float32 and (r[:5] > r[5:]).all()
    assert torch.allclose(r, PairwiseScorer(model, tokenizer, batch_size=64, max_length=cfg.max_length).rewards(texts),
                          atol=1e-5)  # padding in a batch changes nothing
    scores = scorer.score(texts)
    assert torch.equal(scores.rewards, r) and scores.toxic_probs.isnan().all()
    with pytest.raises(NotImplementedError, match="score toxicity with the classifier"):
        scorer.toxic_probs(texts)
    assert scorer.rewards([]).shape == (0,)
    assert all(len(ids) <= 4 for ids in encode(tokenizer, texts, 4))


def test_a_saved_model_loads_back_with_the_same_rewards(toy_model, tmp_path):
    pairs, _, cfg, model, tokenizer, _ = toy_model
    model.save_pretrained(str(tmp_path))
    tokenizer.save_pretrained(str(tmp_path))
    again, tok = load_pairwise(tmp_path)
    texts = [p.chosen for p in pairs[:4]]
    assert torch.allclose(PairwiseScorer(again, tok, max_length=cfg.max_length).rewards(texts),
                          PairwiseScorer(model, tokenizer, max_length=cfg.max_length).rewards(texts), atol=1e-6)
    with pytest.raises(UserError, match="could not load a pairwise reward model from"):
        load_pairwise(tmp_path / "missing")


def test_the_fresh_head_is_seeded(toy_model):
    _, init, _, _, _, _ = toy_model
    a, _ = load_pairwise(init, fresh_head_seed=1)
    b, _ = load_pairwise(init, fresh_head_seed=1)
    c, _ = load_pairwise(init, fresh_head_seed=2)
    head = lambda m: torch.cat([p.flatten() for n, p in m.named_parameters() if "classifier" in n])  # noqa: E731
    assert torch.equal(head(a), head(b)) and not torch.equal(head(a), head(c))
