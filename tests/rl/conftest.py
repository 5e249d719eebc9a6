"""What the PPO tests share: a small trainer (:func:`make`) and a cheap deterministic scorer."""
import torch

from rlhf.config import config_from_dict
from rlhf.data import load_splits, toxic_flags
from rlhf.models import load_tokenizer
from rlhf.rl.model import build_policy
from rlhf.rl.checkpoint import read_checkpoint
from rlhf.rl.ptx import ptx_pairs
from rlhf.rl.trainer import RLTrainer
from rlhf.prompts import format_prompt
from rlhf.tinyworld.build import resolve_tinyworld

from ..conftest import small_raw

PPO = {"start_from": "base", "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q", "v"]},
       "learning_rate": 5e-3, "steps": 4, "batch_size": 8, "mini_batch_size": 4, "epochs": 2,
       "max_new_tokens": 8, "save_steps": 2}


class WordCountScorer:
    """A cheap deterministic reward: number of words."""

    def __init__(self, value=None):
        self.value = value

    def rewards(self, texts):
        if self.value is not None:
            return torch.full((len(texts),), self.value)
        return torch.tensor([float(len(t.split())) for t in texts])


def make(tmp_path, scorer=None, with_ptx=True, **ppo):
    """A trainer on the small test world; with ``rl.ptx_coef`` (and ``with_ptx``) the pipeline's ptx pairs."""
    config = resolve_tinyworld(config_from_dict(small_raw(tmp_path, rl={**PPO, **ppo})), log=lambda *_: None)
    tokenizer = load_tokenizer(config.model)
    train = load_splits(config.data, config.seed)["train"]
    prompts = [format_prompt(d, "summarize") for d in train["dialogue"]]
    flags = toxic_flags(train, config.data, "train")
    ptx = (ptx_pairs(prompts, list(train["summary"]), flags, config.rl.ptx_coef, 32)
           if config.rl.ptx_coef > 0 and with_ptx else None)
    policy = build_policy(config, None)
    trainer = RLTrainer(policy, tokenizer, scorer or WordCountScorer(), prompts, config.rl, seed=config.seed,
                         max_input_length=256, toxic=flags if config.rl.toxic_share else None, ptx=ptx)
    return trainer, config


def straight_and_resumed(make_trainer, tmp_path, before: int, after: int):
    """Two trainers built by ``make_trainer(folder)`` from the same seed: one stepped ``before + after``
    times straight; one stepped ``before`` times, checkpointed, and the checkpoint applied to a third
    built under other RNG state (a fresh process), which then steps ``after`` times. Returns
    (straight, resumed, the resumed one's step count right after the checkpoint was applied)."""
    torch.manual_seed(0)
    straight = make_trainer(tmp_path / "a")
    for _ in range(before + after):
        straight.step()
    torch.manual_seed(0)
    first = make_trainer(tmp_path / "b")
    for _ in range(before):
        first.step()
    first.save_checkpoint(tmp_path / "ckpt")
    torch.manual_seed(123)  # a fresh process: other RNG state
    resumed = make_trainer(tmp_path / "c")
    resumed.apply_checkpoint(read_checkpoint(tmp_path / "ckpt"))
    at = resumed.step_count
    for _ in range(after):
        resumed.step()
    return straight, resumed, at
