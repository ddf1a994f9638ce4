"""Section ``memory``: peak memory of one hypergradient vs the number of iterations i.

neumann, cg and unroll (steps = i) at i = 1, 5, 10, 20, 50, 100 on the 1M-parameter MLP
(per-weight decay, batch 128), each point in a FRESH subprocess: the process builds the
problem, runs 5 plain training steps (so the memory a training step needs is already held),
then measures one hypergradient with ``hgbench.memory.PeakMemory`` — on the CPU the growth
of the peak resident set size (the kernel's high-water mark reset just before), on CUDA
``torch.cuda.max_memory_allocated``. Expected: neumann and cg flat (within 10 % from i = 1 to
100), unroll linear in i; the slope of a least-squares line is reported for each.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hgbench.benchmarks import output, plotting, problems, worker
from hgbench.benchmarks.stats import spread
from hgbench.machine import resolve_device

ITERATIONS = (1, 5, 10, 20, 50, 100)
QUICK_ITERATIONS = (1, 4)
METHODS = ("neumann", "cg", "unroll")


def point(spec: dict) -> dict:
    """In the fresh process: the peak memory of one hypergradient (MB) for each of
    ``spec["points"]`` ([method, i] pairs; one pair per process except in --quick mode)."""
    from hgbench.memory import PeakMemory

    dev = resolve_device(spec["device"])
    exp = problems.experiment(spec["model"], dev, spec["quick"])
    exp.train_inner(5)
    tb, vb = problems.fixed_batches(exp)
    peaks, kind = [], ""
    for meth, i in spec["points"]:
        m = problems.method("unroll", steps=i) if meth == "unroll" else problems.method(meth, iterations=i)
        mem = PeakMemory(dev)
        mem.start()
        hg = exp.hypergradient_flat(m, tb, vb)
        peaks.append(mem.peak_mb())
        kind = mem.kind
        if not bool(torch.isfinite(hg).all()):
            raise RuntimeError(f"{meth} i={i}: the hypergradient is not finite")
        del hg
    return {"peaks_mb": peaks, "memory_kind": kind,
            "num_weights": exp.problem.num_weights, "num_hyperparams": exp.problem.num_hyperparams}


def fit(xs, ys):
    """Least squares y = a + b·x; returns (a, b, R²)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys, strict=True))
    return a, b, (1 - ss_res / ss_tot) if ss_tot else 1.0


def run(out: Path, quick: bool = False, device: str = "auto", reps: int | None = None) -> list[dict]:
    dev = resolve_device(device)
    reps = reps or (1 if quick else 2)
    iters = QUICK_ITERATIONS if quick else ITERATIONS
    samples: dict[tuple[str, int], list[float]] = {}
    info: dict = {}
    points = [(meth, i) for meth in METHODS for i in iters]
    # one fresh process per point; --quick measures all points in one process (a smoke test only)
    batches = [points] if quick else [[pt] for pt in points]
    for rep in range(reps):
        for batch in batches:
            spec = {"device": str(dev), "model": "mlp", "quick": quick, "points": batch}
            r = worker.run_worker("memory:point", spec, timeout=300, mem_cap_gib=12, exact_rss=True)
            if r["status"] != "ok":
                raise RuntimeError(f"memory points {batch} failed ({r['status']}): {r.get('error', '')[-500:]}")
            info = r
            for (meth, i), peak in zip(batch, r["peaks_mb"], strict=True):
                samples.setdefault((meth, i), []).append(peak)
                print(f"  memory {meth:8s} i={i:<4d} peak growth {peak:8.1f} MB  (rep {rep + 1}/{reps}, process {r['wall_s']:.1f} s)", flush=True)
    rows = []
    for meth in METHODS:
        xs = list(iters)
        meds = [spread(samples[(meth, i)])["median"] for i in xs]
        a, b, r2 = fit(xs, meds)
        flat = meds[-1] / meds[0] if meds[0] > 0 else float("nan")
        for i, med in zip(xs, meds, strict=True):
            s = spread(samples[(meth, i)])
            ok = (abs(flat - 1) <= 0.10) if meth != "unroll" else (r2 >= 0.95 and b > 0)
            rows.append({"section": "memory", "model": "mlp", "num_weights": info["num_weights"],
                         "num_hyperparams": info["num_hyperparams"], "batch": 128, "method": meth, "iterations": i,
                         "peak_mb_median": med, "peak_mb_min": s["min"], "peak_mb_max": s["max"], "reps": s["n"],
                         "memory_kind": info["memory_kind"], "fit_intercept_mb": a, "fit_slope_mb_per_iter": b, "fit_r2": r2,
                         "last_over_first": flat,
                         "target": "flat within 10% from first to last i" if meth != "unroll" else "linear in i (R² ≥ 0.95)",
                         "target_met": bool(ok)})
    output.write_csv(out, "memory", rows, dev)
    plot(rows, out / "memory.png")
    output.write_fragment(out, "memory", fragment(rows, quick), headline(rows), dev, quick=quick)
    return rows


