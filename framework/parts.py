"""A config's pieces: checked and built once (``build_parts``: no data loaded yet, so a typo fails
in milliseconds), then handed to ``Experiment``; and the record of a run whose config could not be
built (``record_unbuilt``), so a grid of N jobs leaves N runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from omegaconf import DictConfig
from torch import Tensor

from hgbench import registry
from hgbench.accuracy import RetrainSettings
from hgbench.base import Dataset, HypergradientMethod, HyperparamFamily, Model
from hgbench.config import build_plugin, config_tags, to_dict
from hgbench.errors import ConfigError, HgbenchError, SkipRun
from hgbench.hookspecs import RunContext, RunResult
from hgbench.machine import resolve_device
from hgbench.schema import check_run_config, instantiate_checked


@dataclass
class Parts:
    """Everything a config names, built and checked — no data loaded yet."""

    device: torch.device
    dataset: Dataset
    model: Model
    family: HyperparamFamily
    method: HypergradientMethod
    inner_optimizer: Any
    outer_optimizer: Callable[[list[Tensor]], torch.optim.Optimizer]  # params -> optimiser
    reference: HypergradientMethod | None = None  # the accuracy metrics' reference (reference.every > 0)
    retrain: RetrainSettings | None = None  # the retraining check's settings (reference.retrain, reference.every > 0)


def build_parts(cfg: DictConfig) -> Parts:
    """Check the whole config — the top-level schema, the device, each plugin's typed
    parameters, both optimisers — and build its pieces. Raises ConfigError /
    UnknownPluginError naming the key; nothing is loaded, so this takes milliseconds."""
    check_run_config(cfg)
    device = resolve_device(str(cfg.device))
    built = {kind: build_plugin(kind, cfg[kind]) for kind in registry.KINDS}
    inner = instantiate_checked(cfg.inner_optimizer, "inner_optimizer")
    outer = instantiate_checked(cfg.outer_optimizer, "outer_optimizer")
    try:  # torch.optim checks its settings (e.g. a negative learning rate) only once given parameters
        outer([torch.zeros(1, requires_grad=True)])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"outer_optimizer: {exc}") from exc
    reference = None
    retrain = RetrainSettings.from_config(to_dict(cfg.reference).get("retrain"))  # checked even when off
    if cfg.reference.every > 0:
        try:
            reference = build_plugin("hypergrad", cfg.reference.method)
        except HgbenchError as exc:
            raise ConfigError(f"reference.method: {exc} (presets: reference=ggn_cg | minres | exact_damped | retrain)") from exc
    return Parts(device, built["dataset"], built["model"], built["hyperparam"], built["hypergrad"], inner, outer, reference,  # type: ignore[arg-type]
                 retrain if cfg.reference.every > 0 else None)


def record_unbuilt(cfg: DictConfig, error: BaseException, tags: dict[str, str] | None = None) -> RunResult:
    """A run that could not be built is still recorded — SKIPPED for a ``SkipRun`` (an
    incompatible combination), else FAILED — with the reason, so a grid of N jobs leaves N runs.
    The hooks see ``run.experiment = None``."""
    status = "SKIPPED" if isinstance(error, SkipRun) else "FAILED"
    ctx = RunContext(cfg, None, {**config_tags(cfg), **(tags or {})})
    hook = registry.SafeHooks(ctx)
    summary: dict[str, Any] = {"failed_step": 0, "hyper_steps_done": 0}
    hook.on_run_start()
    hook.on_run_end(status=status, error=error, summary=summary)
    return RunResult(status, summary, ctx.info, error, ctx.plugin_errors, ctx.recording_errors)
