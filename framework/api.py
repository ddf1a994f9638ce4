"""The Python API: the CLI's code path, from a notebook.

    from hgbench import build_experiment

    exp = build_experiment(dataset="synthetic_linear", model="linear",
                           hyperparam="weight_decay_per_param", overrides=["dtype=float64"])
    exp.train_inner(500)                         # inner training, λ fixed
    for m in ("neumann", "cg", "exact"):
        hg = exp.hypergradient(m)                # dict shaped like λ
    exp.hypergradient("neumann", iterations=50)  # config defaults overridden by keyword
    result = exp.run()                           # the whole Algorithm 1, recorded like the CLI

Group choices are keyword arguments (``hypergrad=``, ``hyperparam=``, ``dataset=``, ``model=``,
``inner_optimizer=``, ``outer_optimizer=``); anything else is a Hydra override string. MLflow
recording is off unless ``record=True``.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from hgbench.hydra_config import CONFIG_MODULE, register_plugin_configs
from hgbench.runner import Experiment


def compose_config(overrides: Sequence[str] = (), **groups: str) -> DictConfig:
    """Compose ``conf/config.yaml`` with group choices and overrides, as the CLI would."""
    register_plugin_configs()
    ov = [f"{k}={v}" for k, v in groups.items()] + list(overrides)
    if GlobalHydra.instance().is_initialized():  # already inside a Hydra app
        return compose("config", overrides=ov)
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return compose("config", overrides=ov)


def build_experiment(overrides: Sequence[str] = (), record: bool = False, progress: bool = False, **groups: str) -> Experiment:
    """An ``Experiment`` (problem, method, optimisers) built from config names."""
    ov = [f"mlflow.enabled={str(record).lower()}", f"progress={str(progress).lower()}", *overrides]
    return Experiment(compose_config(ov, **groups))