def plot(rows, path: Path) -> None:
    fig, ax = plotting.subplots(figsize=(7, 4.6))
    for meth, style in (("neumann", "o-"), ("cg", "s-"), ("unroll", "^-")):
        rs = sorted((r for r in rows if r["method"] == meth), key=lambda r: r["iterations"])
        x = [r["iterations"] for r in rs]
        y = [r["peak_mb_median"] for r in rs]
        err = [[r["peak_mb_median"] - r["peak_mb_min"] for r in rs], [r["peak_mb_max"] - r["peak_mb_median"] for r in rs]]
        b = rs[0]["fit_slope_mb_per_iter"]
        ax.errorbar(x, y, yerr=err, fmt=style, capsize=3, label=f"{meth}: slope {b:.2f} MB per iteration")
    ax.set_xlabel("iterations i (unroll: steps)")
    kind = rows[0]["memory_kind"]
    ax.set_ylabel("peak RSS growth, MB" if kind.startswith("cpu") else "torch.cuda.max_memory_allocated, MB")
    ax.set_title(f"Peak memory of one hypergradient (fresh process per point)\n"
                 f"MLP, {rows[0]['num_weights']:,} weights = hyperparameters, batch 128; bars: min–max", fontsize=10)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def fragment(rows, quick: bool) -> str:
    iters = sorted({r["iterations"] for r in rows})
    kind = rows[0]["memory_kind"]
    what = ("growth of the process's peak RSS during one hypergradient (MB)" if kind.startswith("cpu")
            else "torch.cuda.max_memory_allocated during one hypergradient (MB)")
    table = []
    for meth in METHODS:
        rs = {r["iterations"]: r for r in rows if r["method"] == meth}
        first = rs[iters[0]]
        table.append([meth, *[f"{rs[i]['peak_mb_median']:.0f}" for i in iters], f"{first['fit_slope_mb_per_iter']:.2f}",
                      f"{first['fit_r2']:.3f}", f"{first['last_over_first']:.2f}", f"{first['target']}: {output.verdict(first['target_met'])}"])
    return "\n".join([
        "## 2. memory — peak memory vs iterations", "",
        f"Reproduce: `{output.command('memory', quick)}` (CSV: `memory.csv`, plot: `memory.png`). "
        f"MLP with {rows[0]['num_weights']:,} weights = hyperparameters, batch 128; each point a fresh "
        f"subprocess{' (--quick: all points in ONE process, a smoke test only)' if quick else ''} (5 training steps, then the peak-memory counter is reset and one hypergradient runs); "
        f"figure: {what}, median of {rows[0]['reps']} processes (min–max in the CSV).", "",
        output.md_table(["method", *[f"i={i}" for i in iters], "slope MB/iter", "R²", f"i={iters[-1]} ÷ i={iters[0]}", "target"], table),
        "",
    ])


def headline(rows) -> list[list]:
    out = []
    iters = sorted({r["iterations"] for r in rows})
    for meth in METHODS:
        r = next(x for x in rows if x["method"] == meth and x["iterations"] == iters[0])
        last = next(x for x in rows if x["method"] == meth and x["iterations"] == iters[-1])
        if meth == "unroll":
            out.append(["memory", f"unroll: peak memory slope (i={iters[0]}…{iters[-1]})",
                        f"{r['fit_slope_mb_per_iter']:.1f} MB/step (R² {r['fit_r2']:.3f}; {r['peak_mb_median']:.0f} → {last['peak_mb_median']:.0f} MB)",
                        "linear", output.verdict(r["target_met"])])
        else:
            out.append(["memory", f"{meth}: peak memory i={iters[-1]} ÷ i={iters[0]}",
                        f"{r['last_over_first']:.2f} ({r['peak_mb_median']:.0f} → {last['peak_mb_median']:.0f} MB; slope {r['fit_slope_mb_per_iter']:.2f} MB/iter)",
                        "within ±10 %", output.verdict(r["target_met"])])
    return out
