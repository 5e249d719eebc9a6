"""Experiment configs: typed nested dataclasses loaded strictly from YAML.

One YAML file per experiment: shared sections (``run_name``, ``output_dir``, ``seed``, ``model``,
``data``, optional ``tinyworld``) plus one section per stage. Loading (``rlhf.configload``) is
strict: an unknown key names its section and the closest valid names, a wrong type or impossible
value names the key and the value. ``key.sub=value`` overrides go through the same checks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Optional, Union

import yaml

from rlhf.configcheck import validate
from rlhf.configfields import (all_of, each, fraction, home, non_empty, non_negative, opt, optional, path_name,
                               positive, seed_value, unit_closed, unit_open, unit_open_closed)
from rlhf.configload import _build, _merge, parse_overrides, read_yaml
from rlhf.errors import UserError, shown

Tracker = Literal["tensorboard", "trackio", "wandb"]  # rlhf.trackers.TRACKERS

# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    name: str = opt("google/flan-t5-base", doc="hub id or local folder; 'tinyworld' = the built-in tiny model")
    tokenizer: Optional[str] = opt(None, doc="defaults to the model's own tokenizer")
    trust_remote_code: bool = opt(False, doc="only set this for a model whose code you trust")
    max_input_length: int = opt(512, positive, "longest encoder input in tokens")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = opt(
        "float32", doc="the weights' dtype; bfloat16/float16 = pure low-precision weights, no fp32 master copy")
    mixed_precision: Literal["no", "bf16", "fp16"] = opt(
        "no", doc="autocast compute in bf16/fp16 over fp32 master weights (Trainer / accelerate mixed precision)")
    compile_decoding: bool = opt(False, doc="torch.compile the per-token decoding step of a T5 and its prompts' "
                                 "encoder pass (every stage that generates; the step as CUDA graphs on a GPU): the "
                                 "first call pays the compile; eager, with one line saying why, where compile is "
                                 "unavailable")

    def __post_init__(self) -> None:
        self.name = home(self.name)
        self.tokenizer = home(self.tokenizer)


@dataclass
class DataConfig:
    source: str = opt("knkarthick/dialogsum", doc="hub dataset, local json/jsonl/csv/parquet file or folder, or 'tinyworld'")
    dialogue_column: str = opt("dialogue")
    summary_column: str = opt("summary")
    min_chars: int = opt(0, non_negative, "drop dialogues shorter than this")
    max_chars: Optional[int] = opt(None, optional(positive), "drop dialogues longer than this")
    max_samples: Optional[int] = opt(None, optional(positive),
                                     "cap on dialogues per split (every row of a kept dialogue stays)")
    validation_fraction: float = opt(0.1, fraction, "used when the dataset has no validation split")
    test_fraction: float = opt(0.1, fraction, "used when the dataset has no test split")
    template: Literal["summarize", "what_happened"] = opt("summarize")
    toxic_column: Optional[str] = opt(None, doc="bool column marking abusive dialogues (the 'toxic prompts' stratum); "
                                      "null = the judge decides (evaluate.prompt_toxicity_threshold)")
    key_facts_column: Optional[str] = opt(None, doc="list column of words a faithful summary names (faithfulness)")

    def __post_init__(self) -> None:
        self.source = home(self.source)


@dataclass
class TinyWorldConfig:
    seed: int = opt(0, seed_value)
    cache_dir: Optional[str] = opt(None, doc="default: $RLHF_CACHE or ~/.cache/rlhf")
    n_dialogues: int = opt(2400, positive)
    toxic_fraction: float = opt(0.25, fraction)
    n_toxicity_texts: int = opt(1600, positive, "labelled texts for the reward classifier (train + held-out)")
    vocab_size: int = opt(1024, positive, "upper bound; the corpus may need fewer pieces")
    d_model: int = opt(128, positive)
    d_ff: int = opt(256, positive)
    num_layers: int = opt(2, positive, "encoder layers = decoder layers")
    num_heads: int = opt(4, positive)
    pretrain_steps: int = opt(600, non_negative, "denoising steps on the dialogue text")
    pretrain_batch_size: int = opt(16, positive)
    pretrain_lr: float = opt(3e-3, positive)
    pretrain_infill_fraction: float = opt(1.0, unit_closed, "share of pre-training examples that rebuild the whole "
                                          "text (BART infilling); the rest predict only the dropped spans (T5)")

    def __post_init__(self) -> None:
        self.cache_dir = home(self.cache_dir)


@dataclass
class GenerationSetting:
    name: str = opt("greedy")
    do_sample: bool = opt(False)
    temperature: float = opt(1.0, positive)
    top_k: int = opt(0, non_negative, "0 disables top-k")
    top_p: float = opt(1.0, unit_open_closed)
    num_beams: int = opt(1, positive)
    max_new_tokens: Optional[int] = opt(None, optional(positive), "defaults to the stage's max_new_tokens")


def _default_settings() -> list[GenerationSetting]:
    return [
        GenerationSetting("greedy"),
        GenerationSetting("sample_t0.7", do_sample=True, temperature=0.7),
        GenerationSetting("sample_t1.0", do_sample=True, temperature=1.0),
        GenerationSetting("sample_t1.5", do_sample=True, temperature=1.5),
        GenerationSetting("top_k_50", do_sample=True, top_k=50),
        GenerationSetting("top_p_0.9", do_sample=True, top_p=0.9),
        GenerationSetting("beams_4", num_beams=4),
        GenerationSetting("greedy_short", max_new_tokens=10),
    ]


@dataclass
class PromptConfig:
    n_dialogues: int = opt(50, positive, "test dialogues to evaluate")
    shots: list[int] = opt([0, 1, 2], all_of(non_empty, each(non_negative)), "0 = zero-shot, 1 = one-shot, k = k-shot")
    max_new_tokens: int = opt(50, positive)
    batch_size: int = opt(16, positive)
    settings: list[GenerationSetting] = opt(_default_settings(), non_empty)
    n_examples_shown: int = opt(10, non_negative, "sample generations written side by side")


@dataclass
class LoraConfig:
    """LoRA settings (reference lab defaults for Flan-T5: r=32, alpha=32, dropout 0.05, q and v)."""

    r: int = opt(32, positive)
    alpha: int = opt(32, positive)
    dropout: float = opt(0.05, fraction)
    target_modules: list[str] = opt(["q", "v"], non_empty, "module name suffixes to adapt")
    bias: Literal["none", "all", "lora_only"] = opt("none")


@dataclass
class SftVariant:
    """One way to fine-tune: full or LoRA is a config difference, never a code fork."""

    name: str = opt("full", path_name, "also the variant's folder name")
    method: Literal["full", "lora"] = opt("full")
    learning_rate: float = opt(5e-4, positive)
    max_steps: Optional[int] = opt(None, optional(positive), "this variant's training length; default sft.max_steps "
                                   "/ sft.epochs")


@dataclass
class SftConfig:
    variants: list[SftVariant] = opt([SftVariant("full", "full", 1e-5), SftVariant("lora", "lora", 1e-3)])
    lora: LoraConfig = opt(LoraConfig())
    epochs: float = opt(1.0, positive)
    max_steps: int = opt(-1, doc="> 0 overrides epochs")
    batch_size: int = opt(8, positive)
    eval_batch_size: int = opt(32, positive)
    gradient_accumulation_steps: int = opt(1, positive)
    warmup_ratio: float = opt(0.05, fraction)
    weight_decay: float = opt(0.01, non_negative)
    max_target_length: int = opt(128, positive)
    eval_steps: int = opt(100, positive, "validation loss every N steps")
    save_steps: int = opt(100, positive, "checkpoint every N steps (a multiple of eval_steps)")
    early_stopping_patience: Optional[int] = opt(3, optional(positive), "evaluations without improvement; null disables")
    report_to: Optional[list[Tracker]] = opt(None, doc="experiment trackers of this stage; null = the top-level "
                                             "report_to")
    eval_n_dialogues: Optional[int] = opt(None, optional(positive), "test dialogues for ROUGE; null = all")
    max_new_tokens: int = opt(64, positive)
    save_merged: bool = opt(False, doc="also save the LoRA adapter merged into the base")


@dataclass
class RewardDataConfig:
    source: Optional[str] = opt(None, doc="hub dataset or local file/folder with text and label columns")
    text_column: str = opt("text")
    label_column: str = opt("label")
    toxic_value: Union[str, list[str]] = opt("1", doc="label value(s) meaning toxic (compared as text), e.g. "
                                             "['0', '1'] for Davidson's hate and offensive classes")
    non_toxic_value: Union[str, list[str]] = opt("0", doc="label value(s) meaning non-toxic (compared as text)")
    validation_fraction: float = opt(0.1, fraction)
    test_fraction: float = opt(0.2, fraction, "used when the data has no test split")
    max_samples: Optional[int] = opt(None, optional(positive))

    def __post_init__(self) -> None:
        self.source = home(self.source)


@dataclass
class RewardConfig:
    """The toxicity classifier whose non-toxic logit (or probability) is the PPO reward."""

    pretrained: Optional[str] = opt(None, doc="use this classifier as is (hub id or folder); skips training")
    non_toxic_label: str = opt("non-toxic", doc="the non-toxic class's name in the model's id2label")
    model: str = opt("distilroberta-base", doc="encoder to fine-tune, or a config folder with from_scratch")
    from_scratch: bool = opt(False, doc="initialise from the model's config instead of its weights")
    trust_remote_code: bool = opt(False)
    data: RewardDataConfig = opt(RewardDataConfig())
    output: Literal["logit", "probability", "log_probability"] = opt(
        "log_probability", doc="reward = the classifier's non-toxic log-probability (<= 0: stops paying once text is "
        "clean), probability (in [0, 1]), or logit (the reference lab's; unbounded: pays for drifting further)")
    clean_at: float = opt(1.0, unit_open_closed, "with output probability / log_probability: the reward is flat "
                          "where p(non-toxic) >= this (1.0 = never flat); ignored by logit")
    score_with_prompt: bool = opt(False, doc="score prompt + response instead of the response alone")
    learning_rate: float = opt(5e-5, positive)
    epochs: float = opt(3.0, positive)
    batch_size: int = opt(32, positive)
    eval_steps: int = opt(50, positive)
    early_stopping_patience: Optional[int] = opt(3, optional(positive))
    weight_decay: float = opt(0.01, non_negative)
    warmup_ratio: float = opt(0.1, fraction)
    max_length: int = opt(128, positive)
    balance: Literal["class_weights", "none"] = opt("class_weights", doc="handling of imbalanced labels")
    report_to: Optional[list[Tracker]] = opt(None, doc="experiment trackers of this stage; null = the top-level "
                                             "report_to")
    n_wrong_shown: int = opt(10, non_negative)

    def __post_init__(self) -> None:
        self.pretrained = home(self.pretrained)
        self.model = home(self.model)


@dataclass
class KLConfig:
    controller: Literal["adaptive", "fixed"] = opt("adaptive")
    init_kl_coef: float = opt(0.2, non_negative)
    target: float = opt(6.0, positive, "adaptive: the KL (nats per response) to steer to")
    horizon: int = opt(10000, positive, "adaptive: samples over which the coefficient adapts")
    estimator: Literal["k1", "k3"] = opt("k1", doc="k1 = logprob - ref_logprob; k3 = Schulman's non-negative estimator")


@dataclass
class PpoSettings:
    """PPO's critic and credit assignment (rl.algorithm ppo only): a value head on the decoder, GAE
    over per-token KL-shaped rewards (Schulman et al. 2016, 2017; lm-human-preferences)."""

    vf_coef: float = opt(0.1, non_negative, "weight of the value loss")
    cliprange_value: float = opt(0.2, positive)
    gamma: float = opt(1.0, unit_open_closed)
    lam: float = opt(0.95, unit_open_closed, "GAE lambda; 1.0 = Monte-Carlo advantages")
    whiten_advantages: bool = opt(True)
    value_head_init_std: float = opt(0.0, non_negative, "0 = zero-initialised value head")


@dataclass
class GrpoSettings:
    """GRPO (Shao et al. 2024) and Dr. GRPO (Liu et al. 2025) (rl.algorithm grpo only)."""

    kl_coef: float = opt(0.04, non_negative, "beta: the k3 KL to the reference as a loss term (GRPO's 0.04); "
                         "rl.kl is not used")
    scale_rewards: bool = opt(True, doc="divide each group's advantages by its reward std (GRPO); false = Dr. GRPO")
    length_normaliser: Literal["sequence", "constant"] = opt(
        "sequence", doc="sequence: each response's loss over its own length (GRPO's 1/|o_i|); constant: over "
        "rl.max_new_tokens (Dr. GRPO)")


@dataclass
class PairsSettings:
    """How rl.algorithm dpo / ipo (and rl.reward_model pairwise) make their preference pairs before
    training (rlhf.pairs): classifier-ranked on-policy pairs, k responses per training prompt sampled
    from the SFT policy (the model the run starts from), scored by the reward model; rejected = the
    most toxic, chosen = a clean one (rl.pairs.choose); kept where the reward gap is at least
    rl.pairs.margin. Or the data's own pairs (rl.pairs.source corpus)."""

    source: Literal["samples", "corpus"] = opt(
        "samples", doc="samples: classifier-ranked samples of the SFT policy (any data set); corpus: the data's own "
        "pairs, a cleaner rewording (rl.pairs.corpus_column) chosen over the reference summary wherever they differ")
    corpus_column: Optional[str] = opt(None, doc="source corpus: the training data's column holding the reference "
                                       "reworded without the insult (the tiny world's neutral_summary)")
    k: int = opt(8, all_of(positive, lambda v: None if v >= 2 else "must be >= 2 (a pair needs two)"),
                 "responses sampled per prompt")
    n_prompts: Optional[int] = opt(512, optional(positive), "training prompts drawn (seeded); null = all of them")
    clean_below: float = opt(0.5, unit_open_closed, "a response is clean when the reward model's toxicity "
                             "probability is below this")
    margin: float = opt(1.0, non_negative, "keep a pair only when reward(chosen) - reward(rejected) >= this")
    choose: Literal["closest_to_reference", "highest_reward"] = opt(
        "closest_to_reference", doc="which clean response is chosen: the one with the highest ROUGE-L to the "
        "prompt's reference summary (ties: the higher reward), or the one with the highest reward")
    batch_size: int = opt(16, positive, "prompts per sampling call (k responses each)")


