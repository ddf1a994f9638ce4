"""Timing, by the rules every section follows:

- a warm-up call of each timed function is made first and never counted;
- on CUDA, ``torch.cuda.synchronize`` runs before every timer read;
- a figure is the MEDIAN over ``reps`` repetitions, with its spread (quartiles and min–max:
  ``stats.spread``);
- a ratio is taken per repetition between two functions timed back to back in the same process
  (their order alternating from one repetition to the next), and then summarised, so slow
  phases of a shared machine hit both sides of the ratio alike (``compare``).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

import torch

from hgbench.benchmarks.stats import spread

# seconds one timing should last (several back-to-back calls of a fast function); lower with --quick
TIMING_TARGET_S = 0.03
QUICK_TIMING_TARGET_S = 0.005


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


def timing_target(quick: bool) -> float:
    """Seconds one timing should last: ``QUICK_TIMING_TARGET_S`` in a --quick smoke run."""
    return QUICK_TIMING_TARGET_S if quick else TIMING_TARGET_S


def calls_for(seconds: float, target: float | None = None) -> int:
    """How many back-to-back calls make one timing last about ``target`` seconds."""
    target = TIMING_TARGET_S if target is None else target
    return max(1, min(50, math.ceil(target / max(seconds, 1e-6))))


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
    return {"ratio": spread(ratios), "ref_s": spread(t_refs), "fn_s": spread(t_fns), "calls": n_fn}


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
