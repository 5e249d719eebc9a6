from rlhf.rl.evaluation import before_after
from rlhf.reward import load_scorer

from .conftest import make


def test_before_after_compares_the_reference_and_the_policy_on_the_same_prompts(tmp_path, trained_reward):
    from rlhf.data import load_eval_dialogues

    trainer, config = make(tmp_path)
    test = load_eval_dialogues(config.data, config.seed, 3)
    reward_config, _ = trained_reward
    scorer = load_scorer(reward_config.reward, reward_config.run_dir / "reward")
    result = before_after(trainer.policy, trainer.tokenizer, scorer, test, config)
    s = result["summary"]
    assert s["n_eval"] == 3 and len(result["rows"]) == 3
    assert s["greedy_toxicity_before"] == s["greedy_toxicity_after"]  # untrained: the LoRA policy is its reference
    assert [r["before"] for r in result["rows"]] == [r["after"] for r in result["rows"]]
    assert 0 <= s["greedy_toxic_share_before"] <= 1 and 0 <= s["rougeL_before"] <= 1
