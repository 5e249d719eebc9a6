"""Run under ``torchrun --nproc_per_node 2``: one PPO step on two CPU ranks (gloo); each rank
writes what it generated for and a digest of its weights, for tests/ppo/test_multiprocess.py."""

import hashlib
import json
import sys
from pathlib import Path

import torch

from rlhf.config import config_from_dict
from rlhf.data import format_prompt, load_splits
from rlhf.models import load_tokenizer
from rlhf.ppo.model import build_policy
from rlhf.ppo.trainer import PPOTrainer
from rlhf.tinyworld.build import resolve_tinyworld
from tests.conftest import small_raw
from tests.ppo.test_trainer import PPO, WordCountScorer


def main(out: Path) -> None:
    config = resolve_tinyworld(config_from_dict(small_raw(out, ppo=PPO)), log=lambda *_: None)
    tokenizer = load_tokenizer(config.model)
    prompts = [format_prompt(d, "summarize") for d in load_splits(config.data, config.seed)["train"]["dialogue"]]
    trainer = PPOTrainer(build_policy(config, None), tokenizer, WordCountScorer(), prompts, config.ppo,
                         seed=config.seed, max_input_length=256)
    accelerator = trainer.accelerator
    mine = trainer.batch_prompts(0)
    stats = trainer.step()
    digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in trainer.policy.trainable_state_dict().values()))
    record = {"rank": accelerator.process_index, "world": accelerator.num_processes,
              "distributed_type": str(accelerator.distributed_type), "prompts": mine,
              "weights": digest.hexdigest(), "scores": stats["objective/scores"]}
    (out / f"rank{accelerator.process_index}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    torch.manual_seed(0)
    main(Path(sys.argv[1]))
