"""The paper's validation-split experiment (Lorraine et al. 2020, its figure on the validation
proportion): ``hgbench-bench paper_val_split --out results/paper/validation_split``.

Logistic regression (``model=linear``, 784·10 + 10 = 7,850 weights) on full MNIST, the preset
``experiment=paper_val_split``: for every total size N in ``SIZES`` and validation fraction f in
``FRACTIONS``, one pool of N examples is drawn from MNIST's 50,000-image train part
(``dataset.total_size`` / ``dataset.val_fraction``; the pool is the same examples for every f,
``dataset.split_seed`` = the seed) and split into round(f·N) validation and N − round(f·N)
training examples; the test set is MNIST's official 10,000 test images, the same for every run.
Two families: one global weight decay (``hyperparam.granularity=global``, 1 hyperparameter) and one
decay per weight (``per_param``, 7,850), both started at 2·e⁻⁴ (the authors' l2 = −4 on Σ e^λ w²).

Each run is the whole Algorithm 1 through ``Experiment.run()``: ``warmup_steps`` full-batch Adam
steps on the weights with λ fixed, then ``hyper_steps`` hyper-steps of ``inner_steps`` Adam steps
each, the identity-inverse hypergradient (the authors' ``mnist_test.py`` default) and one RMSprop
step on λ — all sizes from the preset (``STEPS_QUICK`` overrides them in a --quick smoke run). The
figure is the test accuracy of the jointly trained weights at the end (``test_acc``), per cell the
mean ± std over ``SEEDS`` (each seed its own pool and initialisation). ``test_acc_start`` is the
accuracy after the warm-up, before λ moved.

Every run's per-example test correctness (which of the 10,000 test images its final weights get
right) is saved in ``validation_split_correct.csv``; the intervals (``intervals``) are paired
bootstraps over the seeds and the test images (``stats.paired_bootstrap``): per (size, family), the
best fraction's test accuracy minus every other fraction's, and per-weight minus global decay at the
largest fraction. They are written to ``validation_split_intervals.csv``. The best fraction is
picked on the same runs, so its lead over the runner-up is, if anything, overstated.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from hgbench.benchmarks import output, per_example, plotting, timing
from hgbench.benchmarks.stats import mean_std, paired_bootstrap, verdict
from hgbench.machine import resolve_device

PRESET = "paper_val_split"
SIZES = (100, 200, 1600)
FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
FAMILIES = (("global", "global decay (1 hp)"), ("per_param", "per-weight decay (7,850 hps)"))
SEEDS = (0, 1, 2)
# --quick: a tiny grid and a few steps (the preset's sizes otherwise)
SIZES_QUICK, FRACTIONS_QUICK, SEEDS_QUICK = (100,), (0.2, 0.8), (0,)
STEPS_QUICK = ["warmup_steps=5", "hyper_steps=3", "inner_steps=2", "eval_every=3"]
PAPER_BEST = {"global": (0.1,), "per_param": (0.3, 0.4, 0.5)}  # the grid points of "~10 %" and "25–50 %"


def one_run(total: int, fraction: float, granularity: str, seed: int, device: str, extra: list[str]) -> dict[str, Any]:
    from hgbench import build_experiment

    exp = build_experiment(overrides=[f"experiment={PRESET}", f"dataset.total_size={total}", f"dataset.val_fraction={fraction}",
                                      f"hyperparam.granularity={granularity}", f"seed={seed}", f"device={device}", *extra])
    data = exp.problem.data
    t0 = time.perf_counter()
    result = exp.run()
    s = result.summary
    start = s.get("initial", {})
    lam = exp.lam.detach()
    correct = per_example.correct(exp.problem, exp.w, "test") if result.status == "FINISHED" else None
    if correct is not None and abs(float(correct.mean(dtype=np.float64)) - s.get("test_acc", math.nan)) > 1e-9:
        raise RuntimeError(f"per-example correctness {float(correct.mean(dtype=np.float64))} is not the run's test_acc {s.get('test_acc')}")
    return {"total_size": total, "val_fraction": fraction, "n_train": len(data.train.x), "n_val": len(data.val.x),
            "n_test": len(data.test.x), "family": granularity, "seed": seed, "status": result.status,
            "num_hyperparams": s.get("num_hyperparams"), "train_acc": s.get("train_acc", math.nan),
            "val_acc": s.get("val_acc", math.nan), "test_acc": s.get("test_acc", math.nan),
            "test_loss": s.get("test_loss", math.nan), "test_acc_start": start.get("test_acc", math.nan),
            "mean_log_decay": lam.mean().item(), "std_log_decay": lam.std().item() if lam.numel() > 1 else 0.0,
            "hyper_steps": s.get("hyper_steps_done"), "inner_steps_after_warmup": s.get("hyper_steps_done", 0) * exp.cfg.inner_steps,
            "warmup_steps": exp.cfg.warmup_steps, "run_s": time.perf_counter() - t0,
            "_correct": None if correct is None else per_example.pack(correct)}


def correct_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run: its keys and its packed per-example test correctness (``per_example.pack``)."""
    return [{"total_size": r["total_size"], "val_fraction": r["val_fraction"], "family": r["family"], "seed": r["seed"],
             "n_test": r["n_test"], "test_acc": r["test_acc"], "correct": r["_correct"]} for r in rows if r.get("_correct")]


