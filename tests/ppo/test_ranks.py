import dataclasses

import pytest
import torch

from rlhf.config import PpoConfig
from rlhf.errors import UserError
from rlhf.configcheck import check_update_plan
from rlhf.ppo.ranks import generator_states, restore_generators


def cfg(**kw):
    return dataclasses.replace(PpoConfig(), **{"batch_size": 16, "mini_batch_size": 4, "ppo_epochs": 4, **kw})


def test_every_process_runs_as_many_passes_and_accumulation_ends_in_the_update():
    assert cfg().mini_batches_per_update(1) == 16 and cfg().mini_batches_per_update(2) == 16
    assert cfg(mini_batch_size=1).mini_batches_per_update(4) == 16  # one rollout a pass on each
    check_update_plan(cfg(), 4)
    check_update_plan(cfg(gradient_accumulation_steps=4), 1)
    with pytest.raises(UserError, match=r"^config key 'ppo.batch_size': 16 rollouts do not split evenly over 3 processes"):
        check_update_plan(cfg(), 3)
    with pytest.raises(UserError, match=r"^config key 'ppo.gradient_accumulation_steps': 3 does not divide the 16 "):
        check_update_plan(cfg(gradient_accumulation_steps=3), 1)
    with pytest.raises(UserError, match=r"^config key 'ppo.target_kl': an early stop"):
        check_update_plan(cfg(gradient_accumulation_steps=2, target_kl=0.1), 1)


def test_generators_come_back_as_saved_and_a_new_process_is_seeded_afresh():
    torch.manual_seed(3)
    states = generator_states(0, 1, torch.device("cpu"))
    assert sorted(states) == ["torch"]
    drawn = torch.rand(4)
    restore_generators(states, 0, torch.device("cpu"), seed=1)
    assert torch.equal(torch.rand(4), drawn)
    restore_generators(states, 2, torch.device("cpu"), seed=1)  # no state for rank 2: seed 1 + 2
    fresh = torch.rand(4)
    torch.manual_seed(3)
    assert torch.equal(torch.rand(4), fresh)