@dataclass
class PairwiseSettings:
    """The pairwise reward model (rl.reward_model pairwise; rlhf.pairwise): a sequence classifier with
    one output, initialised from the reward stage's classifier backbone (a fresh head), trained with
    TRL's RewardTrainer on rl.pairs' pairs by the Bradley-Terry loss -log sigmoid(r(y_w) - r(y_l))
    (InstructGPT eq. 1); a seeded share of the pairs' prompts is held out for its pair accuracy."""

    epochs: float = opt(4.0, positive, "passes over the training pairs")
    learning_rate: Optional[float] = opt(None, optional(positive), "AdamW, linear decay to 0; null = "
                                         "reward.learning_rate, the rate the classifier's backbone was trained at")
    batch_size: int = opt(16, positive, "pairs per step")
    heldout_share: float = opt(0.2, unit_open, "share of the pairs' prompts held out (seeded) for the held-out "
                               "pair accuracy; a prompt's pairs stay on one side")
    max_length: int = opt(128, positive, "tokens of a scored text (longer ones are cut), in training and scoring")
    center_rewards_coefficient: Optional[float] = opt(
        0.01, optional(non_negative), "weight of the mean-zero term mean((r_w + r_l)^2) (Eisenstein et al. 2023, "
        "eq. 2; TRL's recommended 0.01), so rewards stay near 0; null = off")


