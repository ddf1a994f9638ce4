"""The paper's RNN-regularisation experiment (Lorraine et al. 2020, Sec. 5.3, Table 3) at CPU scale:
``hgbench-bench paper_ptb --out results/paper/ptb``.

An LSTM language model on the whole Penn Treebank trained with truncated BPTT, the preset
``experiment=paper_ptb`` (its header lists every size and why): 2 layers × 128 units, tied
embedding of 128, the 10,000-word vocabulary, bptt 35 over 20 parallel streams walking the whole
training split (929,589 tokens) 3.5 times, the whole validation and test splits; Adam on the
weights, its rate halved every 0.7 epoch; per
hyper-step ``inner_steps`` inner steps, then one hypergradient (Neumann, 1 iteration = 2 terms) on
the next training window and the next validation window and one Adam step on λ. Three
configurations, seeds ``SEEDS`` each (the weights' initialisation and the dropout noise; seed 0
chose the preset's learning rate and schedule in the no-tuning pilot, so it is not reported):

- ``fixed``: no tuning — ``hyperparam=dropout_rates`` with all 7 regularisers at their initial
  values (every rate 0.05, AR / TAR 0.01) and ``hypergrad=fixed`` (λ never moves; the preset's
  ``hypergrad.iterations`` removed);
- ``ift_7``: IFT on the paper's 7 global hyperparameters (``dropout_rates``: embedding, hidden,
  output dropout, word dropout, weight-drop, AR, TAR), from the same initial values;
- ``ift_per_unit``: IFT on per-unit rates at the three dropout sites, a rate per hidden-to-hidden
  weight for DropConnect, one word-dropout rate, AR and TAR (``dropout_per_unit`` with the same
  extras and initial values) — the paper's 1,691,951-hyperparameter variant at this scale.

The 9 runs are joblib jobs, ``N_JOBS`` at once, each on one torch thread (the machines this runs
on are shared); the quick run (``--quick``, the tests) runs its 3 in the calling process.
Recorded: ``CURVE_POINTS`` times per run, evenly spaced, the validation perplexity of the whole
validation split (the streams walked in order: ``hgbench.streams.evaluate_streams``) and, every
hyper-step, the family's metrics (the rates' means, AR and TAR). At the end: the test perplexity
of the whole test split at the final weights and at the best-validation weights (the paper reports
its best-validation checkpoint). No training perplexity: a pass over the 929,589 training tokens
costs as much as the evaluations of a whole run. Reported: the perplexities (mean ± std over
seeds) and, for each pair of configurations, the perplexity difference paired by seed with a 95 %
Student's t interval over the seeds (``stats.t_interval``; ``ptb_diffs.csv``; one seed, as in
``--quick``: no interval).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from hgbench.benchmarks import machine, output, plotting, timing
from hgbench.benchmarks.stats import mean_std, t_interval
from hgbench.benchmarks.stats import verdict as stats_verdict
from hgbench.machine import resolve_device

PRESET = "paper_ptb"
CONFIGS = (("fixed", "no tuning (fixed rates)", ["hypergrad=fixed", "~hypergrad.iterations"]),
           ("ift_7", "IFT, 7 global hyperparameters", []),
           ("ift_per_unit", "IFT, per-unit rates + per-weight DropConnect", ["hyperparam=dropout_per_unit"]))
SEEDS = (1, 2, 3)  # seed 0 chose the learning rate (``pilot``): not a reported seed
CURVE_POINTS = 4  # validation evaluations per run, evenly spaced (each walks the whole validation split)
N_JOBS = 2  # runs at once (joblib workers, one torch thread each): the machine has 2 cores
# --quick: a tiny model on tiny slices, 3 hyper-steps of 2 inner steps, one seed
QUICK = ["dataset.bptt=5", "dataset.streams=2", "dataset.train_size=8", "dataset.val_size=4", "dataset.test_size=4",
         "model.embedding_dim=4", "model.hidden_size=4", "hyper_steps=3", "inner_steps=2"]
# the paper's Table 3 (val / test perplexity), AWD-LSTM 2 × 650 on full PTB
PAPER = {"fixed": (75.72, 71.91), "ift_7": (69.22, 66.40), "ift_per_unit": (68.18, 66.14)}
PAPER_COUNT = {"fixed": 0, "ift_7": 7, "ift_per_unit": 1_691_951}
HPS = ("embedding", "hidden0", "output", "word", "weight_hh", "ar", "tar")  # the 7, by their λ names in dropout_rates


def build(config: str, seed: int, device: str, quick: bool):
    from hgbench import build_experiment

    extra = dict((c, o) for c, _, o in CONFIGS)[config]
    return build_experiment(overrides=[f"experiment={PRESET}", *extra, f"seed={seed}", f"device={device}", "warmup=false",
                                       *(QUICK if quick else [])])


def hp_values(metrics: dict[str, float]) -> dict[str, float]:
    """The family's metrics as one value for each of the 7 (per-unit / per-weight: the mean rate;
    per-layer DropConnect rates: their mean)."""
    out = {k.removeprefix("drop_rate/"): v for k, v in metrics.items() if not k.startswith("drop_rate_std/")}
    layers = [k for k in out if k.startswith("weight_hh") and k != "weight_hh"]
    if layers:
        out["weight_hh"] = sum(out.pop(k) for k in layers) / len(layers)
    return out


def _ppl(loss: float) -> float:
    return math.exp(min(loss, 700.0))


def one_run(config: str, seed: int, device: str, quick: bool) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """One configuration and seed, on one torch thread (a joblib worker, or the caller's process)."""
    import os

    import torch

    from hgbench.streams import evaluate_streams

    torch.set_num_threads(1)
    load_start = os.getloadavg()[0]
    exp = build(config, seed, device, quick)
    steps, fam = int(exp.cfg.hyper_steps), exp.problem.family
    every = max(1, steps // CURVE_POINTS)
    curve, hps = [], []
    t0 = time.perf_counter()

    def record_hps(step: int) -> None:
        lam = exp.problem.lam_spec.unflatten(exp.lam.detach())
        hps.append({"config": config, "seed": seed, "step": step, **hp_values(fam.metrics(lam))})

    def ppl(w, split: str) -> float:
        return _ppl(evaluate_streams(exp.problem, w, split, exp.streams)[f"{split}_loss"])

    record_hps(0)
    best_w, best_val, best_step = None, math.inf, 0
    for step in range(1, steps + 1):
        exp.hyper_step(step)
        record_hps(step)
        if step % every == 0 or step == steps:
            val = ppl(exp.w, "val")
            curve.append({"config": config, "seed": seed, "step": step, "inner_steps": step * int(exp.cfg.inner_steps), "val_ppl": val})
            if val < best_val:  # the best-validation checkpoint (the paper reports that one)
                best_w, best_val, best_step = exp.w.detach().clone(), val, step
    val_ppl, test_ppl = curve[-1]["val_ppl"], ppl(exp.w, "test")
    best_test = test_ppl if best_step == steps else ppl(best_w, "test")
    data, cfg = exp.problem.data, exp.cfg
    row = {"config": config, "seed": seed, "num_hyperparams": exp.problem.num_hyperparams, "num_weights": exp.problem.num_weights,
           "hyper_steps": steps, "inner_steps": steps * int(cfg.inner_steps), "width": int(cfg.model.hidden_size),
           "embedding": int(cfg.model.embedding_dim), "layers": int(cfg.model.num_layers), "bptt": int(cfg.dataset.bptt),
           "streams": exp.streams, "inner_lr": float(cfg.inner_optimizer.lr),
           "inner_decay": float(cfg.inner_optimizer.get("decay", 1.0)), "inner_decay_every": int(cfg.inner_optimizer.get("decay_every", 0)),
           **{f"{s}_tokens": getattr(data, s).y.numel() for s in ("train", "val", "test")},
           "val_ppl": val_ppl, "test_ppl": test_ppl,
           "best_val_ppl": best_val, "best_test_ppl": best_test, "best_inner_steps": best_step * int(cfg.inner_steps),
           **{f"hp_{k}": v for k, v in hps[-1].items() if k not in ("config", "seed", "step")},
           "time_s": time.perf_counter() - t0, "load_start": load_start, "load_end": os.getloadavg()[0]}
    return row, curve, hps


def summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, tuple[float, float]]]:
    """Per configuration: mean ± std over seeds of the perplexities and of each final hyperparameter."""
    out = {}
    for c in dict.fromkeys(r["config"] for r in rows):
        rs = [r for r in rows if r["config"] == c]
        keys = [k for k in rs[0] if k.endswith("_ppl") or k.startswith("hp_") or k in ("time_s", "num_hyperparams", "best_inner_steps")]
        out[c] = {k: mean_std([float(r[k]) for r in rs]) for k in keys if all(r.get(k) not in (None, "") for r in rs)}
        out[c]["seeds"] = (float(len(rs)), 0.0)
    return out


