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

import copy
from collections import OrderedDict
from collections.abc import Sequence
from importlib.resources import files

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from hgbench.hydra_config import CONFIG_MODULE, register_plugin_configs
from hgbench.runner import Experiment

# compose_config's recent results: Hydra takes ~0.2 s a composition (it copies its config store
# and parses every YAML file again), a copy of the result takes milliseconds
COMPOSED_KEPT = 64
_composed: OrderedDict[tuple[str, ...], tuple[tuple, tuple, DictConfig]] = OrderedDict()


def _stored_configs() -> tuple:
    """Every node in Hydra's config store, by path, as the objects themselves: compared by identity,
    a node stored, replaced or removed since shows (a node kept here cannot be freed and its
    address reused)."""
    def walk(tree: dict, path: tuple) -> list:
        return [item for name, node in tree.items()
                for item in (walk(node, (*path, name)) if isinstance(node, dict) else [((*path, name), node)])]

    return tuple(walk(ConfigStore.instance().repo, ()))


def _config_files() -> tuple:
    """The YAML files of ``conf/`` with their sizes and modification times: an edited preset shows."""
    out = []
    stack = [files(CONFIG_MODULE)]
    while stack:
        for entry in stack.pop().iterdir():
            if entry.is_dir():
                stack.append(entry)
            elif entry.name.endswith(".yaml"):
                st = entry.stat() if hasattr(entry, "stat") else None  # a zipped package's files have none
                out.append((str(entry), *((st.st_size, st.st_mtime_ns) if st else (None, None))))
    return tuple(sorted(out))


def _same_store(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(pa == pb and na is nb for (pa, na), (pb, nb) in zip(a, b, strict=True))


def compose_config(overrides: Sequence[str] = (), **groups: str) -> DictConfig:
    """Compose ``conf/config.yaml`` with group choices and overrides, as the CLI would. Outside a
    Hydra app the result is kept (the last ``COMPOSED_KEPT``): the same overrides again, with the
    same configs in Hydra's store and the same ``conf/`` files, return a copy of it."""
    register_plugin_configs()
    ov = [f"{k}={v}" for k, v in groups.items()] + list(overrides)
    if GlobalHydra.instance().is_initialized():  # already inside a Hydra app: its own search path
        return compose("config", overrides=ov)
    key, stored, conf_files = tuple(ov), _stored_configs(), _config_files()
    kept = _composed.get(key)
    if kept is not None and _same_store(kept[0], stored) and kept[1] == conf_files:
        _composed.move_to_end(key)
        return copy.deepcopy(kept[2])
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        cfg = compose("config", overrides=ov)
    _composed[key] = (stored, conf_files, cfg)
    while len(_composed) > COMPOSED_KEPT:
        _composed.popitem(last=False)
    return copy.deepcopy(cfg)


def build_experiment(overrides: Sequence[str] = (), record: bool = False, progress: bool = False, **groups: str) -> Experiment:
    """An ``Experiment`` (problem, method, optimisers) built from config names."""
    ov = [f"mlflow.enabled={str(record).lower()}", f"progress={str(progress).lower()}", *overrides]
    return Experiment(compose_config(ov, **groups))
