import pytest
import torch

from rlhf.errors import UserError
from rlhf.rl import objectives
from rlhf.rl.ptx import PtxPairs, pad_cat, ptx_pairs
from rlhf.seq2seq import decoder_inputs

from .conftest import WordCountScorer, make


def test_sft_loss_is_the_mean_nll_of_real_target_tokens_only():
    logits = torch.randn(2, 3, 5)
    targets = torch.tensor([[1, 2, 0], [4, 0, 0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    logp = logits.log_softmax(-1)
    expected = -(logp[0, 0, 1] + logp[0, 1, 2] + logp[1, 0, 4]) / 3
    torch.testing.assert_close(objectives.sft_loss(logits, targets, mask), expected)
    assert objectives.sft_loss(logits.bfloat16(), targets, mask).dtype == torch.float32


def test_pad_cat_right_pads_both_parts_to_the_longer_width():
    a, b = torch.ones(2, 3, dtype=torch.long), torch.full((1, 5), 7)
    out = pad_cat(a, b, value=0)
    assert out.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [7, 7, 7, 7, 7]]
    states = pad_cat(torch.ones(1, 4, 2), torch.ones(2, 1, 2), 0.0)
    assert states.shape == (3, 4, 2) and states[1:, 1:].abs().sum() == 0


def test_pairs_leave_out_the_dialogues_marked_toxic_and_refuse_when_none_is_left():
    pairs = ptx_pairs(["a", "b", "c"], ["A", "B", "C"], [False, True, False], 0.5, 64)
    assert pairs.prompts == ["a", "c"] and pairs.summaries == ["A", "C"]
    assert len(ptx_pairs(["a", "b"], ["A", "B"], None, 0.5, 64)) == 2  # no toxic column: every pair
    with pytest.raises(UserError, match=r"^config key 'rl.ptx_coef': value 0.5 needs training pairs not marked "
                                        r"toxic, but all 2 are \(data.toxic_column\)$"):
        ptx_pairs(["a", "b"], ["A", "B"], [True, True], 0.5, 64)


def test_draws_cover_every_pair_once_per_pass_and_are_a_function_of_the_draw():
    pairs = PtxPairs([str(i) for i in range(10)], [str(i) for i in range(10)], 8)
    first_pass = pairs.indices(0, 5, seed=3) + pairs.indices(1, 5, seed=3)
    assert sorted(first_pass) == list(range(10))
    assert pairs.indices(1, 5, seed=3) == pairs.indices(1, 5, seed=3) != pairs.indices(1, 5, seed=4)


def test_one_forward_with_ptx_rows_appended_gives_the_ppo_rows_what_a_forward_alone_does(tmp_path):
    trainer, _ = make(tmp_path, ptx_coef=1.0)
    q = trainer.tokenizer(trainer.batch_prompts(0)[:3], return_tensors="pt", padding=True)
    dec = decoder_inputs(torch.randint(3, 100, (3, 5)), trainer.start_token)
    ptx = trainer.ptx_batch(0)
    assert ptx.targets.shape[1] > 5  # the appended rows are wider, so the PPO rows get padded
    (ids, att, d), _ = trainer.with_ptx((q.input_ids, q.attention_mask, dec), None, ptx)
    with torch.no_grad():
        alone = trainer.policy(q.input_ids, q.attention_mask, dec)
        joint = trainer.policy(ids, att, d)
    torch.testing.assert_close(joint.logits[:3, :5], alone.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(joint.values[:3, :5], alone.values, atol=1e-5, rtol=1e-5)


def clean_nll(trainer) -> float:
    with torch.no_grad():
        ptx = trainer.ptx.encode(trainer.tokenizer, list(range(16)), 256, "cpu")
        out = trainer.policy(ptx.queries.input_ids, ptx.queries.attention_mask,
                             decoder_inputs(ptx.targets, trainer.start_token), with_values=False)
        return float(objectives.sft_loss(out.logits, ptx.targets, ptx.target_mask))


@pytest.mark.parametrize("frozen_encoder", [False, True])
def test_ptx_pulls_the_policy_toward_the_clean_references_where_the_reward_is_flat(tmp_path, frozen_encoder):
    torch.manual_seed(0)
    trainer, _ = make(tmp_path, scorer=WordCountScorer(1.0), ptx_coef=1.0, frozen_encoder=frozen_encoder)
    before = clean_nll(trainer)
    stats = [trainer.step() for _ in range(2)]
    assert all(s["loss/ptx"] > 0 for s in stats)
    assert clean_nll(trainer) < before - 0.05


def test_ptx_coef_without_pairs_is_refused_naming_the_key(tmp_path):
    with pytest.raises(UserError, match=r"^config key 'rl.ptx_coef': value 0.5 needs supervised training pairs$"):
        make(tmp_path, with_ptx=False, ptx_coef=0.5)


@pytest.mark.parametrize("world", [2, 8])
def test_every_rank_gets_as_many_pairs_as_its_mini_batch_has_rollouts(tmp_path, world):
    trainer, _ = make(tmp_path, ptx_coef=1.0)  # mini_batch_size 4: 2 rollouts per rank on 2, 1 (at least) on 8

    class Rank:
        def __init__(self, i):
            self.process_index, self.num_processes, self.device = i, world, torch.device("cpu")

    shares = []
    for rank in range(world):
        trainer.accelerator = Rank(rank)
        shares.append(trainer.ptx_batch(3).targets)
    assert all(len(s) == max(1, 4 // world) for s in shares)
