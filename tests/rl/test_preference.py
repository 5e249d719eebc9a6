import math

import pytest
import torch

from rlhf.config import config_from_dict
from rlhf.data import load_splits
from rlhf.errors import UserError
from rlhf.models import load_tokenizer
from rlhf.pairs import Pair
from rlhf.prompts import format_prompt
from rlhf.rl.model import build_policy
from rlhf.rl.preference import PreferenceTrainer
from rlhf.rl.rollout import score_responses
from rlhf.seq2seq import encode_queries, encode_responses
from rlhf.tinyworld.build import resolve_tinyworld

from ..conftest import small_raw
from .conftest import PPO, WordCountScorer, straight_and_resumed

DPO = {**PPO, "algorithm": "dpo", "group_size": 2, "batch_size": 8, "mini_batch_size": 4, "epochs": 1,
       "max_new_tokens": 48}  # the whole of a summary and its insult


def make(tmp_path, **rl):
    """A DPO / IPO trainer on the small test world; its pairs: the reference summary chosen, the
    summary with an insult appended rejected."""
    config = resolve_tinyworld(config_from_dict(small_raw(tmp_path, rl={**DPO, **rl})), log=lambda *_: None)
    train = load_splits(config.data, config.seed)["train"]
    pairs = [Pair(format_prompt(d, "summarize"), s, s, s + " you idiot", -0.1, -3.0, 0.1, 0.95)
             for d, s in zip(train["dialogue"][:12], train["summary"][:12])]
    trainer = PreferenceTrainer(build_policy(config, None), load_tokenizer(config.model), WordCountScorer(), pairs,
                                config.rl, seed=config.seed, max_input_length=256)
    return trainer, pairs


def margins(trainer, pairs) -> torch.Tensor:
    """[pairs] log(pi/pi_ref)(chosen) - log(pi/pi_ref)(rejected), for every pair."""
    tok = trainer.tokenizer
    q = encode_queries(tok, [p.prompt for p in pairs], 256)
    r, mask = encode_responses(tok, [t for p in pairs for t in (p.chosen, p.rejected)], trainer.cfg.max_new_tokens)
    s = score_responses(trainer.policy, q, r, mask, trainer.start_token, 8, group_size=2)
    gap = ((s.logprobs - s.ref_logprobs) * mask).sum(-1).view(-1, 2)
    return gap[:, 0] - gap[:, 1]


@pytest.mark.parametrize("algorithm", ["dpo", "ipo"])
def test_a_step_starts_at_the_reference_and_moves_toward_the_chosen(tmp_path, algorithm):
    torch.manual_seed(0)
    trainer, pairs = make(tmp_path, algorithm=algorithm, learning_rate=5e-3)
    assert trainer.policy.value_head is None
    assert torch.equal(margins(trainer, pairs), torch.zeros(len(pairs)))  # the policy is the reference at step 0
    rows = []
    trainer.policy.lm.get_encoder().register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    stats = trainer.step()
    # 4 pairs: encoded once for the policy (chunks of 2) and once for the reference, then 2 per mini-batch:
    # a pair's chosen and rejected share one encoder pass
    assert rows == [2, 2, 4, 2, 2]
    assert "objective/kl" not in stats  # the rows are the pairs', not the policy's samples
    first = math.log(2) if algorithm == "dpo" else (1 / (2 * 0.1)) ** 2  # the loss at a zero margin
    assert 0 < stats["loss/policy"] <= first + 1e-5 and stats["update/mini_batches"] == 2
    for _ in range(3):
        stats = trainer.step()
    assert margins(trainer, pairs).mean() > 0.5 and stats["preference/accuracy"] > 0.5
    assert stats["preference/reward_chosen"] > stats["preference/reward_rejected"]


def test_a_preference_run_resumes_as_a_straight_run(tmp_path):
    straight, resumed, _ = straight_and_resumed(lambda folder: make(folder)[0], tmp_path, before=1, after=2)
    for (name, a), b in zip(straight.policy.trainable_state_dict().items(), resumed.policy.trainable_state_dict().values()):
        torch.testing.assert_close(a, b, msg=name, atol=0, rtol=0)


def test_no_pairs_is_one_line(tmp_path):
    config = resolve_tinyworld(config_from_dict(small_raw(tmp_path, rl=DPO)), log=lambda *_: None)
    with pytest.raises(UserError, match="no preference pairs to train on"):
        PreferenceTrainer(build_policy(config, None), load_tokenizer(config.model), WordCountScorer(), [], config.rl,
                          seed=1, max_input_length=256)
