"""The RL loop, one for every algorithm (PPO, RLOO, GRPO: :mod:`rlhf.rl.algorithms`); orchestration
only, the maths live in the algorithm's pure functions and :mod:`rlhf.rl.kl`.

One step reads like lm-human-preferences: prompts -> k responses per prompt from one encoder pass
-> scores -> logprobs (values for PPO) and reference logprobs -> the algorithm's targets
(advantages) -> mini-batch updates of whole groups -> KL controller update.
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf.checkpoints import first_non_finite, shape_mismatch
from rlhf.config import RlConfig
from rlhf.configcheck import check_update_plan
from rlhf.errors import UserError
from rlhf.models import refuse_trainable_encoder
from rlhf.rl.algorithms import MiniBatch, Targets, make_algorithm
from rlhf.rl.checkpoint import Checkpoint, write_checkpoint
from rlhf.rl.kl import make_kl_controller
from rlhf.rl.objectives import sft_loss
from rlhf.rl.ptx import PtxBatch, PtxPairs, pad_cat
from rlhf.rl.ranks import generator_states, restore_generators, seed_process
from rlhf.rl.rollout import score_responses
from rlhf.rl.sampling import batch_indices
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
            raise NonFiniteError(f"RL step {step}: {where} is not finite; stopping ({last})")


def check_strata(toxic: list[bool] | None, cfg: RlConfig, n_prompts: int) -> list[bool] | None:
    """The toxic flags that ``rl.toxic_share`` draws batches by: one per prompt, and both strata
    non-empty, else one line naming the key."""
    if cfg.toxic_share is None:
        return None
    if toxic is None or len(toxic) != n_prompts:
        raise UserError("config key 'rl.toxic_share': needs a toxic flag for every training prompt "
                        "(data.toxic_column)")
    n_toxic = sum(map(bool, toxic))
    if n_toxic == 0 or n_toxic == n_prompts:
        raise UserError(f"config key 'rl.toxic_share': value {cfg.toxic_share} needs toxic and clean training "
                        f"prompts, but {n_toxic} of {n_prompts} are toxic (data.toxic_column)")
    return [bool(t) for t in toxic]


@dataclass
class Batch:
    """One step's rollouts: ``queries`` and ``states`` per prompt [P, S(, d)], the rest per rollout,
    [P x k, T] unless noted (rows ``i * k .. i * k + k - 1`` answer prompt i)."""

    queries: Queries
    responses: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor | None       # PPO's value head only
    targets: Targets
    states: torch.Tensor | None = None  # [P, S, d] rollout encoder states, reused by the update (frozen encoder)

    def mini_batch(self, idx: torch.Tensor) -> MiniBatch:
        t = self.targets
        return MiniBatch(self.logprobs[idx], self.ref_logprobs[idx], None if self.values is None else self.values[idx],
                         t.advantages[idx], None if t.returns is None else t.returns[idx], self.response_mask[idx])


class RLTrainer:
    def __init__(self, policy, tokenizer, scorer, prompts: list[str], cfg: RlConfig, *, seed: int,
                 max_input_length: int, score_with_prompt: bool = False, accelerator=None,
                 config_record: dict | None = None, mixed_precision: str = "no", toxic: list[bool] | None = None,
                 ptx: PtxPairs | None = None, compile_decoding: bool = False):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        self.cfg, self.tokenizer, self.scorer, self.prompts = cfg, tokenizer, scorer, prompts
        self.seed, self.max_input_length, self.score_with_prompt = seed, max_input_length, score_with_prompt
        self.compile_decoding = compile_decoding  # model.compile_decoding: the rollouts' decoding step compiled
        self.toxic = check_strata(toxic, cfg, len(prompts))
        if cfg.ptx_coef > 0 and not ptx:
            raise UserError(f"config key 'rl.ptx_coef': value {cfg.ptx_coef} needs supervised training pairs")
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
        # rl.compile: why the update stays eager (None = compiled, or not asked for)
        self.compile_fallback = self.policy.compile_training_forward() if cfg.compile else None
        if not cfg.compile:
            self.policy.eager_training_forward()
        self.kl_ctl = make_kl_controller(cfg.kl)
        self.algorithm = make_algorithm(cfg)
        self.step_count = 0
        self.start_token = policy.lm.config.decoder_start_token_id
        self.config_record = config_record  # the resolved config, kept in each checkpoint
        self.last_checkpoint: Path | None = None

    @property
    def policy(self):
        return self.accelerator.unwrap_model(self.model)

    # ------------------------------------------------------------------ data
    def batch_indices(self, step: int) -> list[int]:
        """This rank's share of step ``step``'s prompts (:func:`rlhf.rl.sampling.batch_indices`): whole
        groups, so that a prompt's k responses are sampled, scored and updated on one process."""
        idx = batch_indices(len(self.prompts), self.cfg.prompts_per_batch, step, self.seed, self.toxic,
                            self.cfg.toxic_per_batch)
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        return idx[rank::world]

    def batch_prompts(self, step: int) -> list[str]:
        return [self.prompts[i] for i in self.batch_indices(step)]

    def ptx_batch(self, draw: int) -> PtxBatch:
        """This rank's share of the ``draw``-th mini-batch of PPO-ptx pairs: as many pairs as the rank's
        mini-batch has rollouts (``rl.mini_batch_size`` over all processes, at least one each)."""
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        idx = self.ptx.indices(draw, self.cfg.mini_batch_per_process(world) * world, self.seed + 2)
        return self.ptx.encode(self.tokenizer, idx[rank::world], self.max_input_length, self.accelerator.device)

    # ------------------------------------------------------------------ one step
    def step(self) -> dict[str, float]:
        cfg, step, timer, k = self.cfg, self.step_count, Timer(), self.cfg.group_size
        queries, states, responses, response_mask, scores = self.rollouts(step, timer)
        with timer("forward"), self.accelerator.autocast():
            scored = score_responses(self.policy, queries, responses, response_mask, self.start_token,
                                     cfg.mini_batch_size, states, shared_encoder=cfg.frozen_encoder, group_size=k)
        total = (lambda t: self.accelerator.reduce(t, "sum")) if self.accelerator.num_processes > 1 else None
        kl_coef = self.kl_ctl.value if self.algorithm.kl_in_reward else cfg.grpo.kl_coef  # DPO / IPO: unused
        targets = self.algorithm.targets(scores, scored.logprobs, scored.ref_logprobs, scored.values, response_mask,
                                         kl_coef, sum_over_processes=total)
        mean_kl = self.gather_mean(targets.kl.sum(-1))
        check_finite(step + 1, self.last_checkpoint, scores=scores, kl=mean_kl)
        batch = Batch(queries, responses, response_mask, scored.logprobs, scored.ref_logprobs, scored.values, targets,
                      states if cfg.frozen_encoder else None)
        with timer("update"):
            stats = self.update(batch)
        check_finite(step + 1, self.last_checkpoint,
                     weights={k: p.detach() for k, p in self.policy.named_parameters() if p.requires_grad})
        if self.algorithm.kl_in_reward:
            self.kl_ctl.update(mean_kl.item(), cfg.batch_size)
        self.step_count += 1
        n_tokens = int(response_mask.sum())
        on_samples = {"objective/kl": mean_kl.item(), "objective/kl_coef": kl_coef} if self.algorithm.samples else {}
        return {
            "step": step + 1, "objective/scores": self.gather_mean(scores).item(),
            "objective/scores_std": scores.std().item() if len(scores) > 1 else 0.0,
            **on_samples, "objective/entropy": scored.entropy.item(), **stats,
            "update/learning_rate": self.optimizer.param_groups[0]["lr"],
            "response_length": response_mask.sum(-1).float().mean().item(),
            **{f"time/{name}": v for name, v in timer.seconds.items()},
            "time/step": sum(timer.seconds.values()),
            **({"tokens_per_s": n_tokens / max(timer.seconds["generate"], 1e-9)} if "generate" in timer.seconds else {}),
        }

    def rollouts(self, step: int, timer: "Timer") -> tuple[Queries, torch.Tensor, torch.Tensor, torch.Tensor,
                                                            torch.Tensor]:
        """This process's prompts of step ``step``, encoded -> (queries [P, S], encoder states
        [P, S, d], responses [P x k, T], response mask [P x k, T], scores [P x k]): k responses
        sampled per prompt from one encoder pass, scored by the reward model."""
        cfg, k = self.cfg, self.cfg.group_size
        prompts = self.batch_prompts(step)
        device = self.accelerator.device  # every tensor on the device of the policy that consumes it
        queries = encode_queries(self.tokenizer, prompts, self.max_input_length, device)
        with timer("generate"), self.accelerator.autocast():  # the encoder runs once per prompt, for every pass
            states = encoder_states(self.policy.lm, queries, max(1, cfg.mini_batch_size // k), self.compile_decoding)
            responses, response_mask = sample_responses(
                self.policy.lm, queries, cfg.max_new_tokens, self.tokenizer.eos_token_id,
                self.tokenizer.pad_token_id, self.start_token, cfg.min_new_tokens, states, n=k,
                compile=self.compile_decoding)
        with timer("score"):
            texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
            asked = [p for p in prompts for _ in range(k)]
            scores = self.scorer.rewards(scored_texts(asked, texts, self.score_with_prompt)).to(device)
            if cfg.score_clip is not None:
                scores = scores.clamp(-cfg.score_clip, cfg.score_clip)
        return queries, states, responses, response_mask, scores

    def update(self, batch: Batch) -> dict[str, float]:
        """``epochs`` passes over shuffled mini-batches of whole groups of the rollouts; with PPO-ptx
        each mini-batch's forward also carries a mini-batch of supervised pairs."""
        cfg, k = self.cfg, self.cfg.group_size
        dec = decoder_inputs(batch.responses, self.start_token)
        world = self.accelerator.num_processes
        prompts_per_mb = cfg.mini_batch_per_process(world) // k
        draws_per_step = cfg.mini_batches_per_update(world)  # ptx draws are a function of the step
        sums: dict[str, float] = {}
        count, stop = 0, False
        lengths = batch.queries.attention_mask.sum(-1)  # per prompt
        for _ in range(cfg.epochs):
            for pidx in mini_batches(lengths, prompts_per_mb, cfg.bucket_by_length):
                idx = (pidx.unsqueeze(-1) * k + torch.arange(k)).reshape(-1) if k > 1 else pidx  # the groups' rows
                width = int(lengths[pidx].max())  # no work on padding beyond this mini-batch's longest prompt
                with self.accelerator.accumulate(self.model):
                    ptx = None if self.ptx is None else self.ptx_batch(self.step_count * draws_per_step + count)
                    out = self.forward_mini_batch(batch, pidx, idx, width, dec, ptx)
                    n, t = len(idx), dec.shape[1]  # the rollouts' rows come first
                    logprobs = logprobs_from_logits(out.logits[:n, :t], batch.responses[idx])
                    values = None if out.values is None else out.values[:n, :t]
                    loss, terms = self.algorithm.loss(logprobs, values, batch.mini_batch(idx))
                    if ptx is not None:  # InstructGPT eq. 2: + gamma * E[log pi(x)] on the SFT data
                        ptx_loss = sft_loss(out.logits[n:, :ptx.targets.shape[1]], ptx.targets, ptx.target_mask)
                        loss = loss + cfg.ptx_coef * ptx_loss
                        terms["loss/ptx"] = ptx_loss
                    check_finite(self.step_count + 1, self.last_checkpoint, loss=loss)
                    self.accelerator.backward(loss)
                    if self.accelerator.sync_gradients:
                        self.accelerator.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad()
                for key, value in terms.items():
                    sums[key] = sums.get(key, 0.0) + float(value.detach())
                count += 1  # every process stops at the same pass: on the processes' mean KL
                stop = (cfg.target_kl is not None
                        and float(self.accelerator.reduce(terms["policy/approxkl"], "mean")) > cfg.target_kl)
                if stop:
                    break
            if stop:
                break
        return {k: v / max(1, count) for k, v in sums.items()} | {"update/mini_batches": count,
                                                                  "update/early_stopped": stop}

    def forward_mini_batch(self, batch: Batch, pidx: torch.Tensor, idx: torch.Tensor, width: int, dec: torch.Tensor,
                           ptx: PtxBatch | None):
        """The policy's forward for the rollouts ``idx`` of the prompts ``pidx`` (then the ptx pairs'
        rows): with groups the encoder runs once per prompt and serves its k responses; with a frozen
        encoder the rollout's states serve, and no encoder runs."""
        k = self.cfg.group_size
        rows = pidx if k > 1 else idx
        states = None if batch.states is None else batch.states[rows, :width]
        inputs = (batch.queries.input_ids[rows, :width], batch.queries.attention_mask[rows, :width], dec[idx])
        repeats = torch.full_like(pidx, k) if k > 1 else None
        if ptx is not None:
            inputs, states = self.with_ptx(inputs, states, ptx)
            if repeats is not None:
                repeats = torch.cat([repeats, torch.ones_like(repeats[:1]).expand(len(ptx.targets))])
        return self.model(*inputs, encoder_states=states, repeats=repeats)

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
    order is then shuffled), so less of each forward is spent on padding. The draws are made on the
    CPU's generator wherever ``lengths`` lives (the same mini-batches on a GPU), and the index sets
    are CPU tensors, which index a tensor on any device."""
    lengths = lengths.cpu()
    perm = torch.randperm(len(lengths))
    if not bucket:
        return list(perm.split(size))
    order = perm[torch.sort(lengths[perm], stable=True).indices]
    chunks = list(order.split(size))
    return [chunks[i] for i in torch.randperm(len(chunks)).tolist()]
