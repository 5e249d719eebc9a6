"""Before/after comparison of the SFT policy (the reference) and the PPO policy on held-out prompts."""

from __future__ import annotations

from statistics import mean

from rlhf.config import ExperimentConfig, GenerationSetting
from rlhf.data import EvalDialogue
from rlhf.generation import generate
from rlhf.metrics import rouge
from rlhf.prompts import fit_prompts
from rlhf.reward import scored_texts
from rlhf.seq2seq import reference


def greedy(lm, tokenizer, prompts: list[str], config: ExperimentConfig) -> list[str]:
    return generate(lm, tokenizer, prompts, GenerationSetting("greedy"), max_new_tokens=config.sft.max_new_tokens,
                    batch_size=config.rl.eval_batch_size, max_input_length=config.model.max_input_length,
                    seed=config.seed, compile=config.model.compile_decoding).texts


def before_after(policy, tokenizer, scorer, test: list[EvalDialogue], config: ExperimentConfig) -> dict:
    """Greedy responses of the reference (before) and the policy (after) on the same prompts,
    their reward-model toxicity (toxic probability) and ROUGE against the references."""
    prompts, _ = fit_prompts([d.dialogue for d in test], config.data.template, tokenizer, config.model.max_input_length)
    references = [d.references for d in test]
    with reference(policy.lm, policy.ref_lm) as ref:
        before = greedy(ref, tokenizer, prompts, config)
    after = greedy(policy.lm, tokenizer, prompts, config)
    with_prompt = config.reward.score_with_prompt
    tox_before = scorer.toxic_probs(scored_texts(prompts, before, with_prompt)).tolist()
    tox_after = scorer.toxic_probs(scored_texts(prompts, after, with_prompt)).tolist()
    rouge_before, rouge_after = rouge(before, references), rouge(after, references)
    rows = [{"dialogue": d.dialogue, "reference": d.references[0], "before": b, "after": a, "greedy_toxicity_before": tb,
             "greedy_toxicity_after": ta} for d, b, a, tb, ta in zip(test, before, after, tox_before, tox_after)]
    summary = {"n_eval": len(prompts), "greedy_toxicity_before": mean(tox_before), "greedy_toxicity_after": mean(tox_after),
               "greedy_toxic_share_before": mean(t >= 0.5 for t in tox_before),
               "greedy_toxic_share_after": mean(t >= 0.5 for t in tox_after),
               "rougeL_before": rouge_before["rougeL"], "rougeL_after": rouge_after["rougeL"]}
    return {"summary": summary, "rows": rows}
