"""The ``rlhf`` command: ``run``, one stage by name, and ``tinyworld``.

    rlhf run [CONFIG] [key=value ...] [--force]     every stage in order (default: configs/tiny.yaml)
    rlhf STAGE CONFIG [key=value ...] [--resume]    one stage (also: python -m pipelines.STAGE CONFIG)
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
    p.add_argument("command", help="run | tinyworld | " + " | ".join(_stages()))
    p.add_argument("args", nargs="*", help="CONFIG then key.sub=value overrides")
    p.add_argument("--force", action="store_true", help="re-run stages that already finished")
    p.add_argument("--resume", action="store_true", help="continue an interrupted stage from its last checkpoint")
    p.add_argument("--out", help="tinyworld: output folder")
    p.add_argument("--seed", type=int, default=0, help="tinyworld: seed")
    return p


def dispatch(argv: list[str]) -> None:
    ns = _parser().parse_intermixed_args(argv)
    if ns.command == "tinyworld":
        return _tinyworld(ns)
    config_path, overrides = _split_args(ns.args)
    if ns.command == "run":
        config = load(config_path, overrides)
        for name in _stages():
            run_stage(name, config, force=ns.force, resume=ns.resume)
        print(f"all stages finished; artifacts in {config.run_dir}")
        return
    if ns.command not in _stages():
        raise UserError(f"unknown command '{ns.command}' (commands: run, tinyworld, {', '.join(_stages())})")
    if config_path is None:
        raise UserError(f"usage: rlhf {ns.command} CONFIG [key=value ...]")
    run_stage(ns.command, load(config_path, overrides), force=ns.force, resume=ns.resume)


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


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    try:
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
