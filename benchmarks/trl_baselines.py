"""TRL's experimental ORPO and CPO as library baselines, on the preference pairs of a finished DPO / IPO run.

    python benchmarks/trl_baselines.py --run RUN_DIR --method orpo|cpo --out OUT_RUN_DIR
                                       [--steps N] [--beta B] [--learning-rate LR] [--batch-size N]

RUN_DIR: a run whose RL stage made preference pairs (rl/pairs.jsonl: rl.algorithm dpo or ipo, or
rl.reward_model pairwise). OUT_RUN_DIR: a new run folder (best beside RUN_DIR, in the same output_dir).

1. copies RUN_DIR's prompt, sft and reward stages and rl/pairs.jsonl, rl/pairs.json into OUT_RUN_DIR;
2. builds the policy as the RL stage does (rlhf.rl.model.build_policy: the SFT model of
   rl.start_from, merged, with a fresh LoRA of rl.lora, seeded) and trains it with
   trl.experimental's ORPOTrainer or CPOTrainer on the pairs (prompt, chosen, rejected), on the
   CPU unless a GPU is visible, report_to none, seeded;
3. writes the RL stage's layout: rl/policy (adapter + tokenizer), rl/policy_base (the merged base
   + tokenizer), rl/metrics.json (algorithm, library, steps, training seconds, peak memory, the
   pair counts, TRL's last logged figures, the stage's greedy before/after on rl.eval_n_dialogues),
   rl/trl_log.json (TRL's log history), rl/config.yaml and rl/manifest.json;
4. runs `rlhf evaluate OUT_RUN_DIR/config.yaml` and `rlhf report OUT_RUN_DIR` (this interpreter) and
   prints the verdict and headline. `rlhf compare RUN_DIR OUT_RUN_DIR` then sets them side by side.

OUT_RUN_DIR's rl/config.yaml is RUN_DIR's RL config (the pairs, the start model, rl.lora, the seed:
what `rlhf evaluate` checks the stage against); the method TRL trained is rl/metrics.json's
``algorithm``, and its settings are ``trl`` there. Defaults: rl.learning_rate; 8 pairs a step; as many
steps as see the pairs RUN_DIR's own DPO / IPO saw (rl.steps x rl.batch_size / 2); beta 0.1 (TRL's
default for both: ORPO's lambda, CPO's beta), constant learning rate and AdamW as the RL stage's.
Bad input: one line on stderr, exit code 2.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; TRL and transformers never ask the Hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # its import warning: the ORPO and CPO trainers are experimental
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from rlhf.entrypoint import Parser, guarded  # noqa: E402
from rlhf.errors import UserError  # noqa: E402

METHODS = ("orpo", "cpo")
UPSTREAM = ("prompt", "sft", "reward")


def parse(argv: list[str]):
    p = Parser("python benchmarks/trl_baselines.py", __doc__.strip().splitlines()[0])
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="a finished run with rl/pairs.jsonl")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--out", required=True, metavar="OUT_RUN_DIR", help="the new run folder")
    p.add_argument("--steps", type=int, help="optimizer steps (default: RUN_DIR's DPO / IPO pairs seen / batch)")
    p.add_argument("--beta", type=float, default=0.1, help="ORPO's lambda / CPO's beta (default 0.1)")
    p.add_argument("--learning-rate", type=float, help="default: RUN_DIR's rl.learning_rate")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per optimizer step (default 8)")
    ns = p.parse_args(argv)
    for key in ("steps", "beta", "learning_rate", "batch_size"):
        if getattr(ns, key) is not None and not getattr(ns, key) > 0:
            raise UserError(f"--{key.replace('_', '-')} must be positive, not {getattr(ns, key)}")
    return ns


def prepare(run: Path, out: Path):
    """The OUT run's config (RUN's RL config, named for OUT) after checking RUN and OUT; nothing written yet."""
    from rlhf.config import load_config

    if not run.is_dir():
        raise UserError(f"run directory not found: {run}")
    for name in ("rl/pairs.jsonl", "rl/config.yaml"):
        if not (run / name).is_file():
            raise UserError(f"{run / name} is missing: make the pairs with a DPO / IPO run of the RL stage "
                            f"(rl.algorithm=dpo rl.group_size=2 rl.toxic_share=null)")
    if out.resolve() == run.resolve():
        raise UserError("--out must be a new run folder, not --run")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not empty: remove it or name another folder")
    config = load_config(run / "rl" / "config.yaml", [f"output_dir={out.resolve().parent}", f"run_name={out.name}"],
                         stages=("rl", "evaluate"))
    if config.rl.policy != "lora":
        raise UserError(f"{run}: rl.policy is {config.rl.policy}; this baseline trains a fresh LoRA (rl.policy lora)")
    for stage in ("sft", "reward") if config.rl.start_from != "base" else ("reward",):
        if not (run / stage / "manifest.json").is_file():
            raise UserError(f"{run / stage} has not finished: finish RUN_DIR's {stage} stage first")
    return config


def train(config, run: Path, method: str, steps: int | None, beta: float, learning_rate: float | None,
          batch_size: int) -> dict:
    """Copy the upstream stages and pairs into ``config.run_dir``, train TRL's ``method`` on the
    pairs and write the RL stage's artifacts there; returns the stage's metrics."""
    import datasets
    import trl
    from transformers import set_seed

    from rlhf.artifacts import atomic_dir, atomic_write_text
    from rlhf.config import to_dict
    from rlhf.data import group_dialogues, load_splits
    from rlhf.models import load_tokenizer
    from rlhf.pairs import read_pairs
    from rlhf.progress import quiet_trainer, trainer_callback
    from rlhf.reward import load_scorer
    from rlhf.rl.evaluation import before_after
    from rlhf.rl.model import build_policy
    from rlhf.rundir import require_stage, start_stage
    from rlhf.runtime import PeakRss, use_cpu

    if method == "orpo":
        from trl.experimental.orpo import ORPOConfig as Args, ORPOTrainer as Trainer
    else:
        from trl.experimental.cpo import CPOConfig as Args, CPOTrainer as Trainer
    pairs = read_pairs(run / "rl" / "pairs.jsonl")
    if not pairs:
        raise UserError(f"{run / 'rl' / 'pairs.jsonl'} holds no pairs")
    cfg = config.rl
    counts_path = run / "rl" / "pairs.json"
    counts = json.loads(counts_path.read_text(encoding="utf-8")) if counts_path.is_file() else {"pairs": len(pairs)}
    steps = steps or math.ceil(cfg.steps * (cfg.batch_size // 2) / batch_size)
    learning_rate = learning_rate or cfg.learning_rate

    for stage in UPSTREAM:
        if (run / stage).is_dir():
            shutil.copytree(run / stage, config.run_dir / stage)
    sft_dir = require_stage(config, "sft", "rl") if cfg.start_from != "base" else None
    reward_dir = require_stage(config, "reward", "rl")
    stage = start_stage(config, "rl")  # rl/config.yaml: RUN_DIR's RL config, as `rlhf evaluate` checks it
    for name in ("pairs.jsonl", "pairs.json"):
        if (run / "rl" / name).is_file():
            shutil.copy2(run / "rl" / name, stage.dir / name)

    tokenizer = load_tokenizer(config.model)
    policy = build_policy(config, sft_dir)  # the SFT model, merged, with a fresh seeded LoRA of rl.lora
    data = datasets.Dataset.from_dict({k: [getattr(p, k) for p in pairs] for k in ("prompt", "chosen", "rejected")})
    # transformers >= 5.25 names it activation_checkpointing; TRL turns it on by default
    no_checkpointing = {("activation_checkpointing" if "activation_checkpointing" in Args.__dataclass_fields__
                         else "gradient_checkpointing"): False}
    settings = dict(max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=learning_rate, beta=beta,
                    lr_scheduler_type="constant", weight_decay=0.01, adam_epsilon=1e-5, max_grad_norm=cfg.max_grad_norm,
                    max_length=config.model.max_input_length + cfg.max_new_tokens,
                    max_completion_length=cfg.max_new_tokens, seed=config.seed, data_seed=config.seed)
    offline = type(f"Offline{Trainer.__name__}", (Trainer,), {"_send_telemetry": lambda self: None})  # no Hub ping
    with tempfile.TemporaryDirectory() as scratch:
        args = Args(output_dir=scratch, save_strategy="no", report_to="none", logging_steps=1, bf16=False, fp16=False,
                    use_cpu=use_cpu(), disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=False,
                    remove_unused_columns=False, push_to_hub=False, **no_checkpointing, **settings)
        set_seed(config.seed)
        trainer = offline(model=policy.lm, args=args, train_dataset=data, processing_class=tokenizer,
                          callbacks=[trainer_callback(f"rl {method} (TRL)")])
        quiet_trainer(trainer)
        with PeakRss() as mem:
            start = time.perf_counter()
            result = trainer.train()
            seconds = time.perf_counter() - start
    policy.lm = trainer.model.eval()

    with atomic_dir(stage.dir / "policy_base") as tmp:  # as pipelines/rl.py saves a LoRA policy
        copy.deepcopy(policy.lm).unload().save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    with atomic_dir(stage.dir / "policy") as tmp:
        policy.lm.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    history = trainer.state.log_history
    atomic_write_text(stage.dir / "trl_log.json", json.dumps(history, indent=1))
    scorer = load_scorer(config.reward, reward_dir, strip_tokens=tuple(tokenizer.all_special_tokens))
    test = group_dialogues(load_splits(config.data, config.seed)["test"], config.data)[:cfg.eval_n_dialogues]
    quick = before_after(policy, tokenizer, scorer, test, config)["summary"]  # the RL stage's own greedy check
    last = next((h for h in reversed(history) if "loss" in h), {})
    metrics = {"algorithm": method, "library": f"trl {trl.__version__}", **quick, "pairs": counts,
               "steps": result.global_step, "pairs_seen": result.global_step * batch_size,
               "seconds": round(seconds, 2), "peak_memory_mb": round(mem.mib, 1), "train_loss": result.training_loss,
               "trl_last_log": {k: v for k, v in last.items() if isinstance(v, (int, float))},
               "trl": {"trainer": f"trl.experimental.{method}.{Trainer.__name__}", "batch_size_pairs": batch_size,
                       **settings, **({"loss_type": args.loss_type, "cpo_alpha": args.cpo_alpha}
                                      if method == "cpo" else {})},
               "start_from": cfg.start_from, "policy": "lora", "lora": to_dict(cfg.lora),
               "reference": "none (ORPO and CPO have no reference model)", "device": str(args.device),
               "note": "rl/config.yaml is the source run's RL config (pairs, start model, LoRA, seed); the method "
                       "trained is `algorithm` here, with TRL's settings in `trl`"}
    stage.write_metrics(metrics)
    stage.finish(library=metrics["library"], source_run=str(run.resolve()))
    return metrics


def evaluate_and_report(out: Path) -> dict:
    """`rlhf evaluate` and `rlhf report` on the OUT run (subprocesses, this interpreter); its report.json."""
    for argv in (["evaluate", str(out / "config.yaml")], ["report", str(out)]):
        print(f"$ rlhf {' '.join(argv)}", flush=True)
        subprocess.run([sys.executable, "-m", "rlhf.cli", *argv], check=True, cwd=ROOT)
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def headline(report: dict) -> str:
    """Verdict; Toxicity Probability on the toxic prompts by the reward model and each judge; ROUGE-L."""
    p, h = report["protocol"], report["headline"]
    parts = [f"verdict: {h['verdict']}"]
    for scorer, figures in p["toxicity"].items():
        tp = figures.get("toxic", {}).get("toxicity_probability")
        if tp:
            parts.append(f"{scorer} TP toxic {tp['before']:.4f} -> {tp['after']:.4f}")
    q = p["quality"]["all"]["rougeL"]
    return "; ".join(parts + [f"ROUGE-L {q['before']:.4f} -> {q['after']:.4f}"])


def main(argv: list[str]) -> None:
    import importlib.util

    from rlhf.rundir import run_lock

    ns = parse(argv)
    run, out = Path(ns.run), Path(ns.out)
    config = prepare(run, out)
    if importlib.util.find_spec("trl") is None:
        raise UserError("TRL is not installed: pip install trl")
    with run_lock(config):  # released before `rlhf evaluate` takes it
        m = train(config, run, ns.method, ns.steps, ns.beta, ns.learning_rate, ns.batch_size)
    print(f"rl: {ns.method} ({m['library']}): {m['steps']} steps of {ns.batch_size} pairs in {m['seconds']:.1f} s, "
          f"peak {m['peak_memory_mb']:.0f} MiB; greedy toxicity {m['greedy_toxicity_before']:.4f} -> "
          f"{m['greedy_toxicity_after']:.4f}, ROUGE-L {m['rougeL_before']:.4f} -> {m['rougeL_after']:.4f}", flush=True)
    print(headline(evaluate_and_report(out)))


if __name__ == "__main__":
    sys.exit(guarded(lambda: main(sys.argv[1:])))
