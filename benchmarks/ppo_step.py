"""PPO step benchmark on a random-weight T5 shaped like google/flan-t5-small, fully offline.

Settings match the classic-TRL peer harness (../shared/peers/trl011): batch 16, mini-batch 4,
4 PPO epochs, exactly 32 new tokens per response (EOS suppressed until then, as the peer's
``min_length``), LoRA r=32 on q,v, fp32, 2 threads, and the peer's deterministic ``words`` reward.
The last line printed is one JSON object with the figures.

    python benchmarks/ppo_step.py [--steps N] [--model-in DIR --tokenizer DIR --prompts FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import time
from pathlib import Path

import torch

GOOD, BAD = ("thanks", "great", "sure", "yes", "good"), ("no", "not", "never", "bad", "sorry")


class WordsReward:
    """The peer's reward: +1 per good word, -1 per bad word, +0.02 per whitespace word."""

    def rewards(self, texts: list[str]) -> torch.Tensor:
        out = []
        for text in texts:
            words = [w.strip(".,?!") for w in text.lower().split()]  # as the peer's bench_trl.py
            out.append(sum(w in GOOD for w in words) - sum(w in BAD for w in words) + 0.02 * len(words))
        return torch.tensor(out)


def flan_t5_small(model_in: str | None):
    from transformers import T5ForConditionalGeneration

    from rlhf.models import fuse_gelu

    if model_in:
        model = T5ForConditionalGeneration.from_pretrained(model_in, use_kernels=False)
    else:
        model = random_flan_t5_small()
    fuse_gelu(model)  # as rlhf.models.load_seq2seq does
    return model.eval()


def random_flan_t5_small():
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8, num_heads=6,
                      feed_forward_proj="gated-gelu", vocab_size=32128, tie_word_embeddings=False, dropout_rate=0.1,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(config)
    # flan-t5 has its own lm_head; transformers 5 ties it when building from a config
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight) * 512 ** -0.5)
    return model


def tokenizer_and_prompts(tokenizer_dir: str | None, prompts_file: str | None, n: int):
    from transformers import AutoTokenizer

    from rlhf.prompts import format_prompt
    from rlhf.tinyworld.corpus import make_corpus
    from rlhf.tinyworld.tokenizer import save_tokenizer, train_tokenizer

    if tokenizer_dir:
        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    else:
        corpus = make_corpus(3000, 0.0, seed=0)
        folder = Path(".cache/bench_tokenizer")
        if not (folder / "tokenizer.json").is_file():
            save_tokenizer(train_tokenizer([d.dialogue for d in corpus] + [d.summary for d in corpus], 4000), folder, 512)
        tok = AutoTokenizer.from_pretrained(str(folder))
    if prompts_file:
        prompts = [json.loads(line)["query"] for line in Path(prompts_file).open() if line.strip()]
        return tok, prompts
    rng, corpus, prompts = random.Random(0), make_corpus(4000, 0.0, seed=1), []
    while len(prompts) < n:  # dialogues joined until the whole prompt has 130-220 tokens
        target, parts = rng.randint(130, 220), []
        while len(tok(format_prompt("\n".join(parts), "summarize")).input_ids) < target:
            parts.append(corpus[rng.randrange(len(corpus))].dialogue)
        prompts.append(format_prompt("\n".join(parts), "summarize"))
    return tok, prompts


def build_trainer(args, tok, prompts):
    from rlhf.config import LoraConfig, RlConfig
    from rlhf.models import apply_lora
    from rlhf.rl.model import Policy, ValueHead
    from rlhf.rl.trainer import RLTrainer

    cfg = RlConfig(start_from="base", lora=LoraConfig(r=32, alpha=32, dropout=0.05, target_modules=["q", "v"]),
                    learning_rate=1.41e-5, steps=args.steps, batch_size=args.batch_size, mini_batch_size=4,
                    epochs=4, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                    frozen_encoder=args.frozen_encoder, compile=getattr(args, "compile", False))
    lm = flan_t5_small(args.model_in)
    torch.manual_seed(0)
    policy = Policy(apply_lora(lm, cfg.lora, decoder_only=cfg.frozen_encoder), ValueHead(lm.config.d_model)).eval()
    return RLTrainer(policy, tok, WordsReward(), prompts, cfg, seed=0, max_input_length=512,
                      mixed_precision=getattr(args, "mixed_precision", "no"),
                      compile_decoding=getattr(args, "compile_decoding", False))


