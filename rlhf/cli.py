"""The ``rlhf`` command: ``run``, one stage by name, ``report`` and ``tinyworld``.

    rlhf run [CONFIG] [key=value ...] [--force]     every stage in order (default: configs/tiny.yaml)
    rlhf STAGE CONFIG [key=value ...] [--resume]    one stage (also: python -m pipelines.STAGE CONFIG)
    rlhf report RUN_DIR                             rebuild the report from a run's artifacts
    rlhf estimate CONFIG [--prompt-tokens N]        parameters, memory and FLOPs per stage
    rlhf tinyworld --out DIR [--seed N]             build the offline tiny world into DIR

Config and input errors print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import time
from pathlib import Path

from rlhf.errors import UserError

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def _stages() -> list[str]:
    from pipelines import STAGES

    return STAGES


def load(config_path: str | None, overrides: list[str]):
    from rlhf.config import load_config
    from rlhf.tinyworld.build import resolve_tinyworld

    path = Path(config_path) if config_path else DEFAULT_CONFIG
    if config_path is None and not path.is_file():
        raise UserError(f"the built-in config {path} is missing: pass a CONFIG file")
    return resolve_tinyworld(load_config(path, overrides))


def run_stage(name: str, config, force: bool = False, resume: bool = False) -> None:
    from rlhf.rundir import is_finished, stage_dir

    if is_finished(config, name) and not force:
        print(f"{name}: already finished in {stage_dir(config, name)}; skipped (use --force to re-run)")
        return
    main = importlib.import_module(f"pipelines.{name}").main
    start = time.time()
    if resume and "resume" in inspect.signature(main).parameters:
        main(config, resume=True)
    else:
        main(config)
    print(f"{name}: done in {time.time() - start:.1f}s")


def _split_args(args: list[str]) -> tuple[str | None, list[str]]:
    """First argument is the config unless it is a key=value override."""
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlhf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", help="run | report | estimate | tinyworld | " + " | ".join(_stages()))
    p.add_argument("args", nargs="*", help="CONFIG then key.sub=value overrides")
    p.add_argument("--force", action="store_true", help="re-run stages that already finished")
    p.add_argument("--resume", action="store_true", help="continue an interrupted stage from its last checkpoint")
    p.add_argument("--out", help="tinyworld: output folder")
    p.add_argument("--seed", type=int, default=0, help="tinyworld: seed")
    p.add_argument("--prompt-tokens", type=int, help="estimate: prompt length (default: model.max_input_length)")
    return p


def dispatch(argv: list[str]) -> None:
    ns = _parser().parse_intermixed_args(argv)
    if ns.command == "tinyworld":
        return _tinyworld(ns)
    if ns.command == "report":
        return _report(ns.args)
    if ns.command == "estimate":
        return _estimate(ns)
    config_path, overrides = _split_args(ns.args)
    if ns.command == "run":
        config = load(config_path, overrides)
        for name in _stages():
            run_stage(name, config, force=ns.force, resume=ns.resume)
        print(f"all stages finished; artifacts in {config.run_dir}")
        return _report([str(config.run_dir)])
    if ns.command not in _stages():
        raise UserError(f"unknown command '{ns.command}' (commands: run, report, estimate, tinyworld, {', '.join(_stages())})")
    if config_path is None:
        raise UserError(f"usage: rlhf {ns.command} CONFIG [key=value ...]")
    run_stage(ns.command, load(config_path, overrides), force=ns.force, resume=ns.resume)


def _report(args: list[str]) -> None:
    """Rebuild the report from a run directory's artifacts and print its headline."""
    from rlhf.report import build_report

    if len(args) != 1:
        raise UserError("usage: rlhf report RUN_DIR")
    if not Path(args[0]).is_dir():
        raise UserError(f"run directory not found: {args[0]}")
    h = build_report(args[0])["headline"]
    lo, hi = h["toxicity_change_ci95"]
    print(f"report: {Path(args[0]) / 'report.md'}")
    print(f"  toxicity (reward model): {h['toxicity_before']:.4f} -> {h['toxicity_after']:.4f} "
          f"(after - before 95% CI [{lo:+.4f}, {hi:+.4f}])")
    if h["judge"]:
        print(f"  toxicity (judge {h['judge']}): {h['judge_toxicity_before']:.4f} -> {h['judge_toxicity_after']:.4f}")
    else:
        print("  toxicity (independent judge): not run")
    print(f"  ROUGE-L: {h['rougeL_before']:.4f} -> {h['rougeL_after']:.4f}")


def _estimate(ns) -> None:
    from rlhf.estimate import estimate, format_estimate

    config_path, overrides = _split_args(ns.args)
    if config_path is None:
        raise UserError("usage: rlhf estimate CONFIG [key=value ...] [--prompt-tokens N]")
    print(format_estimate(estimate(load(config_path, overrides), ns.prompt_tokens)))


def _tinyworld(ns) -> None:
    from rlhf.config import TinyWorldConfig
    from rlhf.tinyworld.build import build_tinyworld

    if not ns.out:
        raise UserError("usage: rlhf tinyworld --out DIR [--seed N]")
    build_tinyworld(TinyWorldConfig(seed=ns.seed), ns.out)


def _quiet_libraries() -> None:
    """Library progress bars only on a terminal; our own stage bars stay."""
    if sys.stderr.isatty():
        return
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def _flush_denormals_if_asked() -> None:
    """``RLHF_FLUSH_DENORMALS=1``: the opt-in CPU speed-up of :func:`rlhf.runtime.flush_denormals`."""
    import os

    flag = os.environ.get("RLHF_FLUSH_DENORMALS", "0")
    if flag not in ("0", "1"):
        raise UserError(f"environment variable RLHF_FLUSH_DENORMALS: {flag!r} is not 0 or 1")
    if flag == "1":
        from rlhf.runtime import flush_denormals

        flush_denormals()


def main(argv: list[str] | None = None) -> int:
    try:
        _flush_denormals_if_asked()  # first, before torch's thread pool exists
        _quiet_libraries()
        dispatch(sys.argv[1:] if argv is None else argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def stage_entry(stage: str) -> None:
    """``python -m pipelines.STAGE CONFIG [overrides]``."""
    sys.exit(main([stage, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
