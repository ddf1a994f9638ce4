"""The paper's "overfitting a small validation set" (Lorraine et al. 2020, Sec. 5.2):
``hgbench-bench paper_overfit --out results/paper/overfitting``.

MNIST, the preset ``experiment=paper_overfit``: 50 training and 50 validation images (and 1,000 test
images from MNIST's official test part), full batches, Adam on the weights (``inner_steps`` = 5
steps before each hyper-step), RMSprop (lr 0.01) on λ, the IFT hypergradient with the
identity as the inverse Hessian. For each model in ``MODELS`` (``linear``; the 784-128-10 ``mlp``;
a small LeNet-like ``cnn``, ``CNN``) and each seed in ``SEEDS`` three runs of ``STEPS[model]``
hyper-steps:

- ``per-weight``: one decay per weight (``hyperparam=weight_decay_per_param``), started at the
  authors' value (log decay −4 under exp(λ)·w², i.e. 0.0366 in our ½·d·w²);
- ``global``: one decay for all weights (``hyperparam=weight_decay``), same start;
- ``fixed``: the decays kept at their start (``hypergrad=fixed``; one value for every weight, so the
  same training for either granularity).

The seed sets the initialisation AND the draw of the 50/50/1,000 images (``dataset.split_seed``), so
the spread over seeds includes which images were drawn. Train, validation and test accuracy and
loss are recorded before the first hyper-step and every ``EVAL_EVERY[model]`` hyper-steps (the
runner's full-split ``evaluate``).

The LSTM variant, the preset ``experiment=paper_overfit_lstm``: a 1-layer word-level LSTM language
model on Penn Treebank with 10 training and 10 validation windows of 10 tokens (200 test windows),
per-weight vs global vs fixed decays (started at the authors' 1e-6 under exp(λ)·w²), Adam on w (1
step per hyper-step) and on λ, ``STEPS["lstm"]`` hyper-steps, the same seeds; its train / val /
test perplexity (``*_ppl``) and next-token accuracy are recorded the same way.

Every run goes through the real framework: ``build_experiment(overrides=["experiment=<preset>",
...])``, then ``exp.train_inner(warmup_steps)`` and ``exp.hyper_step`` (Algorithm 1) with
``exp.evaluate()`` at the recorded steps. At the last hyper-step each run's per-example validation
and test correctness (MNIST: per image; PTB: per token, with its cross-entropy) goes, in the split's
order and with the split's fingerprint, to ``overfitting_correct.csv.gz``; the script asserts that
it reproduces the logged accuracy (and loss) and that the three families at one model and seed were
scored on the same examples in the same order. Every difference in the README is a paired bootstrap
over seeds and examples (``stats.paired_bootstrap``; for a difference of val − test gaps,
``per_example.gap_bootstrap``). ``--quick``: one seed, 2 hyper-steps, a tiny CNN and
LSTM and small test splits (a smoke run). The study runs on one torch thread.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from hgbench.benchmarks import output, per_example, plotting, timing
from hgbench.benchmarks.stats import mean_std, paired_bootstrap, verdict
from hgbench.benchmarks.machine import machine_info
from hgbench.machine import resolve_device

SEEDS = (0, 1, 2)
MODELS = ("linear", "mlp", "cnn", "lstm")  # "lstm": the PTB variant (its own preset)
# the CNN is LeNet-like but narrower than the cnn plugin's default [6, 16] / [120], so that its runs fit
CNN = ["dataset.image=true", "model.channels=[4,8]", "model.hidden=[32]"]
STEPS = {"linear": 200, "mlp": 200, "cnn": 200, "lstm": 100}
EVAL_EVERY = {"linear": 10, "mlp": 10, "cnn": 10, "lstm": 10}
# label -> (hyperparam family, hypergrad method)
FAMILIES = {"per-weight": ("weight_decay_per_param", "identity"), "global": ("weight_decay", "identity"),
            "fixed": ("weight_decay_per_param", "fixed")}
QUICK_STEPS = 2
QUICK_MNIST = ["dataset.test_size=100"]
QUICK_CNN = ["model.channels=[2,2]", "model.hidden=[8]"]
QUICK_LSTM = ["dataset.train_size=2", "dataset.val_size=2", "dataset.test_size=4", "dataset.bptt=5",
              "model.embedding_dim=8", "model.hidden_size=8"]
OUT = "results/paper/overfitting"
# the command of the committed results (--max-wait-min 0: the study does not wait for a quiet machine; it times nothing)
COMMAND = f"hgbench-bench paper_overfit --out {OUT} --max-wait-min 0"
# the paper's reading: "validation accuracy → ~100 %"; a model counts as reaching it at this accuracy
NEAR_PERFECT = 0.99
MAX_DECAY = 10.0  # the weight_decay family's default cap on each decay (its max_decay)


def overrides(model: str, family: str, seed: int, device: str, quick: bool) -> list[str]:
    hyperparam, hypergrad = FAMILIES[family]
    ov = [f"hyperparam={hyperparam}", f"hypergrad={hypergrad}", f"seed={seed}", f"dataset.split_seed={seed}",
          f"device={device}", "warmup=false"]
    if model == "lstm":
        return ["experiment=paper_overfit_lstm", *ov, *(QUICK_LSTM if quick else [])]
    ov = ["experiment=paper_overfit", f"model={model}", *ov, *(QUICK_MNIST if quick else [])]
    if model == "cnn":
        ov += CNN + (QUICK_CNN if quick else [])
    return ov


def trajectory(model: str, family: str, seed: int, steps: int, every: int, device: str, quick: bool = False,
               corr: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One run: ``steps`` hyper-steps of the preset; a row of metrics at step 0 and every ``every``;
    with ``corr``, the per-example rows of its last step appended to it (``correct_rows``)."""
    from hgbench import build_experiment

    exp = build_experiment(overrides=overrides(model, family, seed, device, quick))
    exp.train_inner(int(exp.cfg.warmup_steps))
    data = exp.problem.data
    info = {"model": model, "family": family, "seed": seed, "num_weights": exp.problem.num_weights,
            "num_hyperparams": exp.problem.num_hyperparams, "n_train": len(data.train.x), "n_val": len(data.val.x),
            "n_test": len(data.test.x)}
    if model == "lstm":
        info["bptt"] = int(exp.cfg.dataset.bptt)

    def row(step: int) -> dict[str, Any]:
        m = exp.evaluate()
        keep = {k: v for k, v in m.items() if k.split("_")[0] in ("train", "val", "test")}
        hp = {k[3:]: v for k, v in m.items() if k.startswith("hp/")}
        return {**info, "step": step, **keep, **hp}

    rows = [row(0)]
    for step in range(1, steps + 1):
        exp.hyper_step(step)
        if step % every == 0 or step == steps:
            rows.append(row(step))
    if corr is not None:
        corr.extend(correct_rows(exp, rows[-1]))
    return rows


