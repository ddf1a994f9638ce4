"""Numbers summarised: the median and spread of repeated timings (``spread``) and the mean ±
standard deviation over seeds of the studies' tables (``mean_std``)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable

import torch


def spread(values: Iterable[float]) -> dict[str, float]:
    """Median, quartiles (inclusive method), min, max and count (NaN and 0 for no values)."""
    v = sorted(float(x) for x in values)
    if not v:
        return {"median": float("nan"), "q1": float("nan"), "q3": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    if len(v) >= 2:
        q1, _, q3 = statistics.quantiles(v, n=4, method="inclusive")
    else:
        q1 = q3 = v[0]
    return {"median": statistics.median(v), "q1": q1, "q3": q3, "min": v[0], "max": v[-1], "n": len(v)}


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value; NaN, NaN for none) — the "mean ± std
    over seeds" of the studies' tables."""
    v = [float(x) for x in values]
    if not v:
        return float("nan"), float("nan")
    t = torch.tensor(v, dtype=torch.float64)
    return t.mean().item(), (t.std().item() if len(v) > 1 else 0.0)
