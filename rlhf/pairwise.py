"""A pairwise reward model for the online RL methods (``rl.reward_model: pairwise``): a sequence
classifier with one output r(x, y), initialised from the reward stage's classifier backbone (a
fresh, seeded head), trained with TRL's ``RewardTrainer`` on the RL stage's preference pairs
(:mod:`rlhf.pairs`) by the Bradley-Terry loss of InstructGPT (Ouyang et al. 2022, eq. 1):

    loss = -log sigmoid(r(x, y_w) - r(x, y_l))

plus TRL's mean-zero term c x mean((r_w + r_l)^2) (Eisenstein et al. 2023, eq. 2) when
``rl.pairwise.center_rewards_coefficient`` is set. A seeded share of the pairs' prompts is held
out; the held-out pair accuracy is the share of held-out pairs with r(chosen) > r(rejected).

The text scored is the response, or prompt + response (``reward.score_with_prompt``), tokenized
here with truncation, the same way in training and scoring (TRL gets the ids: it would append an
EOS to text the tokenizer already ends with one, and drop a pair longer than its max length).
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import time
from pathlib import Path

import torch

from rlhf.config import PairwiseSettings
from rlhf.errors import UserError, first_line
from rlhf.pairs import Pair
from rlhf.reward import Scores, scored_texts


def with_learning_rate(cfg: PairwiseSettings, reward_learning_rate: float) -> PairwiseSettings:
    """``cfg`` with its learning rate resolved: its own, else the reward stage's (``reward.learning_rate``)."""
    return dataclasses.replace(cfg, learning_rate=cfg.learning_rate or reward_learning_rate)


def split_by_prompt(pairs: list[Pair], share: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) positions of ``pairs``: a seeded ``share`` of the distinct prompts (at
    least one, never all) is held out with every pair of theirs; both lists in the pairs' order."""
    prompts = list(dict.fromkeys(p.prompt for p in pairs))
    if len(prompts) < 2:
        raise UserError(f"rl.reward_model pairwise: the pairs come from {len(prompts)} prompt(s); training and "
                        f"holding out need at least 2 (raise rl.pairs.n_prompts or lower rl.pairs.margin)")
    n_held = min(len(prompts) - 1, max(1, round(share * len(prompts))))
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed * 1000 + 11)).tolist()
    held = {prompts[i] for i in order[:n_held]}
    return ([i for i, p in enumerate(pairs) if p.prompt not in held],
            [i for i, p in enumerate(pairs) if p.prompt in held])


