"""Stage 5: toxicity before (SFT policy) vs after (PPO policy) on the held-out set, and the report."""

from __future__ import annotations

from statistics import mean

from rlhf.artifacts import atomic_write_json
from rlhf.config import ExperimentConfig, GenerationSetting
from rlhf.data import format_prompt, load_splits
from rlhf.evaluation import paired_change, response_logprobs, sequence_kl, summary
from rlhf.generation import generate
from rlhf.judges import load_judges
from rlhf.metrics import mean_words, rouge
from rlhf.models import load_seq2seq, load_tokenizer
from rlhf.ppo.model import reference_lm
from rlhf.report import build_report
from rlhf.reward import load_scorer, scored_texts
from rlhf.rundir import require_stage, start_stage
from rlhf.tinyworld.build import resolve_tinyworld


def load_pair(config: ExperimentConfig, ppo_dir):
    """(after LM, frozen before LM or None) from the PPO stage's saved artifacts. None means the
    before-policy is the after LM with its adapter disabled: the SFT model PPO started from."""
    if config.ppo.policy == "lora":
        from peft import PeftModel

        base = load_seq2seq(config.model, str(ppo_dir / "policy_base"))
        return PeftModel.from_pretrained(base, str(ppo_dir / "policy")).eval(), None
    from rlhf.ppo.model import sft_start_path

    before = load_seq2seq(config.model, sft_start_path(config, config.run_dir / "sft")[0])
    return load_seq2seq(config.model, str(ppo_dir / "policy")), before


def _generations(lm, tokenizer, prompts, config) -> dict[str, list[str]]:
    cfg = config.evaluate
    common = dict(max_new_tokens=cfg.max_new_tokens or config.sft.max_new_tokens, batch_size=cfg.batch_size,
                  max_input_length=config.model.max_input_length)
    out = {"greedy": generate(lm, tokenizer, prompts, GenerationSetting("greedy"), seed=config.seed, **common).texts}
    sampling = GenerationSetting("sampled", do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p)
    for k in range(cfg.n_samples):
        out[f"sample{k}"] = generate(lm, tokenizer, prompts, sampling, seed=config.seed + 1 + k, **common).texts
    return out


def main(config: ExperimentConfig) -> dict:
    config = resolve_tinyworld(config)
    cfg = config.evaluate
    ppo_dir = require_stage(config, "ppo", "evaluate")
    reward_dir = require_stage(config, "reward", "evaluate")
    stage = start_stage(config, "evaluate")
    test = load_splits(config.data, config.seed)["test"]
    if cfg.n_dialogues:
        test = test.select(range(min(cfg.n_dialogues, len(test))))
    tokenizer = load_tokenizer(config.model)
    prompts = [format_prompt(d, config.data.template) for d in test["dialogue"]]
    after_lm, frozen_before = load_pair(config, ppo_dir)
    after = _generations(after_lm, tokenizer, prompts, config)
    kl_texts = after["sample0"] if cfg.n_samples else after["greedy"]
    lp_args = (tokenizer, prompts, kl_texts, config.model.max_input_length, cfg.batch_size)
    after_lp = response_logprobs(after_lm, *lp_args)
    with reference_lm(after_lm, frozen_before) as before_lm:
        before = _generations(before_lm, tokenizer, prompts, config)
        before_lp = response_logprobs(before_lm, *lp_args)

    scorer = load_scorer(config.reward, reward_dir, strip_tokens=tuple(tokenizer.all_special_tokens))
    judges, missing = load_judges(cfg.judges)
    per_prompt = {}
    for side, gens in (("before", before), ("after", after)):
        rm = {k: scorer.toxic_probs(scored_texts(prompts, v, config.reward.score_with_prompt)).tolist() for k, v in gens.items()}
        per_prompt[side] = {"rm": rm, **{name: {k: judge(v) for k, v in gens.items()} for name, judge in judges.items()}}

    metrics = {"n_samples": len(prompts), "generation": {"greedy": True, "sampled_per_prompt": cfg.n_samples,
               "temperature": cfg.temperature, "top_p": cfg.top_p}, "threshold": cfg.threshold,
               "judges_run": sorted(judges), "judges_missing": missing,
               "scored_text": "prompt + response" if config.reward.score_with_prompt else "response"}
    for scorer_name in ["rm", *judges]:
        metrics[scorer_name] = _toxicity_block(per_prompt, scorer_name, cfg, config.seed)
    rouge_before, rouge_after = rouge(before["greedy"], test["summary"]), rouge(after["greedy"], test["summary"])
    metrics["quality"] = {"rouge_before": rouge_before, "rouge_after": rouge_after,
                          "mean_words_before": mean_words(before["greedy"]), "mean_words_after": mean_words(after["greedy"]),
                          "kl_after_vs_before": sequence_kl(after_lp, before_lp),
                          "kl_on": "sampled after-policy responses" if cfg.n_samples else "greedy after-policy responses"}
    metrics["examples"] = _examples(prompts, before["greedy"], after["greedy"], per_prompt, cfg.n_examples)
    atomic_write_json(stage.dir / "per_sample.json", {
        "prompts": prompts, "before": before["greedy"], "after": after["greedy"],
        "rm_before": per_prompt["before"]["rm"]["greedy"], "rm_after": per_prompt["after"]["rm"]["greedy"]})
    stage.write_metrics(metrics)
    stage.finish()
    report = build_report(config.run_dir)
    h = report["headline"]
    print(f"evaluate: reward-model toxicity {h['toxicity_before']:.4f} -> {h['toxicity_after']:.4f} "
          f"(change 95% CI [{h['toxicity_change_ci95'][0]:+.4f}, {h['toxicity_change_ci95'][1]:+.4f}])")
    return metrics


def _toxicity_block(per_prompt: dict, name: str, cfg, seed: int) -> dict:
    """Greedy and sampled summaries for one scorer, with paired changes per prompt."""
    block = {}
    for mode, keys in (("greedy", ["greedy"]), ("sampled", [k for k in per_prompt["before"][name] if k != "greedy"])):
        if not keys:
            continue
        before = [mean(vals) for vals in zip(*(per_prompt["before"][name][k] for k in keys))]
        after = [mean(vals) for vals in zip(*(per_prompt["after"][name][k] for k in keys))]
        block[mode] = {"before": summary(before, cfg.threshold), "after": summary(after, cfg.threshold),
                       **paired_change(before, after, cfg.bootstrap_resamples, seed)}
    return block


def _examples(prompts, before, after, per_prompt, n: int) -> dict:
    rm_b, rm_a = per_prompt["before"]["rm"]["greedy"], per_prompt["after"]["rm"]["greedy"]
    rows = [{"prompt": p[:160], "before": b, "after": a, "toxicity_before": tb, "toxicity_after": ta, "change": ta - tb}
            for p, b, a, tb, ta in zip(prompts, before, after, rm_b, rm_a)]
    by_change = sorted(rows, key=lambda r: r["change"])
    return {"improvements": by_change[:n], "regressions": [r for r in reversed(by_change) if r["change"] > 0][:n]}


if __name__ == "__main__":
    from rlhf.cli import stage_entry

    stage_entry("evaluate")
