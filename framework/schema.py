"""The types of the top-level config, checked before anything runs: a missing or unknown key, a
value of the wrong type or out of range is one ``ConfigError`` naming the key, the value and what
is allowed. The values themselves — every default — live in ``conf/config.yaml`` alone: this
schema states types and bounds, never a value. Plugin groups are checked by their own dataclasses
(``hgbench.config.build_plugin``, where a plugin's defaults live); the optimiser groups by their
``_target_``'s signature.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_type_hints

from omegaconf import DictConfig

from hgbench.config import matches_type, to_dict, type_name
from hgbench.errors import ConfigError, ConfigTypeError

GROUPS = ("dataset", "model", "hyperparam", "hypergrad", "inner_optimizer", "outer_optimizer")


def at_least(low: float) -> Any:
    """A schema field whose value (when not null) must be >= ``low``."""
    return field(metadata={"min": low})


@dataclass
class MlflowSchema:
    enabled: bool
    tracking_uri: str | None
    experiment: str
    run_name: str | None
    flush_every_s: float = at_least(0)


@dataclass
class CheckpointSchema:
    every: int = at_least(0)
    dir: str | None = field()
    keep: bool = field()
    log_artifact: bool = field()


@dataclass
class ReferenceSchema:
    every: int = at_least(0)
    lanczos_steps: int = at_least(0)
    method: dict = field()  # a hypergrad plugin's name and parameters (conf/reference/)
    retrain: dict | None = field()  # the retraining check's settings (conf/reference/retrain.yaml), null: off


@dataclass
class RunSchema:
    seed: int
    device: str
    dtype: Literal["float32", "float64"]
    hyper_steps: int = at_least(1)
    inner_steps: int = at_least(1)
    warmup_steps: int = at_least(0)
    warmup: bool = field()
    train_batch_size: int | None = at_least(1)
    val_batch_size: int | None = at_least(1)
    eval_every: int | None = at_least(1)
    eval_batch_size: int = at_least(1)
    progress: bool | Literal["auto"] = field()
    num_threads: int | Literal["auto"] | None = at_least(1)
    deterministic: bool = field()
    compile: bool = field()
    on_nonfinite: Literal["fail", "skip"] = field()
    max_nonfinite_skips: int = at_least(0)
    hypergrad_clip: float | None = at_least(0)
    reference: ReferenceSchema = field()
    resume: bool | Literal["auto"] = field()
    resume_stale_after_s: float = at_least(0)
    checkpoint: CheckpointSchema = field()
    mlflow: MlflowSchema = field()


def _check_node(values: dict[str, Any], schema: type, prefix: str, ranges: bool = True) -> None:
    hints = get_type_hints(schema)
    names = {f.name for f in fields(schema)}
    allowed_extra = GROUPS if schema is RunSchema else ()
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key in allowed_extra:
            continue
        if key not in names:
            raise ConfigTypeError(f"{full}={value!r}: unknown config key. Allowed here: {', '.join(sorted(names | set(allowed_extra)))}")
    for f in fields(schema):
        full = f"{prefix}{f.name}"
        if f.name not in values:
            raise ConfigTypeError(f"{full}: missing (conf/config.yaml sets every top-level key; is this config composed from it?)")
        value, tp = values[f.name], hints[f.name]
        if isinstance(tp, type) and hasattr(tp, "__dataclass_fields__"):
            if not isinstance(value, dict):
                raise ConfigTypeError(f"{full}={value!r}: expected a group of keys ({', '.join(g.name for g in fields(tp))})")
            _check_node(value, tp, full + ".", ranges)
            continue
        if not matches_type(value, tp):
            raise ConfigTypeError(f"{full}={value!r}: expected {type_name(tp)}")
        low = f.metadata.get("min")
        if ranges and low is not None and isinstance(value, (int, float)) and not isinstance(value, bool) and value < low:
            raise ConfigError(f"{full}={value!r}: must be >= {low}")


def check_run_config(cfg: DictConfig | dict, ranges: bool = True) -> None:
    """Raise ConfigError for the first missing or unknown key, wrong type (both ConfigTypeError)
    or out-of-range value (``ranges=False``: keys and types only)."""
    values = to_dict(cfg)
    for group in GROUPS:
        if not isinstance(values.get(group), dict):
            raise ConfigTypeError(f"{group}: missing or not a group; pick one with {group}=<name>")
    _check_node(values, RunSchema, "", ranges)


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
