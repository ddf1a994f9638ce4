"""The paper's RNN-regularisation experiment (Lorraine et al. 2020, Sec. 5.3, Table 3) at CPU scale:
``hgbench-bench paper_ptb --out results/paper/ptb``.

An LSTM language model on Penn Treebank trained with truncated BPTT, the preset
``experiment=paper_ptb`` (its header lists every size): 2 layers × 32 units, tied embedding of 32,
the 10,000-word vocabulary, bptt 20 over 10 parallel streams, a contiguous slice of 200 training
windows (4,000 tokens) and 200-window validation / test slices; Adam on the weights; per
hyper-step ``inner_steps`` (5) inner steps, then one hypergradient (Neumann, 1 iteration = 2
terms) on the next training window and the next validation window and one Adam step on λ;
``hyper_steps`` (40) hyper-steps, so 200 inner steps in all. Three configurations, seeds ``SEEDS`` each (the weights'
initialisation and the dropout noise; the data slices are fixed):

- ``fixed``: no tuning — ``hyperparam=dropout_rates`` with all 7 regularisers at their initial
  values (every rate 0.05, AR / TAR 0.01) and ``hypergrad=fixed`` (λ never moves; the preset's
  ``hypergrad.iterations`` removed);
- ``ift_7``: IFT on the paper's 7 global hyperparameters (``dropout_rates``: embedding, hidden,
  output dropout, word dropout, weight-drop, AR, TAR), from the same initial values;
- ``ift_per_unit``: IFT on per-unit rates at the three dropout sites, a rate per hidden-to-hidden
  weight for DropConnect, one word-dropout rate, AR and TAR (``dropout_per_unit`` with the same
  extras and initial values) — the paper's 1,691,951-hyperparameter variant at this scale.

Recorded: every ``CURVE_EVERY`` hyper-steps the validation and test perplexity (the whole slices,
the streams walked in order: ``hgbench.streams.evaluate_streams``) and, every hyper-step, the
family's metrics (the rates' means, AR and TAR); at the end ``exp.evaluate()``: train / val / test
perplexity of the final weights. Reported: the final weights' perplexities and those at the
best-validation point of the curve (the paper reports its best-validation checkpoint). The study
runs single-threaded (``torch.set_num_threads(1)``: the machines it runs on are shared).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from hgbench.benchmarks import output, plotting, timing
from hgbench.benchmarks.stats import mean_std
from hgbench.machine import resolve_device

PRESET = "paper_ptb"
CONFIGS = (("fixed", "no tuning (fixed rates)", ["hypergrad=fixed", "~hypergrad.iterations"]),
           ("ift_7", "IFT, 7 global hyperparameters", []),
           ("ift_per_unit", "IFT, per-unit rates + per-weight DropConnect", ["hyperparam=dropout_per_unit"]))
SEEDS = (0, 1, 2)
CURVE_EVERY = 4  # hyper-steps (20 inner steps) between the curve's evaluations
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


def one_run(config: str, seed: int, device: str, quick: bool) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    from hgbench.streams import evaluate_streams

    exp = build(config, seed, device, quick)
    steps, fam = int(exp.cfg.hyper_steps), exp.problem.family
    curve, hps = [], []
    t0 = time.perf_counter()

    def record_hps(step: int) -> None:
        lam = exp.problem.lam_spec.unflatten(exp.lam.detach())
        hps.append({"config": config, "seed": seed, "step": step, **hp_values(fam.metrics(lam))})

    record_hps(0)
    for step in range(1, steps + 1):
        exp.hyper_step(step)
        record_hps(step)
        if step % CURVE_EVERY == 0 or step == steps:
            ppl = {f"{s}_ppl": math.exp(min(evaluate_streams(exp.problem, exp.w, s, exp.streams)[f"{s}_loss"], 700.0))
                   for s in ("val", "test")}
            curve.append({"config": config, "seed": seed, "step": step, "inner_steps": step * int(exp.cfg.inner_steps), **ppl})
    final = exp.evaluate()
    best = min(curve, key=lambda r: r["val_ppl"])  # the best-validation point (the paper reports that checkpoint)
    data, cfg = exp.problem.data, exp.cfg
    row = {"config": config, "seed": seed, "num_hyperparams": exp.problem.num_hyperparams, "num_weights": exp.problem.num_weights,
           "hyper_steps": steps, "inner_steps": steps * int(cfg.inner_steps), "width": int(cfg.model.hidden_size),
           "embedding": int(cfg.model.embedding_dim), "layers": int(cfg.model.num_layers), "bptt": int(cfg.dataset.bptt),
           "streams": exp.streams, **{f"{s}_tokens": getattr(data, s).y.numel() for s in ("train", "val", "test")},
           **{f"{s}_ppl": final[f"{s}_ppl"] for s in ("train", "val", "test")},
           "best_val_ppl": best["val_ppl"], "best_test_ppl": best["test_ppl"], "best_inner_steps": best["inner_steps"],
           **{f"hp_{k}": v for k, v in hps[-1].items() if k not in ("config", "seed", "step")},
           "time_s": time.perf_counter() - t0}
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


def compare(s: dict[str, dict[str, tuple[float, float]]], a: str, b: str, key: str) -> tuple[float, str]:
    """``a``'s mean ``key`` against ``b``'s: the relative change (%) and whether it is lower / higher
    beyond the seed spread (the means differ by more than the two standard deviations together)."""
    (ma, sa), (mb, sb) = s[a][key], s[b][key]
    if abs(ma - mb) > sa + sb:
        word = "lower" if ma < mb else "higher"
    else:
        word = "within the seed spread"
    return 100 * (ma - mb) / mb, word


def _against(s, a: str, b: str, keys: tuple[str, str]) -> str:
    (rv, wv), (rt, wt) = compare(s, a, b, keys[0]), compare(s, a, b, keys[1])
    return f"{rv:+.1f} % / {rt:+.1f} % ({wv} / {wt})"


def reading(rows: list[dict[str, Any]], curve: list[dict[str, Any]], hps: list[dict[str, Any]], quick: bool) -> str:
    s = summary(rows)
    labels = {c: lab for c, lab, _ in CONFIGS}
    configs = list(s)
    seeds = sorted({r["seed"] for r in rows})
    r0 = rows[0]
    size = (f"LSTM {int(r0['layers'])} × {int(r0['width'])}, tied embedding of {int(r0['embedding'])}, {int(r0['num_weights']):,} weights; "
            f"bptt {int(r0['bptt'])} over {int(r0['streams'])} streams; {int(r0['train_tokens']):,} / {int(r0['val_tokens']):,} / "
            f"{int(r0['test_tokens']):,} train / val / test tokens")
    table = [[labels.get(c, c), f"{int(s[c]['num_hyperparams'][0]):,}", output.pm(*s[c]["train_ppl"], ".1f"), output.pm(*s[c]["val_ppl"], ".1f"), output.pm(*s[c]["test_ppl"], ".1f"),
              output.pm(*s[c]["best_val_ppl"], ".1f"), output.pm(*s[c]["best_test_ppl"], ".1f"), output.pm(*s[c]["best_inner_steps"], ".0f"),
              f"{PAPER_COUNT[c]:,}", f"{PAPER[c][0]:.2f} / {PAPER[c][1]:.2f}", output.pm(*s[c]["time_s"], ".0f")] for c in configs]
    hp_table = []
    for c in configs:
        cells = []
        for k in HPS:
            v = s[c].get(f"hp_{k}")
            cells.append("—" if v is None else output.pm(*v, ".3f"))
        hp_table.append([labels.get(c, c), *cells])
    parts = ["# RNN regularisation on Penn Treebank — the paper's Sec. 5.3 (Table 3), at CPU scale", "",
             f"Generated by `{output.command('paper_ptb', quick, '' if quick else ' --max-wait-min 0').replace('results/perf', 'results/paper/ptb')}` "
             "(`benchmarks/paper_ptb.py`, whose docstring says exactly what is run; the preset is "
             "`conf/experiment/paper_ptb.yaml`). CSVs: `ptb.csv` (one row per run: final perplexities and hyperparameters), "
             "`ptb_curve.csv` (validation and test perplexity along the runs), `ptb_hparams.csv` (the hyperparameters at every "
             "hyper-step); plot: `ptb.png`.", ""]
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
              f"{int(r0['hyper_steps'])} hyper-steps, {int(r0['inner_steps'])} inner steps in all; perplexities on the preset's "
              f"slices of the final weights and at the best-validation point among the evaluations every {CURVE_EVERY} "
              "hyper-steps (the paper reports its best-validation checkpoint); mean ± std over seeds; time: the run's wall "
              "time on this shared machine, one thread):", "",
              output.md_table(["configuration", "hyperparameters", "train ppl (final)", "val ppl (final)", "test ppl (final)",
                               "val ppl (best point)", "test ppl (best point)", "best point (inner steps)",
                               "paper: hyperparameters", "paper: val / test ppl", "time (s)"], table), "",
              "Final hyperparameters (rates: the mean over units / weights; AR, TAR: the coefficients), mean ± std over seeds:",
              "", output.md_table(["configuration", *HPS], hp_table), "", "![ptb](ptb.png)", ""]
    read = []
    for c in ("ift_7", "ift_per_unit"):
        if c in s and "fixed" in s:
            read.append(f"{labels[c]} against no tuning, validation / test perplexity: final weights "
                        f"{_against(s, c, 'fixed', ('val_ppl', 'test_ppl'))}, best-validation point "
                        f"{_against(s, c, 'fixed', ('best_val_ppl', 'best_test_ppl'))} (the paper: "
                        f"{100 * (PAPER[c][0] - PAPER['fixed'][0]) / PAPER['fixed'][0]:+.1f} % / "
                        f"{100 * (PAPER[c][1] - PAPER['fixed'][1]) / PAPER['fixed'][1]:+.1f} %)")
    if "ift_7" in s and "ift_per_unit" in s:
        read.append(f"per-unit against the 7: final {_against(s, 'ift_per_unit', 'ift_7', ('val_ppl', 'test_ppl'))}, best point "
                    f"{_against(s, 'ift_per_unit', 'ift_7', ('best_val_ppl', 'best_test_ppl'))} (the paper: −1.5 % / −0.4 %)")

    def beats(key: str) -> str:
        won = [labels[c] for c in ("ift_7", "ift_per_unit") if c in s and "fixed" in s and compare(s, c, "fixed", key)[1] == "lower"]
        return "both IFT variants" if len(won) == 2 else (won[0] if won else "neither IFT variant")

    verdict = ""
    if "fixed" in s:
        verdict = (f"The paper's claim — IFT tuning gives a lower validation perplexity than no tuning — holds here, beyond the "
                   f"seed spread, for {beats('val_ppl')} at the final weights and for {beats('best_val_ppl')} at the "
                   "best-validation point. ")
    moved = []
    for c in ("ift_7", "ift_per_unit"):
        if c in s and "fixed" in s:
            moved.append(labels[c] + ": " + ", ".join(f"{k} {s['fixed'][f'hp_{k}'][0]:.3g} → {s[c][f'hp_{k}'][0]:.3g}"
                                                      for k in HPS if f"hp_{k}" in s[c] and f"hp_{k}" in s["fixed"]))
    spread = ("a difference counts when the means differ by more than the two seed spreads together" if len(seeds) > 1 else
              "one seed: no spread, so every difference shows as lower or higher")
    parts += ["**Reading**: " + "; ".join(read) + f" ({spread}). " + verdict
              + "Start → end of the learned values (mean over seeds; per-unit: the mean rate) — " + "; ".join(moved) + ". "
              + _regime(s, curve), ""]
    ratio = s["fixed"]["val_ppl"][0] / PAPER["fixed"][0] if "fixed" in s else float("nan")
    parts += [f"**Where we differ from the paper**: the scale, first — {int(r0['layers'])} × {int(r0['width'])} units instead of "
              f"2 × 650, {int(r0['train_tokens']):,} of PTB's 929,589 training tokens ({int(r0['val_tokens']):,} / "
              f"{int(r0['test_tokens']):,} val / test tokens instead of 73,760 / 82,430), bptt {int(r0['bptt'])} over "
              f"{int(r0['streams'])} streams instead of 70 over 40, and {int(r0['inner_steps'])} Adam steps instead of hundreds of "
              "SGD epochs (lr 30, gradient clipping, which the framework's inner optimisers do not have) — a small model on a "
              f"small slice, briefly trained: our no-tuning validation perplexity is {ratio:.0f}× the paper's; the comparison between the "
              "three configurations, at equal inner steps, is the point, not the numbers. Our model is the framework's `lstm` (a Python-loop LSTM, tied decoder), not "
              "AWD-LSTM's code: no ASGD, no fine-tuning stage, and the best-validation point is picked among "
              f"{len({r['inner_steps'] for r in curve if r['config'] == configs[0]})} evaluations per run, not every epoch. "
              "Every rate starts at 0.05 and AR / TAR at 0.01 (the authors' defaults for AR / TAR; their rates start near 0); "
              f"one hypergradient per {int(r0['inner_steps']) // int(r0['hyper_steps'])} inner steps (the authors take one per "
              "inner step), Neumann with 1 iteration (2 terms) and α = the "
              "inner learning rate, Adam (lr 0.1) on λ. The per-unit run has one DropConnect rate per weight of each layer "
              "(the authors share one 4H × H matrix of rates between the layers) and learns AR / TAR too, which the "
              "paper's 1,691,951 do not count. Every arm draws one training window per hyper-step for the hypergradient "
              "and the runner carries every window's state itself (once, at the weights after the inner steps, untimed), so all "
              "three walk the streams alike and carry the same state through. "
              "The full-size setting for a GPU is the preset `paper_ptb_awd` (not run here).", ""]
    return "\n".join(parts)


def _regime(s: dict[str, dict[str, tuple[float, float]]], curve: list[dict[str, Any]]) -> str:
    """Whether the no-tuning run overfits its slice (validation perplexity rising at the end) — what
    dropout is for — read from the curve."""
    rs = [r for r in curve if r["config"] == "fixed"]
    if not rs or "fixed" not in s:
        return ""
    xs = sorted({r["inner_steps"] for r in rs})
    means = [mean_std([r["val_ppl"] for r in rs if r["inner_steps"] == x])[0] for x in xs]
    best = min(range(len(xs)), key=lambda i: means[i])
    gap = s["fixed"]["val_ppl"][0] / s["fixed"]["train_ppl"][0]
    trend = (f"the no-tuning run's validation perplexity is lowest at {xs[best]} inner steps ({means[best]:.0f}) and ends at "
             f"{means[-1]:.0f}, so it overfits its slice by the end" if best < len(xs) - 1 else
             f"the no-tuning run's validation perplexity still falls at the last point ({means[-1]:.0f}), so training stops "
             "before the slice is overfit")
    return f"Regime: {trend}; its validation / training perplexity ratio is {gap:.2f}."


def rewrite(out: Path) -> None:
    """Plot and README again from the CSVs in ``out``."""
    rows = output.read_csv(out / "ptb.csv")
    curve = output.read_csv(out / "ptb_curve.csv")
    hps = output.read_csv(out / "ptb_hparams.csv")
    plot(rows, curve, hps, out)
    (out / "README.md").write_text(reading(rows, curve, hps, False))


def run(out: Path, quick: bool = False, device: str = "auto", reps: int | None = None) -> list[dict[str, Any]]:
    dev = str(resolve_device(device))
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    curve: list[dict[str, Any]] = []
    hps: list[dict[str, Any]] = []
    with timing.one_thread():  # the machines this runs on are shared (README: the wall time is measured so)
        for config, _label, _ in CONFIGS:
            for seed in (SEEDS[:1] if quick else SEEDS):
                row, c, h = one_run(config, seed, dev, quick)
                rows.append(row)
                curve += c
                hps += h
                print(f"  paper_ptb {config:13s} seed {seed}  val ppl {row['val_ppl']:.1f}  test ppl {row['test_ppl']:.1f}  "
                      f"({row['num_hyperparams']:,} hps, {row['time_s']:.0f} s)", flush=True)
        for name, table in (("ptb", rows), ("ptb_curve", curve), ("ptb_hparams", hps)):
            output.write_csv(out, name, table, dev)  # while one thread is set: the CSVs' "threads" column is the runs'
    plot(rows, curve, hps, out)
    (out / "README.md").write_text(reading(rows, curve, hps, quick))
    return rows
