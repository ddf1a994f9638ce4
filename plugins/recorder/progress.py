"""A progress bar over hyper-steps (tqdm): hyper-step, validation loss, elapsed time.

``progress: auto`` (default) shows it only when stderr is a terminal; ``true`` / ``false`` force it.
"""

from __future__ import annotations

import sys

from hgbench import hookimpl


def _wanted(mode) -> bool:
    if isinstance(mode, bool):
        return mode
    return str(mode).lower() == "auto" and sys.stderr.isatty()


@hookimpl
def on_run_start(run):
    if not _wanted(run.config.progress):
        return
    from tqdm.auto import tqdm

    c = run.config
    run.extras["progress"] = tqdm(
        total=int(c.hyper_steps), unit="hyper-step", dynamic_ncols=True,
        desc=f"{c.hypergrad.name}·{c.hyperparam.name}·{c.dataset.name}",
    )


@hookimpl
def on_hyper_step(run, step, metrics):
    bar = run.extras.get("progress")
    if bar is None:
        return
    if "val_loss" in metrics:  # said with its step: it stays until the next evaluation
        bar.set_postfix_str(f"val_loss {metrics['val_loss']:.4f} at step {step}", refresh=False)
    if step > 0:
        bar.update(1)


@hookimpl
def on_run_end(run, status, error, summary):
    bar = run.extras.pop("progress", None)
    if bar is not None:
        bar.close()
