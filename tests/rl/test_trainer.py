import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhf.config import config_from_dict
from rlhf.data import load_splits
from rlhf.errors import UserError
from rlhf.models import load_tokenizer
from rlhf.rl.model import build_policy
from rlhf.rl.rollout import score_responses
from rlhf.rl.trainer import NonFiniteError, RLTrainer, mini_batches
from rlhf.prompts import format_prompt
from rlhf.seq2seq import encode_queries, logprobs_from_logits, masked_mean, sample_responses
from rlhf.tinyworld.build import resolve_tinyworld

from ..conftest import small_raw
from .conftest import PPO, WordCountScorer, make, straight_and_resumed


def rollout(trainer):
    q = encode_queries(trainer.tokenizer, trainer.batch_prompts(0), 256)
    responses, mask = sample_responses(trainer.policy.lm, q, 8, 1, 0, trainer.start_token)
    return q, responses, mask, score_responses(trainer.policy, q, responses, mask, trainer.start_token, 2)


@pytest.mark.parametrize("policy", ["lora", "full"])
def test_step0_kl_is_zero_and_reference_never_changes(tmp_path, policy):
    torch.manual_seed(0)
    trainer, _ = make(tmp_path, policy=policy)
    q, responses, mask, scored = rollout(trainer)
    assert torch.equal(scored.logprobs, scored.ref_logprobs)  # policy == reference at step 0
    assert scored.values.shape == responses.shape and mask.dtype == torch.bool
    ref_before = scored.ref_logprobs.clone()
    for _ in range(2):
        trainer.step()
    after = score_responses(trainer.policy, q, responses, mask, trainer.start_token, 2)
    torch.testing.assert_close(after.ref_logprobs, ref_before, atol=0, rtol=0)
    assert not torch.equal(after.logprobs, ref_before)  # the policy moved


def test_step_reports_metrics(tmp_path):
    trainer, _ = make(tmp_path)
    stats = trainer.step()
    for key in ("objective/scores", "objective/kl", "objective/kl_coef", "objective/entropy", "loss/policy",
                "loss/value", "policy/clipfrac", "policy/approxkl", "value/clipfrac",
                "update/learning_rate", "response_length", "time/generate", "time/score", "time/forward",
                "time/update", "tokens_per_s"):
        assert math.isfinite(stats[key]), key
    assert stats["objective/kl"] == pytest.approx(0.0, abs=1e-6) and stats["update/learning_rate"] == 5e-3
    assert stats["time/step"] == pytest.approx(sum(stats[f"time/{k}"] for k in ("generate", "score", "forward", "update")))
    assert stats["update/mini_batches"] == 2 * 2