def rollout_compare(trainer, reps: int = 2) -> dict:
    """Batched rollout vs one generate call per prompt (the reference lab's loop), same prompts."""
    from rlhf.seq2seq import encode_queries, sample_responses

    prompts, tok, cfg = trainer.batch_prompts(0), trainer.tokenizer, trainer.cfg
    gen = dict(max_new_tokens=cfg.max_new_tokens, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
               decoder_start_token_id=trainer.start_token, min_new_tokens=cfg.min_new_tokens)
    lm = trainer.policy.lm
    timings = {"batched": [], "per_prompt": []}
    for _ in range(reps):
        start = time.perf_counter()
        sample_responses(lm, encode_queries(tok, prompts, 512), **gen)
        timings["batched"].append(time.perf_counter() - start)
        start = time.perf_counter()
        for p in prompts:
            sample_responses(lm, encode_queries(tok, [p], 512), **gen)
        timings["per_prompt"].append(time.perf_counter() - start)
    b, p = min(timings["batched"]), min(timings["per_prompt"])
    return {"rollout_batched_s": b, "rollout_per_prompt_s": p, "rollout_speedup": p / b}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model-in", help="initial weights written by the peer's --model-out")
    ap.add_argument("--tokenizer", help="tokenizer folder (the peer's --tokenizer)")
    ap.add_argument("--prompts", help="JSONL with a 'query' field (the peer's --prompts-out)")
    ap.add_argument("--rollout-compare", action="store_true", help="also time per-prompt generation")
    ap.add_argument("--frozen-encoder", action="store_true", help="LoRA on the decoder only (rl.frozen_encoder)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the update's forward/backward (rl.compile)")
    ap.add_argument("--compile-decoding", action="store_true",
                    help="torch.compile the rollout's per-token decoding step (model.compile_decoding)")
    ap.add_argument("--mixed-precision", choices=("no", "bf16"), default="no",
                    help="bf16 autocast over fp32 master weights (model.mixed_precision)")
    args = ap.parse_args()
    from rlhf.runtime import flush_denormals

    flush_denormals()  # as `RLHF_FLUSH_DENORMALS=1 rlhf ...` does: before the first parallel op
    torch.set_num_threads(args.threads)
    tok, prompts = tokenizer_and_prompts(args.tokenizer, args.prompts, args.batch_size * args.steps)
    trainer = build_trainer(args, tok, prompts)
    rows = []
    for step in range(args.steps):
        start = time.perf_counter()
        stats = trainer.step()
        stats["wall_s"] = time.perf_counter() - start
        rows.append(stats)
        print(f"step {step}: {stats['wall_s']:.2f}s (generate {stats['time/generate']:.2f}, score "
              f"{stats['time/score']:.3f}, forward {stats['time/forward']:.2f}, update {stats['time/update']:.2f}) "
              f"score {stats['objective/scores']:.3f} kl {stats['objective/kl']:.4f}", flush=True)
    rest = rows[1:] or rows
    med = lambda key: statistics.median(r[key] for r in rest)  # noqa: E731
    result = {
        "steps": args.steps, "mixed_precision": args.mixed_precision, "frozen_encoder": args.frozen_encoder,
        "compiled": trainer.policy.compiled, "compile_decoding": args.compile_decoding, "batch_size": args.batch_size, "new_tokens": args.new_tokens, "threads": args.threads,
        "median_step_s": med("wall_s"), "first_step_s": rows[0]["wall_s"], "generate_s": med("time/generate"),
        "score_s": med("time/score"), "forward_s": med("time/forward"), "update_s": med("time/update"),
        "gen_tokens_per_s": statistics.median(args.batch_size * args.new_tokens / r["time/generate"] for r in rest),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "step_times_s": [round(r["wall_s"], 3) for r in rows],
    }
    if args.rollout_compare:
        result.update(rollout_compare(trainer))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
