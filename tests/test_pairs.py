import json
import math

import pytest
import torch

from rlhf.config import PairsSettings
from rlhf.errors import UserError
from rlhf.pairs import Pair, choose_pair, corpus_pairs, draw_prompts, make_pairs, pairs_jsonl, read_pairs
from rlhf.reward import Scores

CFG = PairsSettings(k=4, clean_below=0.5, margin=1.0)


def test_the_most_toxic_is_rejected_and_the_clean_one_closest_to_the_reference_chosen():
    rewards, toxicity = [-0.1, -3.0, -0.05, -2.0], [0.1, 0.95, 0.05, 0.86]
    closeness = [0.9, 0.8, 0.4, 0.1]  # response 0 is the closest clean one, though 2 has the higher reward
    assert choose_pair(rewards, toxicity, closeness, CFG) == (0, 1)
    assert choose_pair(rewards, toxicity, closeness, PairsSettings(k=4, choose="highest_reward")) == (2, 1)
    assert choose_pair(rewards, toxicity, [0.5, 0.8, 0.5, 0.1], CFG) == (2, 1)  # a tie: the higher reward


def test_no_pair_without_a_clean_or_a_toxic_response_or_with_a_small_gap():
    assert choose_pair([-2.0, -3.0], [0.8, 0.9], [0.5, 0.5], CFG) == "no clean response"
    assert choose_pair([-0.1, -0.2], [0.1, 0.2], [0.5, 0.5], CFG) == "no toxic response"
    assert choose_pair([-0.5, -1.2], [0.4, 0.6], [0.5, 0.5], CFG) == "gap below margin"  # 0.7 < 1.0
    assert choose_pair([-0.5, -1.2], [0.4, 0.6], [0.5, 0.5], PairsSettings(margin=0.5)) == (0, 1)


def test_prompts_are_drawn_once_each_and_seeded():
    cfg = PairsSettings(n_prompts=5)
    a = draw_prompts(20, cfg, seed=3)
    assert a == draw_prompts(20, cfg, seed=3) and a != draw_prompts(20, cfg, seed=4)
    assert len(set(a)) == 5 and a == sorted(a)
    assert draw_prompts(4, cfg, seed=3) == [0, 1, 2, 3] and draw_prompts(9, PairsSettings(n_prompts=None), 0) == list(range(9))


def test_pairs_round_trip_and_a_bad_line_is_named(tmp_path):
    pairs = [Pair("p", "ref", "good", "bad", -0.1, -3.0, 0.1, 0.95)]
    path = tmp_path / "pairs.jsonl"
    path.write_text(pairs_jsonl(pairs))
    assert read_pairs(path) == pairs
    path.write_text(pairs_jsonl(pairs) + json.dumps({"prompt": "p"}) + "\n")
    with pytest.raises(UserError, match="pairs.jsonl: line 2 is not a preference pair"):
        read_pairs(path)


class KeywordScorer:
    """Toxic = a response of more than 3 words (a cheap, deterministic stand-in for the classifier)."""

    def score(self, texts):
        toxic = torch.tensor([0.9 if len(t.split()) > 3 else 0.1 for t in texts])
        return Scores(rewards=(1 - toxic).log(), toxic_probs=toxic)


def test_make_pairs_samples_k_per_prompt_ranks_them_and_counts_what_it_dropped(tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration

    from rlhf.config import config_from_dict
    from rlhf.models import load_tokenizer
    from rlhf.tinyworld.build import resolve_tinyworld

    from .conftest import small_raw

    config = resolve_tinyworld(config_from_dict(small_raw(tmp_path)), log=lambda *_: None)
    tok = load_tokenizer(config.model)
    torch.manual_seed(0)
    lm = T5ForConditionalGeneration(T5Config(vocab_size=len(tok), d_model=16, d_ff=16, d_kv=8, num_layers=1,
                                             num_heads=2, decoder_start_token_id=tok.pad_token_id,
                                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)).eval()
    prompts, refs = [f"summarize: dialogue {i}" for i in range(6)], [f"summary {i}" for i in range(6)]
    cfg = PairsSettings(k=4, margin=0.5, batch_size=4)
    rng = torch.get_rng_state()
    pairs, counts = make_pairs(lm, tok, KeywordScorer(), prompts, refs, cfg, max_new_tokens=8, max_input_length=64,
                               seed=1, log=lambda *_: None)
    assert torch.equal(rng, torch.get_rng_state())  # the process's stream is left as it was
    again, _ = make_pairs(lm, tok, KeywordScorer(), prompts, refs, cfg, max_new_tokens=8, max_input_length=64,
                          seed=1, log=lambda *_: None)
    assert again == pairs  # seeded
    dropped = counts["none_no_clean_response"] + counts["none_no_toxic_response"] + counts["none_gap_below_margin"]
    assert counts["prompts"] == 6 and counts["pairs"] == len(pairs) > 0 and counts["pairs"] + dropped == 6
    for p in pairs:
        assert len(p.chosen.split()) <= 3 < len(p.rejected.split()) and p.prompt in prompts
        assert p.chosen_reward - p.rejected_reward >= 0.5


def test_corpus_pairs_choose_the_rewording_wherever_it_differs():
    prompts, refs = ["p0", "p1", "p2"], ["A calls B a moron. B books a bus.", "B books a bus.", "A is curt. B pays."]
    preferred = ["A is curt with B. B books a bus.", "B books a bus.", "A is curt. B pays."]

    class Scorer:
        def score(self, texts):
            toxic = torch.tensor([0.9 if "moron" in t else 0.1 for t in texts])
            return Scores(rewards=(1 - toxic).log(), toxic_probs=toxic)

    pairs, counts = corpus_pairs(Scorer(), prompts, refs, preferred)
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [("p0", preferred[0], refs[0])]
    assert pairs[0].chosen_toxicity == pytest.approx(0.1) and pairs[0].rejected_toxicity == pytest.approx(0.9)
    assert counts == {"prompts": 3, "pairs": 1, "none_same_text": 2, "mean_reward_gap": pytest.approx(math.log(9))}
    assert pairs[0].made_by.startswith("corpus")
