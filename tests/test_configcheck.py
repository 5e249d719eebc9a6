import dataclasses

import pytest

from rlhf.config import RlConfig, config_from_dict, load_config
from rlhf.configcheck import check_update_plan, validate
from rlhf.errors import UserError

from .conftest import write


@pytest.mark.parametrize("horizon", [1, 3, 4])
def test_adaptive_kl_horizon_must_exceed_a_fifth_of_the_batch(tmp_path, horizon):
    """kl_coef *= 1 - 0.2 x batch_size / horizon at low KL: zero or negative for horizon <= 0.2 x batch_size."""
    overrides = ["rl.batch_size=20", f"rl.kl.horizon={horizon}"]
    with pytest.raises(UserError, match=rf"'rl.kl.horizon': value {horizon} must be > 0.2 x rl.batch_size \(20\)"):
        load_config(write(tmp_path, {"seed": 1}), overrides)
    assert load_config(write(tmp_path, {"seed": 1}), ["rl.batch_size=20", "rl.kl.horizon=5"]).rl.kl.horizon == 5
    fixed = load_config(write(tmp_path, {"seed": 1}), [*overrides, "rl.kl.controller=fixed"])
    assert fixed.rl.kl.horizon == horizon  # the fixed controller never reads it


def cfg(**kw):
    return dataclasses.replace(RlConfig(), **{"batch_size": 16, "mini_batch_size": 4, "epochs": 4, **kw})


def test_every_process_runs_as_many_passes_and_accumulation_ends_in_the_update():
    assert cfg().mini_batches_per_update(1) == 16 and cfg().mini_batches_per_update(2) == 16
    assert cfg(mini_batch_size=1).mini_batches_per_update(4) == 16  # one rollout a pass on each
    check_update_plan(cfg(), 4)
    check_update_plan(cfg(gradient_accumulation_steps=4), 1)
    with pytest.raises(UserError, match=r"^config key 'rl.batch_size': 16 rollouts do not split evenly over 3 processes"):
        check_update_plan(cfg(), 3)
    with pytest.raises(UserError, match=r"^config key 'rl.gradient_accumulation_steps': 3 does not divide the 16 "):
        check_update_plan(cfg(gradient_accumulation_steps=3), 1)
    with pytest.raises(UserError, match=r"^config key 'rl.target_kl': an early stop"):
        check_update_plan(cfg(gradient_accumulation_steps=2, target_kl=0.1), 1)


