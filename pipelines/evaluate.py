"""Stage 5: the SFT policy (before) vs the PPO policy (after) on the held-out dialogues.

Per prompt: one greedy response and k sampled ones from each policy, scored by the reward model
and by independent judges, with their NLL under the base model (fluency). Everything lands in
``generations.jsonl``; :func:`rlhf.protocol.summarize` turns it into the figures and the verdict,
and the report is built from those artifacts alone (``rlhf report RUN_DIR``).
"""

from __future__ import annotations

import dataclasses
import sys

from rlhf.artifacts import atomic_write_jsonl
from rlhf.config import ExperimentConfig, GenerationSetting
from rlhf.data import load_eval_dialogues
from rlhf.entrypoint import stage_command
from rlhf.generation import generate
from rlhf.judges import load_judges
from rlhf.models import fp32_output_layer, load_seq2seq, load_tokenizer
from rlhf.prompts import fit_prompts
from rlhf.protocol import REWARD_MODEL, SIDES, sequence_kl, summarize
from rlhf.report import build_report
from rlhf.reward import load_scorer, scored_texts
from rlhf.rundir import require_stage, start_stage
from rlhf.runtime import autocast
from rlhf.seq2seq import reference, response_nll, text_logprobs
from rlhf.sft import start_paths
from rlhf.tinyworld.build import resolve_tinyworld


def load_pair(config: ExperimentConfig, rl_dir):
    """(after LM, frozen before LM or None) from the PPO stage's saved artifacts. None means the
    before-policy is the after LM with its adapter disabled: the SFT model PPO started from."""
    if config.rl.policy == "lora":
        from peft import PeftModel

        base = load_seq2seq(config.model, str(rl_dir / "policy_base"))
        return PeftModel.from_pretrained(base, str(rl_dir / "policy")).eval(), None
    before = load_seq2seq(config.model, start_paths(config, config.run_dir / "sft")[0])
    return load_seq2seq(config.model, str(rl_dir / "policy")), before


def responses(lm, tokenizer, prompts: list[str], config: ExperimentConfig) -> dict:
    """{"greedy": [n], "samples": [n][k]} for ``prompts`` (samples empty lists when k = 0)."""
    cfg = config.evaluate
    common = dict(max_new_tokens=cfg.max_new_tokens or config.sft.max_new_tokens, batch_size=cfg.batch_size,
                  max_input_length=config.model.max_input_length, compile=config.model.compile_decoding)
    greedy = generate(lm, tokenizer, prompts, GenerationSetting("greedy"), seed=config.seed, **common).texts
    samples: list[list[str]] = [[] for _ in prompts]
    if cfg.n_samples:
        setting = GenerationSetting("sampled", do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p)
        gens = generate(lm, tokenizer, prompts, setting, seed=config.seed + 1, num_return_sequences=cfg.n_samples,
                        **common)
        samples = gens.samples or [[t] for t in gens.texts]
    return {"greedy": greedy, "samples": samples}


