"""The rlhf command; `rlhf COMMAND --help` explains each one.

    rlhf run [CONFIG] [key=value ...] [--force] [--resume]  every stage in order (default: configs/tiny.yaml)
    rlhf STAGE CONFIG [key=value ...] [--force] [--resume]  one stage: prompt, sft, reward, rl, evaluate
    rlhf report RUN_DIR                                     rebuild a run's report from its artifacts
    rlhf compare RUN_DIR [RUN_DIR ...] [--out DIR]          finished runs side by side (table and plot)
    rlhf estimate CONFIG [key=value ...] [--prompt-tokens N]
                                                            parameters, memory and FLOPs of each stage
    rlhf config [CONFIG] [key=value ...] [--keys [SECTION]] the resolved config, or every key's type,
                                                            default and meaning
    rlhf tinyworld --out DIR [--seed N]                     build the offline tiny world into DIR

Overrides are typed and checked like the YAML. A config or input error prints one line on stderr
and exits with code 2. A finished stage is skipped when the settings it reads are unchanged, and
refused (naming them) when they changed, unless --force; an unfinished sft or rl stage with
checkpoints needs --resume or --force.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from pipelines import STAGES
from rlhf.entrypoint import DEFAULT_CONFIG, Parser, add_config_args, guarded, load, run_stage, split_args, stage
from rlhf.errors import UserError

COMMANDS = ("run", *STAGES, "report", "compare", "estimate", "config", "tinyworld")
# Each option and the commands that read it ("STAGE": every stage): any other command refuses it by name
OPTIONS = {"--force": ("run", "STAGE"), "--resume": ("run", "sft", "rl"), "--out": ("tinyworld", "compare"),
           "--seed": ("tinyworld",), "--prompt-tokens": ("estimate",), "--keys": ("config",)}


def stage_main(name: str):
    return importlib.import_module(f"pipelines.{name}").main


def _run(argv: list[str]) -> None:
    p = Parser("rlhf run", "Every stage in order (prompt, sft, reward, rl, evaluate), then the report.\n\nEvery "
                           "stage's settings are checked before any stage runs.")
    add_config_args(p, optional=True)
    p.add_argument("--force", action="store_true", help="re-run stages that already finished; discard the "
                   "checkpoints of an unfinished one")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sft or rl stage from its newest "
                   "good checkpoint")
    ns = p.parse_intermixed_args(argv)
    from rlhf.rundir import check_finished_unchanged, run_lock

    config = load(*split_args(ns.args), stages=STAGES)
    with run_lock(config):  # the run folder's one writer, for every stage
        if not ns.force:  # every stage's check first: fail before hours of work, not after
            check_finished_unchanged(config, STAGES)
        for name in STAGES:
            run_stage(name, stage_main(name), config, force=ns.force, resume=ns.resume)
        print(f"all stages finished; artifacts in {config.run_dir}")
        _print_report(config.run_dir)


def _report(argv: list[str]) -> None:
    p = Parser("rlhf report", "Rebuild report.md, report.json and plots/ of a run from its artifacts, and print "
                              "the headline.")
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR")
    ns = p.parse_args(argv)
    if ns.run_dir is None:
        raise UserError("usage: rlhf report RUN_DIR")
    if not Path(ns.run_dir).is_dir():
        raise UserError(f"run directory not found: {ns.run_dir}")
    _print_report(Path(ns.run_dir))


def _print_report(run_dir: Path) -> None:
    from rlhf.report import build_report

    h = build_report(run_dir)["headline"]
    print(f"report: {run_dir / 'report.md'}")
    print(f"  verdict: {h['verdict']}")
    for reason in h["verdict_reasons"]:
        print(f"    {reason}")
    lo, hi = h["toxicity_change_ci95"]
    figure = h["toxicity_figure"]
    print(f"  {figure} (reward model, all prompts): {h['toxicity_before']:.4f} -> {h['toxicity_after']:.4f} "
          f"(after - before 95% CI [{lo:+.4f}, {hi:+.4f}]); greedy mean {h['greedy_toxicity_before']:.4f} -> "
          f"{h['greedy_toxicity_after']:.4f}")
    if h["judge"]:
        jlo, jhi = h["judge_change_ci95"]
        print(f"  {figure} (judge {h['judge']}): {h['judge_toxicity_before']:.4f} -> {h['judge_toxicity_after']:.4f} "
              f"(CI [{jlo:+.4f}, {jhi:+.4f}])")
    else:
        print("  independent judge: not run")
    print(f"  ROUGE-L: {h['rougeL_before']:.4f} -> {h['rougeL_after']:.4f}")


def _compare(argv: list[str]) -> None:
    p = Parser("rlhf compare", "Finished runs side by side: the RL method, the verdict, toxicity by stratum by the "
                               "reward model and the judge (with CIs), quality, KL, the RL stage's time and memory; "
                               "compare.md, compare.json and compare.png in --out, and the table on stdout.")
    p.add_argument("run_dirs", nargs="*", metavar="RUN_DIR")
    p.add_argument("--out", default="compare", metavar="DIR", help="where the table and plot go (default: compare)")
    ns = p.parse_intermixed_args(argv)
    from rlhf.compare import compare, markdown

    if not ns.run_dirs:
        raise UserError("usage: rlhf compare RUN_DIR [RUN_DIR ...] [--out DIR]")
    print(markdown(compare(ns.run_dirs, Path(ns.out).expanduser())), end="")


def _estimate(argv: list[str]) -> None:
    p = Parser("rlhf estimate", "Parameters (total, trainable) and memory (weights, gradients, optimizer states, "
                                "activations; fp32 and bf16) of full fine-tuning, LoRA and each RL method (PPO, RLOO, "
                                "GRPO), and the FLOPs of one RL step. Reads only the model's config, never its weights.")
    add_config_args(p)
    p.add_argument("--prompt-tokens", type=int, help="prompt length in tokens (default: model.max_input_length)")
    ns = p.parse_intermixed_args(argv)
    from rlhf.estimate import estimate, format_estimate

    config_path, overrides = split_args(ns.args, "rlhf estimate CONFIG [key=value ...] [--prompt-tokens N]")
    if ns.prompt_tokens is not None and ns.prompt_tokens <= 0:
        raise UserError(f"option --prompt-tokens: value {ns.prompt_tokens} must be > 0")
    print(format_estimate(estimate(load(config_path, overrides), ns.prompt_tokens)))


def _config(argv: list[str]) -> None:
    p = Parser("rlhf config", "Print the config as the stages would read it: defaults filled in, overrides applied, "
                              "checked (tinyworld names are left as they are). With --keys: every key (or those "
                              "under SECTION) with its type, default, value here and meaning.")
    add_config_args(p, optional=True)
    p.add_argument("--keys", nargs="?", const="", metavar="SECTION", help="list the keys (of SECTION, e.g. rl or "
                   "rl.kl) with type, default and doc")
    ns = p.parse_intermixed_args(argv)
    from rlhf.config import ExperimentConfig, load_config, to_dict, to_yaml
    from rlhf.configfields import describe_keys

    config_path, overrides = split_args(ns.args)
    config = load_config(Path(config_path) if config_path else DEFAULT_CONFIG, overrides)
    print(to_yaml(config) if ns.keys is None else describe_keys(ExperimentConfig, to_dict(config), ns.keys), end="")


def _tinyworld(argv: list[str]) -> None:
    p = Parser("rlhf tinyworld", "Build the offline tiny world (corpus, toxicity texts, tokenizer, pre-trained "
                                 "T5) into DIR, replacing an earlier build there.")
    p.add_argument("--out", metavar="DIR", help="output folder: new, empty or an earlier build")
    p.add_argument("--seed", type=int, default=0, help="the world's seed (default 0)")
    ns = p.parse_args(argv)
    from rlhf.artifacts import ensure_dir
    from rlhf.config import TinyWorldConfig
    from rlhf.configfields import seed_value
    from rlhf.tinyworld.build import replace_build

    if not ns.out:
        raise UserError("usage: rlhf tinyworld --out DIR [--seed N]")
    if msg := seed_value(ns.seed):
        raise UserError(f"option --seed: value {ns.seed} {msg}")
    out = Path(ns.out).expanduser()
    ensure_dir(out.parent, "option --out: folder")
    if out.exists():
        ensure_dir(out, "option --out:")
    replace_build(TinyWorldConfig(seed=ns.seed), out)


HANDLERS = {"run": _run, "report": _report, "compare": _compare, "estimate": _estimate, "config": _config,
            "tinyworld": _tinyworld}


def _refuse_foreign_options(command: str, argv: list[str]) -> None:
    """An option of another command is refused by name (``rlhf run --seed 7`` once ran seed 42)."""
    for option in (a.split("=", 1)[0] for a in argv if a.startswith("--")):
        owners = OPTIONS.get(option, ())
        if owners and command not in owners and not (command in STAGES and "STAGE" in owners):
            shown = ", ".join("a stage command" if c == "STAGE" else c for c in owners)
            raise UserError(f"option {option} does not apply to `rlhf {command}` (only to: {shown})")


def dispatch(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        hint = "the command comes first: " if command.startswith("-") else ""
        raise UserError(f"{hint}unknown command '{command}' (commands: {', '.join(COMMANDS)}; see rlhf --help)")
    _refuse_foreign_options(command, rest)
    if command in STAGES:
        return stage(command, stage_main(command), rest, f"rlhf {command}")
    HANDLERS[command](rest)


def main(argv: list[str] | None = None) -> int:
    return guarded(lambda: dispatch(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