def plot(rows: list[dict[str, Any]], curve: list[dict[str, Any]], hps: list[dict[str, Any]], out: Path) -> Path:
    fig, axes = plotting.subplots(1, 3, figsize=(15, 4.4))
    labels = {c: lab for c, lab, _ in CONFIGS}
    for i, c in enumerate(dict.fromkeys(r["config"] for r in curve)):
        xs = sorted({r["inner_steps"] for r in curve if r["config"] == c})
        st = [mean_std([r["val_ppl"] for r in curve if r["config"] == c and r["inner_steps"] == x]) for x in xs]
        axes[0].plot(xs, [m for m, _ in st], marker="o", ms=3, color=f"C{i}", label=labels.get(c, c))
        axes[0].fill_between(xs, [m - d for m, d in st], [m + d for m, d in st], color=f"C{i}", alpha=0.2, lw=0)
    axes[0].set(xlabel="inner steps", ylabel="validation perplexity", yscale="log")
    axes[0].legend(fontsize=8)
    for ax, c in zip(axes[1:], ("ift_7", "ift_per_unit"), strict=True):
        rs = [r for r in hps if r["config"] == c]
        if not rs:
            ax.set_visible(False)
            continue
        for j, k in enumerate(HPS):
            if k not in rs[0]:
                continue
            steps = sorted({r["step"] for r in rs})
            st = [mean_std([r[k] for r in rs if r["step"] == s]) for s in steps]
            ax.plot(steps, [m for m, _ in st], color=f"C{j}", label=k + (" (coef.)" if k in ("ar", "tar") else " (rate)"))
            ax.fill_between(steps, [m - d for m, d in st], [m + d for m, d in st], color=f"C{j}", alpha=0.2, lw=0)
        ax.set(xlabel="hyper-step", ylabel="rate (mean over units) / coefficient", title=labels[c], yscale="log")
        ax.legend(fontsize=7)
    for ax in axes:
        ax.grid(True, alpha=0.3)
    seeds, r0 = len({r["seed"] for r in curve}), rows[0]
    fig.suptitle(f"PTB ({int(r0['train_tokens']):,} training tokens), LSTM {int(r0['layers'])} × {int(r0['width'])}, truncated BPTT: "
                 f"validation perplexity and the learned regularisers (mean ± std over {seeds} seed{'s' if seeds > 1 else ''})", fontsize=9)
    fig.tight_layout()
    path = out / "ptb.png"
    fig.savefig(path, dpi=130)
    return path


