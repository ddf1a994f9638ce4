"""Turning a config node into a plugin instance, with errors that name the key and what is allowed."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union

from omegaconf import DictConfig, OmegaConf

from hgbench import registry
from hgbench.base import Plugin
from hgbench.errors import ConfigError, ConfigTypeError


def to_dict(node: Any) -> dict[str, Any]:
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    return dict(node)


def type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def matches_type(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(matches_type(value, a) for a in typing.get_args(tp))
    if origin is Literal:
        return value in typing.get_args(tp)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return isinstance(value, (list, tuple)) and all(any(matches_type(v, a) for a in args) or not args for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def check_params(kind: str, cls: type[Plugin], params: dict[str, Any]) -> None:
    """Raise ConfigTypeError for an unknown key or a value of the wrong type."""
    fields = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key, value in params.items():
        if key not in fields:
            allowed = ", ".join(sorted(fields)) or "(none)"
            raise ConfigTypeError(
                f"{kind}.{key}: unknown parameter of {kind} {cls.name!r} (value {value!r}). Allowed: {allowed}"
            )
        tp = hints.get(key, Any)
        if not matches_type(value, tp):
            raise ConfigTypeError(f"{kind}.{key}={value!r}: {cls.name!r} expects {type_name(tp)}")


def build_plugin(kind: str, node: Any, **overrides: Any) -> Plugin:
    """Instantiate the plugin named ``node.name`` of ``kind`` with the node's other keys."""
    params = to_dict(node) if node is not None else {}
    params.update(overrides)
    name = params.pop("name", None)
    if not name:
        raise ConfigTypeError(f"{kind}.name is missing. Available: {', '.join(registry.available(kind))}")
    found = registry.entry(kind, name)
    cls = found.cls
    params = {**(found.preset or {}), **params}  # an alias's presets, under explicit values
    check_params(kind, cls, params)
    try:
        return cls(**params)
    except ValueError as exc:  # a plugin refusing a value (its __post_init__); a TypeError is a bug
        raise ConfigError(f"{kind} {name!r}: {exc}") from exc


# config keys that change how a run is recorded or shown, never its results
# (num_threads is not here: the thread count a run uses is part of its fingerprint, see below)
NOT_IN_FINGERPRINT = ("mlflow", "progress", "num_threads", "warmup", "checkpoint", "resume", "resume_stale_after_s")


def _config_part(cfg: Any) -> dict[str, Any]:
    return {k: v for k, v in to_dict(cfg).items() if k not in NOT_IN_FINGERPRINT}


def _digest(d: Any) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def code_versions(cfg: Any) -> dict[str, str]:
    """The code a run's results come from: torch's version, hgbench's version and a digest of its
    framework sources, and for each plugin used its distribution's version and a digest of its
    package's sources (so editing a plugin in place, without a version bump, counts too) — of a
    built-in plugin, its own module and the built-in modules it imports, not the other plugins."""
    import torch

    from hgbench.provenance import distribution_version, module_digest, package_digest

    out = {"torch": torch.__version__, "hgbench": f"{distribution_version('hgbench')} {package_digest('hgbench')}"}
    for kind in registry.KINDS:
        name = cfg[kind].get("name") if kind in cfg and cfg[kind] is not None else None
        try:
            cls = registry.get(kind, str(name))
        except Exception:  # noqa: BLE001 - an unknown plugin: the run fails before computing anything
            continue
        parts = cls.__module__.split(".")
        if parts[0] == "hgbench" and len(parts) > 2:
            # a built-in plugin's code: its own module and the built-in modules it imports, not the
            # other built-in plugins (editing a plugin no job uses reruns no job)
            top = ".".join(parts[:2])
            out[kind] = f"{distribution_version(top)} {module_digest(cls.__module__, top)}"
        else:
            out[kind] = f"{distribution_version(parts[0])} {package_digest(parts[0])}"
    return out


def config_fingerprint(cfg: Any) -> str:
    """A short hash of the resolved config and seed alone (without recording options)."""
    return _digest(_config_part(cfg))


def fingerprint(cfg: Any) -> str:
    """A short hash of everything that determines a run's results: the config and seed, the code
    (``code_versions``) and the number of CPU threads torch uses (which changes floating-point
    sums). Two jobs with the same fingerprint compute the same thing, so a finished one need not
    run again; a job whose code changed runs again."""
    import torch

    return _digest({"config": _config_part(cfg), "code": code_versions(cfg), "torch_threads": torch.get_num_threads()})


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1} (for MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_tags(cfg: Any) -> dict[str, str]:
    """The MLflow tags every run carries: its plugins, fingerprint, process, provenance."""
    import os
    import platform

    from hgbench.provenance import provenance_tags

    tags = {f"hgbench.{kind}": str(cfg[kind].name) for kind in registry.KINDS if kind in cfg}
    tags.update({"hgbench.fingerprint": fingerprint(cfg), "hgbench.config_fingerprint": config_fingerprint(cfg), "hgbench.pid": str(os.getpid()), "hgbench.host": platform.node()})
    return {**tags, **provenance_tags()}
