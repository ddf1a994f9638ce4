"""The plugin manager: every plugin — built-in or third-party — comes from an entry point.

Built-ins are registered exactly like a third-party package's plugins: hgbench's own
pyproject.toml declares each built-in module in the ``hgbench`` entry-point group, as a
third-party package declares its own::

    [project.entry-points.hgbench]
    my_plugin = "my_package.plugin_module"

so this module names no plugin (the framework never imports ``plugins/``). hgbench's own entry
points are registered first (a built-in that fails to import is a bug and raises); then the
others, each isolated (one that fails is reported and skipped). Set
``HGBENCH_DISABLE_ENTRY_POINTS=1`` to load the built-ins only.
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import importlib.metadata
import inspect
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pluggy

from hgbench import hookspecs
from hgbench.errors import UnknownPluginError
from hgbench.hookspecs import PluginFailure, RunContext

# the failures of isolated implementations during one SafeHooks call (None: no such call)
_isolating: contextvars.ContextVar[list | None] = contextvars.ContextVar("hgbench_isolating", default=None)


def _isolated(function: Callable) -> Callable:
    """``function``, which inside a ``SafeHooks`` call records an exception (for SafeHooks to
    report) and returns ``None`` instead of raising; elsewhere it is ``function`` unchanged."""

    @functools.wraps(function)  # pluggy reads the argument names through __wrapped__
    def isolated(*args, **kwargs):
        failed = _isolating.get()
        if failed is None:
            return function(*args, **kwargs)
        try:
            return function(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - SafeHooks reports it by plugin name
            failed.append((isolated, args[0] if args else None, exc))  # args[0]: a method's instance
            return None

    return isolated


class HookimplMarker(pluggy.HookimplMarker):
    """pluggy's marker for the ``hgbench`` project (``hgbench.hookimpl``), with the options pluggy
    documents. An implementation that is not a wrapper is marked as an isolated copy of itself
    (see ``SafeHooks``); a wrapper is marked as it is."""

    def __call__(self, function=None, **opts):
        if function is None:
            return lambda f: self(f, **opts)
        if inspect.isfunction(function) and not (opts.get("wrapper") or opts.get("hookwrapper")):
            function = _isolated(function)
        return super().__call__(function, **opts)


hookimpl = HookimplMarker("hgbench")

ENTRY_POINT_GROUP = "hgbench"

# hgbench's own distribution: its entry points in the ``hgbench`` group are the built-in plugins
DISTRIBUTION = "hgbench"

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
    preset: dict | None = None  # for an alias (a name in cls.aliases): the parameters it presets


_pm: pluggy.PluginManager | None = None
_import_failures: list[PluginFailure] = []  # entry points that failed to import (once per process)
_hook_failures: list[PluginFailure] = []  # register_* hooks that raised (per registry build)
_registry: dict[str, dict[str, Registered]] | None = None


def _report(source: str, exc: BaseException, what: str, into: list[PluginFailure]) -> None:
    into.append(PluginFailure(source, f"{type(exc).__name__}: {exc}"))
    warnings.warn(f"hgbench: plugin {source!r} failed {what}: {type(exc).__name__}: {exc}", stacklevel=3)


def entry_points() -> tuple[list[importlib.metadata.EntryPoint], list[importlib.metadata.EntryPoint]]:
    """(hgbench's own entry points — the built-ins —, every other distribution's), each in the
    order the installed metadata lists them."""
    own, others = [], []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        is_own = ep.dist is not None and ep.dist.name == DISTRIBUTION
        (own if is_own else others).append(ep)
    return own, others


def builtin_names() -> set[str]:
    return {ep.name for ep in entry_points()[0]}


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (built on first use)."""
    global _pm
    if _pm is not None:
        return _pm
    pm = pluggy.PluginManager("hgbench")
    pm.add_hookspecs(hookspecs)
    own, others = entry_points()
    if not own:
        raise RuntimeError("hgbench's built-in plugins are declared as entry points in its package metadata, and none "
                           "was found: install hgbench (pip install -e . in the checkout) rather than running it from the source tree")
    for ep in own:
        if not pm.has_plugin(ep.name):  # an editable install may list its metadata twice
            pm.register(importlib.import_module(ep.value), name=ep.name)
    if not os.environ.get("HGBENCH_DISABLE_ENTRY_POINTS"):
        for ep in others:
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


