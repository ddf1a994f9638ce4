"""The machine a run is on: the device it asks for, and how busy the CPUs already are."""

from __future__ import annotations

import math
import os
import sys

import torch

from hgbench.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"device={name!r}: expected auto, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available here; use device=auto or cpu")
    return torch.device(name)


def load_average() -> float:
    """The 1-minute load average (NaN where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def oversubscription_warning(load: float, threads: int, cores: int | None) -> str | None:
    """A warning when other work already keeps every core busy and this run adds several torch
    threads: on contended cores they crawl (a hyper-step measured 16x slower at a load of 5 on 2
    cores), and run times stop meaning much."""
    cores = cores or 1
    if math.isfinite(load) and load >= cores and threads > 1:
        return (f"hgbench: warning: load average {load:.1f} on {cores} cores and this run uses {threads} torch threads: "
                f"timings will be slow and noisy; set num_threads=1 (or run fewer jobs at once)")
    return None


def warn_if_oversubscribed(load: float) -> None:
    """Print ``oversubscription_warning`` for this process's torch threads and cores, if any, to stderr."""
    warning = oversubscription_warning(load, torch.get_num_threads(), os.cpu_count())
    if warning:
        print(warning, file=sys.stderr, flush=True)
