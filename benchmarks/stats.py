"""Numbers summarised: the median and spread of repeated timings (``spread``), the mean ±
standard deviation over seeds of the studies' tables (``mean_std``), and differences with their
intervals: a paired bootstrap over test examples and seeds (``paired_bootstrap``), over seeds
(``bootstrap_mean``; Student's t for a handful of seeds: ``t_interval``), and their reading in
words (``verdict``)."""

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


def paired_bootstrap(correct_a, correct_b, *, n_boot: int = 10000, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """The accuracy difference a − b on one shared test set, with a paired bootstrap interval.

    ``correct_a`` and ``correct_b`` are 0/1 arrays of shape (seeds, examples) — or (examples,) for
    one seed — that score the same test examples in the same order (seed s of a paired with seed s
    of b). Each replicate draws the seeds with replacement and, independently, the test examples
    with replacement, and takes the same draws on both sides, so the interval covers the variation
    from both the training seeds and the finite test set (for one seed: the test set only). The
    interval is the percentile interval at ``level``. ``within_noise`` is 1.0 when it includes 0.
    """
    import numpy as np

    a = np.atleast_2d(np.asarray(correct_a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(correct_b, dtype=np.float64))
    if a.shape != b.shape:
        raise ValueError(f"paired_bootstrap needs the same seeds x test examples on both sides, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("paired_bootstrap needs at least one seed and one test example")
    d = a - b  # per seed, per example: -1, 0 or 1
    n_seeds, n_ex = d.shape
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    per_seed_rows = d
    for r in range(n_boot):
        rows = rng.integers(0, n_seeds, n_seeds) if n_seeds > 1 else np.zeros(1, dtype=int)
        cols = rng.integers(0, n_ex, n_ex)
        reps[r] = per_seed_rows[np.ix_(rows, cols)].mean()
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return {"diff": float(d.mean()), "lo": float(lo), "hi": float(hi), "level": level, "n_seeds": n_seeds,
            "n_examples": n_ex, "within_noise": float(lo <= 0 <= hi)}


def bootstrap_mean(values, *, n_boot: int = 10000, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Mean of per-seed values (e.g. a paired difference per seed) with a percentile bootstrap
    interval over the seeds. With few seeds the interval is narrow by construction (3 seeds have
    10 distinct resamples): say how many seeds it rests on beside it."""
    import numpy as np

    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        raise ValueError("bootstrap_mean needs at least one value")
    rng = np.random.default_rng(seed)
    reps = v[rng.integers(0, v.size, (n_boot, v.size))].mean(axis=1)
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return {"mean": float(v.mean()), "lo": float(lo), "hi": float(hi), "level": level, "n": int(v.size),
            "within_noise": float(lo <= 0 <= hi)}


def t_interval(values, *, level: float = 0.95) -> dict[str, float]:
    """Mean of per-seed values with Student's t interval, mean ± t(level, n − 1) · s / √n — for a
    handful of seeds, where a percentile bootstrap is the values' own range (3 seeds: the interval
    is [min, max], so "outside noise" would only mean "the same sign on every seed"). One value:
    no interval (``lo``, ``hi`` NaN, counted within noise); the keys are ``bootstrap_mean``'s, so
    ``verdict`` reads either."""
    import math

    from scipy.stats import t as student_t

    v = [float(x) for x in values]
    if not v:
        raise ValueError("t_interval needs at least one value")
    if len(v) == 1:
        return {"mean": v[0], "lo": math.nan, "hi": math.nan, "level": level, "n": 1, "within_noise": 1.0}
    mean, sd = mean_std(v)
    half = float(student_t.ppf((1 + level) / 2, len(v) - 1)) * sd / len(v) ** 0.5
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "level": level, "n": len(v),
            "within_noise": float(mean - half <= 0 <= mean + half)}


def verdict(interval: dict[str, float], unit: str = "points", scale: float = 100.0, digits: int = 2) -> str:
    """Plain words for a difference and its interval: "+0.32 points [−0.10, +0.74], within noise"
    when the interval includes 0, otherwise "gain" or "loss"."""
    centre = interval.get("diff", interval.get("mean"))
    lo, hi = interval["lo"] * scale, interval["hi"] * scale
    word = "within noise" if interval["lo"] <= 0 <= interval["hi"] else ("gain" if centre > 0 else "loss")
    return f"{centre * scale:+.{digits}f} {unit} [{lo:+.{digits}f}, {hi:+.{digits}f}], {word}"
