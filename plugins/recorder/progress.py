"""Progress over hyper-steps, on stderr: hyper-step, validation loss, elapsed time, ETA.

``progress: auto`` (default): on a terminal a bar (tqdm); otherwise (a log file, a pipe, a batch
job) one line every 10 % of the hyper-steps or every minute, whichever comes first, with the
elapsed time and an ETA. ``true``: the bar, terminal or not; ``false``: neither.
"""

from __future__ import annotations

import sys
import time

from hgbench import hookimpl

LINE_EVERY_FRACTION = 0.1  # a line every 10 % of the hyper-steps ...
LINE_EVERY_S = 60.0  # ... or every minute, whichever comes first
_clock = time.monotonic  # replaced in tests


def _mode(setting) -> str | None:
    """'bar', 'lines' or None."""
    if isinstance(setting, bool):
        return "bar" if setting else None
    if str(setting).lower() != "auto":
        return None
    return "bar" if sys.stderr.isatty() else "lines"


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class ProgressLines:
    """The progress lines of one run without a terminal."""

    def __init__(self, name: str, total: int):
        self.name, self.total = name, total
        self.every = max(1, round(total * LINE_EVERY_FRACTION))
        self.start_step: int | None = None
        self.t0 = self.last = _clock()
        self.val = ""

    def step(self, step: int, metrics: dict) -> str | None:
        """The line to print after hyper-step ``step``, if one is due."""
        now = _clock()
        if "val_loss" in metrics:
            self.val = f", val_loss {metrics['val_loss']:.4f} at step {step}"
        if self.start_step is None:  # step 0 (or a resumed run's first step): the clock starts
            self.start_step, self.t0, self.last = step, now, now
            return None
        done = step - self.start_step
        if not (step % self.every == 0 or step == self.total or now - self.last >= LINE_EVERY_S):
            return None
        self.last = now
        elapsed = now - self.t0
        left = self.total - step
        eta = "done" if left <= 0 else f"ETA {duration(elapsed / done * left)}" if done > 0 else "ETA ?"
        return (f"hgbench: {self.name}: hyper-step {step}/{self.total} ({100 * step / self.total:.0f} %), "
                f"{duration(elapsed)} elapsed, {eta}{self.val}")


def _name(c) -> str:
    return f"{c.hypergrad.name}·{c.hyperparam.name}·{c.dataset.name}"


@hookimpl
def on_run_start(run):
    c = run.config
    mode = _mode(c.progress)
    if mode == "lines":
        run.extras["progress_lines"] = ProgressLines(_name(c), int(c.hyper_steps))
    elif mode == "bar":
        from tqdm.auto import tqdm

        run.extras["progress"] = tqdm(total=int(c.hyper_steps), unit="hyper-step", dynamic_ncols=True, desc=_name(c))


@hookimpl
def on_hyper_step(run, step, metrics):
    lines = run.extras.get("progress_lines")
    if lines is not None:
        line = lines.step(step, metrics)
        if line:
            print(line, file=sys.stderr, flush=True)
        return
    bar = run.extras.get("progress")
    if bar is None:
        return
    if "val_loss" in metrics:  # said with its step: it stays until the next evaluation
        bar.set_postfix_str(f"val_loss {metrics['val_loss']:.4f} at step {step}", refresh=False)
    if step > 0:
        bar.update(1)


@hookimpl
def on_run_end(run, status, error, summary):
    run.extras.pop("progress_lines", None)
    bar = run.extras.pop("progress", None)
    if bar is not None:
        bar.close()
