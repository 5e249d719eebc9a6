import torch

from rlhf.rl.ranks import generator_states, restore_generators


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
