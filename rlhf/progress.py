"""Progress that shows with or without a terminal.

On a terminal a tqdm bar; otherwise (CI, ``nohup``, a log file) one plain line at most every
``every_s`` seconds and at the end: what, step n/N, rate, ETA and the key figures. A multi-hour
stage is never silent, and a log never fills with carriage-return bar redraws.
"""

from __future__ import annotations

import sys
import time
from typing import Callable


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """``update(n, **figures)`` after each unit of work; ``close()`` at the end (or use ``with``)."""

    def __init__(self, desc: str, total: int, start: int = 0, every_s: float = 30.0, enabled: bool = True,
                 tty: bool | None = None, write: Callable[[str], None] | None = None, clock=time.monotonic,
                 final_line: bool = True):
        """``final_line=False``: a task shorter than ``every_s`` prints nothing at all."""
        self.desc, self.total, self.n, self.every_s, self.enabled = desc, total, start, every_s, enabled
        self.final_line, self.printed = final_line, False
        self.clock, self.start_n = clock, start
        self.started = self.last = clock()
        self.figures: dict[str, float] = {}
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.write = write or (lambda line: print(line, flush=True))
        self.bar = None
        if enabled and self.tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, desc=desc, leave=False)

    def update(self, n: int = 1, **figures: float) -> None:
        self.n += n
        self.figures.update(figures)
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            if figures:
                self.bar.set_postfix({k: f"{v:.3g}" for k, v in figures.items()})
            return
        now = self.clock()
        due = now - self.last >= self.every_s
        if due or (self.n >= self.total and (self.final_line or self.printed)):
            self.last, self.printed = now, True
            self.write(self.line(now))

    def line(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        done = self.n - self.start_n
        elapsed = now - self.started
        rate = elapsed / done if done else float("nan")
        eta = rate * (self.total - self.n) if done else float("nan")
        shown = ", ".join(f"{k} {v:.4g}" for k, v in self.figures.items())
        timing = f"{rate:.2f}s/it, ETA {_duration(eta)}" if done else "starting"
        return (f"{self.desc}: {self.n}/{self.total} ({100 * self.n / max(1, self.total):.0f}%), {timing}"
                + (f"; {shown}" if shown else ""))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def quiet_trainer(trainer) -> None:
    """Drop the Trainer's ``PrinterCallback`` (with its bars off it prints raw ``{'loss': ...}``
    dicts): :func:`trainer_callback` reports instead."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def trainer_callback(desc: str, every_s: float = 30.0):
    """A transformers ``TrainerCallback`` that reports through :class:`Progress` (the Trainer's own
    bars are off): step, ETA, the latest training loss and evaluation loss."""
    from transformers import TrainerCallback

    class _Report(TrainerCallback):
        progress: Progress | None = None

        def on_train_begin(self, args, state, control, **kw):
            if state.is_world_process_zero:
                self.progress = Progress(desc, state.max_steps, start=state.global_step, every_s=every_s)

        def on_step_end(self, args, state, control, **kw):
            if self.progress is not None:
                self.progress.update(state.global_step - self.progress.n)

        def on_log(self, args, state, control, logs=None, **kw):
            if self.progress is not None and logs:
                self.progress.figures.update({k: v for k, v in logs.items() if k in ("loss", "eval_loss")})

        def on_train_end(self, args, state, control, **kw):
            if self.progress is not None:
                self.progress.close()

    return _Report()