def kl_samples(lm, tokenizer, prompts: list[str], config: ExperimentConfig) -> list[str]:
    """One response per prompt drawn from ``lm``'s full distribution (temperature 1, no top-k or
    top-p), so that the mean log-ratio over them estimates KL(after || before) without bias: the
    nucleus samples the toxicity figures use are drawn from a truncated distribution."""
    setting = GenerationSetting("kl_sample", do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
    return generate(lm, tokenizer, prompts, setting, seed=config.seed + 2, batch_size=config.evaluate.batch_size,
                    max_new_tokens=config.evaluate.max_new_tokens or config.sft.max_new_tokens,
                    max_input_length=config.model.max_input_length, compile=config.model.compile_decoding).texts


def _flat(side: dict) -> list[str]:
    """All responses of one side in a fixed order: every greedy one, then every prompt's samples."""
    return side["greedy"] + [t for row in side["samples"] for t in row]


def _unflat(values: list, n: int, k: int) -> dict:
    return {"greedy": values[:n], "samples": [values[n + i * k:n + (i + 1) * k] for i in range(n)]}


def _generate_and_score(config: ExperimentConfig, dialogues, prompts: list[str], tokenizer, rl_dir, reward_dir):
    """Per-prompt records (responses, scores, NLL under the base model), and KL(after || before),
    the judges that ran and the strata rule."""
    cfg = config.evaluate
    n, k, max_input = len(prompts), cfg.n_samples, config.model.max_input_length
    after_lm, frozen_before = load_pair(config, rl_dir)
    for lm in (after_lm, frozen_before):  # fp32 logits for the KL under bf16 autocast too (a no-op without)
        if lm is not None:
            fp32_output_layer(lm)
    gens = {"after": responses(after_lm, tokenizer, prompts, config)}
    kl_texts = kl_samples(after_lm, tokenizer, prompts, config)
    lp_args = (tokenizer, prompts, kl_texts, max_input, cfg.batch_size)
    after_lp = text_logprobs(after_lm, *lp_args)
    with reference(after_lm, frozen_before) as before_lm:
        gens["before"] = responses(before_lm, tokenizer, prompts, config)
        before_lp = text_logprobs(before_lm, *lp_args)
    del after_lm, frozen_before, before_lm

    flat_prompts = prompts + [p for p in prompts for _ in range(k)]
    scorer = load_scorer(config.reward, reward_dir, strip_tokens=tuple(tokenizer.all_special_tokens))
    judges, missing = load_judges(cfg.judges)
    score_fns = {REWARD_MODEL: lambda texts: scorer.toxic_probs(scored_texts(flat_prompts, texts, config.reward.score_with_prompt)).tolist(),
                 **judges}
    scores = {name: {side: _unflat(fn(_flat(gens[side])), n, k) for side in SIDES} for name, fn in score_fns.items()}
    base_lm = load_seq2seq(config.model)  # fluency: the model the pipeline started from, never trained here
    fp32_output_layer(base_lm)  # perplexity from fp32 logits under bf16 autocast too
    nll = {}
    for side in SIDES:  # per prompt: its greedy response, then its k samples
        per_prompt = response_nll(base_lm, tokenizer, prompts, [[g, *ks] for g, ks in zip(gens[side]["greedy"],
                                  gens[side]["samples"])], max_input, cfg.batch_size)
        nll[side] = {"greedy": [row[0] for row in per_prompt], "samples": [row[1:] for row in per_prompt]}
    strata, strata_rule = _strata(dialogues, config, judges)

    records = []
    for i, d in enumerate(dialogues):
        records.append({
            "id": d.id, "prompt": prompts[i], "references": d.references, "stratum": strata[i],
            "key_facts": d.key_facts,
            **{side: {"greedy": gens[side]["greedy"][i], "samples": gens[side]["samples"][i]} for side in SIDES},
            "scores": {name: {side: {"greedy": s[side]["greedy"][i], "samples": s[side]["samples"][i]} for side in SIDES}
                       for name, s in scores.items()},
            "nll": {side: {"greedy": nll[side]["greedy"][i], "samples": nll[side]["samples"][i]} for side in SIDES},
        })
    info = {"kl_after_vs_before": sequence_kl(after_lp, before_lp), "judges_run": sorted(judges),
            "judges_missing": missing, "strata_rule": strata_rule}
    return records, info


def main(config: ExperimentConfig) -> dict:
    config = resolve_tinyworld(config)
    cfg = config.evaluate
    rl_dir = require_stage(config, "rl", "evaluate")
    reward_dir = require_stage(config, "reward", "evaluate")
    dialogues = load_eval_dialogues(config.data, config.seed, cfg.n_dialogues)  # before the stage folder is touched
    stage = start_stage(config, "evaluate")
    tokenizer = load_tokenizer(config.model)
    prompts, shortened = fit_prompts([d.dialogue for d in dialogues], config.data.template, tokenizer,
                                     config.model.max_input_length)  # over-long dialogues cut inside the template
    with autocast(config.model.mixed_precision):
        records, info = _generate_and_score(config, dialogues, prompts, tokenizer, rl_dir, reward_dir)
    atomic_write_jsonl(stage.dir / "generations.jsonl", records)
    judges = info["judges_run"]
    protocol = summarize(records, [REWARD_MODEL, *judges], judges, cfg.threshold, cfg.bootstrap_resamples, config.seed,
                         cfg.bounds)
    metrics = {"n_prompts": len(prompts), "prompts_shortened": sum(shortened), "n_samples": cfg.n_samples,
               "threshold": cfg.threshold, "n_examples": cfg.n_examples, **info,
               "bounds": dataclasses.asdict(cfg.bounds),
               "generation": {"greedy": True, "sampled_per_prompt": cfg.n_samples, "temperature": cfg.temperature, "top_p": cfg.top_p,
                              "max_new_tokens": cfg.max_new_tokens or config.sft.max_new_tokens},
               "scored_text": "prompt + response" if config.reward.score_with_prompt else "response",
               "fluency_model": config.model.name,
               "kl_on": "one after-policy response per prompt sampled from its full distribution",
               "protocol": protocol}
    stage.write_metrics(metrics)
    stage.finish()
    report = build_report(config.run_dir)
    print(f"evaluate: {report['headline']['verdict']}")
    return metrics


def _strata(dialogues, config: ExperimentConfig, judges: dict) -> tuple[list[str | None], str]:
    """Each prompt's stratum ("toxic" / "non-toxic") and the rule that assigned it."""
    if config.data.toxic_column:
        return ([("toxic" if d.toxic else "non-toxic") for d in dialogues],
                f"a prompt is toxic when its data column '{config.data.toxic_column}' is true "
                "(the tiny world marks the dialogues in which a speaker is abusive)")
    if not judges:
        return [None] * len(dialogues), "no strata: the data has no toxic column and no judge ran"
    name = sorted(judges)[0]
    threshold = config.evaluate.prompt_toxicity_threshold
    values = judges[name]([d.dialogue for d in dialogues])
    return ([("toxic" if v >= threshold else "non-toxic") for v in values],
            f"a prompt is toxic when the judge {name} scores its dialogue >= {threshold}")


if __name__ == "__main__":
    sys.exit(stage_command("evaluate", main))