PAIRS = (("ift_7", "fixed"), ("ift_per_unit", "fixed"), ("ift_per_unit", "ift_7"))
METRICS = ("val_ppl", "test_ppl", "best_val_ppl", "best_test_ppl")


def differences(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each pair (a, b) of ``PAIRS`` and each perplexity: b − a per seed (paired by seed:
    positive = a lower = a better; ``per_seed``), its mean and 95 % Student's t interval over the
    seeds (``stats.t_interval``: with 3 seeds a percentile bootstrap is the values' range, so it
    would call any difference of one sign on every seed a gain), and the relative change of a's
    mean against b's (%)."""
    by = {(r["config"], int(r["seed"])): r for r in rows}
    out = []
    for a, b in PAIRS:
        seeds = sorted(s for c, s in by if c == a and (b, s) in by)
        if not seeds:
            continue
        for key in METRICS:
            d = [float(by[(b, s)][key]) - float(by[(a, s)][key]) for s in seeds]
            iv = t_interval(d)  # one seed (--quick): no interval
            ma, mb = (sum(float(by[(c, s)][key]) for s in seeds) / len(seeds) for c in (a, b))
            out.append({"a": a, "b": b, "metric": key, "seeds": len(seeds), "reduction": iv["mean"], "lo": iv["lo"], "hi": iv["hi"],
                        "within_noise": bool(iv["within_noise"]), "rel_pct": 100 * (ma - mb) / mb,
                        "interval": f"student_t_{len(seeds) - 1}df" if len(d) > 1 else "none (one seed)", "per_seed": " ".join(f"{x:+.2f}" for x in d)})
    return out


def _diff(d: dict[str, Any]) -> str:
    """'−3.1 % (reduction +4.2 ppl [+1.0, +7.5], gain)': the relative change and the interval in words
    (one seed: the reduction alone)."""
    iv = {"mean": float(d["reduction"]), "lo": float(d["lo"] or "nan"), "hi": float(d["hi"] or "nan")}  # "": none in a CSV
    if math.isnan(iv["lo"]):
        return f"{float(d['rel_pct']):+.1f} % (reduction {iv['mean']:+.1f} ppl, one seed: no interval)"
    return f"{float(d['rel_pct']):+.1f} % (reduction {stats_verdict(iv, unit='ppl', scale=1.0, digits=1)})"


def reading(rows: list[dict[str, Any]], curve: list[dict[str, Any]], hps: list[dict[str, Any]], quick: bool) -> str:
    s = summary(rows)
    labels = {c: lab for c, lab, _ in CONFIGS}
    configs = list(s)
    seeds = sorted({r["seed"] for r in rows})
    r0 = rows[0]
    diffs = {(d["a"], d["b"], d["metric"]): d for d in differences(rows)}
    points = len({r["inner_steps"] for r in curve if r["config"] == configs[0]})
    size = (f"LSTM {int(r0['layers'])} × {int(r0['width'])}, tied embedding of {int(r0['embedding'])}, {int(r0['num_weights']):,} weights; "
            f"bptt {int(r0['bptt'])} over {int(r0['streams'])} streams; {int(r0['train_tokens']):,} / {int(r0['val_tokens']):,} / "
            f"{int(r0['test_tokens']):,} train / val / test tokens")
    table = [[labels.get(c, c), f"{int(s[c]['num_hyperparams'][0]):,}", output.pm(*s[c]["val_ppl"], ".1f"), output.pm(*s[c]["test_ppl"], ".1f"),
              output.pm(*s[c]["best_val_ppl"], ".1f"), output.pm(*s[c]["best_test_ppl"], ".1f"), output.pm(*s[c]["best_inner_steps"], ".0f"),
              f"{PAPER_COUNT[c]:,}", f"{PAPER[c][0]:.2f} / {PAPER[c][1]:.2f}", output.pm(*s[c]["time_s"], ".0f")] for c in configs]
    hp_table = []
    for c in configs:
        cells = []
        for k in HPS:
            v = s[c].get(f"hp_{k}")
            cells.append("—" if v is None else output.pm(*v, ".3f"))
        hp_table.append([labels.get(c, c), *cells])
    diff_table = []
    for a, b in PAIRS:
        if (a, b, "val_ppl") in diffs:
            paper = (f"{100 * (PAPER[a][0] - PAPER[b][0]) / PAPER[b][0]:+.1f} % / {100 * (PAPER[a][1] - PAPER[b][1]) / PAPER[b][1]:+.1f} %")
            diff_table.append([f"{labels[a]} against {labels[b]}", *(_diff(diffs[(a, b, k)]) for k in METRICS), paper])
    wall = float(r0.get("study_wall_s") or 0)
    parts = ["# RNN regularisation on Penn Treebank — the paper's Sec. 5.3 (Table 3), at CPU scale", "",
             f"Generated by `{output.command('paper_ptb', quick, '' if quick else ' --max-wait-min 0').replace('results/perf', 'results/paper/ptb')}` "
             "(`benchmarks/paper_ptb.py`, whose docstring says exactly what is run; the preset is "
             "`conf/experiment/paper_ptb.yaml`). CSVs: `ptb.csv` (one row per run: final and best-validation perplexities, "
             "final hyperparameters), `ptb_curve.csv` (validation perplexity along the runs), `ptb_hparams.csv` (the "
             "hyperparameters at every hyper-step), `ptb_diffs.csv` (the paired differences and their intervals); plot: `ptb.png`.", ""]
    if quick:
        parts += ["> **QUICK SMOKE RUN** (`--quick`): a tiny model on tiny slices, a few steps, one seed — these numbers only "
                  "show that the code runs.", ""]
    parts += ["**The paper's setting and claim**: an AWD-LSTM (2 layers × 650 units, tied weights) on Penn Treebank, its "
              "regularisers tuned by IFT during training. Tuning the 7 hyperparameters of the authors' code (`rnn/train.py`: "
              "dropout on the input embeddings, between the layers and on the output, embedding dropout of whole words, "
              "DropConnect on the hidden-to-hidden weights, the AR and TAR coefficients) lowers the validation / test "
              "perplexity from 75.72 / 71.91 (no tuning) to 69.22 / 66.40 (−8.6 % / −7.7 %); per-unit rates with a rate "
              "per hidden-to-hidden weight (1,691,951 hyperparameters = 4·650·650 DropConnect + 3·650 per-unit + 1 word "
              "rate) reach 68.18 / 66.14 — better than the 7, and better than grid / random search, BO and STNs in its "
              "table.", "",
              f"**Ours** ({len(seeds)} seed{'s' if len(seeds) > 1 else ''}; {size}; "
              f"{int(r0['hyper_steps'])} hyper-steps, {int(r0['inner_steps'])} Adam steps ({_schedule(r0)}) in all, "
              f"{int(r0['inner_steps']) * int(r0['streams']) * int(r0['bptt']) / int(r0['train_tokens']):.2f} epochs of the training split; "
              "validation perplexity on the whole validation split, test perplexity on the whole test split; "
              f"\"final\": the weights at the end, \"best point\": the weights with the lowest validation perplexity among "
              f"{points} evaluations per run (the paper reports its best-validation checkpoint); mean ± std over seeds; "
              f"time: the run's wall time on this shared 2-core machine, one thread, {int(r0.get('n_jobs') or 1)} runs at once"
              + (f", {wall / 60:.0f} min for the whole study" if wall else "")
              + f"; load average {min(float(r['load_start']) for r in rows):.1f}–{max(float(r['load_end']) for r in rows):.1f} at the runs' "
              "starts and ends):", "",
              output.md_table(["configuration", "hyperparameters", "val ppl (final)", "test ppl (final)",
                               "val ppl (best point)", "test ppl (best point)", "best point (inner steps)",
                               "paper: hyperparameters", "paper: val / test ppl", "time (s)"], table), "",
              "Final hyperparameters (rates: the mean over units / weights; AR, TAR: the coefficients), mean ± std over seeds:",
              "", output.md_table(["configuration", *HPS], hp_table), "", "![ptb](ptb.png)", ""]
    if diff_table:
        parts += [f"**Differences, paired by seed** (`ptb_diffs.csv`): the relative change of the mean perplexity, and the "
                  "perplexity reduction (the second configuration's perplexity minus the first's, seed by seed: positive = the "
                  f"first is lower) with its 95 % Student's t interval over the {len(seeds)} seeds (`stats.t_interval`, "
                  f"{len(seeds) - 1} degrees of freedom; a bootstrap over {len(seeds)} values would be their range, calling any "
                  "difference of one sign on every seed a gain); the per-seed differences are in `ptb_diffs.csv` (`per_seed`). "
                  "\"within noise\": the interval includes 0.", "",
                  output.md_table(["comparison", "val ppl (final)", "test ppl (final)", "val ppl (best point)",
                                   "test ppl (best point)", "the paper: val / test"], diff_table), ""]
    read = []

    def holds(a: str, key: str) -> str:
        d = diffs.get((a, "fixed", key))
        return "n/a" if d is None else ("within noise" if d["within_noise"] else ("lower" if float(d["reduction"]) > 0 else "higher"))

    for a in ("ift_7", "ift_per_unit"):
        if (a, "fixed", "val_ppl") in diffs:
            read.append(f"{labels[a]}: validation perplexity {holds(a, 'val_ppl')} than no tuning at the final weights, "
                        f"{holds(a, 'best_val_ppl')} at the best point; test perplexity {holds(a, 'test_ppl')} / {holds(a, 'best_test_ppl')}")
    if ("ift_per_unit", "ift_7", "val_ppl") in diffs:
        d = diffs[("ift_per_unit", "ift_7", "val_ppl")]
        read.append("per-unit against the 7, validation perplexity at the final weights: "
                    + ("within noise" if d["within_noise"] else ("lower" if float(d["reduction"]) > 0 else "higher")))
    moved = []
    for c in ("ift_7", "ift_per_unit"):
        if c in s and "fixed" in s:
            moved.append(labels[c] + ": " + ", ".join(f"{k} {s['fixed'][f'hp_{k}'][0]:.3g} → {s[c][f'hp_{k}'][0]:.3g}"
                                                      for k in HPS if f"hp_{k}" in s[c] and f"hp_{k}" in s["fixed"]))
    parts += ["**Reading** (the word for each difference follows its interval): " + "; ".join(read) + ". "
              + "Start → end of the learned values (mean over seeds; per-unit: the mean rate) — " + "; ".join(moved) + ". "
              + _regime(s, curve), ""]
    ratio = s["fixed"]["best_val_ppl"][0] / PAPER["fixed"][0] if "fixed" in s else float("nan")
    parts += [f"**Where we differ from the paper**: the scale, first — {int(r0['layers'])} × {int(r0['width'])} units (tied embedding "
              f"of {int(r0['embedding'])}) instead of 2 × 650, bptt {int(r0['bptt'])} over {int(r0['streams'])} streams instead of 70 "
              f"over 40, and {int(r0['inner_steps'])} Adam steps (well under the paper's hundreds of epochs of SGD at lr 30 with "
              "gradient clipping, which the framework's inner optimisers do not have) — a small model, briefly trained on the full "
              f"training split: our no-tuning validation perplexity at the best point is {ratio:.1f}× the paper's; the comparison "
              "between the three configurations, at equal inner steps, is the point, not the numbers. Our model is the framework's "
              "`lstm` (a Python-loop LSTM, tied decoder), not AWD-LSTM's code: no ASGD, no fine-tuning stage, and the "
              f"best-validation point is picked among {points} evaluations per run, not every epoch. "
              "Every rate starts at 0.05 and AR / TAR at 0.01 (the authors' defaults for AR / TAR; their rates start near 0); "
              f"one hypergradient per {int(r0['inner_steps']) // int(r0['hyper_steps'])} inner steps (the authors take one per "
              "inner step), Neumann with 1 iteration (2 terms) and α = the inner optimiser's base learning rate (not decayed), Adam (lr 0.1) on λ. The per-unit "
              "run has one DropConnect rate per weight of each layer (the authors share one 4H × H matrix of rates between the "
              "layers) and learns AR / TAR too, which the paper's 1,691,951 do not count. Every arm draws one training window "
              "per hyper-step for the hypergradient and the runner carries every window's state itself (once, at the weights "
              "after the inner steps, untimed), so all three walk the streams alike and carry the same state through. "
              "The full-size setting for a GPU is the preset `paper_ptb_awd` (not run here).", ""]
    return "\n".join(parts)


def _schedule(r0: dict[str, Any]) -> str:
    """The inner learning rate in words: 'lr 0.01, halved every 664 steps' (rows written before the
    schedule columns existed: the rate, and where the schedule is set)."""
    text = f"lr {float(r0['inner_lr']):g}"
    decay, every = r0.get("inner_decay"), r0.get("inner_decay_every")
    if decay in (None, "") or every in (None, ""):
        return text + ", scheduled by the preset's `inner_optimizer.decay` / `decay_every`"
    if int(float(every)) > 0 and float(decay) < 1:
        text += (", halved" if float(decay) == 0.5 else f", × {float(decay):g}") + f" every {int(float(every))} steps"
    return text


def _regime(s: dict[str, dict[str, tuple[float, float]]], curve: list[dict[str, Any]]) -> str:
    """Whether the no-tuning run's validation perplexity still falls at the end, read from the curve."""
    rs = [r for r in curve if r["config"] == "fixed"]
    if not rs or "fixed" not in s:
        return ""
    xs = sorted({r["inner_steps"] for r in rs})
    means = [mean_std([r["val_ppl"] for r in rs if r["inner_steps"] == x])[0] for x in xs]
    best = min(range(len(xs)), key=lambda i: means[i])
    if best < len(xs) - 1:
        return (f"Regime: the no-tuning run's mean validation perplexity is lowest at {xs[best]} inner steps ({means[best]:.0f}) "
                f"and ends at {means[-1]:.0f}.")
    trend = " → ".join(f"{m:.0f}" for m in means)
    return (f"Regime: the no-tuning run's mean validation perplexity still falls at the last evaluation ({trend} at "
            f"{', '.join(str(x) for x in xs)} inner steps): training stops before it levels off, so the best point is the last one.")


def rewrite(out: Path) -> None:
    """Differences, plot and README again from the runs' CSVs in ``out`` (``ptb_diffs.csv`` then
    carries this tree's commit, and the runs' in ``runs_commit``)."""
    machine.machine_info()  # the commit the CSVs name: this tree's before anything is written
    rows = output.read_csv(out / "ptb.csv")
    curve = output.read_csv(out / "ptb_curve.csv")
    hps = output.read_csv(out / "ptb_hparams.csv")
    output.write_derived_csv(out, "ptb_diffs", differences(rows), rows)
    plot(rows, curve, hps, out)
    (out / "README.md").write_text(reading(rows, curve, hps, False))


def run(out: Path, quick: bool = False, device: str = "auto", reps: int | None = None, n_jobs: int | None = None) -> list[dict[str, Any]]:
    """Every configuration × seed as a job (``N_JOBS`` joblib workers, one torch thread each; the
    quick run: in this process), then the CSVs, the plot and the README."""
    from joblib import Parallel, delayed

    dev = str(resolve_device(device))
    out.mkdir(parents=True, exist_ok=True)
    seeds = SEEDS[:1] if quick else SEEDS
    n_jobs = (1 if quick else N_JOBS) if n_jobs is None else n_jobs
    # the IFT runs (the longer ones) first, so that the two workers end together
    jobs = [(c, s) for c in ("ift_per_unit", "ift_7", "fixed") for s in seeds]
    with timing.one_thread():  # the machines this runs on are shared (README: the wall time is measured so)
        t0 = time.perf_counter()
        done = Parallel(n_jobs=n_jobs, batch_size=1)(delayed(one_run)(c, s, dev, quick) for c, s in jobs)
        wall = time.perf_counter() - t0
        results = dict(zip(jobs, done, strict=True))
        rows: list[dict[str, Any]] = []
        curve: list[dict[str, Any]] = []
        hps: list[dict[str, Any]] = []
        for config, _label, _ in CONFIGS:
            for seed in seeds:
                row, c, h = results[(config, seed)]
                row["study_wall_s"], row["n_jobs"] = wall, n_jobs
                rows.append(row)
                curve += c
                hps += h
                print(f"  paper_ptb {config:13s} seed {seed}  val ppl {row['val_ppl']:.1f}  test ppl {row['test_ppl']:.1f}  "
                      f"({row['num_hyperparams']:,} hps, {row['time_s']:.0f} s)", flush=True)
        for name, table in (("ptb", rows), ("ptb_curve", curve), ("ptb_hparams", hps), ("ptb_diffs", differences(rows))):
            output.write_csv(out, name, table, dev)  # while one thread is set: the CSVs' "threads" column is the runs'
    plot(rows, curve, hps, out)
    (out / "README.md").write_text(reading(rows, curve, hps, quick))
    return rows


def pilot(steps: int, every: int, overrides: tuple[str, ...] = (), seed: int = 0, device: str = "cpu",
          echo: bool = True) -> list[dict[str, Any]]:
    """The no-tuning run alone (seed ``seed``, the preset with ``overrides``) for ``steps`` inner
    steps, on one thread, with the validation perplexity of the whole validation split every
    ``every`` inner steps (rounded to whole hyper-steps): how far the baseline gets, and what it
    costs (CPU seconds beside wall seconds: on a shared machine the wall time is the load's).

        python -m hgbench.benchmarks.paper_ptb pilot --steps 2600 --every 300 inner_optimizer.lr=0.005
    """
    import os

    import torch

    from hgbench import build_experiment
    from hgbench.streams import evaluate_streams

    with timing.one_thread():
        exp = build_experiment(overrides=[f"experiment={PRESET}", *dict((c, o) for c, _, o in CONFIGS)["fixed"], f"seed={seed}",
                                          f"device={device}", "warmup=false", "mlflow.enabled=false", *overrides])
        inner = int(exp.cfg.inner_steps)
        hyper, each = max(1, steps // inner), max(1, every // inner)
        rows, wall0, cpu0 = [], time.perf_counter(), time.process_time()
        for step in range(1, hyper + 1):
            exp.hyper_step(step)
            if step % each == 0 or step == hyper:
                val = _ppl(evaluate_streams(exp.problem, exp.w, "val", exp.streams)["val_loss"])
                rows.append({"inner_steps": step * inner, "val_ppl": val, "wall_s": time.perf_counter() - wall0,
                             "cpu_s": time.process_time() - cpu0, "load1": os.getloadavg()[0], "threads": torch.get_num_threads()})
                if echo:
                    print("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in rows[-1].items()), flush=True)
    return rows


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="the PTB study's no-tuning pilot (see pilot())")
    ap.add_argument("what", choices=["pilot"])
    ap.add_argument("--steps", type=int, required=True, help="inner steps")
    ap.add_argument("--every", type=int, required=True, help="inner steps between validation evaluations")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("overrides", nargs="*", help="config overrides on top of the preset, e.g. inner_optimizer.lr=0.005")
    args = ap.parse_intermixed_args()  # the overrides may follow the options (the docstring's example)
    pilot(args.steps, args.every, tuple(args.overrides), args.seed)
