"""Shared pieces of the benchmark: machine facts, side-by-side timing, fresh-subprocess workers,
CSV / Markdown output.

Timing rules (every section follows them):

- a warm-up call of each timed function is made first and never counted;
- on CUDA, ``torch.cuda.synchronize`` runs before every timer read;
- a figure is the MEDIAN over ``reps`` repetitions, with its spread (quartiles and min–max);
- a ratio is taken per repetition between two functions timed back to back in the same process
  (their order alternating from one repetition to the next), and then summarised, so slow
  phases of a shared machine hit both sides of the ratio alike.
"""

from __future__ import annotations

import contextlib

import csv
import datetime as _dt
import functools
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from hgbench.provenance import git_commit
from hgbench.machine import resolve_device  # noqa: F401 - the sections call common.resolve_device

ROOT = Path(__file__).resolve().parents[1]

# the 1M-parameter MLP of the cost section (784-1024-192-10 = 1,002,570 weights) and its quick twin
MLP_1M = "[1024,192]"
MLP_QUICK = "[32]"
CNN_QUICK = ["model.channels=[2,4]", "model.hidden=[16]"]


# --- the machine ----------------------------------------------------------------------------------
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


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
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


# --- problems -------------------------------------------------------------------------------------
def experiment(model: str, device: torch.device | str, quick: bool, *, hypergrad: str = "neumann",
               extra: Sequence[str] = ()):
    """An ``Experiment`` (the real code path) for the benchmark's problems: per-weight decay on
    mnist_5k with the 1M-parameter MLP (``mlp``), the LeNet CNN on 1×28×28 images (``cnn``) or
    any MLP (``mlp:[h1,h2]``); batches of 128; ``quick`` shrinks the networks."""
    from hgbench import build_experiment

    ov = [f"device={device}", "train_batch_size=128", "val_batch_size=128", "warmup=false"]
    if model == "mlp":
        groups = {"model": "mlp"}
        ov.append(f"model.hidden={MLP_QUICK if quick else MLP_1M}")
    elif model.startswith("mlp:"):
        groups = {"model": "mlp"}
        ov.append(f"model.hidden={model[4:]}")
    elif model == "cnn":
        groups = {"model": "cnn"}
        ov += ["dataset.image=true", *(CNN_QUICK if quick else [])]
    else:
        raise ValueError(f"unknown benchmark model {model!r}")
    return build_experiment(overrides=[*ov, *extra], dataset="mnist_5k", hyperparam="weight_decay_per_param",
                            hypergrad=hypergrad, **groups)


def method(name: str, **params: Any):
    from hgbench.config import build_plugin

    return build_plugin("hypergrad", {"name": name, **params})


def fixed_batches(exp):
    """One training and one validation minibatch (fixed, so every timing sees the same work)."""
    return exp.train_sampler.next(), exp.val_sampler.next()


# --- timing ---------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, calls: int = 1) -> float:
    """Seconds per call of ``fn``, averaged over ``calls`` back-to-back calls."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / calls


# seconds one timing should last (several back-to-back calls of a fast function); lower with --quick
TIMING_TARGET_S = 0.03
QUICK_TIMING_TARGET_S = 0.005


def timing_target(quick: bool) -> float:
    """Seconds one timing should last: ``QUICK_TIMING_TARGET_S`` in a --quick smoke run."""
    return QUICK_TIMING_TARGET_S if quick else TIMING_TARGET_S


def calls_for(seconds: float, target: float | None = None) -> int:
    """How many back-to-back calls make one timing last about ``target`` seconds."""
    target = TIMING_TARGET_S if target is None else target
    return max(1, min(50, math.ceil(target / max(seconds, 1e-6))))


@contextlib.contextmanager
def one_thread(enabled: bool = True):
    """torch on one thread inside (the studies: sized for shared cores, and the same numbers whatever
    the core count), the caller's thread count restored after."""
    threads = torch.get_num_threads()
    if enabled:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value; NaN, NaN for none) — the "mean ± std
    over seeds" of the studies' tables."""
    v = [float(x) for x in values]
    if not v:
        return float("nan"), float("nan")
    t = torch.tensor(v, dtype=torch.float64)
    return t.mean().item(), (t.std().item() if len(v) > 1 else 0.0)


