"""What every command shares: argument parsing, loading a config, running a stage, one-line errors.

The ``rlhf`` command (:mod:`rlhf.cli`) and each stage script (``python -m pipelines.STAGE``) are
built from these; neither imports the other. A bad config or input prints one line on stderr and
exits with code 2; an interrupt exits with 130.
"""

from __future__ import annotations

import argparse
import errno
import inspect
import os
import sys
import time
from pathlib import Path
from typing import Callable

from rlhf.config import ExperimentConfig, load_config
from rlhf.errors import UserError, shown
from rlhf.rundir import check_finished_unchanged, is_finished, run_lock, stage_dir
from rlhf.trackers import check_installed

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
# File-system refusals the user can fix (permissions, a full or read-only disk or quota, a file in the way,
# a name or file too long, a symlink loop): one line naming the file, exit 2, wherever in a stage they happen.
USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR,
               errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP, errno.EFBIG, errno.EMLINK}
StageMain = Callable[..., dict]
TRAINING_STAGES = {"sft", "reward", "rl"}  # the stages with experiment trackers (config.trackers)


class Parser(argparse.ArgumentParser):
    """A command's parser: usage errors become one :class:`UserError` line pointing at its help
    (argparse would print the usage and exit), and options must be spelled out in full."""

    def __init__(self, prog: str, description: str, **kwargs):
        super().__init__(prog=prog, description=description, allow_abbrev=False,
                         formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message: str):
        raise UserError(f"{message} (see {self.prog} --help)")


def add_config_args(parser: Parser, optional: bool = False) -> None:
    """``CONFIG [key.sub=value ...]``: the experiment file (``configs/tiny.yaml`` when ``optional``
    and the first argument is an override), then typed overrides checked like the YAML."""
    parser.add_argument("args", nargs="*", metavar="CONFIG [key.sub=value ...]",
                        help="the experiment file" + (" (default: configs/tiny.yaml)" if optional else "")
                        + ", then overrides such as rl.kl.target=3")


def split_args(args: list[str], usage: str | None = None) -> tuple[str | None, list[str]]:
    """(config path or None, overrides): the first argument is the config unless it is an override.
    ``usage``: the line to refuse with when no config is given (None: the config is optional)."""
    config, overrides = (args[0], args[1:]) if args and "=" not in args[0] else (None, args)
    if config is None and usage is not None:
        raise UserError(f"usage: {usage}")
    return config, overrides


def load(config_path: str | None, overrides: list[str], stages=()) -> ExperimentConfig:
    """The validated config (for ``stages``, the stages about to run), its ``tinyworld`` names
    resolved to the cached build (built first if needed)."""
    from rlhf.tinyworld.build import resolve_tinyworld  # torch and transformers load only when a command needs them

    path = Path(config_path) if config_path else DEFAULT_CONFIG
    if config_path is None and not path.is_file():
        raise UserError(f"the built-in config {path} is missing: pass a CONFIG file")
    config = load_config(path, overrides, stages)
    for stage in set(stages) & TRAINING_STAGES:  # a tracker is refused before any stage runs, not after one trained
        check_installed(config.trackers(stage), "report_to" if getattr(config, stage).report_to is None
                        else f"{stage}.report_to")
    return resolve_tinyworld(config)


def resumable(main: StageMain) -> bool:
    """Whether a stage keeps checkpoints (its ``main`` takes ``resume``)."""
    return "resume" in inspect.signature(main).parameters


def run_stage(name: str, main: StageMain, config: ExperimentConfig, force: bool = False, resume: bool = False) -> None:
    """Run one stage, unless it finished with these settings (then skipped) or with others (then
    refused, naming them, unless ``force``)."""
    if is_finished(config, name) and not force:
        check_finished_unchanged(config, [name])
        print(f"{name}: already finished in {stage_dir(config, name)} with the same settings; skipped "
              "(use --force to re-run)")
        return
    flags = {"force": force} if "force" in inspect.signature(main).parameters else {}
    if resume and not resumable(main):
        print(f"{name}: keeps no checkpoints, so --resume does not apply; running it from the start")
    elif resume:
        flags["resume"] = True
    start = time.time()
    main(config, **flags)
    print(f"{name}: done in {time.time() - start:.1f}s")


def stage_parser(name: str, main: StageMain, prog: str) -> Parser:
    """``PROG CONFIG [key.sub=value ...] [--force] [--resume]`` (``--resume`` for stages with checkpoints)."""
    doc = (sys.modules[main.__module__].__doc__ or "").strip().splitlines()
    parser = Parser(prog, f"{doc[0] if doc else name}\n\nA finished stage is skipped when the settings it reads "
                          "are unchanged and refused (naming them) when they changed, unless --force.")
    add_config_args(parser)
    parser.add_argument("--force", action="store_true", help="re-run the stage if it finished; discard the "
                        "checkpoints of an unfinished one")
    if resumable(main):
        parser.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint")
    return parser


def stage(name: str, main: StageMain, argv: list[str], prog: str) -> None:
    """Parse ``argv`` with :func:`stage_parser`, load the config, run the stage as the run folder's
    one writer (:func:`rlhf.rundir.run_lock`)."""
    ns = stage_parser(name, main, prog).parse_intermixed_args(argv)
    config_path, overrides = split_args(ns.args, f"{prog} CONFIG [key=value ...]")
    config = load(config_path, overrides, [name])
    with run_lock(config):
        run_stage(name, main, config, force=ns.force, resume=getattr(ns, "resume", False))


def stage_command(name: str, main: StageMain) -> int:
    """``python -m pipelines.STAGE CONFIG [key=value ...]``: the same as ``rlhf STAGE``."""
    return guarded(lambda: stage(name, main, sys.argv[1:], f"python -m pipelines.{name}"))


def guarded(command: Callable[[], None]) -> int:
    """Run ``command`` as a process's whole work and return its exit code: 0, 2 with one line on
    stderr for a :class:`UserError` or a file-system refusal the user can fix, 130 on Ctrl-C."""
    try:
        _flush_denormals_unless_opted_out()  # first, before torch's thread pool exists
        _quiet_libraries()
        command()
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
    except SystemExit as done:  # --help
        return done.code if isinstance(done.code, int) else 0
    return 0


def _quiet_libraries() -> None:
    """Warnings we understand filtered (:func:`rlhf.runtime.quiet_known_warnings`); library
    progress bars only on a terminal (our own progress lines stay)."""
    from rlhf.runtime import quiet_known_warnings

    quiet_known_warnings()
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
    flag = os.environ.get("RLHF_FLUSH_DENORMALS", "1")
    if flag not in ("0", "1"):
        raise UserError(f"environment variable RLHF_FLUSH_DENORMALS: {shown(flag)} is not 0 or 1")
    if flag == "1":
        from rlhf.runtime import flush_denormals

        flush_denormals()