def is_disk_full(exc: BaseException) -> bool:
    """A full disk, as the OS (ENOSPC, EDQUOT) or sqlite ("database or disk is full") says it,
    however deeply wrapped (SQLAlchemy, MLflow)."""
    import errno

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "disk is full" in str(exc) or "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class SafeHooks:
    """Calls one run's lifecycle hooks through pluggy's hook caller, with each implementation
    isolated: ``SafeHooks(run).on_hyper_step(step=..., metrics=...)`` is
    ``plugin_manager().hook.on_hyper_step(run=run, step=..., metrics=...)``, so pluggy orders the
    implementations (``tryfirst``/``trylast``, then last registered first), runs wrappers
    (``wrapper=True`` and old-style ``hookwrapper=True``) around them, honours ``firstresult`` and
    its hook-call monitoring and tracing, and the call returns what pluggy returns.

    What hgbench adds: an implementation marked with ``hgbench.hookimpl`` that raises does not end
    the call. It is reported by plugin name (a warning, and an entry in ``run.plugin_errors``),
    counts as having returned ``None``, and pluggy goes on to the next implementation; the
    wrappers see the results of the others. An exception that still escapes pluggy's call — raised
    by a wrapper, or by an implementation marked with a bare ``pluggy.HookimplMarker`` — is pluggy's
    usual outcome (the implementations not yet called are skipped); it is reported the same way,
    named after the innermost hook implementation in its traceback, and the run goes on.

    A failure of a plugin that declares ``HGBENCH_RECORDER = True``, and a full disk in any
    plugin, is also a recording failure (``run.recording_errors``): the runner then stops the run.
    The same plugin failing again in the same hook is not reported again (bounded output).
    ``KeyboardInterrupt`` (any ``BaseException`` that is not an ``Exception``) propagates."""

    def __init__(self, run: RunContext, manager: pluggy.PluginManager | None = None):
        self.run = run
        self.manager = manager  # None: the process-wide plugin_manager()
        self.warned: set[tuple[str, str]] = set()  # (plugin, hook) pairs that failed once already

    def __getattr__(self, hook_name: str):
        caller = getattr((self.manager or plugin_manager()).hook, hook_name)

        def call(**kwargs):
            isolated: list[tuple[Callable, Any, Exception]] = []  # (function, its instance, error)
            escaped = None
            token = _isolating.set(isolated)
            try:
                result = caller(run=self.run, **kwargs)
            except Exception as exc:  # noqa: BLE001 - from a wrapper: reported, the run goes on
                escaped, result = (_raiser(caller, exc), exc), None
            finally:
                _isolating.reset(token)
            impls = caller.get_hookimpls()
            for function, instance, exc in isolated:
                impl = next((i for i in impls if _unbound(i.function) is function
                             and getattr(i.function, "__self__", instance) is instance), None)
                self._report(impl, exc, hook_name)
            if escaped is not None:
                self._report(*escaped, hook_name)
            return result

        return call

    def _report(self, impl: pluggy.HookImpl | None, exc: Exception, hook_name: str) -> None:
        source = impl.plugin_name if impl is not None else "(unknown plugin)"
        if (source, hook_name) in self.warned:
            return
        self.warned.add((source, hook_name))
        message = f"{type(exc).__name__}: {str(exc)[:500]}"
        failure = PluginFailure(source, f"{hook_name}: {message}")
        self.run.plugin_errors.append(failure)
        if getattr(impl and impl.plugin, "HGBENCH_RECORDER", False) or is_disk_full(exc):
            self.run.recording_errors.append(failure)
        warnings.warn(f"hgbench: plugin {source!r} failed in {hook_name}(): {message}", stacklevel=3)


def _unbound(function: Callable) -> Callable:
    return getattr(function, "__func__", function)


def _raiser(caller: pluggy.HookCaller, exc: BaseException) -> pluggy.HookImpl | None:
    """The hook implementation whose code is innermost in ``exc``'s traceback (None: not one);
    of a method, the one bound to the instance running in that frame."""
    impls = caller.get_hookimpls()
    by_code: dict[Any, list[pluggy.HookImpl]] = {}
    for i in impls:
        by_code.setdefault(getattr(inspect.unwrap(_unbound(i.function)), "__code__", None), []).append(i)
    found, tb = None, exc.__traceback__
    while tb is not None:
        candidates = by_code.get(tb.tb_frame.f_code, [])
        if candidates:
            this = tb.tb_frame.f_locals.get("self")
            found = next((i for i in candidates if getattr(i.function, "__self__", None) is this), candidates[0])
        tb = tb.tb_next
    return found


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
        # each plugin's hook called on its own, to know which plugin registered which class and to
        # skip only the one that raises (pm.subset_hook_caller would do it through pluggy, but
        # needs hashable plugin objects, and a SimpleNamespace is not)
        for impl in getattr(pm.hook, hook_name).get_hookimpls():  # registration order
            if impl.wrapper or impl.hookwrapper:
                continue
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
                    for alias, preset in getattr(cls, "aliases", {}).items():
                        if alias in found and found[alias].cls is not cls:
                            _report(impl.plugin_name, ValueError(f"{kind} alias {alias!r} is already registered by {found[alias].source}"),
                                    f"in {hook_name}()", _hook_failures)
                        else:
                            found[alias] = Registered(cls, impl.plugin_name, dict(preset))
        out[kind] = found
    _registry = out
    return out


def available(kind: str) -> list[str]:
    if kind not in KINDS:
        raise UnknownPluginError("plugin kind", kind, list(KINDS))
    return sorted(registry()[kind])


def entry(kind: str, name: str) -> Registered:
    """What is registered as ``name`` for ``kind`` (an alias: its class and preset parameters);
    an unknown name lists the available ones."""
    entries = registry().get(kind)
    if entries is None:
        raise UnknownPluginError("plugin kind", kind, list(KINDS))
    if name not in entries:
        raise UnknownPluginError(kind, name, list(entries))
    return entries[name]


def get(kind: str, name: str) -> type:
    """The class registered as ``name`` (or as an alias) for ``kind``."""
    return entry(kind, name).cls
