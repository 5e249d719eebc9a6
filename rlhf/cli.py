"""The ``rlhf`` command: ``run``, one stage by name, ``report`` and ``tinyworld``.

    rlhf run [CONFIG] [key=value ...] [--force]     every stage in order (default: configs/tiny.yaml)
    rlhf STAGE CONFIG [key=value ...] [--resume] [--force]
                                                    one stage (also: python -m pipelines.STAGE CONFIG)
    rlhf report RUN_DIR                             rebuild the report from a run's artifacts
    rlhf estimate CONFIG [--prompt-tokens N]        parameters, memory and FLOPs per stage
    rlhf tinyworld --out DIR [--seed N]             build the offline tiny world into DIR

Config and input errors print one line on stderr and exit with code 2. A finished stage is
skipped when the settings it reads are unchanged, and refused (exit 2, naming them) when they
changed, unless --force; an unfinished sft or ppo stage with checkpoints needs --resume or --force.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import inspect
import sys
import time
from pathlib import Path

from rlhf.errors import UserError

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
# File-system refusals the user can fix (permissions, a full or read-only disk, a file in the way):
# one line naming the file, exit 2, wherever in a stage they happen.
USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR,
               errno.EEXIST}


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
    from rlhf.rundir import check_finished_unchanged, is_finished, stage_dir

    if is_finished(config, name) and not force:
        check_finished_unchanged(config, [name])
        print(f"{name}: already finished in {stage_dir(config, name)} with the same settings; skipped "
              "(use --force to re-run)")
        return
    main = importlib.import_module(f"pipelines.{name}").main
    accepted = inspect.signature(main).parameters
    flags = {k: v for k, v in (("resume", resume), ("force", force)) if v and k in accepted}
    if resume and "resume" not in accepted:
        print(f"{name}: keeps no checkpoints, so --resume does not apply; running it from the start")
    start = time.time()
    main(config, **flags)
    print(f"{name}: done in {time.time() - start:.1f}s")


def _preflight(config) -> None:
    """Settings that only a later stage reads but that are missing for sure."""
    from rlhf.ppo.model import check_start_from

    check_start_from(config)
    if config.reward.pretrained is None and config.reward.data.source is None:
        raise UserError("config key 'reward.data.source' is not set: the reward stage needs labelled data to train "
                        "on (or name a classifier in reward.pretrained)")


def _split_args(args: list[str]) -> tuple[str | None, list[str]]:
    """First argument is the config unless it is a key=value override."""
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


class _Parser(argparse.ArgumentParser):
    """Usage errors as one :class:`UserError` line (argparse would print the usage and exit)."""

    def error(self, message: str):
        raise UserError(f"{message} (see rlhf --help)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="rlhf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                allow_abbrev=False)  # `--see 7` is not --seed: every option is checked by its name
    p.add_argument("command", help="run | report | estimate | tinyworld | " + " | ".join(_stages()))
    p.add_argument("args", nargs="*", help="CONFIG then key.sub=value overrides")
    p.add_argument("--force", action="store_true", help="re-run stages that already finished; discard the "
                   "checkpoints of an unfinished one")
    p.add_argument("--resume", action="store_true", help="continue an interrupted stage from its last checkpoint")
    p.add_argument("--out", help="tinyworld: output folder")
    p.add_argument("--seed", type=int, default=0, help="tinyworld: seed")
    p.add_argument("--prompt-tokens", type=int, help="estimate: prompt length (default: model.max_input_length)")
    return p


OPTIONS = {"--force": ("run", "STAGE"), "--resume": ("run", "STAGE"), "--out": ("tinyworld",),
           "--seed": ("tinyworld",), "--prompt-tokens": ("estimate",)}  # STAGE: each stage command


def _refuse_foreign_options(ns, argv: list[str]) -> None:
    """An option the command does not read is refused, not ignored (``rlhf run --seed 7`` ran seed 42)."""
    given = [a.split("=", 1)[0] for a in argv if a.startswith("--")]
    command = "STAGE" if ns.command in _stages() else ns.command
    for option in given:
        if option in OPTIONS and command not in OPTIONS[option]:
            shown = ", ".join("a stage command" if c == "STAGE" else c for c in OPTIONS[option])
            raise UserError(f"option {option} does not apply to `rlhf {ns.command}` (only to: {shown})")


def dispatch(argv: list[str]) -> None:
    ns = _parser().parse_intermixed_args(argv)
    _refuse_foreign_options(ns, argv)
    if ns.command == "tinyworld":
        return _tinyworld(ns)
    if ns.command == "report":
        return _report(ns.args)
    if ns.command == "estimate":
        return _estimate(ns)
    config_path, overrides = _split_args(ns.args)
    if ns.command == "run":
        from rlhf.rundir import check_finished_unchanged

        config = load(config_path, overrides)
        _preflight(config)  # settings a later stage needs: fail before hours of work, not after
        if not ns.force:  # every stage's check first, likewise
            check_finished_unchanged(config, _stages())
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
    print(f"report: {Path(args[0]) / 'report.md'}")
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


def _estimate(ns) -> None:
    from rlhf.estimate import estimate, format_estimate

    config_path, overrides = _split_args(ns.args)
    if config_path is None:
        raise UserError("usage: rlhf estimate CONFIG [key=value ...] [--prompt-tokens N]")
    if ns.prompt_tokens is not None and ns.prompt_tokens <= 0:
        raise UserError(f"option --prompt-tokens: value {ns.prompt_tokens} must be > 0")
    print(format_estimate(estimate(load(config_path, overrides), ns.prompt_tokens)))


def _tinyworld(ns) -> None:
    from rlhf.config import TinyWorldConfig, seed_value
    from rlhf.tinyworld.build import build_tinyworld

    if not ns.out:
        raise UserError("usage: rlhf tinyworld --out DIR [--seed N]")
    if msg := seed_value(ns.seed):
        raise UserError(f"option --seed: value {ns.seed} {msg}")
    build_tinyworld(TinyWorldConfig(seed=ns.seed), _tinyworld_out(Path(ns.out).expanduser()))


def _tinyworld_out(out: Path) -> Path:
    """``--out`` is replaced as a whole: it must be new, empty or an earlier build, and writable."""
    from rlhf.artifacts import ensure_dir

    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise UserError(f"option --out: {out} is a folder with other content; the build replaces it as a whole, "
                        f"so name a new or empty folder")
    ensure_dir(out.parent, "option --out: folder")
    if out.exists():
        ensure_dir(out, "option --out:")
    return out


def _quiet_libraries() -> None:
    """Library progress bars only on a terminal; our own stage bars stay."""
    if sys.stderr.isatty():
        return
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def _flush_denormals_unless_opted_out() -> None:
    """Subnormal floats flushed to zero on the CPU by default (:func:`rlhf.runtime.flush_denormals`:
    PPO's backward pass makes them and they cost up to ~30x on some CPUs); ``RLHF_FLUSH_DENORMALS=0``
    opts out. The tiny world is built with the same setting, so its cache key records it."""
    import os

    flag = os.environ.get("RLHF_FLUSH_DENORMALS", "1")
    if flag not in ("0", "1"):
        raise UserError(f"environment variable RLHF_FLUSH_DENORMALS: {flag!r} is not 0 or 1")
    if flag == "1":
        from rlhf.runtime import flush_denormals

        flush_denormals()


def main(argv: list[str] | None = None) -> int:
    try:
        _flush_denormals_unless_opted_out()  # first, before torch's thread pool exists
        _quiet_libraries()
        from rlhf.runtime import quiet_known_warnings

        quiet_known_warnings()
        dispatch(sys.argv[1:] if argv is None else argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        if err.errno not in USER_ERRNOS:
            raise
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def stage_entry(stage: str) -> None:
    """``python -m pipelines.STAGE CONFIG [overrides]``."""
    sys.exit(main([stage, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
