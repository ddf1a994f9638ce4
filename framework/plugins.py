"""The plugin manager: built-in plugins from a list, third-party ones from entry points.

Built-ins are registered exactly like a third-party package's plugins would be: each module in
``BUILTIN_PLUGINS`` implements ``register_*`` hooks with ``@hookimpl``. A third-party package
declares, in its pyproject::

    [project.entry-points.hgbench]
    my_plugin = "my_package.plugin_module"

Set ``HGBENCH_DISABLE_ENTRY_POINTS=1`` to load the built-ins only.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import warnings
from dataclasses import dataclass

import pluggy

from framework import hookspecs
from framework.errors import UnknownPluginError

hookimpl = pluggy.HookimplMarker("hgbench")

ENTRY_POINT_GROUP = "hgbench"

BUILTIN_PLUGINS = (
    "plugins.hypergrad.neumann",
    "plugins.hypergrad.cg",
    "plugins.hypergrad.identity",
    "plugins.hypergrad.exact",
    "plugins.hypergrad.unroll",
    "plugins.hypergrad.fixed",
    "plugins.hyperparam.weight_decay",
    "plugins.hyperparam.weight_decay_per_param",
    "plugins.hyperparam.dropout_per_unit",
    "plugins.hyperparam.augment_net",
    "plugins.hyperparam.distill",
    "plugins.hyperparam.loss_reweight",
    "plugins.dataset.synthetic_linear",
    "plugins.dataset.digits",
    "plugins.dataset.mnist_5k",
    "plugins.dataset.mnist_5k_noisy",
    "plugins.dataset.mnist",
    "plugins.dataset.fashion_mnist",
    "plugins.dataset.mnist1d",
    "plugins.dataset.ptb",
    "plugins.dataset.cifar10",
    "plugins.model.linear",
    "plugins.model.mlp",
    "plugins.model.cnn",
    "plugins.model.resnet",
    "plugins.model.lstm",
    "plugins.recorder.mlflow_recorder",
    "plugins.recorder.progress",
    "plugins.recorder.checkpoint",
)

# config group / kind -> the hook that registers it
KINDS = {
    "hypergrad": "register_hypergradients",
    "hyperparam": "register_hyperparams",
    "dataset": "register_datasets",
    "model": "register_models",
}


@dataclass(frozen=True)
class Registered:
    cls: type
    source: str  # the plugin (module or entry point) that registered it


@dataclass(frozen=True)
class PluginFailure:
    source: str
    error: str


_pm: pluggy.PluginManager | None = None
_import_failures: list[PluginFailure] = []  # entry points that failed to import (once per process)
_hook_failures: list[PluginFailure] = []  # register_* hooks that raised (per registry build)
_registry: dict[str, dict[str, Registered]] | None = None


def _report(source: str, exc: BaseException, what: str, into: list[PluginFailure]) -> None:
    into.append(PluginFailure(source, f"{type(exc).__name__}: {exc}"))
    warnings.warn(f"hgbench: plugin {source!r} failed {what}: {type(exc).__name__}: {exc}", stacklevel=3)


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (built on first use)."""
    global _pm
    if _pm is not None:
        return _pm
    pm = pluggy.PluginManager("hgbench")
    pm.add_hookspecs(hookspecs)
    for modname in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(modname), name=modname)
    if not os.environ.get("HGBENCH_DISABLE_ENTRY_POINTS"):
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if pm.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not break the others
                _report(f"{ep.name} ({ep.value})", exc, "to import", _import_failures)
                continue
            try:
                pm.register(plugin, name=ep.name)
                unknown = [h.name for h in pm.get_hookcallers(plugin) or () if not h.has_spec()]
                if unknown:  # a mistyped hook: refuse this plugin alone (check_pending() would stop all)
                    pm.unregister(name=ep.name)
                    raise pluggy.PluginValidationError(plugin, f"unknown hook {', '.join(unknown)} (the hooks are in framework/hookspecs.py)")
            except Exception as exc:
                _report(f"{ep.name} ({ep.value})", exc, "to register", _import_failures)
    pm.check_pending()
    _pm = pm
    return pm


class SafeHooks:
    """Calls the run-lifecycle hooks one implementation at a time: one that raises is reported
    by plugin name (a warning, and an entry in ``errors``) and the others, and the run, go on.
    ``KeyboardInterrupt`` still propagates."""

    def __init__(self, errors: list[PluginFailure] | None = None):
        self.errors = [] if errors is None else errors

    def __getattr__(self, hook_name: str):
        caller = getattr(plugin_manager().hook, hook_name)

        def call(**kwargs):
            for impl in reversed(caller.get_hookimpls()):  # pluggy's calling order
                try:
                    impl.function(*[kwargs[a] for a in impl.argnames])
                except Exception as exc:
                    failure = PluginFailure(impl.plugin_name, f"{hook_name}: {type(exc).__name__}: {exc}")
                    self.errors.append(failure)
                    warnings.warn(f"hgbench: plugin {impl.plugin_name!r} failed in {hook_name}(): {type(exc).__name__}: {exc}", stacklevel=2)

        return call


def register(plugin: object, name: str | None = None) -> None:
    """Register a plugin object or module at run time (e.g. from a notebook or a test)."""
    global _registry
    plugin_manager().register(plugin, name=name)
    plugin_manager().check_pending()
    _registry = None


def unregister(name: str) -> None:
    global _registry
    plugin_manager().unregister(name=name)
    _registry = None


def failures() -> list[PluginFailure]:
    """Plugins that failed to import or to register, with the error."""
    plugin_manager()
    registry()
    return _import_failures + _hook_failures


def registry() -> dict[str, dict[str, Registered]]:
    """kind -> name -> (class, source), from every registered plugin's ``register_*`` hooks."""
    global _registry
    if _registry is not None:
        return _registry
    pm = plugin_manager()
    _hook_failures.clear()
    out: dict[str, dict[str, Registered]] = {}
    for kind, hook_name in KINDS.items():
        found: dict[str, Registered] = {}
        for impl in getattr(pm.hook, hook_name).get_hookimpls():  # registration order
            try:
                classes = impl.function() or []
            except Exception as exc:
                _report(impl.plugin_name, exc, f"in {hook_name}()", _hook_failures)
                continue
            for cls in classes:
                name = getattr(cls, "name", "")
                if not name:
                    _report(impl.plugin_name, TypeError(f"{cls!r} has no 'name'"), f"in {hook_name}()", _hook_failures)
                elif name in found and found[name].cls is not cls:
                    _report(
                        impl.plugin_name,
                        ValueError(f"{kind} {name!r} is already registered by {found[name].source}"),
                        f"in {hook_name}()",
                        _hook_failures,
                    )
                else:
                    found[name] = Registered(cls, impl.plugin_name)
        out[kind] = found
    _registry = out
    return out


def available(kind: str) -> list[str]:
    if kind not in KINDS:
        raise UnknownPluginError("plugin kind", kind, list(KINDS))
    return sorted(registry()[kind])


def get(kind: str, name: str) -> type:
    """The class registered as ``name`` for ``kind``; an unknown name lists the available ones."""
    entries = registry().get(kind)
    if entries is None:
        raise UnknownPluginError("plugin kind", kind, list(KINDS))
    if name not in entries:
        raise UnknownPluginError(kind, name, list(entries))
    return entries[name].cls