def stats(values: Iterable[float]) -> dict[str, float]:
    v = sorted(float(x) for x in values)
    if not v:
        return {"median": float("nan"), "q1": float("nan"), "q3": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    if len(v) >= 2:
        q1, _, q3 = statistics.quantiles(v, n=4, method="inclusive")
    else:
        q1 = q3 = v[0]
    return {"median": statistics.median(v), "q1": q1, "q3": q3, "min": v[0], "max": v[-1], "n": len(v)}


def compare(ref: Callable[[], Any], fn: Callable[[], Any], reps: int, device: torch.device,
            target: float | None = None) -> dict[str, Any]:
    """Time ``fn`` against ``ref`` side by side: a warm-up of each (not counted), then ``reps``
    repetitions of [ref, fn] (order alternating), each timing long enough to be readable.
    Returns the ratio fn/ref per repetition summarised, and both times (seconds)."""
    t_ref0 = timed(ref, device)  # warm-ups, also used to size the timings
    t_fn0 = timed(fn, device)
    n_ref, n_fn = calls_for(t_ref0, target), calls_for(t_fn0, target)
    ratios, t_refs, t_fns = [], [], []
    for r in range(reps):
        if r % 2 == 0:
            a = timed(ref, device, n_ref)
            b = timed(fn, device, n_fn)
        else:
            b = timed(fn, device, n_fn)
            a = timed(ref, device, n_ref)
        ratios.append(b / a)
        t_refs.append(a)
        t_fns.append(b)
    return {"ratio": stats(ratios), "ref_s": stats(t_refs), "fn_s": stats(t_fns), "calls": n_fn}


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b|: the largest deviation relative to the reference's scale."""
    a, b = a.detach().double().flatten(), b.detach().double().flatten().to(a.device)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# --- output ---------------------------------------------------------------------------------------
def ratio_cols(prefix: str, s: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_median": s["median"], f"{prefix}_q1": s["q1"], f"{prefix}_q3": s["q3"],
            f"{prefix}_min": s["min"], f"{prefix}_max": s["max"]}


META_COLUMNS = ("device", "gpu", "cpu", "cores", "threads", "torch", "python", "date", "commit", "load1")


def write_csv(out: Path, section: str, rows: list[dict[str, Any]], device: torch.device | str = "cpu") -> Path:
    """``<out>/<section>.csv``: one row per measurement, the machine facts on every row."""
    out.mkdir(parents=True, exist_ok=True)
    meta = machine_info(device)
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    cols += [c for c in META_COLUMNS if c not in cols]
    path = out / f"{section}.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({**{c: meta.get(c, "") for c in META_COLUMNS}, **{k: _fmt(v) for k, v in r.items()}})
    return path


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return v


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV written by ``write_csv``, numbers and booleans parsed back (for re-plotting)."""
    def parse(v: str) -> Any:
        if v in ("True", "False"):
            return v == "True"
        for t in (int, float):
            try:
                return t(v)
            except ValueError:
                pass
        return v

    with open(path, newline="") as f:
        return [{k: parse(v) for k, v in r.items()} for r in csv.DictReader(f)]


def write_fragment(out: Path, section: str, text: str, headline: list[list[Any]] | None = None,
                   device: torch.device | str = "cpu", quick: bool = False) -> None:
    """``<out>/fragments/<section>.md`` (this section's part of the README, assembled by the CLI)
    and ``<section>.json`` (its rows of the headline table, the machine it ran on, and whether it
    was a --quick smoke run). The CLI adds the load average at the section's start
    (``add_load_at_start``)."""
    d = out / "fragments"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{section}.md").write_text(text.rstrip() + "\n")
    _write_json(d / f"{section}.json", {"headline": headline or [], "machine": machine_info(device), "quick": quick})


def add_load_at_start(out: Path, section: str, load1: float) -> None:
    """Record in ``<out>/fragments/<section>.json`` the load average before the section ran."""
    path = out / "fragments" / f"{section}.json"
    d = json.loads(path.read_text())
    d["machine"]["load1_start"] = round(load1, 2)
    _write_json(path, d)


def _write_json(path: Path, d: dict[str, Any]) -> None:
    path.write_text(json.dumps(d, indent=1, default=str))


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def fr(s: dict[str, float], digits: int = 2) -> str:
    """'8.34 (IQR 8.10–8.61)'."""
    if not s or s.get("n", 0) == 0 or math.isnan(s["median"]):
        return "—"
    return f"{s['median']:.{digits}f} ({s['q1']:.{digits}f}–{s['q3']:.{digits}f})"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def command(section: str, quick: bool, extra: str = "") -> str:
    return f"hgbench-bench {section}{' --quick' if quick else ''} --out results/perf{extra}"


# --- fresh subprocesses ---------------------------------------------------------------------------
def _status_kb(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` field (kB) of another process, 0 when unreadable
    (``hgbench.memory._status_kb`` reads this process's own)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def mem_available_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def run_worker(func: str, spec: dict[str, Any], timeout: float = 600, mem_cap_gib: float | None = None,
               threads: int | None = None, exact_rss: bool = False) -> dict[str, Any]:
    """Run ``benchmarks.<func>`` (``module:function``) on ``spec`` in a FRESH Python process
    and return the dict it returns, plus ``wall_s``, the child's ``peak_rss_mb`` (its VmHWM) and
    ``status`` (``ok`` | ``error`` | ``memory_cap`` | ``timeout``).

    With ``mem_cap_gib`` the child gets ``RLIMIT_AS`` = cap + 4 GiB of address-space slack (so a
    too-large allocation fails inside torch with an error instead of swapping), and the parent
    kills it as soon as its resident set passes the cap. With ``exact_rss`` (memory measurements
    only, never timings) glibc's ``MALLOC_MMAP_THRESHOLD_`` is fixed at 128 KiB so freed tensors go
    back to the kernel at once and RSS follows live memory — at the price of a page fault per new
    tensor, which makes a training loop several times slower.
    """
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if exact_rss:
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    else:
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if threads:
        env["HGBENCH_BENCH_THREADS"] = str(threads)
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as res:
        res_path = res.name

    def limit():  # in the child, before exec
        os.setsid()
        if mem_cap_gib:
            import resource

            cap = int((mem_cap_gib + 4) * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "hgbench.benchmarks.worker", func, json.dumps(spec), res_path],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=limit)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    status, peak_kb = None, 0
    while proc.poll() is None:
        peak_kb = max(peak_kb, _status_kb(proc.pid, "VmHWM"), _status_kb(proc.pid, "VmRSS"))
        if mem_cap_gib and peak_kb > mem_cap_gib * 2**20:
            status = "memory_cap"
        elif time.perf_counter() - t0 > timeout:
            status = "timeout"
        if status:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.wait()
            break
        time.sleep(0.05)
    reader.join(timeout=5)
    wall = time.perf_counter() - t0
    result: dict[str, Any] = {}
    try:
        text = Path(res_path).read_text()
        result = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        result = {}
    finally:
        try:
            os.unlink(res_path)
        except OSError:
            pass
    if status is None:
        status = result.pop("status", None) or ("ok" if proc.returncode == 0 else "error")
    result.setdefault("error", "" if status == "ok" else "".join(output)[-2000:])
    return {**result, "status": status, "wall_s": wall, "child_peak_rss_mb": peak_kb / 1024, "returncode": proc.returncode}
