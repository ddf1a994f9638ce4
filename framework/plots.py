"""The plots of ``hgbench-report`` (matplotlib), from its runs and long metrics tables.

- ``val_loss_vs_time.png``: validation loss against wall-clock time (``elapsed_s`` at the steps
  where ``val_loss`` was logged): each seed thin, the mean over seeds (of loss and of time, per
  eval step) bold; one panel per dataset × model; log axes where values span decades. Where the
  report holds runs of the ``fixed`` method (no tuning) a second row shows what the
  hyper-optimisation did: each run's val loss minus that of the ``fixed`` run of the same family,
  dataset, model and seed at the same hyper-step (below 0: tuning helped), against the hyper-step;
- ``peak_memory.png``: peak memory per method, mean over seeds, min–max error bars, each seed as
  a dot — a bar only where the value is RESOLVED: mean ≥ 2 × noise, noise = max(the floor of the
  measurement, the spread max − min over seeds); the floor is 1 MB for CPU peak-RSS growth (page
  and allocator granularity; repeated runs differ by that much) and 0 for CUDA's exact
  ``max_memory_allocated``. Others are drawn as an outline marked "not resolved";
- ``hg_cosine.png``: cosine of each method's hypergradient to the reference's against the
  hyper-step (runs with accuracy checks, ``reference.every > 0``);
- ``hypergrad_time.png``: per-hyper-step ``hypergrad_time_s`` per method (box plot of all steps
  of all seeds).

Only FINISHED runs are drawn. One colour per series (method, and family where families differ)
in every plot. Figures are ``matplotlib.figure.Figure`` objects saved to PNG: no pyplot, so the
caller's matplotlib backend (a notebook's) is never switched.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

MEMORY_KIND = {"cpu_peak_rss_growth": "CPU: growth of peak RSS", "cuda_max_allocated": "CUDA: max allocated"}
# below this a measurement is noise (MB): peak-RSS growth moves by pages and allocator arenas
NOISE_FLOOR_MB = {"cpu_peak_rss_growth": 1.0, "cuda_max_allocated": 0.0}
UNKNOWN_FLOOR_MB = 1.0


def memory_resolved(values, kind) -> tuple[bool, float]:
    """(resolved, noise): noise = max(the kind's floor, max − min over seeds); resolved when the
    mean is at least twice that."""
    v = pd.Series(values, dtype=float).dropna()
    floor = NOISE_FLOOR_MB.get(kind, UNKNOWN_FLOOR_MB) if isinstance(kind, str) else UNKNOWN_FLOOR_MB
    noise = max(floor, float(v.max() - v.min()) if len(v) > 1 else 0.0)
    return bool(len(v)) and v.mean() >= 2 * noise and v.mean() > 0, noise


def spans_decades(values, factor: float = 10.0) -> bool:
    v = pd.Series(values, dtype=float).dropna()
    return bool(len(v)) and bool((v > 0).all()) and v.max() / v.min() > factor


def series_labels(runs: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """(series, tick): the series is one configuration — the method (+ family where families
    differ, + every parameter that differs within them: ``report.config_columns``); the tick
    label adds dataset / model where those differ too."""
    from hgbench.rowkey import config_columns

    series, tick = runs["method"].astype(str), runs["method"].astype(str)
    for c in ("family", "dataset", "model"):
        if runs[c].nunique(dropna=False) > 1:
            tick = tick + " · " + runs[c].astype(str)
            if c == "family":
                series = series + " · " + runs[c].astype(str)
    for c in config_columns(runs):
        part = f"{c[len('params.'):].split('.')[-1]}=" + runs[c].astype(object).where(runs[c].notna(), "—").astype(str)
        series, tick = series + " · " + part, tick + " · " + part
    return series, tick


def log_scale(ax, which: str, values, zero: bool = False) -> None:
    """Log scale with plain tick labels (0.3, 2, 100) instead of 3×10⁻¹; minor ticks 2 and 5 are
    labelled too where the data span less than two decades. ``zero``: the data include 0 (e.g.
    time 0), kept on a short linear stretch below the smallest positive value (symlog)."""
    v = pd.Series(values, dtype=float)
    if zero:
        lin = 10 ** math.floor(math.log10(v[v > 0].min()))  # a decade: 0, then lin, 10·lin, ...
        getattr(ax, f"set_{which}scale")("symlog", linthresh=lin, linscale=0.5)
        getattr(ax, f"set_{which}lim")(0, None)
    else:
        getattr(ax, f"set_{which}scale")("log")
    axis = getattr(ax, f"{which}axis")
    few = v[v > 0].max() / v[v > 0].min() < 100
    axis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda x, _: f"{x:g}" if few and f"{x:.0e}"[0] in "25" else ""))


def _categories(ax, ticks: list[str]) -> None:
    """One horizontal row per category, the first at the top."""
    ax.set_yticks(range(len(ticks)), ticks, fontsize=9)
    ax.set_ylim(len(ticks) - 0.4, -0.6)
    ax.grid(axis="x", alpha=0.35)
    ax.grid(axis="x", alpha=0.12, which="minor")


def _figure(n: int):
    return _subplots(figsize=(7.5, max(2.8, 1.6 + 0.45 * n)))


def _subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **kwargs):
    """``pyplot.subplots`` without pyplot: a figure of its own, not registered with any backend."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_val_loss_vs_time(runs: pd.DataFrame, metrics: pd.DataFrame, colors: dict, path: Path) -> Path | None:
    m = metrics[metrics["key"].isin(["val_loss", "elapsed_s"])]
    if m.empty:
        return None
    wide = m.pivot_table(index=["run_id", "step"], columns="key", values="value", aggfunc="last").reset_index()
    if not {"val_loss", "elapsed_s"} <= set(wide):
        return None
    wide = wide.dropna(subset=["val_loss", "elapsed_s"]).merge(runs[["run_id", "series", "dataset", "model"]], on="run_id")
    if wide.empty:
        return None
    panels = list(wide.groupby(["dataset", "model"], sort=True))
    rel = relative_to_fixed(runs, wide)
    rows = 2 if rel is not None else 1
    fig, axes = _subplots(rows, len(panels), figsize=(7.5 * len(panels), 4.8 * rows), squeeze=False)
    if rel is not None:
        for ax, (dataset, model) in zip(axes[1], [k for k, _ in panels], strict=True):
            plot_relative(ax, rel[(rel["dataset"] == dataset) & (rel["model"] == model)], colors, f"{dataset} · {model}")
    for ax, ((dataset, model), d) in zip(axes[0], panels, strict=True):
        ends = []  # per series: its mean run time
        for series, s in d.groupby("series", sort=True):
            for _, one in s.groupby("run_id"):  # each seed at its own times, thin
                ax.plot(one["elapsed_s"], one["val_loss"], lw=0.8, alpha=0.45, color=colors[series])
            g = s.groupby("step").agg(t=("elapsed_s", "mean"), v=("val_loss", "mean"))
            n = s["run_id"].nunique()
            what = "best trial" if series.startswith("optuna(") else f"{n} seed{'s' if n != 1 else ''}"
            ax.plot(g["t"], g["v"], marker="o" if len(g) <= 25 else None, ms=3.5, lw=2, color=colors[series],
                    label=f"{series} ({what})")
            ends.append(s.groupby("run_id")["elapsed_s"].max().mean())
        # an Optuna sweep costs all its trials: mark its best loss at the sweep's total time too
        xs = [d["elapsed_s"]]
        here = runs[runs["optuna_total_s"].notna() & (runs["dataset"] == dataset) & (runs["model"] == model)]
        for series, t in here.groupby("series"):
            ax.scatter(t["optuna_total_s"], t["val_loss"], marker="*", s=150, color=colors[series], edgecolor="k", zorder=5,
                       label=f"{series}: best loss at the\nwhole sweep's time ({int(t['optuna_trials'].max())} trials)")
            xs.append(t["optuna_total_s"])
        ax.set(title=f"{dataset} · {model}", xlabel="wall-clock time since the run started (s)", ylabel="validation loss")
        if spans_decades(d["val_loss"]):
            log_scale(ax, "y", d["val_loss"])
        times = pd.concat(xs)
        if spans_decades(ends) and spans_decades(times[times > 0], 100):  # methods' run times differ by decades
            log_scale(ax, "x", times, zero=bool((times <= 0).any()))
            ax.set_xlabel("wall-clock time since the run started (s, log scale)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="bold: mean over seeds at each eval step\nthin: each seed", title_fontsize=8,
                  loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, alignment="left")
    fig.tight_layout()
    return _save(fig, path)


def relative_to_fixed(runs: pd.DataFrame, wide: pd.DataFrame) -> pd.DataFrame | None:
    """Each non-``fixed`` run's val loss minus the val loss of the ``fixed`` run (no tuning) of the
    same family, dataset, model and seed at the same hyper-step; None without such pairs."""
    need = {"method", "family", "seed"}
    if not need <= set(runs) or not runs["method"].eq("fixed").any():
        return None
    keys = ["family", "dataset", "model", "seed"]
    d = wide.merge(runs[["run_id", "method", "family", "seed"]], on="run_id")
    for c in keys:
        d[c] = d[c].astype(str)
    base = d[d["method"] == "fixed"].sort_values("run_id").drop_duplicates([*keys, "step"], keep="last")
    base = base[[*keys, "step", "val_loss"]].rename(columns={"val_loss": "fixed_val_loss"})
    out = d[d["method"] != "fixed"].merge(base, on=[*keys, "step"])
    if out.empty:
        return None
    return out.assign(delta=out["val_loss"] - out["fixed_val_loss"])


def plot_relative(ax, rel: pd.DataFrame, colors: dict, title: str) -> None:
    for series, s in rel.groupby("series", sort=True):
        for _, one in s.groupby("run_id"):
            ax.plot(one["step"], one["delta"], lw=0.8, alpha=0.45, color=colors[series])
        g = s.groupby("step")["delta"].mean()
        n = s["run_id"].nunique()
        ax.plot(g.index, g.values, lw=2, marker="o" if len(g) <= 25 else None, ms=3.5, color=colors[series],
                label=f"{series} ({n} seed{'s' if n != 1 else ''})")
    ax.axhline(0.0, color="k", lw=0.8, ls=":")
    ax.set(title=f"{title}: effect of the hyper-optimisation", xlabel="hyper-step",
           ylabel="val loss − val loss of `fixed`\n(same seed and step; < 0: tuning helped)")
    ax.grid(alpha=0.3)
    if len(rel):
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def plot_peak_memory(runs: pd.DataFrame, colors: dict, path: Path) -> Path | None:
    d = runs.dropna(subset=["peak_memory_mb"]) if "peak_memory_mb" in runs else runs.iloc[:0]
    if d.empty:
        return None
    groups = list(d.groupby("tick", sort=True))
    fig, ax = _figure(len(groups))
    top = d["peak_memory_mb"].max()
    unresolved = 0
    for i, (_, g) in enumerate(groups):
        v = g["peak_memory_mb"]
        mean = v.mean()
        kind = g["memory_kind"].dropna().iloc[0] if "memory_kind" in g and g["memory_kind"].notna().any() else None
        ok, noise = memory_resolved(v, kind)
        err = [[mean - v.min()], [v.max() - mean]] if len(v) > 1 else None
        if ok:
            ax.barh(i, mean, xerr=err, color=colors[g["series"].iloc[0]], alpha=0.75, capsize=4, edgecolor="k", lw=0.6, height=0.6)
            spread = f" (min–max {v.min():.3g}–{v.max():.3g})" if len(v) > 1 else ""
            label = f"{mean:.3g} MB{spread}"
        else:
            unresolved += 1
            ax.barh(i, max(mean, 0), xerr=err, color="none", edgecolor="0.5", hatch="//", lw=0.6, height=0.6, capsize=4,
                    error_kw={"ecolor": "0.5"})
            label = f"not resolved: {mean:.2g} MB < 2 × noise {noise:.2g} MB"
        ax.scatter(v, [i] * len(v), color="k" if ok else "0.5", s=12, zorder=3)
        ax.annotate(label, (max(v.max(), mean, 0), i), xytext=(6, 0), textcoords="offset points",
                    ha="left", va="center", fontsize=8, color="k" if ok else "0.4")
    ax.set_xlim(0, 1.6 * top if top > 0 else 1)
    kinds = sorted({MEMORY_KIND.get(k, str(k)) for k in d["memory_kind"].dropna()}) if "memory_kind" in d else []
    note = "\nhatched: not resolved (mean < 2 × max(noise floor, spread over seeds); CPU floor 1 MB)" if unresolved else ""
    ax.set(xlabel="peak memory (MB)" + (f" — {'; '.join(kinds)}" if kinds else ""),
           title="peak memory per run: mean over seeds (error bars: min–max; dots: seeds)" + note)
    _categories(ax, [t for t, _ in groups])
    fig.tight_layout()
    return _save(fig, path)


def plot_hypergrad_time(runs: pd.DataFrame, metrics: pd.DataFrame, colors: dict, path: Path) -> Path | None:
    d = metrics[metrics["key"] == "hypergrad_time_s"].merge(runs[["run_id", "series", "tick"]], on="run_id")
    if d.empty:
        return None
    groups = list(d.groupby("tick", sort=True))
    fig, ax = _figure(len(groups))
    box = ax.boxplot([g["value"] * 1000 for _, g in groups], positions=range(len(groups)), widths=0.6, orientation="horizontal",
                     patch_artist=True, flierprops={"ms": 3, "alpha": 0.5}, medianprops={"color": "k", "lw": 1.5})
    for patch, (_, g) in zip(box["boxes"], groups, strict=True):
        patch.set(facecolor=colors[g["series"].iloc[0]], alpha=0.75)
    ax.set(xlabel="hypergradient time per hyper-step (ms)",
           title="hypergradient time, all hyper-steps of all seeds\n(box: quartiles; line: median; whiskers: 1.5 IQR)")
    if spans_decades(d["value"]):
        log_scale(ax, "x", d["value"] * 1000)
    _categories(ax, [t for t, _ in groups])
    fig.tight_layout()
    return _save(fig, path)


def plot_hg_cosine(runs: pd.DataFrame, metrics: pd.DataFrame, colors: dict, path: Path) -> Path | None:
    """Cosine between each method's hypergradient and the reference's, against the hyper-step
    (runs with ``reference.every > 0``): thin lines = seeds, thick = their mean."""
    d = metrics[metrics["key"] == "hg_cosine"].merge(runs[["run_id", "series"]], on="run_id")
    if d.empty:
        return None
    fig, ax = _subplots(figsize=(7, 4.2))
    for series, s in d.groupby("series", sort=True):
        for _, one in s.groupby("run_id"):
            ax.plot(one["step"], one["value"], lw=0.8, alpha=0.4, color=colors[series])
        mean = s.groupby("step")["value"].mean()
        ax.plot(mean.index, mean.values, lw=2, color=colors[series], label=series, marker="o", ms=3)
    ax.axhline(1.0, color="k", lw=0.6, ls=":")
    ax.set(xlabel="hyper-step", ylabel="cosine(hypergradient, reference)", ylim=(min(-0.05, d["value"].min() - 0.05), 1.05),
           title="hypergradient accuracy: cosine to the reference at each check\n(thin: seeds; thick: mean)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, path)


def make_plots(runs: pd.DataFrame, metrics: pd.DataFrame, out: Path) -> list[Path]:
    """The PNGs for the FINISHED runs of the report (``runs["in_report"]``); returns the paths written."""
    runs = runs.copy()
    runs["series"], runs["tick"] = series_labels(runs)
    total = runs[runs["sweeper"].eq("optuna").fillna(False).astype(bool)].groupby("sweep_id")["runtime_s"].sum() \
        if "runtime_s" in runs else pd.Series(dtype=float)
    runs["optuna_total_s"] = runs["sweep_id"].map(total).where(runs["sweeper"].eq("optuna").fillna(False).astype(bool))
    done = runs[runs["in_report"] & (runs["status"] == "finished")]
    if done.empty:
        return []
    colors = {s: f"C{i % 10}" for i, s in enumerate(sorted(done["series"].unique()))}
    m = metrics[metrics["run_id"].isin(done["run_id"])]
    written = [plot_val_loss_vs_time(done, m, colors, out / "val_loss_vs_time.png"),
               plot_peak_memory(done, colors, out / "peak_memory.png"),
               plot_hypergrad_time(done, m, colors, out / "hypergrad_time.png"),
               plot_hg_cosine(done, m, colors, out / "hg_cosine.png")]
    return [p for p in written if p is not None]
