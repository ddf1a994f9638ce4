"""A test kit for plugin authors — the checks hgbench runs on its own built-ins, for yours.

    from hgbench import testing

    with testing.registered(my_module):            # no clash with its installed entry point
        testing.check_registration("hypergrad", "damped_neumann")
        testing.check_method("damped_neumann")     # tiny problem: finite, shaped like λ, f32/f64, CUDA
        testing.assert_matches_exact("damped_neumann", damping=0.0, iterations=500, alpha=0.2)

- ``registered(plugin, name=None)``: registers a module (or an object with hook implementations,
  or plugin classes directly) for a ``with`` block. A module that is already registered — e.g.
  loaded through its installed entry point — is left as it is, not registered twice (what
  ``hgbench.registry.register`` would refuse, listing every plugin).
- ``check_registration(kind, name)``: what every registered plugin must satisfy — a documented
  ``@dataclass`` subclass of its kind's base class with typed defaults that match their types;
  ``<kind>=<name>`` composes to its dataclass defaults (an alias: with its presets) and builds.
- ``check_method``, ``check_family``, ``check_dataset``, ``check_model``: each kind's behaviour
  on something tiny; they raise ``AssertionError`` naming the plugin and what is wrong. A plugin
  whose ``skip()`` refuses a case is not failed: the case is reported in the returned
  ``CheckResult``, and when every case was refused the test is skipped (``pytest.skip``, under
  pytest) with the plugin's reason.
- ``assert_matches_exact(method, rtol=..., **params)``: a method's hypergradient against the
  closed form on ridge regression (float64), the one problem whose hypergradient is known.

Importable without pytest; torch and Hydra are the only heavy imports (Hydra on first use).
With pytest, hgbench's pytest plugin (``hgbench.pytest_plugin``) adds fixtures on top.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import math
import os
import re
import types
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from hgbench import registry
from hgbench.base import (
    Dataset,
    DataSplits,
    HypergradientMethod,
    HyperparamFamily,
    Model,
    Plugin,
    Split,
)
from hgbench.config import build_plugin, check_params
from hgbench.errors import SkipRun

__all__ = [
    "CheckResult", "assert_matches_exact", "check_class", "check_dataset", "check_family", "check_method",
    "check_model", "check_plugin", "check_registration", "devices", "registered", "ridge_experiment",
    "ridge_hypergradient",
]

BASES: dict[str, type[Plugin]] = {"hypergrad": HypergradientMethod, "hyperparam": HyperparamFamily, "dataset": Dataset, "model": Model}
DTYPES = (torch.float32, torch.float64)
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # a Hydra option name: no '=', ',', spaces


@dataclass
class CheckResult:
    """What a check ran on: ``passed`` cases (e.g. ``"cpu float64"``) and ``skipped`` ones with
    the plugin's reason."""

    plugin: str
    passed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def skip_if_nothing_ran(self) -> CheckResult:
        """Under pytest, skip the calling test when the plugin refused every case (its reason)."""
        if not self.passed and self.skipped and os.environ.get("PYTEST_CURRENT_TEST"):
            import pytest

            pytest.skip("; ".join(f"{self.plugin} on {case}: {why}" for case, why in self.skipped.items()))
        return self


def fail(plugin: str, message: str) -> AssertionError:
    return AssertionError(f"{plugin}: {message}")


# --- registering a plugin for a test ---------------------------------------------------------


def _holder(classes: Sequence[type[Plugin]], name: str) -> types.ModuleType:
    """A module whose ``register_*`` hooks return ``classes`` (grouped by kind)."""
    mod = types.ModuleType(name, f"plugin classes registered by hgbench.testing.registered: {', '.join(c.__qualname__ for c in classes)}")
    for kind, hook in registry.KINDS.items():
        of_kind = tuple(c for c in classes if getattr(c, "kind", None) == kind)
        if of_kind:
            def register(cs=of_kind):  # an argument with a default is never passed by pluggy
                return list(cs)

            setattr(mod, hook, registry.hookimpl(register))
    unknown = [c for c in classes if getattr(c, "kind", None) not in registry.KINDS]
    if unknown:
        raise TypeError(f"not plugin classes (subclasses of hgbench.HypergradientMethod, HyperparamFamily, Dataset or Model): {unknown}")
    return mod