@dataclass
class PreferenceSettings:
    """DPO (Rafailov et al. 2023) and IPO (Azar et al. 2023) (rl.algorithm dpo or ipo only)."""

    beta: float = opt(0.1, positive, "DPO's beta (the implicit reward's scale); IPO's tau")
    nll_coef: float = opt(0.0, non_negative, "weight of the chosen response's negative log-likelihood per token "
                          "added to the pair loss (RPO: Pang et al. 2024, eq. 3; TRL's rpo_alpha); 0 = plain DPO / IPO")


@dataclass
class RlConfig:
    """The RL stage: PPO (the default), RLOO or GRPO from the SFT policy, against the reward model,
    held near the SFT model; or DPO / IPO on preference pairs, offline. Sampling is from the full
    softmax (top_k=0, top_p=1, temperature=1) with no min_length: forcing tokens past EOS lets the
    policy earn reward through negative KL."""

    algorithm: Literal["ppo", "rloo", "grpo", "dpo", "ipo"] = opt(
        "ppo", doc="ppo: value head, GAE, clipped ratio per token; rloo: k samples per prompt, leave-one-out baseline, "
        "KL in the reward (Ahmadian et al. 2024); grpo: k samples, group-normalised advantages, KL as a loss term "
        "(Shao et al. 2024; rl.grpo for Dr. GRPO); dpo, ipo: offline, on classifier-ranked pairs (rl.pairs, "
        "rl.preference; rl.group_size 2: a pair)")
    start_from: str = opt("lora", doc="SFT variant to start from (its adapter or model), or 'base'")
    policy: Literal["lora", "full"] = opt("lora", doc="lora: fresh LoRA on the merged SFT model; full: all weights")
    lora: LoraConfig = opt(LoraConfig())
    learning_rate: float = opt(1.41e-5, positive)
    steps: int = opt(20, positive, "RL steps (one batch of rollouts each)")
    batch_size: int = opt(16, positive, "rollouts per step, over all processes: prompts x group_size")
    group_size: int = opt(1, positive, "responses sampled per prompt from one encoder pass (the group RLOO's baseline "
                          "and GRPO's normalisation use); 1 for ppo, >= 2 for rloo and grpo")
    mini_batch_size: int = opt(4, positive, "rollouts per update mini-batch (whole groups: a multiple of group_size)")
    epochs: int = opt(4, positive, "passes over each step's rollouts")
    gradient_accumulation_steps: int = opt(1, positive)
    bucket_by_length: bool = opt(True, doc="group prompts of similar length into mini-batches (less padding)")
    max_new_tokens: int = opt(32, positive)
    min_new_tokens: int = opt(0, non_negative, "benchmark parity only: forcing tokens past EOS lets the policy "
                              "earn reward through negative KL")
    kl: KLConfig = opt(KLConfig(), doc="the KL penalty in the reward (ppo, rloo) and its coefficient's controller")
    cliprange: float = opt(0.2, positive, "the policy ratio's clip range")
    ppo: PpoSettings = opt(PpoSettings())
    grpo: GrpoSettings = opt(GrpoSettings())
    preference: PreferenceSettings = opt(PreferenceSettings())
    pairs: PairsSettings = opt(PairsSettings())
    reward_model: Literal["classifier", "pairwise"] = opt(
        "classifier", doc="which reward the online method (ppo, rloo, grpo) optimises: the reward stage's classifier, "
        "or a pairwise Bradley-Terry model trained at the start of this stage with TRL's RewardTrainer on rl.pairs' "
        "pairs (rl.pairwise); the evaluate stage still scores with the classifier and the judges")
    pairwise: PairwiseSettings = opt(PairwiseSettings())
    max_grad_norm: float = opt(1.0, positive)
    target_kl: Optional[float] = opt(None, optional(positive), "stop a step's epochs early when approx KL exceeds it")
    score_clip: Optional[float] = opt(None, optional(positive), "clip scores to [-c, c]")
    frozen_encoder: bool = opt(False, doc="seq2seq only: LoRA on the decoder alone, so the encoder states of the "
                               "rollout serve the reference and every update (no encoder in the update); needs "
                               "policy lora; refused if any encoder weight would train")
    compile: bool = opt(False, doc="torch.compile the policy's training forward and backward (fused kernels; the "
                        "first step pays the compile, cached on disk for later runs); eager where compile is "
                        "unavailable")
    toxic_share: Optional[float] = opt(None, optional(unit_open), "share of each batch drawn from the toxic training "
                                       "prompts (data.toxic_column), the rest from the clean ones; null = as they come")
    ptx_coef: float = opt(0.0, non_negative, "PPO-ptx (InstructGPT; every algorithm): add this x the SFT loss of a "
                          "mini-batch of training (dialogue, summary) pairs to every update, so the policy keeps "
                          "summarizing where the reward is flat; with data.toxic_column only pairs not marked toxic; "
                          "0 = off")
    save_steps: int = opt(10, positive, "checkpoint every N steps")
    sample_steps: int = opt(10, positive, "write sample generations every N steps")
    eval_n_dialogues: Optional[int] = opt(100, optional(positive), "held-out prompts for before/after; null = all")
    eval_batch_size: int = opt(64, positive)
    report_to: Optional[list[Tracker]] = opt(None, doc="experiment trackers of this stage; null = the top-level "
                                             "report_to")

    @property
    def prompts_per_batch(self) -> int:
        """Prompts sampled per step (each gives ``group_size`` rollouts)."""
        return self.batch_size // self.group_size

    @property
    def toxic_per_batch(self) -> int | None:
        """Toxic prompts in every batch under ``toxic_share`` (None: no stratified batches)."""
        return None if self.toxic_share is None else round(self.prompts_per_batch * self.toxic_share)

    def mini_batch_per_process(self, world: int) -> int:
        """Rollouts in each process's share of a mini-batch: whole groups, at least one."""
        return max(1, self.mini_batch_size // self.group_size // world) * self.group_size

    def mini_batches_per_update(self, world: int) -> int:
        """Mini-batch passes of one update on each process: ``epochs`` x its rollouts per mini-batch."""
        return self.epochs * -(-(self.batch_size // world) // self.mini_batch_per_process(world))


@dataclass
class QualityBounds:
    """How far a quality figure may move before the verdict says quality was lost (or, next to a
    judge that saw no reduction, that the policy likely hacked the reward)."""

    rouge_ratio: float = opt(0.95, unit_open_closed, "ROUGE-L after >= this x before")
    faithfulness_ratio: float = opt(0.95, unit_open_closed, "faithfulness after >= this x before")
    distinct2_rel: float = opt(0.10, positive, "|distinct-2 after / before - 1| <= this")
    perplexity_ratio: float = opt(1.3, positive, "perplexity after <= this x before")
    repeat_share_abs: float = opt(0.02, non_negative, "repeated-n-gram share may rise by at most this")


@dataclass
class EvaluateConfig:
    n_dialogues: Optional[int] = opt(None, optional(positive), "held-out dialogues; null = the whole test split")
    n_samples: int = opt(25, non_negative, "k sampled responses per prompt besides greedy (RealToxicityPrompts: 25)")
    temperature: float = opt(1.0, positive)
    top_p: float = opt(0.9, unit_open_closed, "nucleus sampling, as RealToxicityPrompts and DExperts")
    max_new_tokens: Optional[int] = opt(None, optional(positive), "default: sft.max_new_tokens")
    batch_size: int = opt(64, positive, "responses per generation call")
    threshold: float = opt(0.5, unit_open_closed, "a response counts as toxic at or above this probability")
    judges: list[Literal["profanity_check"]] = opt(["profanity_check"], doc="independent toxicity judges")
    prompt_toxicity_threshold: float = opt(0.5, unit_open_closed, "without data.toxic_column: a prompt is toxic "
                                           "when the first judge scores its dialogue at or above this")
    bootstrap_resamples: int = opt(2000, positive)
    n_examples: int = opt(20, non_negative, "rows per example table")
    bounds: QualityBounds = opt(QualityBounds())


@dataclass
class ExperimentConfig:
    run_name: Optional[str] = opt(None, optional(path_name), "defaults to the config file's stem; a folder name")
    output_dir: str = opt("runs", doc="'~' is expanded")
    seed: int = opt(42, seed_value)
    report_to: list[Tracker] = opt([], doc="experiment trackers every training stage reports to (pip install "
                                   "'rlhf[trackers]'); a stage's own report_to, when set, replaces it")
    model: ModelConfig = opt(ModelConfig())
    data: DataConfig = opt(DataConfig())
    tinyworld: Optional[TinyWorldConfig] = opt(None, doc="present = build and use the offline tiny world")
    prompt: PromptConfig = opt(PromptConfig())
    sft: SftConfig = opt(SftConfig())
    reward: RewardConfig = opt(RewardConfig())
    rl: RlConfig = opt(RlConfig())
    evaluate: EvaluateConfig = opt(EvaluateConfig())

    def __post_init__(self) -> None:
        if not self.output_dir.strip() or not self.output_dir.isprintable():
            raise UserError(f"config key 'output_dir': value {shown(self.output_dir)} is not a usable folder path")
        if too_long := next((p for p in Path(self.output_dir).parts if len(p.encode("utf-8")) > 255), None):
            raise UserError(f"config key 'output_dir': the folder name {shown(too_long)} is {len(too_long.encode())} "
                            f"bytes long; file systems allow 255")
        self.output_dir = str(Path(self.output_dir).expanduser())

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / (self.run_name or "run")

    def trackers(self, stage: str) -> list[str]:
        """The trackers ``stage`` (sft, reward or rl) reports to: its own report_to, else the top-level one."""
        own = getattr(self, stage).report_to
        return list(self.report_to if own is None else own)


def load_config(path: str | Path, overrides: list[str] | None = None, stages: Iterable[str] = ()) -> ExperimentConfig:
    """Load ``path`` strictly, apply dotted ``overrides``, and :func:`rlhf.configcheck.validate` the
    result for ``stages`` (the stages about to run); ``run_name`` defaults to the file stem."""
    raw = _merge(read_yaml(path), parse_overrides(overrides or []))
    raw.setdefault("run_name", Path(path).stem)
    config = _build(ExperimentConfig, raw, "")
    validate(config, stages)
    return config


def config_from_dict(raw: dict) -> ExperimentConfig:
    """A config from a plain dict (a recorded ``config.yaml``, a test's), built and validated as a file is."""
    config = _build(ExperimentConfig, raw, "")
    validate(config)
    return config


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def to_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