def _matrix(correct: list[dict[str, Any]], n: int, fam: str, f: float, seeds: list[int]):
    """seeds × test examples 0/1 for one cell (None when a seed is missing)."""
    by = {(r["total_size"], r["family"], r["val_fraction"], r["seed"]): r for r in correct}
    got = [by.get((n, fam, f, s)) for s in seeds]
    if any(g is None for g in got):
        return None
    return np.stack([per_example.unpack(g["correct"], int(g["n_test"])) for g in got])


def intervals(rows: list[dict[str, Any]], correct: list[dict[str, Any]], n_boot: int = 10000) -> list[dict[str, Any]]:
    """Per (size, family): the best fraction (highest mean test accuracy) minus every other
    fraction, and per (size, fraction in {0.1, the largest}): per-weight minus global decay; each a
    paired bootstrap over the seeds × the test images (95 %)."""
    seeds = sorted({r["seed"] for r in correct})
    pk = peaks(summary(rows))
    fractions = sorted({r["val_fraction"] for r in rows})
    out = []
    for (n, fam), p in pk.items():
        best = _matrix(correct, n, fam, p["best"], seeds)
        for f in fractions:
            other = _matrix(correct, n, fam, f, seeds)
            if f == p["best"] or best is None or other is None:
                continue
            iv = paired_bootstrap(best, other, n_boot=n_boot)
            out.append({"comparison": "best_minus_fraction", "total_size": n, "family": fam, "a": f"f={p['best']:g}",
                        "b": f"f={f:g}", "val_fraction_a": p["best"], "val_fraction_b": f, **iv})
    for n in sorted({r["total_size"] for r in rows}):
        for f in sorted({fractions[0], fractions[-1]}):
            a, b = _matrix(correct, n, "per_param", f, seeds), _matrix(correct, n, "global", f, seeds)
            if a is None or b is None:
                continue
            iv = paired_bootstrap(a, b, n_boot=n_boot)
            out.append({"comparison": "per_weight_minus_global", "total_size": n, "family": "per_param-global",
                        "a": "per_param", "b": "global", "val_fraction_a": f, "val_fraction_b": f, **iv})
    return out




