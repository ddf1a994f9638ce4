"""The typed schema of the top-level config (``conf/config.yaml``), checked before anything
runs: an unknown key, a value of the wrong type or out of range is one ``ConfigError`` naming
the key, the value and what is allowed. Plugin groups are checked by their own dataclasses
(``framework.config.build_plugin``); the optimiser groups by their ``_target_``'s signature.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_type_hints

from omegaconf import DictConfig

from framework.config import _matches, _type_name, to_dict
from framework.errors import ConfigError

GROUPS = ("dataset", "model", "hyperparam", "hypergrad", "inner_optimizer", "outer_optimizer")


@dataclass
class MlflowSchema:
    enabled: bool = True
    tracking_uri: str | None = None
    experiment: str = "hgbench"
    run_name: str | None = None
    flush_every_s: float = 5.0


@dataclass
class CheckpointSchema:
    every: int = 0
    dir: str | None = None
    keep: bool = False
    log_artifact: bool = True


@dataclass
class RunSchema:
    seed: int = 0
    device: str = "auto"
    dtype: Literal["float32", "float64"] = "float32"
    hyper_steps: int = 200
    inner_steps: int = 10
    warmup_steps: int = 0
    warmup: bool = True
    train_batch_size: int | None = 128
    val_batch_size: int | None = 128
    eval_every: int = 20
    eval_batch_size: int = 4096
    progress: bool | Literal["auto"] = "auto"
    num_threads: int | None = None
    deterministic: bool = False
    compile: bool = False
    on_nonfinite: Literal["fail", "skip"] = "fail"
    max_nonfinite_skips: int = 10
    hypergrad_clip: float | None = None
    resume: bool | Literal["auto"] = "auto"
    resume_stale_after_s: float = 900.0
    checkpoint: CheckpointSchema = field(default_factory=CheckpointSchema)
    mlflow: MlflowSchema = field(default_factory=MlflowSchema)


# key -> smallest allowed value
MINIMUM = {"hyper_steps": 1, "inner_steps": 1, "warmup_steps": 0, "train_batch_size": 1, "val_batch_size": 1,
           "eval_every": 1, "eval_batch_size": 1, "num_threads": 1, "resume_stale_after_s": 0,
           "checkpoint.every": 0, "mlflow.flush_every_s": 0, "max_nonfinite_skips": 0,
           "hypergrad_clip": 0}


def _check_node(values: dict[str, Any], schema: type, prefix: str) -> None:
    hints = get_type_hints(schema)
    names = {f.name for f in fields(schema)}
    allowed_extra = GROUPS if schema is RunSchema else ()
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key in allowed_extra:
            continue
        if key not in names:
            raise ConfigError(f"{full}={value!r}: unknown config key. Allowed here: {', '.join(sorted(names | set(allowed_extra)))}")
        tp = hints[key]
        if isinstance(tp, type) and hasattr(tp, "__dataclass_fields__"):
            if not isinstance(value, dict):
                raise ConfigError(f"{full}={value!r}: expected a group of keys ({', '.join(f.name for f in fields(tp))})")
            _check_node(value, tp, full + ".")
            continue
        if not _matches(value, tp):
            raise ConfigError(f"{full}={value!r}: expected {_type_name(tp)}")
        low = MINIMUM.get(full)
        if low is not None and value is not None and value < low:
            raise ConfigError(f"{full}={value!r}: must be >= {low}")


def check_run_config(cfg: DictConfig | dict) -> None:
    """Raise ConfigError for the first unknown key / wrong type / out-of-range value."""
    values = to_dict(cfg)
    for group in GROUPS:
        if not isinstance(values.get(group), dict):
            raise ConfigError(f"{group}: missing or not a group; pick one with {group}=<name>")
    _check_node(values, RunSchema, "")


def instantiate_checked(node: DictConfig, key: str) -> Any:
    """``hydra.utils.instantiate`` with errors that name the key and the allowed parameters."""
    import hydra.utils
    from hydra.errors import InstantiationException

    try:
        return hydra.utils.instantiate(node)
    except (InstantiationException, TypeError, ValueError) as exc:
        target = node.get("_target_", "?")
        allowed = ""
        try:
            obj = hydra.utils.get_class(target)
            params = [p for p in inspect.signature(obj).parameters if p not in ("self", "params")]
            allowed = f" Allowed parameters of {target}: {', '.join(params)}"
        except Exception:
            pass
        cause = exc.__cause__ or exc
        raise ConfigError(f"{key}: {cause}.{allowed}") from exc
