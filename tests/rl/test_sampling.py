import pytest

from rlhf.config import config_from_dict
from rlhf.errors import UserError
from rlhf.rl.sampling import batch_indices, stream
from rlhf.rl.trainer import check_strata


def test_stream_gives_every_item_once_per_pass_before_any_twice():
    pool = [3, 5, 7, 11, 13]
    first, second = stream(pool, 0, 5, seed=1), stream(pool, 5, 5, seed=1)
    assert sorted(first) == pool and sorted(second) == pool and first != second
    assert stream(pool, 2, 6, seed=1) == (first + second)[2:8]  # a resumed run draws the same items


def test_without_a_toxic_share_batches_are_the_plain_stream():
    assert batch_indices(20, 8, 3, seed=42) == stream(list(range(20)), 24, 8, seed=42)


def test_every_batch_holds_exactly_the_configured_share_of_toxic_prompts():
    toxic = [i % 4 == 0 for i in range(40)]  # a quarter toxic, as in the tiny world
    seen_toxic = []
    for step in range(10):
        idx = batch_indices(40, 8, step, seed=7, toxic=toxic, n_toxic=4)
        assert len(idx) == 8 and sum(toxic[i] for i in idx) == 4
        assert idx == batch_indices(40, 8, step, seed=7, toxic=toxic, n_toxic=4)  # a function of the step
        seen_toxic += [i for i in idx if toxic[i]]
    assert set(seen_toxic[:12]) == {i for i in range(40) if toxic[i]}  # all 10 in the first pass (3 batches)
    positions = [k for k, i in enumerate(batch_indices(40, 8, 0, seed=7, toxic=toxic, n_toxic=4)) if toxic[i]]
    assert positions != [0, 1, 2, 3]  # mixed, so that each process's [rank::world] share holds both


@pytest.mark.parametrize("ppo, data, message", [
    ({"toxic_share": 1.0}, {"toxic_column": "toxic"}, "'rl.toxic_share': value 1.0"),
    ({"toxic_share": 0.01, "batch_size": 16}, {"toxic_column": "toxic"}, "gives 0 of 16 prompts per batch"),
    ({"toxic_share": 0.5}, {}, "'rl.toxic_share': value 0.5 needs data.toxic_column"),
])
def test_config_refuses_a_share_it_cannot_draw(ppo, data, message):
    with pytest.raises(UserError, match=message):
        config_from_dict({"rl": ppo, "data": data})


def test_trainer_refuses_training_prompts_without_both_strata():
    cfg = config_from_dict({"rl": {"toxic_share": 0.5}, "data": {"toxic_column": "toxic"}}).rl
    with pytest.raises(UserError, match="needs toxic and clean training prompts, but 0 of 3 are toxic"):
        check_strata([False, False, False], cfg, 3)
    with pytest.raises(UserError, match="needs a toxic flag for every training prompt"):
        check_strata([True, False], cfg, 3)
    assert check_strata([True, False, False], cfg, 3) == [True, False, False]
