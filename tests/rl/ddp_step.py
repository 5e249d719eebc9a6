"""Run under ``torchrun --nproc_per_node 2``: PPO steps (with PPO-ptx) on two CPU ranks (gloo); each rank
writes what it generated for, a digest of its weights and what it drew, for tests/rl/test_trainer.py
(the two-process test); then a GRPO step in groups of two."""

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from rlhf.rl import ppo
from tests.rl.conftest import make


def whitens_as_one_process(accelerator) -> bool:
    """Each rank whitens its half of a batch over both halves' tokens: as one process whitening the whole."""
    x = torch.arange(24.0).reshape(6, 4) ** 1.5
    mask = torch.arange(4) < torch.tensor([4, 1, 3, 2, 4, 3]).unsqueeze(-1)
    whole = ppo.masked_whiten(x, mask)
    r, w = accelerator.process_index, accelerator.num_processes
    mine = ppo.masked_whiten(x[r::w], mask[r::w], sum_over_processes=lambda t: accelerator.reduce(t, "sum"))
    return torch.allclose(mine, whole[r::w], atol=1e-6)


def main(out: Path) -> None:
    trainer, _ = make(out, ptx_coef=0.5)  # PPO-ptx pairs ride in the same forward: DDP still reduces once
    accelerator = trainer.accelerator
    mine = trainer.batch_prompts(0)
    stats = trainer.step()
    trainer.cfg = dataclasses.replace(trainer.cfg, target_kl=1e-4)  # each rank's own KL would stop it elsewhere
    early = trainer.step()
    trainer.save_checkpoint(out / "ck")  # a collective: every rank's generator states
    accelerator.wait_for_everyone()
    digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in trainer.policy.trainable_state_dict().values()))
    record = {"rank": accelerator.process_index, "world": accelerator.num_processes,
              "distributed_type": str(accelerator.distributed_type), "prompts": mine,
              "weights": digest.hexdigest(), "scores": stats["objective/scores"],
              "ptx_loss": stats["loss/ptx"], "early_stop_passes": early["update/mini_batches"],
              "whitens_as_one": whitens_as_one_process(accelerator), "noise": torch.rand(3).tolist()}
    if accelerator.is_main_process:
        from safetensors.torch import load_file

        record["checkpoint_generators"] = sorted(load_file(str(out / "ck" / "rng.safetensors")))
    # GRPO in groups of 2: each rank samples, scores and updates whole groups of its own prompts
    group, _ = make(out / "grpo", algorithm="grpo", group_size=2, batch_size=8, mini_batch_size=4)
    record["group_prompts"] = group.batch_prompts(0)
    group.step()
    record["group_weights"] = hashlib.sha256(b"".join(
        v.numpy().tobytes() for v in group.policy.trainable_state_dict().values())).hexdigest()
    (out / f"rank{accelerator.process_index}.json").write_text(json.dumps(record))
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    torch.manual_seed(0)
    main(Path(sys.argv[1]))
    # every rank's record is written: leave without the interpreter's teardown, whose gloo threads
    # aborted a rank now and then ("terminate called without an active exception", SIGABRT)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
