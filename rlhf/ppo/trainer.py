"""The PPO trainer: orchestration only; the maths lives in ``core`` and ``kl``.

One step reads like lm-human-preferences: queries -> responses -> scores -> logprobs, values and
ref logprobs -> KL-shaped rewards -> advantages -> mini-batch updates -> KL controller update.
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf.checkpoints import first_non_finite, shape_mismatch
from rlhf.config import PpoConfig
from rlhf.configcheck import check_update_plan
from rlhf.errors import UserError
from rlhf.models import refuse_trainable_encoder
from rlhf.ppo import core
from rlhf.ppo.checkpoint import Checkpoint, write_checkpoint
from rlhf.ppo.kl import make_kl_controller
from rlhf.ppo.ptx import PtxBatch, PtxPairs, pad_cat
from rlhf.ppo.ranks import generator_states, restore_generators, seed_process
from rlhf.ppo.sampling import batch_indices
from rlhf.ppo.rollout import score_responses
from rlhf.reward import scored_texts
from rlhf.runtime import use_cpu
from rlhf.seq2seq import Queries, decoder_inputs, encode_queries, encoder_states, logprobs_from_logits, sample_responses


class NonFiniteError(UserError):
    """A loss, reward, KL, weight or optimizer state became NaN or infinite; nothing non-finite is
    ever written to a checkpoint, and the last good one is left as it was."""


def check_finite(step: int, last_checkpoint: Path | None, **values) -> None:
    """Stop at once if any of ``values`` (tensors, or dicts / lists of them) holds a NaN or inf.
    ``step`` counts from 1, as the logs and checkpoint names do."""
    for name, value in values.items():
        value = torch.as_tensor(value) if isinstance(value, (int, float)) else value
        if (bad := first_non_finite(value)) is not None:
            where = name if bad == "tensor" else f"{name} ({bad})"
            last = f"last good checkpoint: {last_checkpoint}" if last_checkpoint else "no checkpoint yet"
            raise NonFiniteError(f"PPO step {step}: {where} is not finite; stopping ({last})")


def check_strata(toxic: list[bool] | None, cfg: PpoConfig, n_prompts: int) -> list[bool] | None:
    """The toxic flags that ``ppo.toxic_share`` draws batches by: one per prompt, and both strata
    non-empty, else one line naming the key."""
    if cfg.toxic_share is None:
        return None
    if toxic is None or len(toxic) != n_prompts:
        raise UserError("config key 'ppo.toxic_share': needs a toxic flag for every training prompt "
                        "(data.toxic_column)")
    n_toxic = sum(map(bool, toxic))
    if n_toxic == 0 or n_toxic == n_prompts:
        raise UserError(f"config key 'ppo.toxic_share': value {cfg.toxic_share} needs toxic and clean training "
                        f"prompts, but {n_toxic} of {n_prompts} are toxic (data.toxic_column)")
    return [bool(t) for t in toxic]


@dataclass
class Batch:
    """One step's rollouts, all [B, T] unless noted."""

    queries: Queries
    responses: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    states: torch.Tensor | None = None  # [B, S, d] rollout encoder states, reused by the update (frozen encoder)