def correct_rows(exp, last: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-example validation and test rows of a run at its last evaluation: 0/1 correctness per
    image (per token for the LSTM, with the per-token cross-entropy), in the split's order, with
    the split's fingerprint; asserted to give the logged accuracy and loss."""
    out = []
    for split in ("val", "test"):
        c = per_example.correct(exp.problem, exp.w.detach(), split)
        nll = per_example.token_nll(exp.problem, exp.w.detach(), split)
        assert abs(c.mean() - last[f"{split}_acc"]) < 1e-9, (split, c.mean(), last[f"{split}_acc"])
        assert abs(nll.mean() - last[f"{split}_loss"]) <= 1e-6 * max(1.0, abs(last[f"{split}_loss"])), (split, nll.mean(), last[f"{split}_loss"])
        row = {"model": last["model"], "family": last["family"], "seed": last["seed"], "step": last["step"], "split": split,
               "n": len(c), "acc": float(c.mean()), "fingerprint": per_example.fingerprint(getattr(exp.problem.data, split)),
               "correct": per_example.encode(c)}
        if last["model"] == "lstm":
            row["nll"] = per_example.encode_floats(nll, 6)
        out.append(row)
    return out


def check_pairs(corr: list[dict[str, Any]]) -> None:
    """The families at one model and seed were scored on the same examples in the same order."""
    per_example.same_examples(corr, "fingerprint", ("model", "seed", "split"))


def matrix(corr: list[dict[str, Any]], model: str, family: str, split: str, key: str = "correct") -> np.ndarray:
    """(seeds, examples): 0/1 correctness (``key="nll"``: per-token cross-entropy), seeds in order."""
    rows = sorted((r for r in corr if r["model"] == model and r["family"] == family and r["split"] == split),
                  key=lambda r: int(r["seed"]))
    return np.stack([per_example.decode(r[key]) if key == "correct" else per_example.decode_floats(r[key]) for r in rows])


# the differences the README reads: name -> (a family, b family, what); "acc" on a split: a − b;
# "gap": (val − test) of a minus that of b; "nll": a − b of the mean cross-entropy (log of a ppl ratio)
DIFFS = {"val per-weight − fixed": ("per-weight", "fixed", "val"), "test per-weight − fixed": ("per-weight", "fixed", "test"),
         "gap per-weight − fixed": ("per-weight", "fixed", "gap"), "val per-weight − global": ("per-weight", "global", "val"),
         "test per-weight − global": ("per-weight", "global", "test"), "val global − fixed": ("global", "fixed", "val"),
         "test global − fixed": ("global", "fixed", "test")}


def intervals(corr: list[dict[str, Any]], n_boot: int = 10000) -> dict[tuple[str, str], dict[str, float]]:
    """(model, name) -> a paired-bootstrap interval over seeds and examples: each name of ``DIFFS``
    in accuracy (and, for the LSTM, ``nll <name>`` in mean cross-entropy per token), and
    ``val per-weight`` — per-weight's own validation accuracy."""
    check_pairs(corr)
    out = {}
    for m in dict.fromkeys(r["model"] for r in corr):
        fams = {r["family"] for r in corr if r["model"] == m}
        if "per-weight" in fams:
            v = matrix(corr, m, "per-weight", "val")
            out[(m, "val per-weight")] = paired_bootstrap(v, np.zeros_like(v), n_boot=n_boot)
        keys = ["correct", "nll"] if m == "lstm" else ["correct"]
        for name, (a, b, what) in DIFFS.items():
            if a not in fams or b not in fams:
                continue
            for key in keys:
                label = name if key == "correct" else f"nll {name}"
                if what == "gap":
                    out[(m, label)] = per_example.gap_bootstrap(matrix(corr, m, a, "val", key), matrix(corr, m, b, "val", key),
                                                                matrix(corr, m, a, "test", key), matrix(corr, m, b, "test", key),
                                                                n_boot=n_boot)
                else:
                    out[(m, label)] = paired_bootstrap(matrix(corr, m, a, what, key), matrix(corr, m, b, what, key), n_boot=n_boot)
    return out


def ratio(i: dict[str, float]) -> str:
    """A difference of mean cross-entropies as a perplexity ratio with its interval, and its reading."""
    word = "within noise" if i["lo"] <= 0 <= i["hi"] else ("higher" if i["diff"] > 0 else "lower")
    return f"×{math.exp(i['diff']):.3g} [{math.exp(i['lo']):.3g}, {math.exp(i['hi']):.3g}], {word}"


# --- summaries ------------------------------------------------------------------------------------


def final_rows(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(model, family) -> each seed's last row."""
    last: dict[tuple[str, str, int], dict[str, Any]] = {}
    for r in rows:
        k = (r["model"], r["family"], r["seed"])
        if k not in last or r["step"] > last[k]["step"]:
            last[k] = r
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for (m, f, _), r in sorted(last.items(), key=lambda kv: kv[0][2]):
        out.setdefault((m, f), []).append(r)
    return out


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model and family, over seeds: the final train / val / test accuracy (perplexity for the
    LSTM), the final val − test gap, and the best validation accuracy along the run."""
    out = []
    best: dict[tuple[str, str, int], float] = {}
    for r in rows:
        k = (r["model"], r["family"], r["seed"])
        best[k] = max(best.get(k, -math.inf), r["val_acc"])
    for (m, f), last in final_rows(rows).items():
        s = {"model": m, "family": f, "seeds": len(last), "steps": last[0]["step"]}
        for key in ("train_acc", "val_acc", "test_acc", "train_ppl", "val_ppl", "test_ppl"):
            if key in last[0] and last[0][key] not in ("", None):
                s[key], s[key + "_std"] = mean_std([r[key] for r in last])
        s["gap_acc"], s["gap_acc_std"] = mean_std([r["val_acc"] - r["test_acc"] for r in last])
        s["best_val_acc"], s["best_val_acc_std"] = mean_std([best[(m, f, r["seed"])] for r in last])
        out.append(s)
    return out


def _by(s: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["model"], r["family"]): r for r in s}


def verdicts(s: list[dict[str, Any]], iv: dict[tuple[str, str], dict[str, float]]) -> dict[str, list[str]]:
    """Which models support each part of the paper's claim, from the final numbers and their
    intervals: ``near_perfect`` — per-weight val acc ≥ NEAR_PERFECT (pooled over seeds);
    ``overfits`` — per-weight's val − test gap above fixed's (interval above 0); ``global_cannot`` —
    per-weight's val acc above global's (interval above 0); ``test_worse`` / ``test_better`` —
    per-weight's test acc below / above fixed's (interval below / above 0)."""
    by = _by(s)
    out: dict[str, list[str]] = {"near_perfect": [], "overfits": [], "global_cannot": [], "test_worse": [], "test_better": [],
                                 "models": []}
    for m in dict.fromkeys(r["model"] for r in s if r["model"] != "lstm"):
        if not all((m, f) in by for f in FAMILIES) or (m, "gap per-weight − fixed") not in iv:
            continue
        out["models"].append(m)
        if by[(m, "per-weight")]["val_acc"] >= NEAR_PERFECT:
            out["near_perfect"].append(m)
        if iv[(m, "gap per-weight − fixed")]["lo"] > 0:
            out["overfits"].append(m)
        if iv[(m, "val per-weight − global")]["lo"] > 0:
            out["global_cannot"].append(m)
        if iv[(m, "test per-weight − fixed")]["hi"] < 0:
            out["test_worse"].append(m)
        if iv[(m, "test per-weight − fixed")]["lo"] > 0:
            out["test_better"].append(m)
    return out


# --- plots ----------------------------------------------------------------------------------------
COLORS = {"per-weight": "C3", "global": "C0", "fixed": "C7"}


def _band(ax, rows: list[dict[str, Any]], key: str, color: str, style: str, label: str | None, log: bool = False) -> None:
    """Mean ± std over seeds at each recorded step; with ``log`` the geometric mean ×/÷ the geometric
    std (the statistics of log values: a band that stays positive on a log axis)."""
    steps = sorted({r["step"] for r in rows})
    stats = [mean_std([math.log(r[key]) if log else r[key] for r in rows if r["step"] == st]) for st in steps]
    lo, mid, hi = ([m - d for m, d in stats], [m for m, _ in stats], [m + d for m, d in stats])
    if log:
        lo, mid, hi = ([math.exp(v) for v in xs] for xs in (lo, mid, hi))
    ax.plot(steps, mid, color=color, ls=style, lw=1.3, label=label)
    ax.fill_between(steps, lo, hi, color=color, alpha=0.18, lw=0)


def plot(rows: list[dict[str, Any]], out: Path) -> Path:
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plotting.subplots(1, len(models), figsize=(4.6 * len(models), 4.0), squeeze=False)
    for ax, m in zip(axes[0], models, strict=True):
        for f in FAMILIES:
            sub = [r for r in rows if r["model"] == m and r["family"] == f]
            if sub:
                _band(ax, sub, "val_acc", COLORS[f], "-", f"{f}: val")
                _band(ax, sub, "test_acc", COLORS[f], "--", f"{f}: test")
        n = next(r for r in rows if r["model"] == m)
        ax.set(title=f"{m} ({n['num_weights']:,} weights)", xlabel="hyper-step", ylabel="accuracy")
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=7)
    seeds = len({r["seed"] for r in rows})
    fig.suptitle("MNIST, 50 train + 50 val images: validation (solid) and test (dashed) accuracy, per-weight vs global vs "
                 f"fixed decay, identity inverse (mean ± std over {seeds} seed{'s' if seeds > 1 else ''})", fontsize=9)
    fig.tight_layout()
    path = out / "overfitting.png"
    fig.savefig(path, dpi=120)
    return path


def plot_lstm(rows: list[dict[str, Any]], out: Path) -> Path:
    fig, axes = plotting.subplots(1, 2, figsize=(10, 4.0))
    for f in FAMILIES:
        sub = [r for r in rows if r["family"] == f]
        if sub:
            _band(axes[0], sub, "val_ppl", COLORS[f], "-", f"{f}: val", log=True)
            _band(axes[0], sub, "test_ppl", COLORS[f], "--", f"{f}: test", log=True)
            _band(axes[1], sub, "train_ppl", COLORS[f], ":", f"{f}: train", log=True)
    axes[0].set(xlabel="hyper-step", ylabel="perplexity", yscale="log", title="validation (solid) and test (dashed)")
    axes[1].set(xlabel="hyper-step", ylabel="perplexity", yscale="log", title="training (10 windows)")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # plain labels: no mathtext (slow to lay out)
        ax.yaxis.set_minor_formatter(NullFormatter())
    seeds = len({r["seed"] for r in rows})
    n = rows[0]["num_weights"]
    fig.suptitle(f"PTB, LSTM ({n:,} weights), 10 train + 10 val windows: per-weight vs global vs fixed decay "
                 f"(geometric mean ×/÷ geometric std over {seeds} seed{'s' if seeds > 1 else ''})", fontsize=9)
    fig.tight_layout()
    path = out / "overfitting_lstm.png"
    fig.savefig(path, dpi=120)
    return path


# --- README ---------------------------------------------------------------------------------------
def _sizes(rows: list[dict[str, Any]]) -> str:
    r = rows[0]
    return f"{r['n_train']:,} train / {r['n_val']:,} val / {r['n_test']:,} test"


def _names(xs: list[str]) -> str:
    return ", ".join(xs) if xs else "none"


def _steps_range() -> str:
    steps = sorted({STEPS[m] for m in STEPS if m != "lstm"})
    return f"{steps[0]}–{steps[-1]}" if len(steps) > 1 else str(steps[0])


def reading(rows: list[dict[str, Any]], lstm_rows: list[dict[str, Any]], corr: list[dict[str, Any]], quick: bool) -> str:
    s = summary(rows)
    iv = intervals(corr)
    by = _by(s)
    seeds = sorted({r["seed"] for r in rows})
    steps = {m: max(r["step"] for r in rows if r["model"] == m) for m in dict.fromkeys(r["model"] for r in rows)}
    weights = {r["model"]: r["num_weights"] for r in rows}
    table = [[r["model"], r["family"], output.pm(r["train_acc"], r["train_acc_std"]), output.pm(r["val_acc"], r["val_acc_std"]),
              output.pm(r["test_acc"], r["test_acc_std"]), output.pm(r["gap_acc"], r["gap_acc_std"]),
              output.pm(r["best_val_acc"], r["best_val_acc_std"])] for r in s]
    v = verdicts(s, iv)
    parts = ["# Overfitting a small validation set — the paper's Sec. 5.2", "",
             f"Generated by `{COMMAND if not quick else output.command('paper_overfit', True).replace('results/perf', OUT)}` "
             "(`benchmarks/paper_overfit.py`, whose docstring says exactly what is run; presets "
             "`conf/experiment/paper_overfit.yaml` and `paper_overfit_lstm.yaml`). CSVs: `overfitting.csv` (MNIST), "
             "`overfitting_lstm.csv` (PTB), `overfitting_correct.csv.gz` (each run's per-example validation and test "
             "correctness at the last hyper-step — per token, with its cross-entropy, for the LSTM — in the split's order with "
             "its fingerprint: the intervals below are computed from it); every CSV names the committed tree it came from "
             "(`commit`); plots: `overfitting.png`, `overfitting_lstm.png`.", ""]
    if quick:
        parts += ["> **QUICK SMOKE RUN** (`--quick`): 2 hyper-steps, one seed, tiny CNN and LSTM — these numbers only show "
                  "that the code runs.", ""]
    parts += ["**The paper's setting and claim**: 50 training and 50 validation examples (MNIST and CIFAR-10), one weight "
              "decay per weight (up to millions of hyperparameters) tuned with the IFT hypergradient and the identity as "
              "the inverse Hessian, Adam on the weights and RMSprop on the decays; linear, MLP and CNN models, and an LSTM "
              "language model with 10 training and 10 validation sequences. The validation accuracy is driven to ~100 % "
              "while the test accuracy stays far lower; a single global decay cannot overfit the validation set that way. "
              "The paper gives this as a figure (accuracy curves), with no number to compare beyond the ~100 %.", "",
              f"**Ours** (MNIST: {_sizes(rows)} images; {len(seeds)} seed{'s' if len(seeds) > 1 else ''}, "
              "each with its own initialisation and its own draw of the images; "
              + ", ".join(f"{m} {steps[m]} hyper-steps ({weights[m]:,} weights)" for m in steps)
              + "; 5 Adam steps per hyper-step; final values, mean ± std over seeds; gap = val − test accuracy; best val = "
              "the highest validation accuracy along the run):", "",
              output.md_table(["model", "decay", "train acc", "val acc", "test acc", "val − test gap", "best val acc"], table),
              "", "![overfitting](overfitting.png)", ""]
    n_val = sorted({int(r["n"]) for r in corr if r["split"] == "val" and r["model"] != "lstm"})
    n_test = sorted({int(r["n"]) for r in corr if r["split"] == "test" and r["model"] != "lstm"})
    mnist_models = [m for m in steps if any(k[0] == m for k in iv)]
    if mnist_models:
        names = [n for n in DIFFS if any((m, n) in iv for m in mnist_models)]
        parts += [f"**Differences with their intervals** (final values; Δ in accuracy points, each a 95 % paired bootstrap "
                  f"over the {len(seeds)} seeds and the {'/'.join(map(str, n_val))} validation and "
                  f"{'/'.join(f'{n:,}' for n in n_test)} test images of each seed — one validation image is "
                  f"{100 / (len(seeds) * max(n_val)):.2f} points of a pooled accuracy; \"gap\" = (val − test) of one "
                  "minus that of the other; \"within noise\" when the interval includes 0):", "",
                  output.md_table(["model", *names], [[m, *(verdict(iv[(m, n)]) if (m, n) in iv else "—" for n in names)]
                                                      for m in mnist_models]), ""]
    if v["models"]:
        def cell(m: str, f: str, k: str) -> str:
            return f"{by[(m, f)][k]:.3f}"

        per_model = "; ".join(
            f"{m}: val {cell(m, 'per-weight', 'val_acc')} per-weight / {cell(m, 'global', 'val_acc')} global / "
            f"{cell(m, 'fixed', 'val_acc')} fixed, test {cell(m, 'per-weight', 'test_acc')} / {cell(m, 'global', 'test_acc')} / "
            f"{cell(m, 'fixed', 'test_acc')}" for m in v["models"])
        dv = {m: by[(m, "per-weight")]["val_acc"] - by[(m, "fixed")]["val_acc"] for m in v["models"]}
        dt = {m: by[(m, "per-weight")]["test_acc"] - by[(m, "fixed")]["test_acc"] for m in v["models"]}
        d_val, d_test = (", ".join(f"{d[m]:+.3f} ({m})" for m in v["models"]) for d in (dv, dt))
        small = [m for m in v["models"] if dv[m] > 2 * dt[m]]
        carry = (f"less than half of the validation gain carries over to the test images for: {_names(small)}"
                 + (f" (at least half for: {_names([m for m in v['models'] if m not in small])})" if len(small) < len(v["models"]) else ""))
        missed = [m for m in v["models"] if m not in v["near_perfect"]]
        pw_val = "; ".join(f"{m} {100 * iv[(m, 'val per-weight')]['diff']:.1f} % [{100 * iv[(m, 'val per-weight')]['lo']:.1f}, "
                           f"{100 * iv[(m, 'val per-weight')]['hi']:.1f}]" for m in v["models"])
        noise = [m for m in v["models"] if m not in v["test_worse"] + v["test_better"]]
        g_val = {m: iv[(m, "val global − fixed")] for m in v["models"]}
        g_same = [m for m in v["models"] if g_val[m]["lo"] <= 0 <= g_val[m]["hi"] and iv[(m, "test global − fixed")]["lo"] <= 0
                  <= iv[(m, "test global − fixed")]["hi"]]
        parts += ["**Reading** (computed from the tables; a difference counts only when its 95 % interval excludes 0): "
                  f"{per_model}. Per-weight decays' pooled validation accuracy (with its interval): {pw_val}; ≥ {NEAR_PERFECT} "
                  f"(the paper's ~100 %) for: {_names(v['near_perfect'])}"
                  + (f" — not for {_names(missed)} within these hyper-steps. " if missed else ". ")
                  + f"Their val − test gap is above the fixed decays' (interval above 0) for: {_names(v['overfits'])}; against the "
                  f"fixed decays, per-weight changes the validation accuracy by {d_val} and the test accuracy by {d_test} — "
                  f"{carry}. Per-weight's validation accuracy is above "
                  f"the single global decay's (\"a global decay cannot\") for: {_names(v['global_cannot'])}; the global decay "
                  f"is within noise of the fixed decays on both validation and test for: {_names(g_same)}. "
                  f"Per-weight's test accuracy against the fixed decays': above for {_names(v['test_better'])}, below for "
                  f"{_names(v['test_worse'])}, within noise for {_names(noise)}.", ""]
    if lstm_rows:
        ls = summary(lstm_rows)
        lby = _by(ls)
        lsteps = max(r["step"] for r in lstm_rows)
        ltable = [[r["family"], f"{r['train_ppl']:.4g} ± {r['train_ppl_std']:.2g}", f"{r['val_ppl']:.4g} ± {r['val_ppl_std']:.2g}",
                   f"{r['test_ppl']:.4g} ± {r['test_ppl_std']:.2g}", f"{r['test_ppl'] / r['val_ppl']:.2f}",
                   output.pm(r["val_acc"], r["val_acc_std"]), output.pm(r["test_acc"], r["test_acc_std"])] for r in ls]
        parts += [f"**The LSTM variant** (PTB: {_sizes(lstm_rows)} windows of {lstm_rows[0]['bptt']} tokens; a 1-layer LSTM, "
                  f"{lstm_rows[0]['num_weights']:,} weights; {lsteps} hyper-steps of 1 Adam step each; final values, mean ± std "
                  f"over {len({r['seed'] for r in lstm_rows})} seeds; next-token accuracy):", "",
                  output.md_table(["decay", "train ppl", "val ppl", "test ppl", "test / val ppl", "val acc", "test acc"], ltable),
                  "", "![overfitting, LSTM](overfitting_lstm.png)", ""]
        if all(("lstm", f) in lby for f in FAMILIES):
            pw, gl, fx = lby[("lstm", "per-weight")], lby[("lstm", "global")], lby[("lstm", "fixed")]
            lower = iv[("lstm", "nll val per-weight − fixed")]["hi"] < 0
            ratio_ = {f: lby[("lstm", f)]["test_ppl"] / lby[("lstm", f)]["val_ppl"] for f in FAMILIES}
            low = [f for f in FAMILIES if lby[("lstm", f)]["train_ppl"] < 0.1 * lby[("lstm", f)]["val_ppl"]]
            memorised = (f" Training perplexity is below a tenth of the validation perplexity (the training windows "
                         f"memorised) for: {_names(low)}.")
            last = final_rows(lstm_rows)[("lstm", "global")]
            # exp λ, the hyperparameter itself ("decay" is the capped one the loss uses; older CSVs logged exp λ there)
            raw = [math.exp(r["log_decay"]) if r.get("log_decay") not in (None, "") else r["decay"] for r in last]
            capped = sum(x >= MAX_DECAY for x in raw)
            ends = ", ".join(format(x, ".3g") for x in raw)
            memorised += (f" The global decay ends at {ends} (exp λ) over the seeds, at or above the family's cap max_decay = "
                          f"{MAX_DECAY:g} (where the penalty stops growing) in {capped} of {len(last)}: one decay shrinks every "
                          f"weight alike, and its training perplexity ends at {gl['train_ppl']:.4g} (per-weight "
                          f"{pw['train_ppl']:.4g}).")
            gap = iv[("lstm", "nll gap per-weight − fixed")]  # (val − test) NLL of per-weight minus fixed's
            wider = gap["hi"] < 0  # per-weight's test ÷ val perplexity above fixed's, beyond the interval
            li = {n: ratio(iv[("lstm", f"nll {n}")]) for n in ("val per-weight − fixed", "test per-weight − fixed",
                                                               "val per-weight − global", "test per-weight − global")}
            gap_ratio = ratio({"diff": -gap["diff"], "lo": -gap["hi"], "hi": -gap["lo"]})
            n_tok = {sp: sorted({int(r["n"]) for r in corr if r["model"] == "lstm" and r["split"] == sp}) for sp in ("val", "test")}
            parts += [f"**Reading (LSTM)** (ratios of perplexities with 95 % paired-bootstrap intervals over the seeds and the "
                      f"{'/'.join(map(str, n_tok['val']))} validation and {'/'.join(f'{n:,}' for n in n_tok['test'])} test tokens "
                      "of each seed, on the per-token cross-entropy; the perplexities quoted are the table's means over "
                      "seeds): the per-weight decays end at validation perplexity "
                      f"{pw['val_ppl']:.4g} against {fx['val_ppl']:.4g} with fixed decays (per-weight ÷ fixed, pooled: "
                      f"{li['val per-weight − fixed']}) and {gl['val_ppl']:.4g} with one global decay (per-weight ÷ global: "
                      f"{li['val per-weight − global']}); test perplexity {pw['test_ppl']:.4g} / {fx['test_ppl']:.4g} / "
                      f"{gl['test_ppl']:.4g} (per-weight ÷ fixed {li['test per-weight − fixed']}; ÷ global "
                      f"{li['test per-weight − global']}). Test ÷ val perplexity (table means): per-weight {ratio_['per-weight']:.2f}, global "
                      f"{ratio_['global']:.2f}, fixed {ratio_['fixed']:.2f}; per-weight's test ÷ val ratio over fixed's, pooled: "
                      f"{gap_ratio} — "
                      + ("the per-weight decays fit the 10 validation windows far better than unseen text, as the paper says."
                         if wider and lower else
                         "the per-weight decays do not open a larger val/test gap than the fixed decays beyond the interval here.")
                      + memorised, ""]
    parts += ["**Where we differ from the paper**: MNIST only — CIFAR-10 cannot be loaded on these machines (no package "
              "ships it; `dataset=cifar10` reads it from a local folder); 1,000 test images from MNIST's official test part. "
              "Our models: `linear` (the authors' logistic regression), a 784-128-10 MLP (the authors' one-hidden-layer net "
              f"is 784-784-10), and a narrow LeNet-like CNN ({', '.join(c.split('=', 1)[1] for c in CNN[1:])} for "
              "channels / hidden), sized so the study fits about 3 minutes of one CPU core while the machine is shared. "
              "From the authors' code (`mnist_test.py` on their `weight_decay_overfit` branch, `setup_overfit_validation`) we keep 50 + 50 examples in full "
              "batches, the initial log decay −4 under exp(λ)·w² (our 0.0366 under ½·d·w²), the identity inverse with no "
              "scaling, 5 Adam steps before each hyper-step and RMSprop at torch's default lr 0.01; we "
              f"change Adam's lr on the weights from 1e-4 to 1e-3 and run {_steps_range()} hyper-steps instead of up to 1,000 "
              "(their runs stop once train and val accuracy reach 99.9 %), so our curves may stop before the paper's "
              "plateau. The LSTM: the authors' `rnn/train2.py` (per-weight decay from 1e-6, identity inverse, one weight "
              "step per hyper-step, Adam on λ, a 650-unit LSTM, `--small_data`: the first 10 time steps of 40 streams) "
              "becomes a 1-layer LSTM of 64 units on 10 random windows of 10 tokens per split, with Adam at 3e-3 on w "
              f"(not 1e-4) and 0.3 on λ (not 1e-3) for {STEPS['lstm']} hyper-steps — at their rates the decays, starting at 2e-6, "
              "cannot reach a size that matters within so few steps.", ""]
    return "\n".join(parts)


def rewrite(out: Path) -> None:
    """Plots and README again from the CSVs in ``out`` (after a change to how they are drawn)."""
    rows = output.read_csv(out / "overfitting.csv")
    lstm_path = out / "overfitting_lstm.csv"
    lstm_rows = output.read_csv(lstm_path) if lstm_path.exists() else []
    quick = len({r["seed"] for r in rows}) < 2 and max(r["step"] for r in rows) <= QUICK_STEPS
    corr = per_example.read_gz(out / "overfitting_correct.csv.gz")
    plot(rows, out)
    if lstm_rows:
        plot_lstm(lstm_rows, out)
    (out / "README.md").write_text(reading(rows, lstm_rows, corr, quick))


def run(out: Path, quick: bool = False, device: str = "auto", reps: int | None = None) -> list[dict[str, Any]]:
    dev = str(resolve_device(device))
    out.mkdir(parents=True, exist_ok=True)
    with timing.one_thread():  # a shared machine: one core for the study (the results do not depend on it)
        return _run(out, quick, dev)


def _run(out: Path, quick: bool, dev: str) -> list[dict[str, Any]]:
    machine_info(dev)  # the commit (and date) of the CSVs: the tree this run starts from, not the one it ends in
    seeds = SEEDS[:1] if quick else SEEDS
    rows: list[dict[str, Any]] = []
    lstm_rows: list[dict[str, Any]] = []
    corr: list[dict[str, Any]] = []
    for model in MODELS:
        steps, every = (QUICK_STEPS, 1) if quick else (STEPS[model], EVAL_EVERY[model])
        for family in FAMILIES:
            for seed in seeds:
                run_rows = trajectory(model, family, seed, steps, every, dev, quick, corr)
                (lstm_rows if model == "lstm" else rows).extend(run_rows)
                last = run_rows[-1]
                extra = f"  val ppl {last['val_ppl']:.4g}  test ppl {last['test_ppl']:.4g}" if model == "lstm" else ""
                print(f"  paper_overfit {model:6s} {family:10s} seed {seed}: val acc {last['val_acc']:.3f}  "
                      f"test acc {last['test_acc']:.3f}{extra}", flush=True)
    check_pairs(corr)  # the families at one model and seed on the same examples in the same order
    output.write_csv(out, "overfitting", rows, dev)
    per_example.write_gz(out, "overfitting_correct", corr, dev)
    plot(rows, out)
    if lstm_rows:
        output.write_csv(out, "overfitting_lstm", lstm_rows, dev)
        plot_lstm(lstm_rows, out)
    (out / "README.md").write_text(reading(rows, lstm_rows, corr, quick))
    return rows + lstm_rows