def _is_classes(plugin: Any) -> bool:
    if isinstance(plugin, type):
        return True
    return isinstance(plugin, (list, tuple)) and bool(plugin) and all(isinstance(c, type) for c in plugin)


@contextlib.contextmanager
def registered(plugin: Any, name: str | None = None) -> Iterator[str]:
    """Register ``plugin`` for the ``with`` block; yields the name it is registered under.

    ``plugin``: a module (or any object) with ``@hookimpl`` functions, as an entry point names
    it, or one plugin class or a list of them (registered through a generated module). If that
    very object is already registered — typically your module, loaded through its installed
    entry point — nothing is registered or removed (its name is yielded). If ``name`` is taken by
    another plugin, or one of its classes has a name another plugin registered already, this
    raises ``ValueError`` saying which, and nothing is left registered. The registry
    (``registry.available``, ``build_experiment``…) sees the plugin inside the block only.
    """
    pm = registry.plugin_manager()
    if _is_classes(plugin):
        classes = [plugin] if isinstance(plugin, type) else list(plugin)
        plugin = _holder(classes, name or "test:" + "+".join(f"{c.__module__}.{c.__qualname__}" for c in classes))
    if pm.is_registered(plugin):
        yield pm.get_name(plugin)
        return
    if name is None:
        name = getattr(plugin, "__name__", None) if isinstance(plugin, types.ModuleType) else None
        name = name or f"test:{type(plugin).__module__}.{type(plugin).__qualname__}@{id(plugin):x}"
    other = pm.get_plugin(name)
    if other is not None:
        raise ValueError(f"another plugin is registered as {name!r}: {other!r} (from {getattr(other, '__file__', '?')}); "
                         f"is a second copy of your module imported under another name? Pass registered(..., name=...)")
    try:
        registry.register(plugin, name=name)
    except Exception as exc:  # e.g. a mistyped hook name: leave nothing half-registered
        if pm.is_registered(plugin):
            registry.unregister(name)
        raise ValueError(f"plugin {name!r} cannot be registered: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            registry.registry()
        mine = [f.error for f in registry.failures() if f.source == name]
        for w in caught:  # other plugins' warnings are theirs: pass them on
            if f"plugin {name!r}" not in str(w.message):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if mine:
            raise ValueError(f"plugin {name!r} did not register cleanly: " + "; ".join(mine))
    except BaseException:
        registry.unregister(name)
        raise
    try:
        yield name
    finally:
        if pm.is_registered(plugin):
            registry.unregister(name)


# --- building plugins --------------------------------------------------------------------------


def _instance(kind: str, plugin: Any, params: dict[str, Any]) -> Plugin:
    """A plugin instance from a registered name (or alias), a class, a config dict or an instance."""
    if isinstance(plugin, str):
        return build_plugin(kind, {"name": plugin}, **params)
    if isinstance(plugin, dict):
        return build_plugin(kind, plugin, **params)
    if isinstance(plugin, type):
        check_class(plugin, kind)
        check_params(kind, plugin, params)
        return plugin(**params)
    if isinstance(plugin, Plugin):
        if params:
            raise TypeError(f"parameters {sorted(params)} given with an instance of {type(plugin).__name__}: pass the class or the name")
        return plugin
    raise TypeError(f"expected a registered {kind} name, a plugin class or an instance, got {plugin!r}")


def _label(kind: str, given: Any, plugin: Plugin, params: dict[str, Any] | None = None) -> str:
    """How a check names the plugin: the name it was given (an alias stays an alias) and params."""
    shown = f" {params}" if params else ""
    name = given if isinstance(given, str) else plugin.name
    return f"{kind} {name!r}{shown}"


# --- every kind: the class and its registration ----------------------------------------------


def _own_docstring(cls: type) -> bool:
    doc = cls.__dict__.get("__doc__")
    if doc and dataclasses.is_dataclass(cls) and doc.startswith(f"{cls.__name__}("):
        doc = None  # dataclass writes the signature when a class has no docstring
    return bool(doc and doc.strip()) or bool((inspect.getmodule(cls).__doc__ or "").strip())


def check_class(cls: type, kind: str) -> None:
    """The plugin class itself: a subclass of ``kind``'s base class, decorated with
    ``@dataclass`` (every annotated attribute a parameter), a ``name`` usable on the command
    line, a docstring (its own or its module's), defaults that match their declared types,
    aliases whose presets are valid parameters."""
    label = f"{kind} class {getattr(cls, '__qualname__', cls)!r}"
    base = BASES[kind]
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise fail(label, f"must subclass framework.{base.__name__}")
    if cls.kind != kind:
        raise fail(label, f"its kind is {cls.kind!r}, not {kind!r}")
    if not isinstance(cls.name, str) or not NAME.match(cls.name):
        raise fail(label, f"needs a class attribute name = '<option name>' (letters, digits, _ . -), got {cls.name!r}")
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    own = {k for k, v in inspect.get_annotations(cls).items() if "ClassVar" not in str(v)}
    if not dataclasses.is_dataclass(cls) or own - fields:
        raise fail(label, f"decorate it with @dataclass: its annotated attributes {sorted(own - fields) or ''} are not parameters otherwise")
    if not _own_docstring(cls):
        raise fail(label, "document it: a class or module docstring (what users read in hgbench-plugins)")
    defaults = {k: v for k, v in cls.defaults().items() if v != "???"}
    try:
        check_params(kind, cls, defaults)
        for alias, preset in cls.aliases.items():
            if not NAME.match(alias):
                raise fail(label, f"alias {alias!r} is not a usable option name")
            check_params(kind, cls, dict(preset))
    except ValueError as exc:
        raise fail(label, f"a default or alias preset does not match its declared type: {exc}") from exc


def check_registration(kind: str, name: str) -> None:
    """A registered plugin (or alias) ``name`` of ``kind``: its class passes ``check_class``;
    ``<kind>=<name>`` composes (Hydra, as the CLI does) to exactly its dataclass defaults plus an
    alias's presets — the one place its defaults are written — and that config builds an
    instance equal to one built from the bare name."""
    from hgbench.api import compose_config
    from hgbench.config import to_dict

    entry = registry.entry(kind, name)
    cls = entry.cls
    check_class(cls, kind)
    label = f"{kind} {name!r}"
    if cls.name != name and name not in cls.aliases:
        raise fail(label, f"registered under a name that is neither its name {cls.name!r} nor one of its aliases")
    node = to_dict(compose_config(**{kind: name})[kind])
    expected = {"name": cls.name, **cls.defaults(), **(entry.preset or {})}
    if node != expected:
        raise fail(label, f"{kind}={name} composes to {node}, not its dataclass defaults {expected} "
                          f"(a conf/{kind}/{name}.yaml on Hydra's search path would do that)")
    built = build_plugin(kind, node)
    if not isinstance(built, cls):
        raise fail(label, f"builds a {type(built).__name__}, not a {cls.__name__}")
    if built != build_plugin(kind, {"name": name}):
        raise fail(label, "its composed config and its bare name build different instances")


# --- hypergradient methods -------------------------------------------------------------------


def devices() -> list[str]:
    """The devices a check runs on: the CPU, and CUDA when present."""
    return ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@functools.lru_cache(maxsize=8)
def _tiny(device: str, dtype: torch.dtype):
    """The contract problem: affine ridge regression on 10 features with one decay per weight
    tensor — w has 11 entries and λ 2, so a method returning something shaped like w is caught."""
    from hgbench.api import build_experiment

    exp = build_experiment(
        dataset="synthetic_linear", model="linear", hyperparam="weight_decay",
        overrides=[f"device={device}", f"dtype={str(dtype).removeprefix('torch.')}", "warmup=false", "seed=0",
                   "hyperparam.granularity=per_tensor", "hyperparam.init_decay=0.1", "dataset.num_features=10",
                   "dataset.informative=3", "dataset.train_size=24", "dataset.val_size=16", "dataset.test_size=8"])
    exp.train_inner(3)  # off the initial point, with an optimiser state
    return exp, exp.w.detach().clone(), exp.lam.detach().clone()


def check_method(method: Any, *, dtypes: Iterable[torch.dtype] = DTYPES, on: Iterable[str] | None = None,
                 experiment: Callable[[str, torch.dtype], Any] | None = None, **params: Any) -> CheckResult:
    """A hypergradient method on a tiny problem, on every device in ``on`` (default: CPU, and
    CUDA when present) in each of ``dtypes``: unless its ``skip(problem)`` refuses the case,
    ``compute(problem)`` returns a tensor shaped like λ (not like w), of λ's dtype and device,
    finite, and leaves w and λ unchanged.

    ``method``: a registered name or alias, a class (its ``params`` checked like a config's) or an
    instance. ``experiment(device, dtype)``: your own problem (an ``Experiment``, e.g. from
    ``build_experiment``) instead of the tiny ridge regression.
    """
    m = _instance("hypergrad", method, params)
    check_class(type(m), "hypergrad")
    label = _label("hypergrad", method, m, params)
    result = CheckResult(label)
    for device in on or devices():
        for dtype in dtypes:
            case = f"{device} {str(dtype).removeprefix('torch.')}"
            if experiment is not None:
                exp = experiment(device, dtype)
                w0, lam0 = exp.w.detach().clone(), exp.lam.detach().clone()
            else:
                exp, w0, lam0 = _tiny(device, dtype)
                exp.w, exp.lam.data = w0.clone(), lam0.clone()
            reason = m.skip(exp.problem)
            if reason:
                result.skipped[case] = reason
                continue
            tb, vb = exp.problem.full_batch("train"), exp.problem.full_batch("val")
            try:
                hg = exp.hypergradient_flat(m, tb, vb)
            except Exception as exc:
                raise fail(label, f"compute() raised on {case}: {type(exc).__name__}: {exc}") from exc
            where = f"on {case}, compute() returned"
            if not isinstance(hg, Tensor):
                raise fail(label, f"{where} a {type(hg).__name__}, not a Tensor")
            if hg.shape != lam0.shape:
                raise fail(label, f"{where} shape {tuple(hg.shape)}; λ is {tuple(lam0.shape)} (w is {tuple(w0.shape)})")
            if hg.dtype != lam0.dtype or hg.device != lam0.device:
                raise fail(label, f"{where} a {hg.dtype} tensor on {hg.device}; λ is {lam0.dtype} on {lam0.device}")
            if not torch.isfinite(hg).all():
                raise fail(label, f"{where} non-finite values: {hg.tolist()}")
            if not (torch.equal(exp.w, w0) and torch.equal(exp.lam.detach(), lam0)):
                raise fail(label, f"on {case}, compute() changed w or λ in place")
            result.passed.append(case)
    return result.skip_if_nothing_ran()


def ridge_experiment(num_features: int = 10, dtype: torch.dtype = torch.float64, device: str = "cpu", seed: int = 0):
    """Ridge regression with one decay per feature, no bias, at its exact inner optimum (a dense
    solve): L_T = mean((Xw − y)²) + ½ Σ e^λ_j w_j², L_V = mean((X_v w − y_v)²), with the decays
    spread over [e⁻³, e^0.5] so every coordinate of the hypergradient differs."""
    from hgbench.api import build_experiment

    exp = build_experiment(
        dataset="synthetic_linear", model="linear", hyperparam="weight_decay_per_param",
        overrides=[f"device={device}", f"dtype={str(dtype).removeprefix('torch.')}", "warmup=false", f"seed={seed}",
                   "model.bias=false", f"dataset.num_features={num_features}", f"dataset.informative={min(3, num_features)}",
                   f"dataset.train_size={4 * num_features}", f"dataset.val_size={3 * num_features}", "dataset.test_size=8"])
    exp.lam.data = torch.linspace(-3.0, 0.5, exp.problem.num_hyperparams, dtype=exp.lam.dtype, device=exp.lam.device)
    d = exp.problem.data
    x, y = d.train.x, d.train.y
    h = 2 * x.T @ x / len(x) + torch.diag(exp.lam.detach().exp())
    exp.w = torch.linalg.solve(h, 2 * x.T @ y / len(x))
    return exp


def ridge_hypergradient(exp) -> Tensor:
    """The closed form dL_V/dλ of ``ridge_experiment``'s problem at its optimum:
    dw*/dλ = −H⁻¹ diag(e^λ ⊙ w*), so dL_V/dλ = −(e^λ ⊙ w*) ⊙ H⁻¹ ∇_w L_V."""
    d, lam = exp.problem.data, exp.lam.detach()
    x, y, xv, yv = d.train.x, d.train.y, d.val.x, d.val.y
    h = 2 * x.T @ x / len(x) + torch.diag(lam.exp())
    w = torch.linalg.solve(h, 2 * x.T @ y / len(x))
    gv = 2 * xv.T @ (xv @ w - yv) / len(xv)
    return -(lam.exp() * w) * torch.linalg.solve(h, gv)


@functools.lru_cache(maxsize=2)
def _ridge(num_features: int):
    exp = ridge_experiment(num_features)
    return exp, exp.w.clone(), exp.lam.detach().clone(), ridge_hypergradient(exp)


def assert_matches_exact(method: Any, rtol: float = 1e-6, *, num_features: int = 10, **params: Any) -> float:
    """Assert that ``method``'s hypergradient on ridge regression (float64, ``num_features``
    features, w at the exact optimum) is within relative error ``rtol`` (2-norm) of the closed
    form; returns the relative error. ``params`` set the method's parameters — give an iterative
    method the budget to converge (e.g. ``iterations=200``; its ``budget`` attribute names the
    parameter the frontier benchmark varies)."""
    m = _instance("hypergrad", method, params)
    exp, w, lam, ref = _ridge(num_features)
    exp.w, exp.lam.data = w.clone(), lam.clone()
    label = _label("hypergrad", method, m, params)
    reason = m.skip(exp.problem)
    if reason:
        raise fail(label, f"refuses the ridge problem ({exp.problem.num_weights} weights, float64): {reason}")
    hg = exp.hypergradient_flat(m, exp.problem.full_batch("train"), exp.problem.full_batch("val"))
    if hg.shape != ref.shape or not torch.isfinite(hg).all():
        raise fail(label, f"on ridge, returned shape {tuple(hg.shape)} (λ: {tuple(ref.shape)}) with values {hg.tolist()}")
    rel = (torch.linalg.vector_norm(hg - ref) / torch.linalg.vector_norm(ref)).item()
    if not rel <= rtol:
        cos = (hg @ ref / (torch.linalg.vector_norm(hg) * torch.linalg.vector_norm(ref))).item()
        budget = type(m).budget
        hint = f"; it declares its cost parameter {budget!r} = {getattr(m, budget)!r}: a larger one may converge" if budget else ""
        raise fail(label, f"relative error {rel:.3e} > rtol={rtol:g} against the closed-form ridge hypergradient "
                          f"(float64, {exp.problem.num_weights} features; cosine {cos:.6f}){hint}\n"
                          f"  got:      {hg.tolist()}\n  expected: {ref.tolist()}")
    return rel


# --- hyperparameter families -------------------------------------------------------------------


def _finite_scalar(label: str, what: str, value: Any) -> Tensor:
    if not isinstance(value, Tensor) or value.dim() != 0:
        raise fail(label, f"{what} must return a 0-dim tensor, got {getattr(value, 'shape', type(value).__name__)}")
    if not torch.isfinite(value):
        raise fail(label, f"{what} is not finite: {value.item()}")
    return value


def check_family(family: Any, *, dataset: Any = "digits", model: Any = "mlp", dataset_params: dict[str, Any] | None = None,
                 model_params: dict[str, Any] | None = None, dtype: torch.dtype = torch.float64, on: Iterable[str] | None = None,
                 **params: Any) -> CheckResult:
    """A hyperparameter family on a small problem (default: 8×8 digits as images, 40/30/10
    examples, an MLP with 8 hidden units), on each device of ``on``: unless its ``skip`` refuses
    the problem, ``init_hyperparams`` gives floating tensors by name; ``training_loss`` and
    ``validation_loss`` are finite scalars; L_T has a finite gradient in w and a mixed second
    derivative ∂²L_T/∂λ∂w (else every IFT method sees only ∂L_V/∂λ); with a ``penalty()``,
    L_T = task loss + penalty (what ``curvature=ggn`` relies on); ``metrics`` gives finite floats.
    """
    from hgbench.problem import Problem

    fam = _instance("hyperparam", family, params)
    check_class(type(fam), "hyperparam")
    label = _label("hyperparam", family, fam, params)
    if dataset_params is None and dataset == "digits":
        dataset_params = {"train_size": 40, "val_size": 30, "test_size": 10, "image": True}
    if model_params is None and model == "mlp":
        model_params = {"hidden": [8]}
    ds = _instance("dataset", dataset, dataset_params or {})
    mo = _instance("model", model, model_params or {})
    result = CheckResult(label)
    for device in on or devices():
        case = f"{device} {str(dtype).removeprefix('torch.')} {ds.name}+{mo.name}"
        try:
            problem = Problem(ds, mo, fam, device=device, dtype=dtype, seed=0)
        except SkipRun as exc:
            result.skipped[case] = str(exc)
            continue
        ctx = problem.ctx
        lam_dict = fam.init_hyperparams(ctx)
        if not isinstance(lam_dict, dict) or not lam_dict or not all(isinstance(v, Tensor) and v.is_floating_point() for v in lam_dict.values()):
            raise fail(label, f"init_hyperparams() must return a non-empty dict of floating tensors by name, got {lam_dict!r}")
        w = problem.w0.clone().requires_grad_(True)
        lam = problem.lam0.clone().requires_grad_(True)
        tb, vb = problem.full_batch("train"), problem.full_batch("val")
        dev = torch.device(device)
        with torch.random.fork_rng(devices=[] if dev.type != "cuda" else [dev.index if dev.index is not None else torch.cuda.current_device()]):
            torch.manual_seed(0)
            lt = _finite_scalar(label, f"training_loss on {case}", problem.train_loss(w, lam, tb))
            _finite_scalar(label, f"validation_loss on {case}", problem.val_loss(w, lam, vb))
            (gw,) = torch.autograd.grad(lt, w, create_graph=True)
            if not torch.isfinite(gw).all():
                raise fail(label, f"the training loss's gradient in w is not finite on {case}")
            (mixed,) = torch.autograd.grad(gw @ torch.ones_like(gw), lam, allow_unused=True)
            if mixed is None or not torch.isfinite(mixed).all():
                raise fail(label, f"on {case}, λ never meets w in the training loss (no finite ∂²L_T/∂λ∂w): "
                                  "IFT hypergradients would be ∂L_V/∂λ alone")
            if problem.supports_ggn:
                views = problem.lam_spec.unflatten(lam)
                torch.manual_seed(0)
                lt_again = problem.train_loss(w, lam, tb)
                split = ctx.data_loss(ctx.forward(w, tb.x), tb.y) + fam.penalty(w, views, ctx)
                if not torch.allclose(lt_again, split, rtol=1e-10 if dtype == torch.float64 else 1e-5, atol=0):
                    raise fail(label, f"training_loss {lt_again.item()!r} != task loss + penalty() {split.item()!r} on {case}: "
                                      "implement penalty() only when L_T is exactly the task loss plus a penalty (curvature=ggn uses it)")
        metrics = fam.metrics(problem.lam_spec.unflatten(problem.lam0))
        bad = {k: v for k, v in metrics.items() if not (isinstance(k, str) and isinstance(v, float) and math.isfinite(v))}
        if not isinstance(metrics, dict) or bad:
            raise fail(label, f"metrics() must give finite Python floats by name, got {bad or metrics!r}")
        result.passed.append(case)
    return result.skip_if_nothing_ran()


# --- datasets ---------------------------------------------------------------------------------


def check_dataset(dataset: Any, **params: Any) -> CheckResult:
    """A dataset's ``load()`` (called twice): a ``DataSplits`` whose train/val/test splits are
    tensors with as many targets as inputs, non-empty train and val, one input shape (its
    ``input_shape``) and dtype across splits; classification targets are integers in
    [0, num_outputs), regression targets finite floats with one column per output; float inputs
    are finite; a second ``load()`` gives identical tensors, and loading leaves torch's global
    RNG as it was (so it cannot shift a run's seeded initialisation)."""
    ds = _instance("dataset", dataset, params)
    check_class(type(ds), "dataset")
    label = _label("dataset", dataset, ds, params)
    rng = torch.random.get_rng_state()
    data = ds.load()
    if not torch.equal(rng, torch.random.get_rng_state()):
        raise fail(label, "load() changed torch's global RNG: draw from a torch.Generator seeded by a parameter (split_seed)")
    if not isinstance(data, DataSplits):
        raise fail(label, f"load() must return a hgbench.DataSplits, got {type(data).__name__}")
    shape = tuple(data.input_shape)
    for split in ("train", "val", "test"):
        s = getattr(data, split)
        if not (isinstance(s, Split) and isinstance(s.x, Tensor) and isinstance(s.y, Tensor)):
            raise fail(label, f"{split} must be a hgbench.Split(x, y) of tensors")
        if len(s.x) != len(s.y):
            raise fail(label, f"{split} has {len(s.x)} inputs and {len(s.y)} targets")
        if split != "test" and len(s.x) == 0:
            raise fail(label, f"{split} is empty")
        if tuple(s.x.shape[1:]) != shape:
            raise fail(label, f"{split} inputs are {tuple(s.x.shape[1:])}; input_shape is {shape}")
        if s.x.dtype != data.train.x.dtype or s.y.dtype != data.train.y.dtype:
            raise fail(label, f"{split} has dtypes ({s.x.dtype}, {s.y.dtype}), train ({data.train.x.dtype}, {data.train.y.dtype})")
        if s.x.is_floating_point() and not torch.isfinite(s.x).all():
            raise fail(label, f"{split} inputs are not all finite")
        if data.task == "classification":
            if s.y.is_floating_point() or s.y.is_complex():
                raise fail(label, f"classification targets must be integer class indices, {split} has {s.y.dtype}")
            if s.y.numel() and not (0 <= s.y.min() and s.y.max() < data.num_outputs):
                raise fail(label, f"{split} targets span [{s.y.min().item()}, {s.y.max().item()}], outside [0, num_outputs={data.num_outputs})")
        else:
            if not s.y.is_floating_point() or not torch.isfinite(s.y).all():
                raise fail(label, f"regression targets must be finite floats, {split} has {s.y.dtype}")
            cols = 1 if s.y.dim() == 1 else s.y.shape[-1]
            if cols != data.num_outputs:
                raise fail(label, f"{split} targets have {cols} column(s), num_outputs is {data.num_outputs}")
    again = ds.load()
    for split in ("train", "val", "test"):
        a, b = getattr(data, split), getattr(again, split)
        if not (torch.equal(a.x, b.x) and torch.equal(a.y, b.y)):
            raise fail(label, f"a second load() gives a different {split} split: seed every random draw (e.g. from split_seed)")
    return CheckResult(label, passed=[f"{data.task}, {data.num_outputs} outputs, input {shape}"])


# --- models -----------------------------------------------------------------------------------


def check_model(model: Any, *, input_shape: tuple[int, ...] = (1, 8, 8), num_outputs: int = 3, x: Tensor | None = None,
                **params: Any) -> CheckResult:
    """A model built for ``input_shape`` and ``num_outputs`` (``x``: a batch of inputs; default
    3 random float examples — pass integer tokens for a language model): ``build`` returns an
    ``nn.Module`` with weights, the same weights for the same torch seed (hgbench seeds the
    build), outputs ``(batch, …, num_outputs)`` that are finite, and in float64 too; called
    functionally with flat weights as hgbench does (``torch.func.functional_call``) it gives the
    module's own outputs, with a finite gradient in the flat weights."""
    from torch import nn
    from torch.func import functional_call

    from hgbench.flat import FlatSpec

    mo = _instance("model", model, params)
    check_class(type(mo), "model")
    label = _label("model", model, mo, params)
    if x is None:
        x = torch.randn(3, *input_shape, generator=torch.Generator().manual_seed(0))

    def build(dtype):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return mo.build(tuple(input_shape), num_outputs).to(dtype=dtype)

    module = build(torch.float32)
    if not isinstance(module, nn.Module):
        raise fail(label, f"build() must return a torch.nn.Module, got {type(module).__name__}")
    named = dict(module.named_parameters())
    if not named:
        raise fail(label, "the module has no parameters (nothing for the inner problem to train)")
    again = dict(build(torch.float32).named_parameters())
    if any(not torch.equal(p, again[n]) for n, p in named.items()):
        raise fail(label, "two builds under the same torch seed give different weights: initialise from torch's RNG only")
    for dtype in (torch.float32, torch.float64):
        m = module if dtype == torch.float32 else build(torch.float64)
        xd = x.to(dtype) if x.is_floating_point() else x
        out = m(xd)
        if not isinstance(out, Tensor) or out.shape[0] != len(x) or out.shape[-1] != num_outputs:
            raise fail(label, f"outputs must be (batch={len(x)}, …, num_outputs={num_outputs}), got {getattr(out, 'shape', type(out).__name__)}")
        if out.dtype != dtype or not torch.isfinite(out).all():
            raise fail(label, f"in {dtype}, outputs are {out.dtype} and {'' if torch.isfinite(out).all() else 'not '}finite")
        params_ = {n: p.detach() for n, p in m.named_parameters()}
        spec = FlatSpec.of(params_)
        w = spec.flatten(params_).clone().requires_grad_(True)
        fout = functional_call(m, spec.unflatten(w), (xd,))
        if not torch.allclose(fout, out, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=1e-6 if dtype == torch.float32 else 1e-12):
            raise fail(label, f"in {dtype}, functional_call with flat weights differs from the module's own forward "
                              f"(max |Δ| {(fout - out).abs().max().item():.3g}): keep no weights outside named_parameters()")
        (g,) = torch.autograd.grad(fout.double().square().sum(), w)
        bad = [n for n, sl in zip(spec.names, torch.split(g, [math.prod(s) for s in spec.shapes]), strict=True) if not torch.isfinite(sl).all()]
        if bad:
            raise fail(label, f"in {dtype}, the outputs' gradient is not finite for {bad}")
        if mo.carries_state:
            _check_state(label, m, xd, out)
    return CheckResult(label, passed=[f"input {tuple(input_shape)} -> {num_outputs} outputs"]
                       + (["carries a recurrent state"] if mo.carries_state else []))


def _check_state(label: str, module: Any, x: Tensor, out: Tensor) -> None:
    """A model with ``carries_state``: ``return_state=True`` gives (the same outputs, a state of
    tensors) and a batch started from that state gives other outputs than from zeros."""
    from hgbench.streams import map_state

    got = module(x, return_state=True)
    if not (isinstance(got, tuple) and len(got) == 2 and isinstance(got[0], Tensor)):
        raise fail(label, "carries_state = True: forward(x, return_state=True) must return (outputs, final_state)")
    if not torch.equal(got[0], out) or not torch.equal(module(x, state=None), out):
        raise fail(label, "carries_state = True: forward(x, return_state=True) and forward(x, state=None) must give the outputs of forward(x)")
    try:
        state = map_state(torch.Tensor.detach, got[1])
    except TypeError as exc:
        raise fail(label, f"carries_state = True: the state forward returns is not a state: {exc}") from None
    if state is None or torch.equal(module(x, state=state), out):
        raise fail(label, "carries_state = True: forward(x, state=s) with the state s it returned gives the outputs of a "
                          "zero state: the forward must start from state")


def check_plugin(kind: str, plugin: Any, **options: Any) -> CheckResult:
    """``check_registration`` for a registered name, then the kind's own check with ``options``."""
    if isinstance(plugin, str):
        check_registration(kind, plugin)
    check = {"hypergrad": check_method, "hyperparam": check_family, "dataset": check_dataset, "model": check_model}[kind]
    return check(plugin, **options)
