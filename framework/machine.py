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


# a grid launched on this machine measures the load once, at its start, for all its jobs: a job
# that measured it itself would count the grid's own earlier (sequential) or sibling (joblib) jobs
GRID_LOAD_ENV = "HGBENCH_GRID_LOAD"


def free_cores(load: float, cores: int) -> int:
    """The cores other work leaves free: ``cores - load``, a core counting when at least half of it
    is idle (rounded half up), at least 1; all of them where the OS reports no load."""
    if not math.isfinite(load):
        return cores
    return max(1, min(cores, int(cores - load + 0.5)))


def auto_threads(load: float, cores: int, jobs: int = 1, ceiling: int | None = None, when: str = "") -> tuple[int, str]:
    """``num_threads=auto``: the torch threads for one of ``jobs`` jobs running at once — the free
    cores shared out between them (at least 1 each), at most ``ceiling`` (torch's own default, so
    a quiet machine runs as with ``num_threads=null``) — and one line saying why."""
    free = free_cores(load, cores)
    n = max(1, free // max(1, jobs))
    if ceiling:
        n = min(n, ceiling)
    shown = f"{load:.2f}" if math.isfinite(load) else "unknown"
    share = f", shared by {jobs} jobs at once" if jobs > 1 else ""
    return n, f"{n} torch thread{'s' if n != 1 else ''} (load average {shown}{when} on {cores} cores: {free} free{share})"


def oversubscription_warning(load: float, threads: int, cores: int | None) -> str | None:
    """A warning when other work already keeps every core busy and this run adds several torch
    threads: on contended cores they crawl (a hyper-step measured 16x slower at a load of 5 on 2
    cores), and run times stop meaning much."""
    cores = cores or 1
    if math.isfinite(load) and load >= cores and threads > 1:
        return (f"hgbench: warning: load average {load:.1f} on {cores} cores and this run uses {threads} torch threads: "
                f"timings will be slow and noisy; set num_threads=1 or auto (or run fewer jobs at once)")
    return None


def warn_if_oversubscribed(load: float) -> None:
    """Print ``oversubscription_warning`` for this process's torch threads and cores, if any, to stderr."""
    warning = oversubscription_warning(load, torch.get_num_threads(), os.cpu_count())
    if warning:
        print(warning, file=sys.stderr, flush=True)
