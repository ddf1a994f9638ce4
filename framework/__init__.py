"""hgbench: a plugin-based benchmark of gradient-based hyperparameter optimisation.

Plugins import ``hookimpl`` and their base class from here::

    from framework import HypergradientMethod, hookimpl

The Python API (``build_experiment``) builds a problem from the same config names as the CLI.
"""

from framework.base import (
    Batch,
    Bilevel,
    DataSplits,
    Dataset,
    HyperparamFamily,
    HypergradientMethod,
    Model,
    Plugin,
    Split,
)
from framework.errors import ConfigError, DataError, DivergenceError, HgbenchError, SkipRun, UnknownPluginError
from framework.plugins import hookimpl

__all__ = [
    "Batch", "Bilevel", "ConfigError", "DataError", "DataSplits", "Dataset", "DivergenceError", "HgbenchError",
    "HyperparamFamily", "HypergradientMethod", "Model", "Plugin", "SkipRun", "Split",
    "UnknownPluginError", "build_experiment", "compose_config", "hookimpl",
]


def __getattr__(name):  # the API pulls in Hydra; import it on first use only
    if name in ("build_experiment", "compose_config"):
        from framework import api

        return getattr(api, name)
    raise AttributeError(name)