@pytest.mark.parametrize("overrides, message", [
    (["sft.save_steps=30", "sft.eval_steps=20"], r"^config key 'sft.save_steps': value 30 must be a multiple of "
                                                 r"sft.eval_steps \(20\)"),
    (["sft.variants=[{name: a}, {name: a}]", "rl.start_from=a"], r"^config key 'sft.variants': names \['a', 'a'\] must "
                                                                  r"be unique"),
    (["sft.variants=[{name: base}]", "rl.start_from=base"], r"'sft.variants': names \['base'\]"),
    (["rl.batch_size=6", "rl.mini_batch_size=4"], r"^config key 'rl.batch_size': value 6 must be a multiple of "
                                                    r"rl.mini_batch_size \(4\)"),
    (["rl.toxic_share=0.01", "data.toxic_column=toxic"], r"^config key 'rl.toxic_share': value 0.01 gives 0 of 16 "
                                                          r"prompts per batch"),
    (["rl.toxic_share=0.5"], r"^config key 'rl.toxic_share': value 0.5 needs data.toxic_column"),
    (["rl.frozen_encoder=true", "rl.policy=full"], r"^config key 'rl.frozen_encoder': needs rl.policy lora"),
    (["rl.start_from=fulll"], r"^config key 'rl.start_from': 'fulll' is not an SFT variant \(full, lora\) or 'base'"),
    (["rl.gradient_accumulation_steps=3"], r"^config key 'rl.gradient_accumulation_steps': 3 does not divide the 16"),
])
def test_keys_that_contradict_each_other_are_refused_naming_both(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        load_config(write(tmp_path, {"seed": 1}), overrides)


def test_a_stage_only_checks_what_it_needs(tmp_path):
    path = write(tmp_path, {"reward": {"data": {"source": None}}})
    assert load_config(path).reward.data.source is None  # sft alone never reads the reward data
    assert load_config(path, stages=["sft"]).seed == 42
    with pytest.raises(UserError, match=r"^config key 'reward.data.source' is not set"):
        load_config(path, stages=["reward"])
    assert load_config(path, ["reward.pretrained=some/classifier"], stages=["reward"]).reward.pretrained


def test_validate_is_called_for_configs_built_from_a_dict():
    with pytest.raises(UserError, match="'rl.start_from'"):
        config_from_dict({"rl": {"start_from": "nope"}})
    validate(config_from_dict({}))  # the defaults agree with each other


@pytest.mark.parametrize("overrides, message", [
    (["rl.algorithm=dpo", "rl.group_size=4"], "'rl.group_size': value 4 must be 2 for rl.algorithm dpo"),
    (["rl.algorithm=ipo", "rl.group_size=2", "rl.toxic_share=0.5"], "'rl.toxic_share': value 0.5 is for the online"),
    (["rl.algorithm=dpo", "rl.group_size=2", "rl.target_kl=0.1"], "'rl.target_kl': value 0.1 stops the clipped"),
    (["rl.algorithm=dpo", "rl.group_size=2", "rl.pairs.k=1"], "'rl.pairs.k'"),
    (["rl.algorithm=ipo", "rl.group_size=2", "rl.reward_model=pairwise"],
     r"^config key 'rl.reward_model': value 'pairwise' is for the online methods \(ppo, rloo, grpo\); rl.algorithm "
     r"ipo trains on its pairs with no reward model"),
    (["rl.algorithm=rloo", "rl.group_size=2", "rl.preference.nll_coef=1"],
     r"^config key 'rl.preference.nll_coef': value 1.0 weighs the chosen response's NLL in DPO / IPO; rl.algorithm "
     r"rloo has no pairs"),
])
def test_preference_methods_refuse_what_they_cannot_honour(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        load_config(write(tmp_path, {"seed": 1}), overrides)
    ok = load_config(write(tmp_path, {"seed": 1}), ["rl.algorithm=dpo", "rl.group_size=2", "rl.preference.beta=0.5",
                                                               "rl.preference.nll_coef=1"])
    assert ok.rl.preference.beta == 0.5 and ok.rl.preference.nll_coef == 1.0 and ok.rl.pairs.choose == "closest_to_reference"


def test_corpus_pairs_need_their_column(tmp_path):
    with pytest.raises(UserError, match="'rl.pairs.corpus_column': rl.pairs.source corpus needs the column"):
        load_config(write(tmp_path, {"seed": 1}), ["rl.algorithm=dpo", "rl.group_size=2", "rl.pairs.source=corpus"])


def test_a_pairwise_reward_model_is_for_the_online_methods(tmp_path):
    for overrides in ([], ["rl.algorithm=grpo", "rl.group_size=4"], ["rl.algorithm=rloo", "rl.group_size=2"]):
        config = load_config(write(tmp_path, {"seed": 1}), [*overrides, "rl.reward_model=pairwise",
                                                             "rl.pairwise.heldout_share=0.25"])
        assert config.rl.reward_model == "pairwise" and config.rl.pairwise.heldout_share == 0.25
    assert load_config(write(tmp_path, {"seed": 1})).rl.reward_model == "classifier"
    with pytest.raises(UserError, match=r"'rl.pairwise.heldout_share'.*must be in \(0, 1\)"):
        load_config(write(tmp_path, {"seed": 1}), ["rl.pairwise.heldout_share=0"])