def encode(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of ``texts``, cut to ``max_length`` (and the tokenizer's own limit)."""
    limit = min(max_length, tokenizer.model_max_length or max_length)
    return tokenizer([" ".join(t.split()) for t in texts], truncation=True, max_length=limit)["input_ids"]


def pair_texts(pairs: list[Pair], with_prompt: bool) -> tuple[list[str], list[str]]:
    """(chosen, rejected) texts as the reward model reads them (:func:`rlhf.reward.scored_texts`)."""
    prompts = [p.prompt for p in pairs]
    return (scored_texts(prompts, [p.chosen for p in pairs], with_prompt),
            scored_texts(prompts, [p.rejected for p in pairs], with_prompt))


class PairwiseScorer:
    """``texts -> r`` [n] (fp32): the pairwise model's scalar, batched under ``no_grad``. It ranks
    texts; it gives no toxicity probability (the classifier and the judges measure toxicity)."""

    def __init__(self, model, tokenizer, batch_size: int = 64, max_length: int = 128):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.batch_size, self.max_length = batch_size, max_length

    @torch.no_grad()
    def rewards(self, texts: list[str]) -> torch.Tensor:
        device, out = next(self.model.parameters()).device, []
        for i in range(0, len(texts), self.batch_size):
            ids = encode(self.tokenizer, texts[i:i + self.batch_size], self.max_length)
            enc = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(device)
            out.append(self.model(**enc).logits.float()[:, 0].cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def score(self, texts: list[str]) -> Scores:
        """The rewards, with NaN toxicity probabilities: nothing may read this model as a toxicity measure."""
        r = self.rewards(texts)
        return Scores(rewards=r, toxic_probs=torch.full_like(r, float("nan")))

    def toxic_probs(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError("a pairwise reward model ranks texts; score toxicity with the classifier")


def pair_accuracy(scorer: PairwiseScorer, pairs: list[Pair], with_prompt: bool) -> tuple[float, float]:
    """(share of ``pairs`` with r(chosen) > r(rejected), mean r(chosen) - r(rejected)); ties count as wrong."""
    chosen, rejected = pair_texts(pairs, with_prompt)
    gap = scorer.rewards(chosen) - scorer.rewards(rejected)
    return float((gap > 0).float().mean()), float(gap.mean())


def load_pairwise(path: str | Path, trust_remote_code: bool = False, fresh_head_seed: int | None = None):
    """(model, tokenizer): a one-output sequence classifier at ``path``. With ``fresh_head_seed`` the
    checkpoint's head (the classifier's two classes) is replaced by a new one drawn from that seed,
    the process's RNG streams left as they were."""
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the head's expected size mismatch is reported as a table
    try:
        with torch.random.fork_rng(devices=[], enabled=fresh_head_seed is not None):
            if fresh_head_seed is not None:
                torch.default_generator.manual_seed(fresh_head_seed)  # the CPU stream only (forked)
            model = AutoModelForSequenceClassification.from_pretrained(
                str(path), num_labels=1, ignore_mismatched_sizes=fresh_head_seed is not None, use_safetensors=True,
                use_kernels=False, trust_remote_code=trust_remote_code)  # no Hub kernels: code fetched and run
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except Exception as err:
        raise UserError(f"could not load a pairwise reward model from '{path}': {first_line(err)}") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
    return model, tokenizer


@contextlib.contextmanager
def kept_rng():
    """Leave the process's torch (CPU and CUDA), numpy and Python RNG streams as they were: the
    Trainer reseeds them all, and the RL steps after it must draw what they draw without it."""
    import numpy as np

    states = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
        try:
            yield
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])


def train_pairwise(pairs: list[Pair], init_path: str, cfg: PairwiseSettings, *, seed: int, out_dir: Path,
                   score_with_prompt: bool = False, trust_remote_code: bool = False, callbacks=()):
    """(model, tokenizer, metrics): the Bradley-Terry model of ``pairs``, from the classifier at
    ``init_path`` (its backbone; a fresh head). TRL's scratch output goes to ``out_dir / 'trainer'``
    and is removed; nothing is saved (the caller saves the model). ``metrics``: pair counts, the
    held-out pair accuracy before and after training, its mean reward gap, TRL's own eval figures,
    the training loss and seconds."""
    import shutil

    import datasets
    from trl import RewardConfig, RewardTrainer

    from rlhf.progress import quiet_trainer, trainer_callback

    class OfflineRewardTrainer(RewardTrainer):
        def _send_telemetry(self):  # TRL pings the Hub with usage data on every start; this pipeline sends nothing
            pass

    start = time.perf_counter()
    train_idx, held_idx = split_by_prompt(pairs, cfg.heldout_share, seed)
    train, held = [pairs[i] for i in train_idx], [pairs[i] for i in held_idx]
    model, tokenizer = load_pairwise(init_path, trust_remote_code, fresh_head_seed=seed)
    scorer = PairwiseScorer(model, tokenizer, max_length=cfg.max_length)
    at_init, margin_at_init = pair_accuracy(scorer, held, score_with_prompt)

    def dataset(part: list[Pair]):
        chosen, rejected = pair_texts(part, score_with_prompt)
        return datasets.Dataset.from_dict({"chosen_ids": encode(tokenizer, chosen, cfg.max_length),
                                           "rejected_ids": encode(tokenizer, rejected, cfg.max_length)})

    if cfg.learning_rate is None:
        raise ValueError("rl.pairwise.learning_rate is unresolved: pass with_learning_rate(cfg, reward rate)")
    # transformers >= 5.25 names it activation_checkpointing (the old name warns); TRL turns it on by default
    no_checkpointing = {("activation_checkpointing" if "activation_checkpointing" in RewardConfig.__dataclass_fields__
                         else "gradient_checkpointing"): False}
    args = RewardConfig(
        output_dir=str(out_dir / "trainer"), num_train_epochs=cfg.epochs, learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size * 2,
        max_length=cfg.max_length, center_rewards_coefficient=cfg.center_rewards_coefficient, seed=seed,
        data_seed=seed, save_strategy="no", eval_strategy="no", report_to="none", push_to_hub=False,
        bf16=False, fp16=False, disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=False,
        **no_checkpointing)
    with kept_rng():
        trainer = OfflineRewardTrainer(model=model, args=args, train_dataset=dataset(train), eval_dataset=dataset(held),
                                       processing_class=tokenizer,
                                       callbacks=[trainer_callback("rl pairwise RM"), *callbacks])
        quiet_trainer(trainer)
        result = trainer.train()
        trl_eval = trainer.evaluate()
    shutil.rmtree(out_dir / "trainer", ignore_errors=True)
    model = trainer.model.eval()
    scorer.model = model
    accuracy, margin = pair_accuracy(scorer, held, score_with_prompt)
    train_accuracy, _ = pair_accuracy(scorer, train, score_with_prompt)
    metrics = {"heldout_pair_accuracy": accuracy, "heldout_mean_margin": margin, "train_pair_accuracy": train_accuracy,
               "heldout_pair_accuracy_at_init": at_init, "heldout_mean_margin_at_init": margin_at_init,
               "n_pairs": len(pairs), "n_train": len(train), "n_heldout": len(held),
               "n_heldout_prompts": len({p.prompt for p in held}), "train_loss": result.training_loss,
               "global_step": result.global_step, "trl_eval": {k: float(v) for k, v in trl_eval.items()},
               "learning_rate": cfg.learning_rate, "init_from": str(init_path),
               "seconds": round(time.perf_counter() - start, 2)}
    return model, tokenizer, metrics
