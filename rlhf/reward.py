"""The toxicity reward model: labelled-text loading, training, and the scorer used by PPO and evaluation.

Label convention inside the project: 0 = non-toxic, 1 = toxic. The reward is the classifier's
non-toxic log-probability (bounded, the default), probability, or logit (the reference lab's choice).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf.config import RewardConfig, RewardDataConfig
from rlhf.errors import UserError, first_line, shown

ID2LABEL = {0: "non-toxic", 1: "toxic"}
SAFETENSORS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")  # what from_pretrained reads


# --------------------------------------------------------------------------------------------
# Labelled data
# --------------------------------------------------------------------------------------------


def load_labelled(cfg: RewardDataConfig, seed: int):
    """Train/validation/test ``DatasetDict`` with ``text`` (str) and ``labels`` (0/1) columns."""
    import datasets

    from rlhf.data import cut_split, load_raw

    raw = load_raw(cfg.source)
    for split, ds in raw.items():
        for col in (cfg.text_column, cfg.label_column):
            if col not in ds.column_names:
                raise UserError(f"reward data {cfg.source}: split '{split}' has no column '{col}' "
                                f"(columns: {', '.join(ds.column_names)})")
    splits = {split: _normalise(ds, cfg, split) for split, ds in raw.items()}
    if "train" not in splits:
        raise UserError(f"reward data {cfg.source}: has no 'train' split (splits: {', '.join(splits)})")
    for name, frac in (("test", cfg.test_fraction), ("validation", cfg.validation_fraction)):
        if name not in splits:
            if frac <= 0:
                raise UserError(f"reward data {cfg.source}: has no '{name}' split and reward.data.{name}_fraction is 0")
            splits["train"], splits[name] = cut_split(splits["train"], name, frac, seed, f"reward data {cfg.source}",
                                                      f"reward.data.{name}_fraction")
    if cfg.max_samples:
        splits = {k: v.select(range(min(cfg.max_samples, len(v)))) for k, v in splits.items()}
    if len(set(splits["train"]["labels"])) < 2:
        raise UserError(f"reward data {cfg.source}: the training split has a single class "
                        f"({ID2LABEL[splits['train']['labels'][0]] if len(splits['train']) else 'empty'}); need both")
    return datasets.DatasetDict({k: splits[k] for k in ("train", "validation", "test")})


def label_values(value: str | list[str]) -> list[str]:
    """``reward.data.toxic_value`` / ``non_toxic_value``: one raw label value or several, as text."""
    return [value] if isinstance(value, str) else list(value)


def _shown(values: list[str]) -> str:
    return shown(values[0]) if len(values) == 1 else shown(values)


def _normalise(ds, cfg: RewardDataConfig, split: str):
    texts, values = ds[cfg.text_column], ds[cfg.label_column]
    bad_text = next((t for t in texts if not isinstance(t, str)), None)
    if bad_text is not None or any(t is None for t in texts):
        raise UserError(f"reward data {cfg.source}: split '{split}' column '{cfg.text_column}' has a non-string "
                        f"value {shown(bad_text)}")
    toxic, clean = label_values(cfg.toxic_value), label_values(cfg.non_toxic_value)
    if both := sorted(set(toxic) & set(clean)):
        raise UserError(f"reward data: label value(s) {both} are declared both toxic (reward.data.toxic_value) and "
                        f"non-toxic (reward.data.non_toxic_value)")
    mapping = {**{v: 0 for v in clean}, **{v: 1 for v in toxic}}
    unexpected = sorted({str(v) for v in values} - set(mapping))
    if unexpected:
        raise UserError(f"reward data {cfg.source}: split '{split}' column '{cfg.label_column}' has values "
                        f"{shown(unexpected[:5])} besides the declared toxic={_shown(toxic)} / non-toxic={_shown(clean)}")
    import datasets

    return datasets.Dataset.from_dict({"text": list(texts), "labels": [mapping[str(v)] for v in values]})


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def load_classifier(name: str, trust_remote_code: bool = False, from_scratch: bool = False,
                    init_seed: int | None = None):
    """(model, tokenizer) for a sequence classifier at ``name``; one-line errors otherwise.

    ``init_seed`` seeds whatever the load initialises at random (all weights when ``from_scratch``,
    a new classification head otherwise) without touching the process's RNG streams, so the model
    to be trained is the same whatever ran before it in the process (``rlhf reward`` alone or
    after SFT inside ``rlhf run``)."""
    from transformers import AutoConfig, AutoTokenizer

    _check_local_classifier(name, from_scratch)
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except Exception as err:
        raise UserError(f"could not load reward model '{name}': {first_line(err)}") from None
    archs = getattr(config, "architectures", None) or []
    if archs and not any(a.endswith("ForSequenceClassification") for a in archs) and not from_scratch:
        raise UserError(f"reward model '{name}' is a {archs[0]}, not a sequence classifier")
    try:
        with torch.random.fork_rng(devices=[], enabled=init_seed is not None):  # the CPU stream, restored after
            if init_seed is not None:
                torch.default_generator.manual_seed(init_seed)  # weights are built on the CPU; no device stream touched
            model = _build_classifier(name, config, trust_remote_code, from_scratch)
    except Exception as err:
        raise UserError(f"reward model '{name}' is not a sequence classifier: {first_line(err)}") from None
    return model.eval(), tokenizer


def _build_classifier(name: str, config, trust_remote_code: bool, from_scratch: bool):
    from transformers import AutoModelForSequenceClassification

    if from_scratch:
        config.num_labels = 2
        return AutoModelForSequenceClassification.from_config(config, trust_remote_code=trust_remote_code)
    two = len(config.id2label) == 2
    return AutoModelForSequenceClassification.from_pretrained(
        name, trust_remote_code=trust_remote_code, num_labels=2, use_safetensors=True,
        use_kernels=False,  # Hub kernels are code fetched from the Hub and run (on by default on a GPU)
        id2label=config.id2label if two else ID2LABEL,
        label2id=config.label2id if two else {v: k for k, v in ID2LABEL.items()},
    )


def _check_local_classifier(name: str, from_scratch: bool) -> None:
    """A local reward model must be a folder with safetensors weights (``model.safetensors`` or its
    shard index; another ``*.safetensors`` file does not count): pickled weights (``pytorch_model.bin``,
    ``.pt``, ``.pkl``) are never loaded, and say so."""
    from rlhf.models import check_local

    path = Path(name)
    check_local(name, "reward model")
    if path.is_dir() and not from_scratch and not any((path / f).is_file() for f in SAFETENSORS_WEIGHTS):
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt"))
        if pickles:
            raise UserError(f"reward model folder {name} has no .safetensors weights to load (no model.safetensors; "
                            f"found {', '.join(pickles)}: pickle files are never loaded); save it with "
                            f"save_pretrained(safe_serialization=True)")


def label_index(model, label: str) -> int:
    """Index of the class called ``label`` in the model's ``id2label``; error lists the labels."""
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    for idx, name in id2label.items():
        if name == label:
            return idx
    raise UserError(f"reward model labels {sorted(id2label.values())} do not include the non-toxic label "
                    f"{shown(label)}: set reward.non_toxic_label")


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


