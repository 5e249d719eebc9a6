"""Run under ``torchrun --nproc_per_node 2``: one PPO step (with PPO-ptx) on two CPU ranks (gloo); each rank
writes what it generated for and a digest of its weights, for tests/ppo/test_multiprocess.py."""

import hashlib
import json
import sys
from pathlib import Path

import torch

from tests.ppo.test_trainer import make


def main(out: Path) -> None:
    trainer, _ = make(out, ptx_coef=0.5)  # PPO-ptx pairs ride in the same forward: DDP still reduces once
    accelerator = trainer.accelerator
    mine = trainer.batch_prompts(0)
    stats = trainer.step()
    digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in trainer.policy.trainable_state_dict().values()))
    record = {"rank": accelerator.process_index, "world": accelerator.num_processes,
              "distributed_type": str(accelerator.distributed_type), "prompts": mine,
              "weights": digest.hexdigest(), "scores": stats["objective/scores"],
              "ptx_loss": stats["ppo/loss/ptx"]}
    (out / f"rank{accelerator.process_index}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    torch.manual_seed(0)
    main(Path(sys.argv[1]))
