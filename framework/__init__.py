"""hgbench: a plugin-based benchmark of gradient-based hyperparameter optimisation.

Plugins import ``hookimpl`` and their base class from here::

    from hgbench import HypergradientMethod, hookimpl

The Python API (``build_experiment``) builds a problem from the same config names as the CLI.
Every name is imported on first use (PEP 562): importing the package alone — as pytest does
for hgbench's pytest plugin (``hgbench.pytest_plugin``) in every test session — loads
neither torch nor Hydra.
"""

from __future__ import annotations

import importlib

_WHERE = {
    **dict.fromkeys(("Batch", "Bilevel", "Curvature", "DataSplits", "Damping", "Dataset", "HyperparamFamily",
                     "HypergradientMethod", "KrylovMethod", "Model", "Plugin", "Preconditioner", "Split", "WarmStart"), "hgbench.base"),
    **dict.fromkeys(("ConfigError", "DataError", "DivergenceError", "HgbenchError", "SkipRun", "UnknownPluginError"),
                    "hgbench.errors"),
    "hookimpl": "hgbench.registry",
    "build_experiment": "hgbench.api",
    "compose_config": "hgbench.api",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value  # once
        return value
    raise AttributeError(f"module 'hgbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
