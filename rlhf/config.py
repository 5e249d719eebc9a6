"""Experiment configs: typed nested dataclasses loaded strictly from YAML.

One YAML file per experiment: shared sections (``run_name``, ``output_dir``, ``seed``, ``model``,
``data``, optional ``tinyworld``) plus one section per stage. Loading is strict: an unknown key
names its section and the closest valid names, a wrong type or impossible value names the key and
the value. ``key.sub=value`` overrides from the command line go through the same checks.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import yaml

from rlhf.errors import UserError

Check = Callable[[Any], Optional[str]]


def positive(v: Any) -> str | None:
    return None if v > 0 else "must be > 0"


def non_negative(v: Any) -> str | None:
    return None if v >= 0 else "must be >= 0"


def unit_open_closed(v: Any) -> str | None:
    return None if 0 < v <= 1 else "must be in (0, 1]"


def fraction(v: Any) -> str | None:
    return None if 0 <= v < 1 else "must be in [0, 1)"


def optional(check: Check) -> Check:
    return lambda v: None if v is None else check(v)


def each(check: Check) -> Check:
    def run(values: list) -> str | None:
        for v in values:
            if (msg := check(v)) is not None:
                return f"{msg} (item {v!r})"
        return None

    return run


def opt(default: Any = None, check: Check | None = None, doc: str = "") -> Any:
    """A config field with a default, an optional value check and a one-line description."""
    meta = {"check": check, "doc": doc}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda d=default: _copy(d), metadata=meta)
    return field(default=default, metadata=meta)


def _copy(value: Any) -> Any:
    import copy

    return copy.deepcopy(value)


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    name: str = opt("google/flan-t5-base", doc="hub id or local folder; 'tinyworld' = the built-in tiny model")
    tokenizer: Optional[str] = opt(None, doc="defaults to the model's own tokenizer")
    trust_remote_code: bool = opt(False, doc="only set this for a model whose code you trust")
    max_input_length: int = opt(512, positive, "longest encoder input in tokens")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = opt("float32")


@dataclass
class DataConfig:
    source: str = opt("knkarthick/dialogsum", doc="hub dataset, local json/jsonl/csv/parquet file or folder, or 'tinyworld'")
    dialogue_column: str = opt("dialogue")
    summary_column: str = opt("summary")
    min_chars: int = opt(0, non_negative, "drop dialogues shorter than this")
    max_chars: Optional[int] = opt(None, optional(positive), "drop dialogues longer than this")
    max_samples: Optional[int] = opt(None, optional(positive), "cap on examples per split")
    validation_fraction: float = opt(0.1, fraction, "used when the dataset has no validation split")
    test_fraction: float = opt(0.1, fraction, "used when the dataset has no test split")
    template: Literal["summarize", "what_happened"] = opt("summarize")


@dataclass
class TinyWorldConfig:
    seed: int = opt(0)
    cache_dir: Optional[str] = opt(None, doc="default: $RLHF_CACHE or ~/.cache/rlhf")
    n_dialogues: int = opt(2400, positive)
    toxic_fraction: float = opt(0.25, fraction)
    n_toxicity_texts: int = opt(1600, positive, "labelled texts for the reward classifier (train + held-out)")
    vocab_size: int = opt(1024, positive, "upper bound; the corpus may need fewer pieces")
    d_model: int = opt(128, positive)
    d_ff: int = opt(256, positive)
    num_layers: int = opt(2, positive, "encoder layers = decoder layers")
    num_heads: int = opt(4, positive)
    pretrain_steps: int = opt(600, non_negative, "span-corruption steps on the dialogue text")
    pretrain_batch_size: int = opt(16, positive)
    pretrain_lr: float = opt(3e-3, positive)


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
    shots: list[int] = opt([0, 1, 2], each(non_negative), "0 = zero-shot, 1 = one-shot, k = k-shot")
    max_new_tokens: int = opt(50, positive)
    batch_size: int = opt(16, positive)
    settings: list[GenerationSetting] = opt(_default_settings())
    n_examples_shown: int = opt(10, non_negative, "sample generations written side by side")


@dataclass
class LoraConfig:
    """LoRA settings (reference lab defaults for Flan-T5: r=32, alpha=32, dropout 0.05, q and v)."""

    r: int = opt(32, positive)
    alpha: int = opt(32, positive)
    dropout: float = opt(0.05, fraction)
    target_modules: list[str] = opt(["q", "v"], doc="module name suffixes to adapt")
    bias: Literal["none", "all", "lora_only"] = opt("none")


@dataclass
class SftVariant:
    """One way to fine-tune: full or LoRA is a config difference, never a code fork."""

    name: str = opt("full")
    method: Literal["full", "lora"] = opt("full")
    learning_rate: float = opt(5e-4, positive)


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
    eval_n_dialogues: Optional[int] = opt(None, optional(positive), "test dialogues for ROUGE; null = all")
    max_new_tokens: int = opt(64, positive)
    save_merged: bool = opt(False, doc="also save the LoRA adapter merged into the base")

    def __post_init__(self) -> None:
        if self.save_steps % self.eval_steps:
            raise UserError(f"config key 'sft.save_steps': value {self.save_steps} must be a multiple of "
                            f"sft.eval_steps ({self.eval_steps}) for early stopping to keep the best checkpoint")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names) or "base" in names:
            raise UserError(f"config key 'sft.variants': names {names} must be unique and not 'base'")


@dataclass
class RewardDataConfig:
    source: Optional[str] = opt(None, doc="hub dataset or local file/folder with text and label columns")
    text_column: str = opt("text")
    label_column: str = opt("label")
    toxic_value: str = opt("1", doc="label value meaning toxic (compared as text)")
    non_toxic_value: str = opt("0", doc="label value meaning non-toxic (compared as text)")
    validation_fraction: float = opt(0.1, fraction)
    test_fraction: float = opt(0.2, fraction, "used when the data has no test split")
    max_samples: Optional[int] = opt(None, optional(positive))


@dataclass
class RewardConfig:
    """The toxicity classifier whose non-toxic logit (or probability) is the PPO reward."""

    pretrained: Optional[str] = opt(None, doc="use this classifier as is (hub id or folder); skips training")
    non_toxic_label: str = opt("non-toxic", doc="the non-toxic class's name in the model's id2label")
    model: str = opt("distilroberta-base", doc="encoder to fine-tune, or a config folder with from_scratch")
    from_scratch: bool = opt(False, doc="initialise from the model's config instead of its weights")
    trust_remote_code: bool = opt(False)
    data: RewardDataConfig = opt(RewardDataConfig())
    output: Literal["logit", "probability"] = opt("logit", doc="reward = non-toxic logit (the lab's) or probability")
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
    n_wrong_shown: int = opt(10, non_negative)


@dataclass
class KLConfig:
    controller: Literal["adaptive", "fixed"] = opt("adaptive")
    init_kl_coef: float = opt(0.2, non_negative)
    target: float = opt(6.0, positive, "adaptive: the KL (nats per response) to steer to")
    horizon: int = opt(10000, positive, "adaptive: samples over which the coefficient adapts")
    estimator: Literal["k1", "k3"] = opt("k1", doc="k1 = logprob - ref_logprob; k3 = Schulman's non-negative estimator")


@dataclass
class PpoConfig:
    """PPO settings. Generation samples with top_k=0, top_p=1, temperature=1 and no min_length:
    forcing tokens past EOS lets the policy earn reward through negative KL."""

    start_from: str = opt("lora", doc="SFT variant to start from (its adapter or model), or 'base'")
    policy: Literal["lora", "full"] = opt("lora", doc="lora: fresh LoRA on the merged SFT model; full: all weights")
    lora: LoraConfig = opt(LoraConfig())
    learning_rate: float = opt(1.41e-5, positive)
    steps: int = opt(20, positive, "PPO steps (one batch of rollouts each)")
    batch_size: int = opt(16, positive, "rollouts per step, over all processes")
    mini_batch_size: int = opt(4, positive)
    ppo_epochs: int = opt(4, positive)
    gradient_accumulation_steps: int = opt(1, positive)
    bucket_by_length: bool = opt(True, doc="group prompts of similar length into mini-batches (less padding)")
    max_new_tokens: int = opt(32, positive)
    min_new_tokens: int = opt(0, non_negative, "benchmark parity only: forcing tokens past EOS lets the policy "
                              "earn reward through negative KL")
    kl: KLConfig = opt(KLConfig())
    cliprange: float = opt(0.2, positive)
    cliprange_value: float = opt(0.2, positive)
    vf_coef: float = opt(0.1, non_negative)
    gamma: float = opt(1.0, unit_open_closed)
    lam: float = opt(0.95, unit_open_closed)
    max_grad_norm: float = opt(1.0, positive)
    target_kl: Optional[float] = opt(None, optional(positive), "stop the PPO epochs early when approx KL exceeds it")
    score_clip: Optional[float] = opt(None, optional(positive), "clip scores to [-c, c]")
    whiten_advantages: bool = opt(True)
    value_head_init_std: float = opt(0.0, non_negative, "0 = zero-initialised value head")
    save_steps: int = opt(10, positive, "checkpoint every N steps")
    sample_steps: int = opt(10, positive, "write sample generations every N steps")
    eval_n_dialogues: Optional[int] = opt(100, optional(positive), "held-out prompts for before/after; null = all")
    eval_batch_size: int = opt(64, positive)
    report_to: list[Literal["tensorboard", "wandb"]] = opt([], doc="extra trackers through accelerate")

    def __post_init__(self) -> None:
        if self.batch_size % self.mini_batch_size:
            raise UserError(f"config key 'ppo.batch_size': value {self.batch_size} must be a multiple of "
                            f"ppo.mini_batch_size ({self.mini_batch_size})")


@dataclass
class EvaluateConfig:
    n_dialogues: Optional[int] = opt(None, optional(positive), "held-out dialogues; null = the whole test split")
    n_samples: int = opt(2, non_negative, "sampled responses per prompt (besides greedy); 0 = greedy only")
    temperature: float = opt(1.0, positive)
    top_p: float = opt(1.0, unit_open_closed)
    max_new_tokens: Optional[int] = opt(None, optional(positive), "default: sft.max_new_tokens")
    batch_size: int = opt(64, positive)
    threshold: float = opt(0.5, unit_open_closed, "a response counts as toxic at or above this probability")
    judges: list[Literal["profanity_check"]] = opt(["profanity_check"], doc="independent toxicity judges")
    bootstrap_resamples: int = opt(2000, positive)
    n_examples: int = opt(20, non_negative, "largest improvements / regressions listed")


@dataclass
class ExperimentConfig:
    run_name: Optional[str] = opt(None, doc="defaults to the config file's stem")
    output_dir: str = opt("runs")
    seed: int = opt(42)
    model: ModelConfig = opt(ModelConfig())
    data: DataConfig = opt(DataConfig())
    tinyworld: Optional[TinyWorldConfig] = opt(None, doc="present = build and use the offline tiny world")
    prompt: PromptConfig = opt(PromptConfig())
    sft: SftConfig = opt(SftConfig())
    reward: RewardConfig = opt(RewardConfig())
    ppo: PpoConfig = opt(PpoConfig())
    evaluate: EvaluateConfig = opt(EvaluateConfig())

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / (self.run_name or "run")


# --------------------------------------------------------------------------------------------
# Strict loading
# --------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if origin is Literal:
        if value not in args:
            raise UserError(f"config key '{key}': value {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"config key '{key}': expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool) or tp is not bool and isinstance(value, bool):
        raise UserError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if not isinstance(value, tp):
        raise UserError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: type, raw: Any, section: str) -> Any:
    where = f"section '{section}'" if section else "the top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"config {where}: expected a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UserError(f"unknown config key '{key}' in {where}{hint} (valid: {', '.join(fields)})")
        full = f"{section}.{key}" if section else str(key)
        kwargs[key] = _coerce(hints[key], value, full)
        check = fields[key].metadata.get("check")
        if check is not None and kwargs[key] is not None and (msg := check(kwargs[key])):
            raise UserError(f"config key '{full}': value {kwargs[key]!r} {msg}")
    return cls(**kwargs)


def parse_overrides(overrides: list[str]) -> dict:
    """Turn ``["a.b=3", "c=x"]`` into a nested dict, values parsed as YAML scalars."""
    nested: dict = {}
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} is not of the form key.sub=value")
        dotted, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        node = nested
        parts = dotted.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override {item!r} conflicts with another override of '{part}'")
        node[parts[-1]] = value
    return nested


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"config file {path}: expected a mapping at the top level")
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load ``path`` strictly, apply dotted ``overrides``; ``run_name`` defaults to the file stem."""
    raw = _merge(read_yaml(path), parse_overrides(overrides or []))
    raw.setdefault("run_name", Path(path).stem)
    return _build(ExperimentConfig, raw, "")


def config_from_dict(raw: dict) -> ExperimentConfig:
    return _build(ExperimentConfig, raw, "")


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def to_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