def reward_from_logits(logits: torch.Tensor, log_probs: torch.Tensor, non_toxic: int, output: str,
                       clean_at: float = 1.0) -> torch.Tensor:
    """[n, classes] -> [n] reward.

    ``log_probability`` = log p(non-toxic), bounded above by 0: once a response is clean the reward
    saturates, so the policy gains nothing by drifting further (unlike the lab's ``logit``, which
    grows without bound as the classifier grows more confident). ``probability`` is bounded in
    [0, 1] but also flat for toxic text, where log p keeps a strong pull towards clean.
    ``clean_at`` < 1 makes the bounded rewards exactly flat where p(non-toxic) >= clean_at: clean
    responses then all earn the same, and whitened advantages cannot turn the classifier's
    0.999-vs-0.9999 noise into a push towards one favourite clean phrasing (diversity loss).
    """
    if output == "logit":
        return logits[:, non_toxic]
    if output == "probability":
        return log_probs[:, non_toxic].exp().clamp(max=clean_at)
    if output == "log_probability":
        return log_probs[:, non_toxic].clamp(max=math.log(clean_at))
    raise ValueError(f"unknown reward output {output!r}")


@dataclass
class Scores:
    rewards: torch.Tensor      # [n] non-toxic logit or probability: the PPO reward
    toxic_probs: torch.Tensor  # [n] probability of the toxic class: the evaluation metric


