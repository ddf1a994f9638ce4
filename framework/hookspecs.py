"""Every hgbench hook, in one place.

A plugin is a module (or object) with functions decorated by ``hgbench.hookimpl`` whose names
match the specs below. Every plugin — the built-ins under ``plugins/`` too — is registered from an
entry point in the ``hgbench`` group (``hgbench.registry``); ``hgbench.registry.register`` (or
``hgbench.testing.registered``) adds one at run time.

The ``register_*`` hooks each return a list of plugin classes; hgbench chains the lists of all
plugins together. The ``on_*`` hooks follow one run's life and are called through pluggy's hook
caller (``hgbench.registry.SafeHooks``): wrappers, ``tryfirst``/``trylast`` and hook-call
monitoring behave as pluggy documents, and an implementation that raises is reported and skipped
instead of ending the call. No hook is ``firstresult``. Recording (MLflow), checkpoints and the
progress display are themselves plugins implementing them. The types the run hooks exchange
(``RunContext``, ``RunResult``, ``PluginFailure``) are part of the contract and live here too.

A plugin whose hooks *record* a run's results (the MLflow recorder; a third-party one for another
tracker) says so with a module or object attribute ``HGBENCH_RECORDER = True``: when one of its
hooks raises, the run is flagged as not recorded (``RunContext.recording_errors``) — the CLI then
never reports it as safely stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("hgbench")


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that failed (to import, to register, or in a hook), with the error."""

    source: str
    error: str


@dataclass
class RunContext:
    """One run, as the lifecycle hooks see it. Recorders may store state in ``extras`` and
    things to report at the end (e.g. where the run was recorded) in ``info``."""

    config: Any  # the run's resolved DictConfig
    experiment: Any  # the hgbench.runner.Experiment; None for a run whose config could not be built
    tags: dict[str, str]
    info: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    resumed_from: str | None = None  # the MLflow run id this run continues (from its checkpoint)
    plugin_errors: list[PluginFailure] = field(default_factory=list)  # hooks that raised
    recording_errors: list[PluginFailure] = field(default_factory=list)  # ... of HGBENCH_RECORDER plugins


@dataclass
class RunResult:
    """How a run ended: ``status`` (FINISHED, FAILED, SKIPPED, KILLED), its final figures, what
    the recorders reported in ``info``, the error that ended it, and recording failures."""

    status: str
    summary: dict[str, Any]
    info: dict[str, Any]
    error: BaseException | None = None
    plugin_errors: list[PluginFailure] = field(default_factory=list)
    recording_errors: list[PluginFailure] = field(default_factory=list)


# --- registration: each returns a list of classes ---------------------------------------------


@hookspec
def register_hypergradients() -> list[type]:
    """Return hypergradient-method classes (subclasses of ``hgbench.HypergradientMethod``)."""


@hookspec
def register_hyperparams() -> list[type]:
    """Return hyperparameter-family classes (subclasses of ``hgbench.HyperparamFamily``)."""


@hookspec
def register_datasets() -> list[type]:
    """Return dataset classes (subclasses of ``hgbench.Dataset``)."""


@hookspec
def register_models() -> list[type]:
    """Return model classes (subclasses of ``hgbench.Model``)."""


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
        ``hgbench.SkipRun`` carrying the reason.
    :param summary: the run's final figures (``runtime_s``, ``peak_memory_mb``, final losses).
    """