def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (size, family, fraction): test accuracy mean ± std over seeds (and the other splits')."""
    cells: dict[tuple[int, str, float], list[dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault((r["total_size"], r["family"], r["val_fraction"]), []).append(r)
    out = []
    for (n, fam, f), rs in sorted(cells.items()):
        row = {"total_size": n, "family": fam, "val_fraction": f, "n_train": rs[0]["n_train"], "n_val": rs[0]["n_val"],
               "seeds": len(rs)}
        for k in ("test_acc", "val_acc", "train_acc", "test_acc_start"):
            row[f"{k}_mean"], row[f"{k}_std"] = mean_std([r[k] for r in rs])
        out.append(row)
    return out


def peaks(summ: list[dict[str, Any]]) -> dict[tuple[int, str], dict[str, Any]]:
    """Per (size, family): the fraction with the highest mean test accuracy, its value, and the
    fractions whose mean is within one std (of either) of it ("tied")."""
    out = {}
    for key in dict.fromkeys((r["total_size"], r["family"]) for r in summ):
        rs = [r for r in summ if (r["total_size"], r["family"]) == key]
        best = max(rs, key=lambda r: r["test_acc_mean"])
        tied = [r["val_fraction"] for r in rs
                if best["test_acc_mean"] - r["test_acc_mean"] <= max(best["test_acc_std"], r["test_acc_std"])]
        out[key] = {"best": best["val_fraction"], "acc": best["test_acc_mean"], "std": best["test_acc_std"], "tied": tied}
    return out


def plot(summ: list[dict[str, Any]], out: Path) -> Path:
    sizes = sorted({r["total_size"] for r in summ})
    fig, axes = plotting.subplots(1, len(sizes), figsize=(4.2 * len(sizes), 3.8), squeeze=False)
    pk = peaks(summ)
    for ax, n in zip(axes[0], sizes, strict=True):
        for c, (fam, name) in enumerate(FAMILIES):
            rs = sorted((r for r in summ if r["total_size"] == n and r["family"] == fam), key=lambda r: r["val_fraction"])
            if not rs:
                continue
            f = [r["val_fraction"] for r in rs]
            mu = [r["test_acc_mean"] for r in rs]
            sd = [r["test_acc_std"] for r in rs]
            ax.plot(f, mu, marker="o", ms=3, lw=1.3, color=f"C{c}", ls="-" if fam == "global" else "--", label=name)
            ax.fill_between(f, [m - s for m, s in zip(mu, sd, strict=True)], [m + s for m, s in zip(mu, sd, strict=True)], color=f"C{c}", alpha=0.2, lw=0)
            p = pk[(n, fam)]
            ax.plot([p["best"]], [p["acc"]], marker="*", ms=12, color=f"C{c}", mec="k", mew=0.6, ls="none")
        ax.set(title=f"N = {n:,} examples", xlabel="validation fraction f (N·f validation, N·(1−f) training)",
               ylabel="test accuracy (10,000 MNIST test images)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    seeds = max(r["seeds"] for r in summ)
    fig.suptitle(f"Logistic regression on MNIST, tuned by IFT (identity inverse): test accuracy against the validation share "
                 f"(mean ± std over {seeds} seed{'s' if seeds > 1 else ''}; ★ = each curve's best)", fontsize=9)
    fig.tight_layout()
    path = out / "validation_split.png"
    fig.savefig(path, dpi=130)
    return path


def _steps_after_warmup(rows: list[dict[str, Any]]) -> str:
    steps = {r.get("inner_steps_after_warmup") for r in rows} - {None, ""}
    return "/".join(str(x) for x in sorted(steps)) or "some"


def _frac(fs) -> str:
    return ", ".join(f"{f:g}" for f in fs)


def reading(rows: list[dict[str, Any]], quick: bool, ivs: list[dict[str, Any]] | None = None) -> str:
    wall = rows[0].get("study_wall_s") if rows else None
    wall_s = None if quick or wall in (None, "") else float(wall)
    summ = summary(rows)
    pk = peaks(summ)
    sizes = sorted({r["total_size"] for r in summ})
    fractions = sorted({r["val_fraction"] for r in summ})
    seeds = sorted({r["seed"] for r in rows})
    failed = [r for r in rows if r["status"] != "FINISHED"]
    fam_name = dict(FAMILIES)
    cmd = output.command(PRESET, quick).replace("results/perf", "results/paper/validation_split")
    parts = ["# Validation split size (MNIST, logistic regression) — global vs per-weight decay", "",
             f"Generated by `{cmd}` (`benchmarks/paper_val_split.py`, whose docstring says exactly what is run; the preset "
             "`conf/experiment/paper_val_split.yaml`, whose grid is also `hgbench -m experiment=paper_val_split`). CSVs: "
             "`validation_split.csv` (one row per run), `validation_split_summary.csv` (per cell, over seeds); plot: "
             "`validation_split.png`.", ""]
    if quick:
        parts += ["> **QUICK SMOKE RUN** (`--quick`): a tiny grid, one seed, a few steps — these numbers only show that the "
                  "code runs.", ""]
    parts += ["**The paper's setting and claim**: logistic regression on MNIST with total data sizes {100, 200, 1600}, "
              "validation fractions 0.1 … 0.9, one global weight decay against one decay per weight, tuned by IFT "
              "hypergradients; test accuracy against the validation fraction. Claim: the global decay does best with "
              "about 10 % of the data as validation, the per-weight decays with 25–50 % — with millions of "
              "hyperparameters the validation set is effectively training data, so it pays to make it larger.", ""]
    n_runs = len(rows)
    parts += [f"**Ours** ({len(sizes)} sizes × {len(fractions)} fractions × 2 families × {len(seeds)} seeds = {n_runs} runs"
              + (f", {len(failed)} not FINISHED" if failed else ", all FINISHED")
              + (f"; {wall_s / 60:.1f} min of wall time on this machine" if wall_s else "")
              + "). Per run: the N examples drawn from MNIST's train part (each seed its own draw and initialisation), "
              "split into round(f·N) validation and the rest training; full batches; "
              + ("the preset's steps (below)" if not quick else "a few steps (`--quick`)")
              + "; test accuracy on the official 10,000 test images at the end of the run. Mean ± std over seeds:", ""]
    for n in sizes:
        table = []
        for f in fractions:
            cells = {fam: next((r for r in summ if (r["total_size"], r["family"], r["val_fraction"]) == (n, fam, f)), None)
                     for fam, _ in FAMILIES}
            line = [f"{f:g}", f"{cells['global']['n_train'] if cells['global'] else '—'} / "
                    f"{cells['global']['n_val'] if cells['global'] else '—'}"]
            for fam, _ in FAMILIES:
                c = cells[fam]
                mark = " ★" if c and pk[(n, fam)]["best"] == f else ""
                line += [f"{c['test_acc_mean']:.3f} ± {c['test_acc_std']:.3f}{mark}" if c else "—",
                         f"{c['val_acc_mean']:.3f}" if c else "—"]
            table.append(line)
        parts += [f"N = {n:,}:", "", output.md_table(
            ["val fraction", "train / val examples", "global: test acc", "global: val acc", "per-weight: test acc",
             "per-weight: val acc"], table), ""]
    parts += ["★ = the fraction with the highest mean test accuracy for that family and size.", "",
              "![test accuracy against the validation fraction](validation_split.png)", ""]
    # the intervals: best fraction minus every other, paired over seeds × test images
    ivs = ivs or []
    best_minus = {(r["total_size"], r["family"], r["val_fraction_b"]): r for r in ivs if r["comparison"] == "best_minus_fraction"}
    pw_minus = {(r["total_size"], r["val_fraction_a"]): r for r in ivs if r["comparison"] == "per_weight_minus_global"}
    n_test = {r.get("n_test") for r in rows} - {None, ""}
    if best_minus:
        parts += [f"**Intervals**: test accuracy of each family's best fraction minus that of every other fraction, in "
                  f"points, with the 95 % interval of a paired bootstrap over the {len(seeds)} seeds and the "
                  f"{'/'.join(f'{x:,}' for x in sorted(n_test))} test images (the same images, in the same order, for every "
                  "run; `validation_split_intervals.csv`); \"within noise\" = the interval includes 0. The best fraction is "
                  "picked on these same runs, so its lead is if anything overstated.", ""]
        for n in sizes:
            table = []
            for f in fractions:
                line = [f"{f:g}"]
                for fam, _ in FAMILIES:
                    iv = best_minus.get((n, fam, f))
                    line.append("best ★" if pk[(n, fam)]["best"] == f else (verdict(iv) if iv else "—"))
                table.append(line)
            parts += [f"N = {n:,}:", "", output.md_table(["val fraction", "global: best − this f", "per-weight: best − this f"],
                                                        table), ""]
    noise = {(n, fam): [pk[(n, fam)]["best"]] + [f for f in fractions if (n, fam, f) in best_minus
                                                 and best_minus[(n, fam, f)]["within_noise"]]
             for n in sizes for fam, _ in FAMILIES}
    lines = []
    holds = {fam: [n for n in sizes if pk[(n, fam)]["best"] in PAPER_BEST[fam]] for fam, _ in FAMILIES}
    for fam, _ in FAMILIES:
        per_size = "; ".join(f"N = {n:,}: f = {pk[(n, fam)]['best']:g} ({pk[(n, fam)]['acc']:.3f} ± {pk[(n, fam)]['std']:.3f}"
                             + (f"; within noise of it: f ∈ {{{_frac(sorted(noise[(n, fam)]))}}}" if best_minus else "") + ")"
                             for n in sizes)
        lines.append(f"- **{fam_name[fam]}** is best at {per_size}.")
    later = [n for n in sizes if pk[(n, "per_param")]["best"] > pk[(n, "global")]["best"]]
    same = [n for n in sizes if pk[(n, "per_param")]["best"] == pk[(n, "global")]["best"]]
    lines.append(f"- The paper's numbers: global best at f = 0.1 for N ∈ {{{_frac(holds['global']) or 'none'}}} "
                 f"of {{{_frac(sizes)}}}; per-weight best within 25–50 % (f ∈ {{0.3, 0.4, 0.5}}) for N ∈ "
                 f"{{{_frac(holds['per_param']) or 'none'}}}. The qualitative claim — per-weight decay wants a larger "
                 f"validation share than a global one — holds (a larger best f) for N ∈ {{{_frac(later) or 'none'}}}"
                 + (f", the same best f for N ∈ {{{_frac(same)}}}" if same else "") + ".")
    if best_minus:
        for fam, _ in FAMILIES:
            inside = [n for n in sizes if set(noise[(n, fam)]) <= set(PAPER_BEST[fam])]
            spread = "; ".join(f"N = {n:,}: {_frac(sorted(noise[(n, fam)]))}" for n in sizes)
            lines.append(f"- How sharp the best is for the {fam_name[fam]}: the fractions within noise of it (including itself) "
                         f"are {spread}; all of them inside the paper's range ({'~10 %' if fam == 'global' else '25–50 %'}) for "
                         f"N ∈ {{{_frac(inside) or 'none'}}}"
                         + ("" if len(inside) == len(sizes) else " — elsewhere the runs cannot tell the best fraction from "
                            "fractions outside that range")
                         + ".")
    hi_f = max(fractions)
    at_hi = {}
    for n in sizes:
        g, p = (next((r for r in summ if (r["total_size"], r["family"], r["val_fraction"]) == (n, fam, hi_f)), None)
                for fam in ("global", "per_param"))
        if g and p:
            at_hi[n] = (p, g)
    if at_hi:
        better = [n for n, (p, g) in at_hi.items() if p["test_acc_mean"] > g["test_acc_mean"]]
        fits = [n for n, (p, g) in at_hi.items() if p["val_acc_mean"] > g["val_acc_mean"]]
        lines.append(f"- With most of the data as validation (f = {hi_f:g}), per-weight vs global decay: test accuracy "
                     + "; ".join(f"N = {n:,}: {p['test_acc_mean']:.3f} vs {g['test_acc_mean']:.3f}" for n, (p, g) in at_hi.items())
                     + f" (per-weight higher for N ∈ {{{_frac(better) or 'none'}}}"
                     + ("; per-weight − global, paired: " + "; ".join(f"N = {n:,}: {verdict(pw_minus[(n, hi_f)])}" for n in at_hi
                                                                     if (n, hi_f) in pw_minus) if pw_minus else "")
                     + "); validation accuracy "
                     + "; ".join(f"{p['val_acc_mean']:.3f} vs {g['val_acc_mean']:.3f}" for p, g in at_hi.values())
                     + f" (per-weight higher for N ∈ {{{_frac(fits) or 'none'}}}) — where both are higher, the per-weight "
                     "decays fitted the validation set and carried some of it to the test set, the paper's explanation of "
                     "why they want more validation data.")
    moved = [r for r in summ if not math.isnan(r["test_acc_start_mean"])]
    if moved:
        d = {fam: mean_std([r["test_acc_mean"] - r["test_acc_start_mean"] for r in moved if r["family"] == fam]) for fam, _ in FAMILIES}
        lines.append("- Test accuracy at the end minus after the warm-up (λ tuned, and the weights trained "
                     f"{_steps_after_warmup(rows)} more steps), averaged over all cells: "
                     + "; ".join(f"{fam_name[fam]} {d[fam][0]:+.3f} (std over cells {d[fam][1]:.3f})" for fam, _ in FAMILIES) + ".")
    parts += ["**Reading** (computed from the table):", "", *lines, ""]
    w = {r.get("warmup_steps") for r in rows} - {None, ""}
    h = {r.get("hyper_steps") for r in rows} - {None, ""}
    parts += ["**Where we differ from the paper**: far fewer steps — each run is "
              + f"{'/'.join(map(str, sorted(w)))} full-batch Adam steps on the weights with λ fixed, then "
              + f"{'/'.join(map(str, sorted(h)))} hyper-steps ({_steps_after_warmup(rows)} more Adam steps in all), each a block "
              "of Adam steps followed by one hypergradient and one RMSprop step on λ (sized so that the 162 runs fit in about ten minutes "
              "on two shared CPU cores), where the authors' scripts run 1,000 hyper-steps of 5 epochs each (their "
              "`mnist_test.py` settings for MNIST); RMSprop's step on λ is 0.1 (the authors' `lrh`; their `mnist_test.py` builds RMSprop "
              "without it, at torch's 0.01) so that λ moves within that budget; the inner learning rate (Adam, 0.01) is ours. "
              "The hypergradient is the identity inverse (the authors' default in `mnist_test.py`), not a Neumann series; "
              "every seed draws its own pool of N examples, so the std includes which examples were drawn. The pool comes "
              "from MNIST's 50,000-image train part and the test set is the official 10,000 — the paper does not say how "
              "its subsets were drawn. The test accuracy is that of the weights trained jointly with λ on the training split "
              "only (no retraining on train + validation).", ""]
    return "\n".join(parts)


def rewrite(out: Path) -> None:
    """Plot and README again from the CSVs in ``out`` (after a change to how they are drawn)."""
    rows = output.read_csv(out / "validation_split.csv")
    plot(summary(rows), out)
    ivs = output.read_csv(out / "validation_split_intervals.csv") if (out / "validation_split_intervals.csv").exists() else []
    (out / "README.md").write_text(reading(rows, bool(rows and rows[0].get("quick")), ivs))


def run(out: Path, quick: bool = False, device: str = "auto", reps: int | None = None) -> list[dict[str, Any]]:
    dev = str(resolve_device(device))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with timing.one_thread():  # logistic regression on ≤ 1,600 examples: one thread is as fast, and the cores are shared
        for n in (SIZES_QUICK if quick else SIZES):
            for fam, _ in FAMILIES:
                for f in (FRACTIONS_QUICK if quick else FRACTIONS):
                    for seed in (SEEDS_QUICK if quick else SEEDS):
                        rows.append(one_run(n, f, fam, seed, dev, ["num_threads=1", *(STEPS_QUICK if quick else [])]))
                    cell = [r["test_acc"] for r in rows[-len(SEEDS_QUICK if quick else SEEDS):]]
                    print(f"  paper_val_split N={n:5d} {fam:9s} f={f:.1f}  test acc {sum(cell) / len(cell):.4f}  "
                          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    wall = time.perf_counter() - t0
    for r in rows:
        r["study_wall_s"], r["quick"] = round(wall, 1), quick
    correct = correct_rows(rows)
    for r in rows:
        r.pop("_correct", None)
    output.write_csv(out, "validation_split", rows, dev)
    output.write_csv(out, "validation_split_correct", correct, dev)
    summ = summary(rows)
    output.write_csv(out, "validation_split_summary", summ, dev)
    ivs = intervals(rows, correct, n_boot=500 if quick else 10000)
    output.write_csv(out, "validation_split_intervals", ivs, dev)
    plot(summ, out)
    (out / "README.md").write_text(reading(rows, quick, ivs))
    return rows
