"""Every hgbench hook, in one place.

A plugin is a module (or object) with functions decorated by ``framework.hookimpl`` whose names
match the specs below. Built-in plugins live under ``plugins/`` and are registered from the list in
``framework/plugins.py``; third-party ones are found through the ``hgbench`` entry-point group.

The ``register_*`` hooks each return a list of plugin classes; hgbench chains the lists of all
plugins together. The ``on_*`` hooks follow one run's life; recording (MLflow) and the progress
display are themselves plugins implementing them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from framework.runner import RunContext

hookspec = pluggy.HookspecMarker("hgbench")

# --- registration: each returns a list of classes ---------------------------------------------


@hookspec
def register_hypergradients() -> list[type]:
    """Return hypergradient-method classes (subclasses of ``framework.HypergradientMethod``)."""


@hookspec
def register_hyperparams() -> list[type]:
    """Return hyperparameter-family classes (subclasses of ``framework.HyperparamFamily``)."""


@hookspec
def register_datasets() -> list[type]:
    """Return dataset classes (subclasses of ``framework.Dataset``)."""


@hookspec
def register_models() -> list[type]:
    """Return model classes (subclasses of ``framework.Model``)."""


# --- run lifecycle ----------------------------------------------------------------------------


@hookspec
def on_run_start(run: RunContext) -> None:
    """Called once per run after the problem is built, before any training step.

    :param run: the run's context: ``run.config``, ``run.tags``, ``run.experiment`` (its
        ``problem``, ``method``, ``w`` and ``lam``; ``None`` for a run whose config could not be
        built and is only being recorded as failed or skipped); recorders keep per-run state in
        ``run.extras`` and leave what should be reported at the end in ``run.info``.
    """


@hookspec
def on_hyper_step(run: RunContext, step: int, metrics: dict[str, float]) -> None:
    """Called after each hyper-step (``step`` counts from 1) with that step's metrics."""


@hookspec
def on_run_end(run: RunContext, status: str, error: BaseException | None, summary: dict[str, Any]) -> None:
    """Called once when a run ends: ``status`` is ``FINISHED``, ``FAILED`` or ``SKIPPED``.

    :param error: the exception that ended the run (``None`` if it finished); for a skipped run a
        ``framework.SkipRun`` carrying the reason.
    :param summary: the run's final figures (``runtime_s``, ``peak_memory_mb``, final losses).
    """