class RewardScorer:
    """``texts -> scores``, batched under ``no_grad``, truncated to the model's max length.

    Special tokens of the reward and policy tokenizers (``<pad>``, ``</s>``, ...) are stripped from
    the text first: scoring them, as the reference lab did, changes the reward.
    """

    def __init__(self, model, tokenizer, non_toxic_label: str, output: str = "log_probability", max_length: int = 512,
                 batch_size: int = 64, strip_tokens: tuple[str, ...] = (), clean_at: float = 1.0):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.non_toxic = label_index(model, non_toxic_label)
        self.output, self.batch_size, self.clean_at = output, batch_size, clean_at
        self.max_length = min(max_length, tokenizer.model_max_length or max_length)
        specials = set(tokenizer.all_special_tokens) | set(strip_tokens) | {"<pad>", "</s>", "<s>", "<unk>"}
        self.strip_tokens = sorted(specials, key=len, reverse=True)

    def clean(self, text: str) -> str:
        for tok in self.strip_tokens:
            text = text.replace(tok, " ")
        return " ".join(text.split())

    @torch.no_grad()
    def score(self, texts: list[str]) -> Scores:
        device = next(self.model.parameters()).device
        rewards, toxic = [], []
        for i in range(0, len(texts), self.batch_size):
            batch = [self.clean(t) for t in texts[i:i + self.batch_size]]
            enc = self.tokenizer(batch, return_tensors="pt", padding=True, truncation=True,
                                 max_length=self.max_length).to(device)
            with torch.autocast(device.type, enabled=False):  # scored in fp32 in every stage, as the RL stage does
                logits = self.model(**enc).logits.float()
            log_probs = logits.log_softmax(-1)
            rewards.append(reward_from_logits(logits, log_probs, self.non_toxic, self.output, self.clean_at))
            toxic.append(1.0 - log_probs[:, self.non_toxic].exp())
        if not rewards:
            return Scores(torch.zeros(0), torch.zeros(0))
        return Scores(rewards=torch.cat(rewards).cpu(), toxic_probs=torch.cat(toxic).cpu())

    def rewards(self, texts: list[str]) -> torch.Tensor:
        return self.score(texts).rewards

    def toxic_probs(self, texts: list[str]) -> torch.Tensor:
        return self.score(texts).toxic_probs


def scored_texts(prompts: list[str], responses: list[str], with_prompt: bool) -> list[str]:
    """What the reward model reads: the response, or prompt + response (``reward.score_with_prompt``)."""
    return [f"{p} {r}" for p, r in zip(prompts, responses)] if with_prompt else list(responses)


def reward_model_path(cfg: RewardConfig, stage_dir: Path) -> str:
    return cfg.pretrained or str(stage_dir / "model")


def load_scorer(cfg: RewardConfig, stage_dir: Path, strip_tokens: tuple[str, ...] = ()) -> RewardScorer:
    """The scorer for a finished reward stage: its trained model, or the named pretrained one."""
    model, tokenizer = load_classifier(reward_model_path(cfg, stage_dir), cfg.trust_remote_code)
    label = cfg.non_toxic_label if cfg.pretrained else ID2LABEL[0]
    from rlhf.runtime import default_device

    # on the policy's device (the GPU when there is one): scoring a batch is a forward pass per step
    return RewardScorer(model.to(default_device()), tokenizer, label, cfg.output, cfg.max_length,
                        strip_tokens=strip_tokens, clean_at=cfg.clean_at)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def class_weights(labels: list[int]) -> torch.Tensor:
    """Inverse-frequency weights, normalised so a balanced set gets 1.0 for both classes."""
    counts = torch.bincount(torch.tensor(labels), minlength=2).float()
    return counts.sum() / (2 * counts.clamp(min=1))


def train_classifier(model, tokenizer, splits, cfg: RewardConfig, output_dir: Path, seed: int, callbacks=()):
    """Fine-tune ``model`` with the transformers Trainer; early stopping on validation loss.
    ``callbacks``: more Trainer callbacks (the stage's log, :func:`rlhf.trackers.trainer_logger`)."""
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback, Trainer, TrainingArguments, set_seed

    from rlhf.progress import quiet_trainer, trainer_callback

    set_seed(seed)

    def encode(batch):
        return tokenizer(batch["text"], truncation=True, max_length=cfg.max_length)

    train, val = (splits[s].map(encode, batched=True, remove_columns=["text"]) for s in ("train", "validation"))
    weights = class_weights(splits["train"]["labels"]) if cfg.balance == "class_weights" else None

    def weighted_loss(outputs, labels, num_items_in_batch=None):
        w = weights.to(outputs.logits.device) if weights is not None else None
        return torch.nn.functional.cross_entropy(outputs.logits.float(), labels, weight=w)

    early = cfg.early_stopping_patience is not None
    args = TrainingArguments(
        output_dir=str(output_dir), learning_rate=cfg.learning_rate, num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size * 2,
        weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_ratio, eval_strategy="steps", eval_steps=cfg.eval_steps,
        save_strategy="steps", save_steps=cfg.eval_steps, save_total_limit=1, load_best_model_at_end=early,
        metric_for_best_model="eval_loss", greater_is_better=False, logging_steps=cfg.eval_steps, seed=seed,
        data_seed=seed, report_to="none", disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=False,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=train, eval_dataset=val, processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer), compute_loss_func=weighted_loss,
        callbacks=[trainer_callback("reward"), *([EarlyStoppingCallback(cfg.early_stopping_patience)] if early else []),
                   *callbacks],
    )
    quiet_trainer(trainer)
    result = trainer.train()
    return trainer.model.eval(), {"train_loss": result.training_loss, "global_step": result.global_step,
                                  "best_eval_loss": trainer.state.best_metric,
                                  "class_weights": weights.tolist() if weights is not None else None}