def test_resume_matches_straight_run(tmp_path):
    straight, resumed, at = straight_and_resumed(lambda folder: make(folder)[0], tmp_path, before=2, after=2)
    assert at == 2
    for (name, a), b in zip(straight.policy.trainable_state_dict().items(), resumed.policy.trainable_state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert straight.kl_ctl.value == resumed.kl_ctl.value


@pytest.mark.parametrize("algorithm, extra", [("rloo", {}), ("grpo", {}),
                                              ("grpo", {"grpo": {"scale_rewards": False, "length_normaliser": "constant"}}),
                                              ("rloo", {"frozen_encoder": True, "ptx_coef": 0.5})])
def test_group_methods_train_without_a_critic_and_encode_each_prompt_once(tmp_path, algorithm, extra):
    trainer, config = make(tmp_path, algorithm=algorithm, group_size=2, batch_size=8, mini_batch_size=4, **extra)
    assert trainer.policy.value_head is None and not any("value_head" in k for k in trainer.trainable_shapes())
    rows = []
    trainer.policy.lm.get_encoder().register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    before = {k: v.clone() for k, v in trainer.policy.trainable_state_dict().items()}
    stats = trainer.step()
    # 4 prompts x 2 responses: the rollout encodes the 4 prompts (in chunks of 2), the reference its own
    # (unless the encoder is frozen and shared), and each of 2 epochs x 2 mini-batches 2 prompts, not 4 rows;
    # with PPO-ptx and a frozen encoder only the 4 supervised pairs of each mini-batch are encoded
    update = [4] * 4 if config.rl.frozen_encoder else [2] * 4
    assert rows == [2, 2] + ([] if config.rl.frozen_encoder else [4]) + update
    assert stats["update/mini_batches"] == 4 and "loss/value" not in stats and math.isfinite(stats["loss/policy"])
    assert ("loss/kl" in stats) == (algorithm == "grpo")
    assert stats["objective/kl_coef"] == (0.04 if algorithm == "grpo" else 0.2)
    assert any(not torch.equal(before[k], v) for k, v in trainer.policy.trainable_state_dict().items())


def test_a_group_method_resumes_as_a_straight_run(tmp_path):
    kw = dict(algorithm="grpo", group_size=2, batch_size=8, mini_batch_size=4)
    straight, resumed, _ = straight_and_resumed(lambda folder: make(folder, **kw)[0], tmp_path, before=1, after=2)
    for (name, a), b in zip(straight.policy.trainable_state_dict().items(), resumed.policy.trainable_state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_non_finite_scores_stop_with_step_and_quantity(tmp_path):
    trainer, _ = make(tmp_path, scorer=WordCountScorer(float("nan")))
    with pytest.raises(NonFiniteError, match=r"RL step 1: scores is not finite; stopping \(no checkpoint yet\)"):
        trainer.step()


def test_each_rank_takes_its_own_share(tmp_path):
    trainer, _ = make(tmp_path)
    full = trainer.batch_prompts(1)
    assert len(full) == 8 and full != trainer.batch_prompts(0)

    class Rank:
        def __init__(self, i):
            self.process_index, self.num_processes = i, 2

    shares = []
    for rank in (0, 1):
        trainer.accelerator = Rank(rank)
        shares.append(trainer.batch_prompts(1))
    assert shares[0] == full[0::2] and shares[1] == full[1::2]


def test_a_toxic_share_fills_every_batch_with_that_many_abusive_dialogues(tmp_path):
    trainer, config = make(tmp_path, toxic_share=0.5)
    train = load_splits(config.data, config.seed)["train"]
    is_toxic = dict(zip((format_prompt(d, "summarize") for d in train["dialogue"]), train["toxic"]))
    assert sum(train["toxic"]) < len(train) / 2  # the tiny world's share is lower
    for step in range(3):
        assert sum(is_toxic[p] for p in trainer.batch_prompts(step)) == 4


def test_bf16_autocast_keeps_fp32_master_weights_and_fp32_logprobs(tmp_path):
    """Mixed precision: compute in bf16 under autocast, but weights, logprobs, values and the
    quantities PPO derives from them stay fp32."""
    torch.manual_seed(0)
    config = resolve_tinyworld(config_from_dict(small_raw(tmp_path, rl=PPO)), log=lambda *_: None)
    tokenizer = load_tokenizer(config.model)
    prompts = [format_prompt(d, "summarize") for d in load_splits(config.data, config.seed)["train"]["dialogue"]]
    trainer = RLTrainer(build_policy(config, None), tokenizer, WordCountScorer(), prompts, config.rl,
                         seed=config.seed, max_input_length=256, mixed_precision="bf16")
    with trainer.accelerator.autocast():
        q, responses, mask, scored = rollout(trainer)
        seen = []
        k = trainer.policy.lm.get_decoder().block[0].layer[0].SelfAttention.k
        hook = k.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
        logits = trainer.policy.lm(input_ids=q.input_ids, decoder_input_ids=responses).logits
        hook.remove()
        assert seen[0] == torch.bfloat16 and logits.dtype == torch.float32  # bf16 layers, the LM head in fp32
    for t in (scored.logprobs, scored.ref_logprobs, scored.values, scored.entropy):
        assert t.dtype == torch.float32
    stats = trainer.step()
    assert all(p.dtype == torch.float32 for p in trainer.policy.parameters())
    assert torch.isfinite(torch.tensor(stats["objective/kl"]))


def test_precision_is_ppo_own_after_a_trainer_in_the_same_process(tmp_path):
    """`rlhf run` trains the reward model with a (fp32) Trainer before PPO in bf16, in one process:
    accelerate's process-wide state must not pin PPO to the earlier precision."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # as the Trainer does when it starts,
    Accelerator(cpu=True, mixed_precision="no")  # then leaves its fp32 state behind
    config = resolve_tinyworld(config_from_dict(small_raw(tmp_path, rl=PPO)), log=lambda *_: None)
    prompts = [format_prompt(d, "summarize") for d in load_splits(config.data, config.seed)["train"]["dialogue"]]
    trainer = RLTrainer(build_policy(config, None), load_tokenizer(config.model), WordCountScorer(), prompts,
                         config.rl, seed=config.seed, max_input_length=256, mixed_precision="bf16")
    assert trainer.accelerator.mixed_precision == "bf16"


def test_frozen_encoder_trains_the_decoder_only_and_reuses_the_rollout_states(tmp_path, monkeypatch):
    torch.manual_seed(0)
    # a learning rate too small to move the weights: every mini-batch of the update must then
    # recompute the rollout's logprobs exactly from the reused states (misaligned rows would not)
    trainer, _ = make(tmp_path, frozen_encoder=True, epochs=1, learning_rate=1e-12)
    lm = trainer.policy.lm
    trainable = [n for n, p in lm.named_parameters() if p.requires_grad]
    assert trainable and all(".decoder." in n and "lora_" in n for n in trainable)
    encoder_before = {n: p.detach().clone() for n, p in lm.get_encoder().named_parameters()}
    calls = []
    encoder = lm.get_encoder()
    original = encoder.forward
    monkeypatch.setattr(encoder, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    stats = trainer.step()
    # the encoder ran for the rollout only (one call per length chunk), never for the reference or the update
    assert 0 < len(calls) <= trainer.cfg.batch_size // trainer.cfg.mini_batch_size
    assert stats["policy/approxkl"] < 1e-10 and stats["policy/clipfrac"] == 0
    for n, p in lm.get_encoder().named_parameters():
        assert torch.equal(p, encoder_before[n]), n


@pytest.mark.slow
def test_compiled_update_forward_and_gradients_match_eager(tmp_path):
    """rl.compile changes kernels, not maths: the same mini-batch gives the same logprobs,
    values and LoRA gradients as the eager forward (fp32, to rounding), and a second prompt width
    reuses the compiled graph."""
    import torch._dynamo

    from rlhf.runtime import compile_unavailable
    from rlhf.seq2seq import decoder_inputs

    if (why := compile_unavailable(torch.device("cpu"))) is not None:
        pytest.skip(f"torch.compile is unavailable here: {why}")
    outs = []
    for compiled in (False, True):
        torch.manual_seed(0)
        trainer, _ = make(tmp_path / str(compiled), compile=compiled, ppo={"value_head_init_std": 0.01})
        policy = trainer.policy
        assert policy.compiled == compiled
        with torch.no_grad():  # a trained-looking adapter: non-zero B, so A's gradients are not zero
            for name, p in policy.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.02)
        torch.manual_seed(1)
        q, responses, mask, _ = rollout(trainer)
        lengths = q.attention_mask.sum(-1)
        for i, width in enumerate((int(lengths.max()), int(lengths.max()) - 3)):
            with torch._dynamo.config.patch(error_on_recompile=i > 0):
                out = policy(q.input_ids[:, :width], q.attention_mask[:, :width],
                             decoder_inputs(responses, trainer.start_token))
            logprobs = logprobs_from_logits(out.logits, responses)
            (masked_mean(logprobs, mask) + out.values.mean()).backward()
        grads = {k: p.grad.clone() for k, p in policy.named_parameters() if p.requires_grad}
        outs.append((logprobs.detach(), out.values.detach(), grads))
    (lp0, v0, g0), (lp1, v1, g1) = outs
    assert v0.abs().sum() > 0
    torch.testing.assert_close(lp1, lp0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(v1, v0, rtol=1e-4, atol=1e-5)
    assert g0.keys() == g1.keys() and any("lora_A" in k for k in g0)
    assert all(g0[k].abs().sum() > 0 for k in g0 if "lora_A" in k)
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-3, atol=1e-6, msg=k)


def test_accumulated_gradients_are_applied_within_their_update(tmp_path):
    trainer, _ = make(tmp_path, gradient_accumulation_steps=2, steps=1)  # 2 epochs x 2 mini-batches: 2 optimizer steps
    before = {k: v.clone() for k, v in trainer.policy.trainable_state_dict().items()}
    trainer.step()
    assert all(p.grad is None or not p.grad.any() for p in trainer.policy.parameters())  # none left for the next step
    assert any(not torch.equal(before[k], v) for k, v in trainer.policy.trainable_state_dict().items())
    with pytest.raises(UserError, match=r"'rl.gradient_accumulation_steps': 3 does not divide the 4 mini-batch passes"):
        make(tmp_path / "b", gradient_accumulation_steps=3)


def test_minibatches_cover_the_batch_once():
    torch.manual_seed(0)
    lengths = torch.tensor([5, 90, 7, 88, 6, 91, 8, 89])
    for bucket in (False, True):
        parts = mini_batches(lengths, 2, bucket)
        assert sorted(torch.cat(parts).tolist()) == list(range(8)) and all(len(p) == 2 for p in parts)
    bucketed = mini_batches(lengths, 4, True)
    assert sorted(sorted(lengths[p].tolist()) for p in bucketed) == [[5, 6, 7, 8], [88, 89, 90, 91]]


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
def test_two_cpu_ranks_stay_identical_and_split_the_batch(tmp_path):
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29517", str(ROOT / "tests/rl/ddp_step.py"),
                           str(tmp_path)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 and "MULTI_CPU" in r["distributed_type"] for r in ranks)
    assert ranks[0]["weights"] == ranks[1]["weights"]  # gradients were all-reduced
    assert ranks[0]["scores"] == ranks[1]["scores"]  # metrics gathered over both ranks
    assert ranks[0]["ptx_loss"] > 0 and ranks[1]["ptx_loss"] > 0
    assert ranks[0]["early_stop_passes"] == ranks[1]["early_stop_passes"] < 4  # stopped early, on the ranks' mean KL
    assert ranks[0]["whitens_as_one"] and ranks[1]["whitens_as_one"]
    assert ranks[0]["noise"] != ranks[1]["noise"]  # each rank samples with its own noise
    assert ranks[0]["checkpoint_generators"] == ["torch", "torch.rank1"]  # and a resume restores each rank's
    a, b = ranks[0]["prompts"], ranks[1]["prompts"]
    assert len(a) == len(b) == 4 and not set(a) & set(b)  # each rank generates for its own half
    a, b = ranks[0]["group_prompts"], ranks[1]["group_prompts"]  # 8 rollouts = 4 prompts x 2: 2 prompts a rank
    assert len(a) == len(b) == 2 and not set(a) & set(b)  # a group never straddles two ranks
    assert ranks[0]["group_weights"] == ranks[1]["group_weights"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mini_batches_of_lengths_on_a_gpu_equal_the_cpus():
    """The GPU smoke run's first failure: lengths on the GPU, the permutation on the CPU."""
    lengths = torch.tensor([5, 3, 9, 1, 7, 2, 8, 4])
    torch.manual_seed(0)
    on_cpu = mini_batches(lengths, 3, bucket=True)
    torch.manual_seed(0)
    on_gpu = mini_batches(lengths.cuda(), 3, bucket=True)
    assert [c.tolist() for c in on_gpu] == [c.tolist() for c in on_cpu]
