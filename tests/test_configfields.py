from typing import Literal, Optional, Union

import pytest

from rlhf.config import ExperimentConfig, config_from_dict, load_config, to_dict
from rlhf.configfields import (
    all_of,
    describe_keys,
    each,
    fraction,
    non_empty,
    non_negative,
    optional,
    path_name,
    positive,
    seed_value,
    type_name,
    unit_closed,
    unit_open,
    unit_open_closed,
)
from rlhf.errors import UserError

from .conftest import write


@pytest.mark.parametrize("override, message", [
    ("prompt.shots=[]", r"'prompt.shots': value \[\] must not be empty"),
    ("prompt.settings=[]", r"'prompt.settings': value \[\] must not be empty"),
])
def test_empty_prompt_lists_are_refused(tmp_path, override, message):
    with pytest.raises(UserError, match=message):
        load_config(write(tmp_path, {"seed": 1}), [override])


@pytest.mark.parametrize("check, value, message", [
    (positive, 0, "must be > 0"), (non_negative, -1, "must be >= 0"), (unit_open_closed, 0, "must be in (0, 1]"),
    (unit_open, 1, "must be in (0, 1)"), (unit_closed, 1.5, "must be in [0, 1]"), (fraction, 1, "must be in [0, 1)"),
    (seed_value, 2**32, "must be in [0, 4294967295]"), (non_empty, [], "must not be empty"),
    (path_name, ".hidden", "must be a plain folder name (no '/', '\\' or leading '.')"),
    (path_name, "a/b", "must be a plain folder name (no '/', '\\' or leading '.')"),
    (each(positive), [1, 0], "must be > 0 (item 0)"), (all_of(non_empty, each(positive)), [], "must not be empty"),
    (optional(positive), -1, "must be > 0"),
])
def test_each_check_names_what_is_wrong_and_passes_good_values(check, value, message):
    assert check(value) == message
    good = {positive: 1, non_negative: 0, unit_open_closed: 1, unit_open: 0.5, unit_closed: 0, fraction: 0,
            seed_value: 2**32 - 1, path_name: "run-1", non_empty: [1]}
    if check in good:
        assert check(good[check]) is None
    assert optional(positive)(None) is None


def test_types_in_words():
    assert type_name(int) == "int" and type_name(Optional[float]) == "float or null"
    assert type_name(Literal["k1", "k3"]) == "one of 'k1', 'k3'" and type_name(list[str]) == "list of str"
    assert type_name(Union[str, list[str]]) == "str or list of str"


def test_describe_keys_lists_type_default_value_here_and_doc():
    config = config_from_dict({"rl": {"kl": {"target": 2.0}}})
    text = describe_keys(ExperimentConfig, to_dict(config), "rl.kl")
    assert text.splitlines() == [
        "rl.kl: section",
        "    the KL penalty in the reward (ppo, rloo) and its coefficient's controller",
        "rl.kl.controller: one of 'adaptive', 'fixed' = 'adaptive'",
        "rl.kl.init_kl_coef: float = 0.2",
        "rl.kl.target: float = 6.0  (here: 2.0)",
        "    adaptive: the KL (nats per response) to steer to",
        "rl.kl.horizon: int = 10000",
        "    adaptive: samples over which the coefficient adapts",
        "rl.kl.estimator: one of 'k1', 'k3' = 'k1'",
        "    k1 = logprob - ref_logprob; k3 = Schulman's non-negative estimator",
    ]
    every = describe_keys(ExperimentConfig, to_dict(config))
    assert "sft.variants[].learning_rate: float = 0.0005" in every and "tinyworld.seed: int = 0" in every
    keys = [line.split(":")[0] for line in every.splitlines() if not line.startswith(" ")]
    assert len(keys) == len(set(keys)) > 100  # every key once
    with pytest.raises(UserError, match=r"^option --keys: no config key or section 'rl.kll'$"):
        describe_keys(ExperimentConfig, to_dict(config), "rl.kll")