class PPOTrainer:
    def __init__(self, policy, tokenizer, scorer, prompts: list[str], cfg: PpoConfig, *, seed: int,
                 max_input_length: int, score_with_prompt: bool = False, accelerator=None,
                 config_record: dict | None = None, mixed_precision: str = "no", toxic: list[bool] | None = None,
                 ptx: PtxPairs | None = None):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        self.cfg, self.tokenizer, self.scorer, self.prompts = cfg, tokenizer, scorer, prompts
        self.seed, self.max_input_length, self.score_with_prompt = seed, max_input_length, score_with_prompt
        self.toxic = check_strata(toxic, cfg, len(prompts))
        if cfg.ptx_coef > 0 and not ptx:
            raise UserError(f"config key 'ppo.ptx_coef': value {cfg.ptx_coef} needs supervised training pairs")
        self.ptx = ptx if cfg.ptx_coef > 0 else None  # PPO-ptx: pairs mixed into every update
        if cfg.frozen_encoder:  # the reference and the update reuse encoder states: none may train
            refuse_trainable_encoder(policy.lm)
        if accelerator is None:  # a Trainer earlier in this process (`rlhf run`) left its own precision in the
            # process-wide state. accelerate has no public reset (transformers' TrainingArguments calls this same
            # private method for the same reason); the process group stays
            AcceleratorState._reset_state(reset_partial_state=False)
        self.accelerator = accelerator or Accelerator(
            cpu=use_cpu(), mixed_precision=mixed_precision,  # autocast over fp32 master weights
            gradient_accumulation_steps=cfg.gradient_accumulation_steps)
        check_update_plan(cfg, self.accelerator.num_processes)
        seed_process(seed, self.accelerator.process_index)
        self.optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad],
                                           lr=cfg.learning_rate, eps=1e-5)
        self.model, self.optimizer = self.accelerator.prepare(policy, self.optimizer)
        # ppo.compile: why the update stays eager (None = compiled, or not asked for)
        self.compile_fallback = self.policy.compile_training_forward() if cfg.compile else None
        if not cfg.compile:
            self.policy.eager_training_forward()
        self.kl_ctl = make_kl_controller(cfg.kl)
        self.step_count = 0
        self.start_token = policy.lm.config.decoder_start_token_id
        self.config_record = config_record  # the resolved config, kept in each checkpoint
        self.last_checkpoint: Path | None = None

    @property
    def policy(self):
        return self.accelerator.unwrap_model(self.model)

    # ------------------------------------------------------------------ data
    def batch_prompts(self, step: int) -> list[str]:
        """This rank's share of step ``step``'s prompts (:func:`rlhf.ppo.sampling.batch_indices`)."""
        idx = batch_indices(len(self.prompts), self.cfg.batch_size, step, self.seed, self.toxic,
                            self.cfg.toxic_per_batch)
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        return [self.prompts[i] for i in idx[rank::world]]

    def ptx_batch(self, draw: int) -> PtxBatch:
        """This rank's share of the ``draw``-th mini-batch of PPO-ptx pairs: as many pairs as the rank's
        mini-batch has rollouts (``ppo.mini_batch_size`` over all processes, at least one each)."""
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        idx = self.ptx.indices(draw, self.cfg.mini_batch_per_process(world) * world, self.seed + 2)
        return self.ptx.encode(self.tokenizer, idx[rank::world], self.max_input_length, self.accelerator.device)

    # ------------------------------------------------------------------ one step
    def step(self) -> dict[str, float]:
        cfg, step, timer = self.cfg, self.step_count, Timer()
        prompts = self.batch_prompts(step)
        device = self.accelerator.device  # every tensor on the device of the policy that consumes it
        queries = encode_queries(self.tokenizer, prompts, self.max_input_length, device)
        with timer("generate"), self.accelerator.autocast():  # the encoder runs once; its states serve the no-grad pass
            states = encoder_states(self.policy.lm, queries, cfg.mini_batch_size)
            responses, response_mask = sample_responses(
                self.policy.lm, queries, cfg.max_new_tokens, self.tokenizer.eos_token_id,
                self.tokenizer.pad_token_id, self.start_token, cfg.min_new_tokens, states)
        with timer("score"):
            texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
            scores = self.scorer.rewards(scored_texts(prompts, texts, self.score_with_prompt)).to(device)
            if cfg.score_clip is not None:
                scores = scores.clamp(-cfg.score_clip, cfg.score_clip)
        with timer("forward"), self.accelerator.autocast():
            scored = score_responses(self.policy, queries, responses, response_mask, self.start_token,
                                     cfg.mini_batch_size, states, shared_encoder=cfg.frozen_encoder)
        rewards, kl = core.compute_rewards(scores, scored.logprobs, scored.ref_logprobs, response_mask,
                                           self.kl_ctl.value, cfg.kl.estimator)
        advantages, returns = core.gae(rewards, scored.values, response_mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:  # over every process's tokens, as one process with the whole batch
            total = (lambda t: self.accelerator.reduce(t, "sum")) if self.accelerator.num_processes > 1 else None
            advantages = core.masked_whiten(advantages, response_mask, sum_over_processes=total)
        mean_kl = self.gather_mean(kl.sum(-1))
        check_finite(step + 1, self.last_checkpoint, scores=scores, kl=mean_kl)
        batch = Batch(queries, responses, response_mask, scored.logprobs, scored.values, advantages, returns,
                      states if cfg.frozen_encoder else None)
        with timer("update"):
            stats = self.update(batch)
        check_finite(step + 1, self.last_checkpoint,
                     weights={k: p.detach() for k, p in self.policy.named_parameters() if p.requires_grad})
        kl_coef = self.kl_ctl.value
        self.kl_ctl.update(mean_kl.item(), cfg.batch_size)
        self.step_count += 1
        n_tokens = int(response_mask.sum())
        return {
            "step": step + 1, "objective/scores": self.gather_mean(scores).item(),
            "objective/scores_std": scores.std().item() if len(scores) > 1 else 0.0,
            "objective/kl": mean_kl.item(), "objective/kl_coef": kl_coef,
            "objective/entropy": scored.entropy.item(), **stats,
            "ppo/learning_rate": self.optimizer.param_groups[0]["lr"],
            "response_length": response_mask.sum(-1).float().mean().item(),
            **{f"time/{k}": v for k, v in timer.seconds.items()},
            "time/step": sum(timer.seconds.values()),
            "tokens_per_s": n_tokens / max(timer.seconds["generate"], 1e-9),
        }

    def update(self, batch: Batch) -> dict[str, float]:
        """``ppo_epochs`` passes over shuffled mini-batches of the rollouts; with PPO-ptx each
        mini-batch's forward also carries a mini-batch of supervised pairs."""
        cfg = self.cfg
        dec = decoder_inputs(batch.responses, self.start_token)
        world = self.accelerator.num_processes
        mb = cfg.mini_batch_per_process(world)
        draws_per_step = cfg.mini_batches_per_update(world)  # ptx draws are a function of the step
        sums: dict[str, float] = {}
        count, stop = 0, False
        lengths = batch.queries.attention_mask.sum(-1)
        for _ in range(cfg.ppo_epochs):
            for idx in mini_batches(lengths, mb, cfg.bucket_by_length):
                width = int(lengths[idx].max())  # no work on padding beyond this mini-batch's longest prompt
                with self.accelerator.accumulate(self.model):
                    states = None if batch.states is None else batch.states[idx, :width]  # frozen: no encoder here
                    inputs = (batch.queries.input_ids[idx, :width], batch.queries.attention_mask[idx, :width], dec[idx])
                    ptx = None if self.ptx is None else self.ptx_batch(self.step_count * draws_per_step + count)
                    if ptx is not None:
                        inputs, states = self.with_ptx(inputs, states, ptx)
                    out = self.model(*inputs, encoder_states=states)
                    n, t = len(idx), dec.shape[1]  # the PPO rows come first
                    logprobs = logprobs_from_logits(out.logits[:n, :t], batch.responses[idx])
                    mask = batch.response_mask[idx]
                    pg_loss, pg = core.policy_loss(logprobs, batch.logprobs[idx], batch.advantages[idx], mask, cfg.cliprange)
                    vf_loss, vf = core.value_loss(out.values[:n, :t], batch.values[idx], batch.returns[idx], mask,
                                                  cfg.cliprange_value)
                    loss = pg_loss + cfg.vf_coef * vf_loss
                    if ptx is not None:  # InstructGPT eq. 2: + gamma * E[log pi(x)] on the SFT data
                        ptx_loss = core.sft_loss(out.logits[n:, :ptx.targets.shape[1]], ptx.targets, ptx.target_mask)
                        loss = loss + cfg.ptx_coef * ptx_loss
                        sums["ppo/loss/ptx"] = sums.get("ppo/loss/ptx", 0.0) + float(ptx_loss.detach())
                    check_finite(self.step_count + 1, self.last_checkpoint, loss=loss)
                    self.accelerator.backward(loss)
                    if self.accelerator.sync_gradients:
                        self.accelerator.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad()
                for key, value in (("ppo/loss/policy", pg_loss), ("ppo/loss/value", vf_loss),
                                   ("ppo/policy/clipfrac", pg["clipfrac"]), ("ppo/policy/approxkl", pg["approxkl"]),
                                   ("ppo/val/clipfrac", vf["clipfrac"])):
                    sums[key] = sums.get(key, 0.0) + float(value.detach())
                count += 1  # every process stops at the same pass: on the processes' mean KL
                stop = cfg.target_kl is not None and float(self.accelerator.reduce(pg["approxkl"], "mean")) > cfg.target_kl
                if stop:
                    break
            if stop:
                break
        return {k: v / max(1, count) for k, v in sums.items()} | {"ppo/mini_batches": count, "ppo/early_stopped": stop}

    def with_ptx(self, inputs: tuple, states: torch.Tensor | None, ptx: PtxBatch) -> tuple[tuple, torch.Tensor | None]:
        """The mini-batch's (input_ids, attention_mask, decoder_input_ids) with the ptx pairs' rows
        appended (one forward, one graph); with a frozen encoder also their encoder states."""
        ids, att, dec = inputs
        pad = self.tokenizer.pad_token_id
        inputs = (pad_cat(ids, ptx.queries.input_ids, pad), pad_cat(att, ptx.queries.attention_mask, 0),
                  pad_cat(dec, decoder_inputs(ptx.targets, self.start_token), pad))
        if states is not None:  # under the same autocast as the rollout's encoder states
            with self.accelerator.autocast():
                states = pad_cat(states, encoder_states(self.policy.lm, ptx.queries, len(ptx.targets)), 0.0)
        return inputs, states

    def gather_mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.accelerator.gather(x.detach().float().reshape(-1)).mean()

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, folder: Path) -> None:
        """Trainable weights + value head, optimizer, KL controller, RNG, step and the
        config: atomically, and only when every value is finite (else :class:`NonFiniteError`)."""
        ckpt = Checkpoint(folder, self.policy.trainable_state_dict(),
                          {"optimizer": self.optimizer.state_dict()},
                          generator_states(self.accelerator.process_index, self.accelerator.num_processes,
                                           self.accelerator.device),
                          {"step": self.step_count, "data_position": self.step_count * self.cfg.batch_size,
                           "kl_controller": self.kl_ctl.state_dict(), "python_random": random.getstate(),
                           "config": self.config_record})
        check_finite(self.step_count, self.last_checkpoint, weights=ckpt.trainable, optimizer_state=ckpt.optimizer)
        if self.accelerator.is_main_process:
            write_checkpoint(folder, ckpt)
        self.last_checkpoint = folder

    def trainable_shapes(self) -> dict[str, torch.Size]:
        return {k: p.shape for k, p in self.policy.named_parameters() if p.requires_grad}

    def apply_checkpoint(self, ckpt: Checkpoint) -> None:
        """Continue from a verified checkpoint; the learning rate comes from the config, not from it."""
        if (why := shape_mismatch(ckpt.trainable, self.trainable_shapes())) is not None:
            raise UserError(f"checkpoint {ckpt.folder} does not fit the configured model: {why}")
        self.policy.load_trainable_state_dict(ckpt.trainable)
        self.optimizer.load_state_dict(ckpt.optimizer["optimizer"])
        for group in self.optimizer.param_groups:  # a constant rate: the config's, not the checkpoint's
            group["lr"] = self.cfg.learning_rate
        restore_generators(ckpt.rng, self.accelerator.process_index, self.accelerator.device, self.seed)
        state = ckpt.state
        self.step_count = state["step"]
        self.kl_ctl.value = state["kl_controller"]["value"]
        py = state["python_random"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        self.last_checkpoint = ckpt.folder


class Timer:
    """Accumulates wall time per named block: ``with timer("generate"): ...``. On CUDA each block
    waits for the GPU's queued work at its start and end, so it is charged for its own kernels."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @staticmethod
    def _sync() -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    @contextlib.contextmanager
    def __call__(self, name: str):
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def mini_batches(lengths: torch.Tensor, size: int, bucket: bool) -> list[torch.Tensor]:
    """Index sets of one PPO epoch. Shuffled; with ``bucket``, prompts of similar length share a
    mini-batch (a random permutation, stably sorted by length, cut into mini-batches, whose
    order is then shuffled), so less of each forward is spent on padding."""
    perm = torch.randperm(len(lengths))
    if not bucket:
        return list(perm.split(size))
    order = perm[torch.sort(lengths[perm], stable=True).indices]
    chunks = list(order.split(size))
    return [chunks[i] for i in torch.randperm(len(chunks)).tolist()]
