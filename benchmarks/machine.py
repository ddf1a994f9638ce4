"""The machine a benchmark runs on: what every CSV row and README carry (CPU, cores, torch and
its threads, date, commit, load), the load average the CLI waits on, and the memory available
(``scale`` sizes its problems by it)."""

from __future__ import annotations

import datetime as _dt
import functools
import os
import platform
from typing import Any

import torch

from hgbench.machine import load_average  # noqa: F401 - the CLI and studies read machine.load_average
from hgbench.provenance import git_commit


def _cpu_model() -> str:
    """'model name' from /proc/cpuinfo, with the family/model numbers when the name is generic."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if ":" in line:
                    k, v = (x.strip() for x in line.split(":", 1))
                    fields.setdefault(k, v)
                if not line.strip() and fields:
                    break
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields:
        name += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    if "hypervisor" in fields.get("flags", "").split():
        name += ", virtualised"
    return name


def mem_available_gib() -> float:
    """``MemAvailable`` of /proc/meminfo in GiB (NaN where it cannot be read)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def _commit() -> str:
    """The checkout's commit, short, with ``+dirty`` when tracked files have uncommitted changes."""
    commit, dirty = git_commit()
    return (commit if commit == "unknown" else commit[:12]) + ("+dirty" if dirty else "")


@functools.lru_cache(maxsize=1)
def _static_machine() -> tuple[tuple[str, Any], ...]:
    """The facts that do not change during one benchmark process (computed once; the date is
    when the first of its sections started)."""
    return (
        ("cpu", _cpu_model()),
        ("cores", os.cpu_count()),
        ("torch", torch.__version__),
        ("threads", torch.get_num_threads()),
        ("date", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")),
        ("commit", _commit()),
        ("python", platform.python_version()),
    )


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """What every CSV row and the README carry: CPU, cores, torch, threads, date, commit, load."""
    dev = torch.device(device)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else ""
    return {**dict(_static_machine()), "device": str(dev), "gpu": gpu, "load1": round(load_average(), 2)}
