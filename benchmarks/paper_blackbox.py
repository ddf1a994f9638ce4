"""Gradient-based against black-box tuning at equal compute (issue 11, experiment 7):
``hgbench-bench paper_blackbox --out results/paper/blackbox``.

One task, one search space for both sides: the preset ``experiment=paper_blackbox`` — ONE global
weight decay of a 64-32-10 MLP on sklearn digits (500 train / 500 val / 797 test), SGD lr 0.1 on
the weights, ``inner_steps`` = 10 per hyper-step, batches of 128 — run for ``HYPER_STEPS``
hyper-steps (so ``HYPER_STEPS`` × 10 weight updates).

- **IFT** (``neumann``, i = 5; Adam lr 0.1 on log λ, λ started at the log-centre of Optuna's
  interval): ``exp.hyper_step`` ``HYPER_STEPS`` times, ``exp.evaluate()`` every ``EVAL_EVERY``
  hyper-steps; its curve is the best val loss so far against the wall time since the run began.
  Its wall time — building the experiment, training, hypergradients and evaluations — is the
  seed's BUDGET B.
- **Optuna**: the same sampler as ``sweep=optuna_weight_decay`` (TPE, its ``n_startup_trials``,
  sampler seed = the preset's + the seed) on the same interval of ``hyperparam.init_decay``
  (read from that preset), in-process (``study.ask`` / ``study.tell``); each trial builds the
  same experiment with ``hypergrad=fixed`` and its decay, runs the same ``HYPER_STEPS`` ×
  10 weight updates (``exp.hyper_step``, λ fixed) and one ``exp.evaluate()``; its objective is the
  final val loss. Trials go on until ``EXTEND`` × B has passed (the one under way finishes); its
  curve is the best trial's val loss against the cumulative wall time at each trial's end
  (sampler time included).
- **IFT, per weight** (a LARGER search space Optuna cannot search: one decay per weight, 2,410
  hyperparameters; ``hyperparam.granularity=per_param``), otherwise as IFT, drawn on the same axes.

Both clocks run from building the experiment to the end of its last evaluation; the Hydra config
is composed once per side and seed, outside the clocks. The seeds (``SEEDS``; the model's
initialisation and batch order, and Optuna's sampler) are interleaved — IFT, Optuna, IFT per weight
for seed 0, then seed 1, … — and the 1-minute load average is recorded before each run.
Gradient equivalents: weight updates + the hypergradients' time in units of the run's own mean
inner step (``hvp_calls`` per hypergradient are recorded too); evaluations are forward passes and
count in wall time only. The reading compares the sides' best val loss at 25 / 50 / 100 % of B (and
Optuna at ``EXTEND`` × B), and the test loss and accuracy of each side's choice at B: the
evaluation (IFT) or trial (Optuna) with the lowest val loss so far.

Every row also holds its weights' per-example test correctness (``test_correct``, packed by
``per_example.pack``; computed after the row's clock reading, and its time is kept off the clock). The
intervals (``intervals``, written to ``blackbox_intervals.csv``): test accuracies of two sides'
choices on the shared test set — a paired bootstrap over the seeds × the 797 test images
(``stats.paired_bootstrap``); val/test loss differences and the times at which Optuna catches up —
one number per seed, Student's t over the seeds (``stats.t_interval``); all 95 %. The wall-time
numbers (B, the fractions of B, the catch-up times) depend on the machine's load, recorded per run.
"""

from __future__ import annotations

import importlib.resources
import math
import re
import time
from pathlib import Path
from typing import Any

import torch

from hgbench.benchmarks import machine, output, per_example, plotting, timing
from hgbench.benchmarks.stats import mean_std, paired_bootstrap, t_interval, verdict
from hgbench.machine import resolve_device

PRESET = "paper_blackbox"
SWEEP = importlib.resources.files("hgbench.conf") / "sweep" / "optuna_weight_decay.yaml"  # the installed preset
SEEDS = (0, 1, 2, 3, 4)
HYPER_STEPS = 100
EVAL_EVERY = 10
EXTEND = 4.0           # Optuna runs on to this many budgets (the reading's last column)
FRACTIONS = (0.25, 0.5, 1.0)
MAX_TRIALS = 60        # a safety stop for Optuna on a very slow machine
SIDES = ("ift", "optuna", "ift_per_weight")
LABEL = {"ift": "IFT (Neumann-5), global decay", "optuna": "Optuna TPE, global decay",
         "ift_per_weight": "IFT, one decay per weight (larger space)"}


# --- the Optuna preset's space and sampler --------------------------------------------------------
def optuna_space(path: Path | importlib.resources.abc.Traversable = SWEEP) -> dict[str, Any]:
    """The parameter, interval, log flag and sampler settings of ``sweep=optuna_weight_decay``:
    the study searches exactly what the preset searches (one parameter, an interval)."""
    import yaml

    sweeper = yaml.safe_load(path.read_text())["hydra"]["sweeper"]
    params = sweeper["params"]
    if len(params) != 1:
        raise ValueError(f"{path.name}: the study compares one searched parameter, the preset has {sorted(params)}")
    (name, spec), = params.items()
    m = re.fullmatch(r"\s*(?:tag\((log),\s*)?interval\(([^,]+),([^)]+)\)\)?\s*", str(spec))
    if not m:
        raise ValueError(f"{path.name}: {name}: {spec!r} is not 'interval(a, b)' or 'tag(log, interval(a, b))'")
    sampler = sweeper.get("sampler", {})
    return {"name": name, "low": float(m.group(2)), "high": float(m.group(3)), "log": bool(m.group(1)),
            "seed": int(sampler.get("seed") or 0), "n_startup_trials": int(sampler.get("n_startup_trials", 10))}


# --- one run / one trial ----------------------------------------------------------------------------
def _config(seed: int, device: str, steps: int, eval_every: int, extra: tuple[str, ...] = ()):
    from hgbench import compose_config

    return compose_config([f"experiment={PRESET}", f"seed={seed}", f"device={device}", f"hyper_steps={steps}",
                           f"eval_every={eval_every}", "warmup=false", "mlflow.enabled=false", "progress=false", *extra])


def _with(cfg, **values: Any):
    """A copy of the composed config with dotted keys set (an Optuna trial's values)."""
    import copy

    from omegaconf import OmegaConf

    c = copy.deepcopy(cfg)
    for k, v in values.items():
        OmegaConf.update(c, k, v, merge=False)
    return c


def _decay(ev: dict[str, float]) -> float:
    return ev["hp/decay"] if "hp/decay" in ev else math.exp(ev["hp/mean_log_decay"])


def ift_run(side: str, seed: int, device: str, steps: int, eval_every: int) -> list[dict[str, Any]]:
    """One IFT run: a row per evaluation (every ``eval_every`` hyper-steps and at the last), with
    the wall time since the clock started and the gradient equivalents spent so far."""
    from hgbench.runner import Experiment

    cfg = _config(seed, device, steps, eval_every, ("hyperparam.granularity=per_param",) if side == "ift_per_weight" else ())
    k = int(cfg.inner_steps)
    load = machine.load_average()
    rows, inner_s, hg_s, hvp = [], 0.0, 0.0, 0
    t0 = time.perf_counter()
    exp = Experiment(cfg)
    for step in range(1, steps + 1):
        m = exp.hyper_step(step)
        inner_s, hg_s, hvp = inner_s + m["inner_time_s"], hg_s + m["hypergrad_time_s"], hvp + int(m["hvp_calls"])
        if step % eval_every == 0 or step == steps:
            ev = exp.evaluate()
            t = time.perf_counter() - t0
            tc = time.perf_counter()
            correct = per_example.pack(per_example.correct(exp.problem, exp.w, "test"))
            t0 += time.perf_counter() - tc  # the correctness pass stays off the clock
            updates = step * k
            rows.append({"side": side, "seed": seed, "step": step, "trial": "", "t_s": t, "weight_updates": updates,
                         "grad_eq": updates + hg_s / (inner_s / updates), "hvp_per_hypergrad": hvp / step,
                         "hypergrad_per_grad": (hg_s / step) / (inner_s / updates), "val_loss": ev["val_loss"],
                         "val_acc": ev["val_acc"], "test_loss": ev["test_loss"], "test_acc": ev["test_acc"],
                         "decay": _decay(ev), "load1_start": load, "n_test": len(exp.problem.data.test.x),
                         "test_correct": correct})
    return rows


def warm_up(device: str) -> None:
    """One untimed build, hyper-step and evaluation of the preset: the process's one-time costs
    (loading the data, autograd's first calls) stay out of the first clock, whichever side it is."""
    from hgbench.runner import Experiment

    exp = Experiment(_config(0, device, 1, 1))
    exp.hyper_step(1)
    exp.evaluate()


def optuna_side(seed: int, device: str, steps: int, eval_every: int, budget_s: float, extend: float,
                max_trials: int = MAX_TRIALS) -> list[dict[str, Any]]:
    """Optuna trials (λ fixed, ``steps`` × k weight updates each) until ``extend`` × ``budget_s``
    of wall time has passed: a row per trial, at its end."""
    import optuna

    from hgbench.runner import Experiment

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = optuna_space()
    sampler = optuna.samplers.TPESampler(seed=space["seed"] + seed, n_startup_trials=space["n_startup_trials"])
    study = optuna.create_study(direction="minimize", sampler=sampler)
    base = _config(seed, device, steps, steps, ("hypergrad=fixed",))
    k = int(base.inner_steps)
    load = machine.load_average()
    rows, grad_eq = [], 0.0
    t0 = time.perf_counter()
    while len(rows) < max_trials and (not rows or time.perf_counter() - t0 < extend * budget_s):
        trial = study.ask()
        value = trial.suggest_float(space["name"], space["low"], space["high"], log=space["log"])
        exp = Experiment(_with(base, **{space["name"]: value}))
        inner_s = hg_s = 0.0
        for step in range(1, steps + 1):
            m = exp.hyper_step(step)
            inner_s, hg_s = inner_s + m["inner_time_s"], hg_s + m["hypergrad_time_s"]
        ev = exp.evaluate()
        if math.isfinite(ev["val_loss"]):
            study.tell(trial, ev["val_loss"])
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        updates = steps * k
        grad_eq += updates + hg_s / (inner_s / updates)
        t = time.perf_counter() - t0
        tc = time.perf_counter()
        correct = per_example.pack(per_example.correct(exp.problem, exp.w, "test"))
        t0 += time.perf_counter() - tc  # the correctness pass stays off the clock
        rows.append({"side": "optuna", "seed": seed, "step": steps, "trial": len(rows), "t_s": t,
                     "weight_updates": updates * (len(rows) + 1), "grad_eq": grad_eq, "hvp_per_hypergrad": 0.0,
                     "hypergrad_per_grad": float("nan"), "val_loss": ev["val_loss"], "val_acc": ev["val_acc"],
                     "test_loss": ev["test_loss"], "test_acc": ev["test_acc"], "decay": _decay(ev), "load1_start": load,
                     "n_test": len(exp.problem.data.test.x), "test_correct": correct})
    return rows


# --- curves and the reading ---------------------------------------------------------------------------
def budgets(rows: list[dict[str, Any]]) -> dict[int, float]:
    """Each seed's budget: its IFT run's wall time (to the end of its last evaluation)."""
    return {s: max(r["t_s"] for r in rows if r["side"] == "ift" and r["seed"] == s) for s in sorted({r["seed"] for r in rows})}


def best_at(rows: list[dict[str, Any]], side: str, seed: int, t: float, key: str = "t_s") -> dict[str, Any] | None:
    """The row with the lowest val loss among ``side``'s rows of ``seed`` done by ``t`` (None: none yet)."""
    done = [r for r in rows if r["side"] == side and r["seed"] == seed and r[key] <= t * (1 + 1e-12)
            and isinstance(r["val_loss"], float) and math.isfinite(r["val_loss"])]
    return min(done, key=lambda r: r["val_loss"]) if done else None




def _over_seeds(values: list[float], fmt: str = ".4f", n: int | None = None) -> str:
    """Mean ± std over the seeds that have a value, and how many of the ``n`` seeds that is when not all."""
    if not values:
        return "none yet"
    return output.pm(*mean_std(values), fmt) + (f" ({len(values)}/{n} seeds)" if n is not None and len(values) < n else "")


def summary(rows: list[dict[str, Any]], extend: float = EXTEND) -> list[dict[str, Any]]:
    """One row per (side, fraction of the budget): per seed the best row so far, then its val loss,
    test loss/acc, decay, trials, gradient equivalents; and which side is ahead per seed."""
    b = budgets(rows)
    seeds = sorted(b)
    out = []
    for f in (*FRACTIONS, extend):
        for side in SIDES:
            if f > 1 and side != "optuna":
                continue
            if not any(r["side"] == side for r in rows):
                continue
            best = {s: best_at(rows, side, s, f * b[s]) for s in seeds}
            spent = {s: [r for r in rows if r["side"] == side and r["seed"] == s and r["t_s"] <= f * b[s] * (1 + 1e-12)] for s in seeds}
            got = [best[s] for s in seeds if best[s] is not None]
            out.append({"side": side, "fraction": f, "seeds": len(seeds), "seeds_with_result": len(got),
                        "val_loss": [r["val_loss"] for r in got], "test_loss": [r["test_loss"] for r in got],
                        "test_acc": [r["test_acc"] for r in got], "decay": [r["decay"] for r in got],
                        "trials": [len(spent[s]) for s in seeds] if side == "optuna" else [],
                        "grad_eq": [max((r["grad_eq"] for r in spent[s]), default=0.0) for s in seeds],
                        "best": best})
    return out


def ahead(rows: list[dict[str, Any]], f: float, a: str = "ift", b_side: str = "optuna") -> dict[str, Any]:
    """Per seed at f × B, which of two sides has the lower best val loss (a side with no result
    yet is behind; both none: a tie)."""
    b = budgets(rows)
    wins = {a: 0, b_side: 0, "tie": 0}
    for s in b:
        x, y = best_at(rows, a, s, f * b[s]), best_at(rows, b_side, s, f * b[s])
        if x is None and y is None:
            wins["tie"] += 1
        elif y is None or (x is not None and x["val_loss"] < y["val_loss"]):
            wins[a] += 1
        elif x is None or y["val_loss"] < x["val_loss"]:
            wins[b_side] += 1
        else:
            wins["tie"] += 1
    return wins


def catch_up(rows: list[dict[str, Any]]) -> dict[int, float | None]:
    """Per seed: the first time (× B) at which Optuna's best val loss is at or below IFT's at B
    (None: not within Optuna's run)."""
    b = budgets(rows)
    out: dict[int, float | None] = {}
    for s in b:
        target = best_at(rows, "ift", s, b[s])["val_loss"]
        trials = sorted((r for r in rows if r["side"] == "optuna" and r["seed"] == s), key=lambda r: r["t_s"])
        out[s] = next((r["t_s"] / b[s] for r in trials if isinstance(r["val_loss"], float) and r["val_loss"] <= target), None)
    return out


def _bits(r: dict[str, Any]):
    return per_example.unpack(r["test_correct"], int(r["n_test"]))


def describe(name: str) -> str:
    """The README's words for an ``intervals`` row."""
    what, _, key = name.partition(": ")
    unit = {"val_loss": "best val loss", "test_loss": "test loss of the choice", "test_acc": "test accuracy of the choice"}.get(key, "")
    m = re.fullmatch(r"optuna_at_([\d.]+)B_minus_ift_at_([\d.]+)B", what)
    if m:
        a, c = float(m.group(1)), float(m.group(2))
        return f"Optuna at {a * 100:.0f} % of B − IFT at {c * 100:.0f} % of B, {unit}"
    m = re.fullmatch(r"optuna_first_trial_minus_ift_at_same_(t_s|grad_eq)", what)
    if m:
        return ("Optuna's first trial − IFT's best so far at the same " + ("wall time" if m.group(1) == "t_s" else
                "gradient equivalents") + f", {unit}")
    if what.startswith("ift_per_weight_end_minus_ift_end"):
        end = {"val_loss": "val loss", "test_loss": "test loss", "test_acc": "test accuracy"}.get(key, key)
        return f"IFT per weight − IFT global decay, {end} of each run's final weights"
    if what.startswith("optuna_catch_up_time_over_B"):
        return "when Optuna's best trial first reaches IFT's best val loss at B, in units of B (seeds that got there)"
    if what == "optuna_first_trial_time_over_B":
        return "when Optuna's first trial finishes, in units of B"
    return name


def _row(name: str, iv: dict[str, Any], per_seed: list[float] | None = None) -> dict[str, Any]:
    centre = iv.get("diff", iv.get("mean"))
    return {"comparison": name, "what": describe(name), "value": centre, "lo": iv["lo"], "hi": iv["hi"], "level": iv["level"],
            "n_seeds": iv.get("n_seeds", iv.get("n")), "n_examples": iv.get("n_examples", ""),
            "within_noise": iv["within_noise"], "per_seed": " ".join(f"{x:.6g}" for x in per_seed or [])}


def intervals(rows: list[dict[str, Any]], extend: float = EXTEND, n_boot: int = 10000) -> list[dict[str, Any]]:
    """The reading's comparisons with their 95 % intervals (one row each): per-seed differences of
    val / test loss and the catch-up times by Student's t over the seeds; test accuracies of two
    choices on the shared test set by a paired bootstrap over the seeds × the test images. Seeds
    where a side has no result yet are left out of that comparison (``n_seeds`` says how many)."""
    b = budgets(rows)
    seeds = sorted(b)
    out: list[dict[str, Any]] = []

    def loss_diff(name: str, pairs: list[tuple[dict[str, Any], dict[str, Any]]], key: str = "val_loss") -> None:
        if pairs:
            d = [x[key] - y[key] for x, y in pairs]
            out.append(_row(name, t_interval(d), d))

    def acc_diff(name: str, pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
        if pairs and all(x.get("test_correct") and y.get("test_correct") for x, y in pairs):
            a, c = [_bits(x) for x, _ in pairs], [_bits(y) for _, y in pairs]
            iv = paired_bootstrap(a, c, n_boot=n_boot)
            out.append(_row(name, iv, [x["test_acc"] - y["test_acc"] for x, y in pairs]))

    for f in (*FRACTIONS, extend):
        ref = 1.0 if f > 1 else f  # Optuna at extend × B is compared with IFT at B
        pairs = [(best_at(rows, "optuna", sd, f * b[sd]), best_at(rows, "ift", sd, ref * b[sd])) for sd in seeds]
        pairs = [(o, i) for o, i in pairs if o is not None and i is not None]
        tag = f"optuna_at_{f:g}B_minus_ift_at_{ref:g}B"
        loss_diff(f"{tag}: val_loss", pairs)
        loss_diff(f"{tag}: test_loss", pairs, "test_loss")
        acc_diff(f"{tag}: test_acc", pairs)
    # at the end of Optuna's first trial: its draw against IFT's best so far at the same time / gradient equivalents
    for key in ("t_s", "grad_eq"):
        pairs = []
        for sd in seeds:
            ops = sorted((r for r in rows if r["side"] == "optuna" and r["seed"] == sd), key=lambda r: r["t_s"])
            if ops and math.isfinite(ops[0]["val_loss"]):
                i = best_at(rows, "ift", sd, ops[0][key], key=key)
                if i is not None:
                    pairs.append((ops[0], i))
        loss_diff(f"optuna_first_trial_minus_ift_at_same_{key}: val_loss", pairs)
    cu = [v for v in catch_up(rows).values() if v is not None]
    if cu:
        out.append(_row("optuna_catch_up_time_over_B (seeds that caught up)", t_interval(cu), cu))
    first = [sorted((r for r in rows if r["side"] == "optuna" and r["seed"] == sd), key=lambda r: r["t_s"]) for sd in seeds]
    ft = [o[0]["t_s"] / b[sd] for sd, o in zip(seeds, first, strict=True) if o]
    if ft:
        out.append(_row("optuna_first_trial_time_over_B", t_interval(ft), ft))
    if any(r["side"] == "ift_per_weight" for r in rows):
        last = {sd: max((r for r in rows if r["side"] == "ift_per_weight" and r["seed"] == sd), key=lambda r: r["step"])
                for sd in seeds}
        glob = {sd: max((r for r in rows if r["side"] == "ift" and r["seed"] == sd), key=lambda r: r["step"]) for sd in seeds}
        pairs = [(last[sd], glob[sd]) for sd in seeds]
        loss_diff("ift_per_weight_end_minus_ift_end: val_loss", pairs)
        loss_diff("ift_per_weight_end_minus_ift_end: test_loss", pairs, "test_loss")
        acc_diff("ift_per_weight_end_minus_ift_end: test_acc", pairs)
    return out


def _words(r: dict[str, Any]) -> str:
    """A row of ``intervals`` in words: "+0.0123 [+0.0040, +0.0200], above 0" (accuracies in
    points; a time in units of B has no "within noise")."""
    if int(r["n_seeds"]) < 2 and not r["comparison"].endswith("test_acc"):
        return f"{r['value']:+.4f} (one seed: no interval)"
    if "time_over_B" in r["comparison"]:
        return f"{r['value']:.2f} [{r['lo']:.2f}, {r['hi']:.2f}] × B"
    if r["comparison"].endswith("test_acc"):
        return verdict({"diff": r["value"], "lo": r["lo"], "hi": r["hi"]})
    word = "within noise" if r["lo"] <= 0 <= r["hi"] else ("above 0" if r["value"] > 0 else "below 0")
    return f"{r['value']:+.4f} [{r['lo']:+.4f}, {r['hi']:+.4f}], {word}"


def _curve(rows, side, seed, grid, budget, key="t_s", scale=None):
    """Best val loss so far on ``grid`` (× budget, or absolute with ``scale`` = 1)."""
    out = []
    for g in grid:
        r = best_at(rows, side, seed, g * (budget if scale is None else scale), key)
        out.append(float("nan") if r is None else r["val_loss"])
    return out


def plot(rows: list[dict[str, Any]], out: Path, extend: float = EXTEND) -> Path:
    b = budgets(rows)
    seeds = sorted(b)
    fig, axes = plotting.subplots(1, 2, figsize=(12, 4.6))
    grid = [i * extend / 400 for i in range(401)]
    gmax = max(r["grad_eq"] for r in rows)
    ggrid = [i * gmax / 400 for i in range(401)]
    colors = {"ift": "C0", "optuna": "C3", "ift_per_weight": "C2"}
    for side in SIDES:
        if not any(r["side"] == side for r in rows):
            continue
        for ax, key, xs, scale in ((axes[0], "t_s", grid, None), (axes[1], "grad_eq", ggrid, 1.0)):
            curves = torch.tensor([_curve(rows, side, s, xs, b[s], key, scale) for s in seeds], dtype=torch.float64)
            full = ~torch.isnan(curves).any(0)  # drawn where every seed has a result
            mu, sd = (torch.tensor(v, dtype=torch.float64) for v in zip(*(mean_std(col.tolist()) for col in curves.T), strict=True))
            # solid while every seed's run/study is still going; dotted after (its best so far, unchanged)
            end = min(max(r[key] for r in rows if r["side"] == side and r["seed"] == s) / (b[s] if scale is None else scale)
                      for s in seeds)
            x = torch.tensor(xs, dtype=torch.float64)
            going, after = full & (x <= end), full & (x >= end)
            ls = "--" if side == "ift_per_weight" else "-"
            ax.plot(x[going], mu[going], color=colors[side], lw=1.5, ls=ls, label=LABEL[side])
            ax.plot(x[after], mu[after], color=colors[side], lw=0.8, ls=":", alpha=0.7)
            ax.fill_between(x[full], (mu - sd)[full], (mu + sd)[full], color=colors[side], alpha=0.15, lw=0)
    for f in FRACTIONS:
        axes[0].axvline(f, color="k", lw=0.7, ls=":")
    mb = mean_std(list(b.values()))
    axes[0].set(xlabel=f"wall time ÷ B, the seed's IFT run (B = {mb[0]:.1f} ± {mb[1]:.1f} s)",
                ylabel="best validation loss so far", yscale="log")
    ift_eq = mean_std([max(r["grad_eq"] for r in rows if r["side"] == "ift" and r["seed"] == s) for s in seeds])[0]
    axes[1].axvline(ift_eq, color="k", lw=0.7, ls=":")
    axes[1].set(xlabel=f"gradient equivalents (dotted: one IFT run, {ift_eq:.0f})",
                ylabel="best validation loss so far", yscale="log")
    for ax in axes:
        ax.grid(True, alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"digits, MLP 64-32-10, one weight decay: IFT vs Optuna at equal compute (mean ± std over {len(seeds)} seeds;\n"
                 "a curve starts where every seed has a result, and turns dotted where a seed's run has ended)", fontsize=9)
    fig.tight_layout()
    path = out / "blackbox.png"
    fig.savefig(path, dpi=130)
    return path


def first_trial(rows: list[dict[str, Any]], b: dict[int, float]) -> str:
    """The comparison at the moment Optuna's first trial finishes — equal wall time and equal
    gradient equivalents at a point chosen by neither side, not at fixed fractions of B."""
    cases = []
    for sd in sorted(b):
        ops = sorted((r for r in rows if r["side"] == "optuna" and r["seed"] == sd), key=lambda r: r["t_s"])
        if not ops or not math.isfinite(ops[0]["val_loss"]):
            continue
        o = ops[0]
        by_t, by_g = best_at(rows, "ift", sd, o["t_s"]), best_at(rows, "ift", sd, o["grad_eq"], key="grad_eq")
        if by_t is not None and by_g is not None:
            cases.append((o, by_t, by_g, o["t_s"] / b[sd]))
    if not cases:
        return ""
    ahead_t = sum(o["val_loss"] < t["val_loss"] for o, t, _, _ in cases)
    ahead_g = sum(o["val_loss"] < g["val_loss"] for o, _, g, _ in cases)
    return (f"When Optuna's first trial finishes ({_over_seeds([c[3] for c in cases], '.2f')} × B, "
            f"{_over_seeds([c[0]['grad_eq'] for c in cases], '.0f')} gradient equivalents), its one draw has the lower val loss "
            f"than IFT's best so far at the same wall time in {ahead_t} of {len(cases)} seed(s) and at the same gradient "
            f"equivalents in {ahead_g} of {len(cases)} (Optuna {_over_seeds([c[0]['val_loss'] for c in cases])}, IFT "
            f"{_over_seeds([c[1]['val_loss'] for c in cases])} / {_over_seeds([c[2]['val_loss'] for c in cases])})"
            + (": IFT's lead at B is bought with the compute it spends after that trial has finished. "
               if max(ahead_t, ahead_g) * 2 > len(cases) else ". "))


def lead_words(wins: dict[str, Any], iv: dict[str, Any] | None) -> str:
    """Who is ahead at a time: where both sides have results on 2+ seeds, the interval of Optuna −
    IFT (val loss) decides ("neither side is ahead beyond noise" when it includes 0), never the count
    of seeds each side wins; where only one side has a result (``iv`` None), that side."""
    if iv is not None and int(iv["n_seeds"]) > 1:
        lo, hi = float(iv["lo"]), float(iv["hi"])
        return (("IFT is ahead" if lo > 0 else "Optuna is ahead" if hi < 0 else "neither side is ahead beyond noise")
                + f" (Optuna − IFT {float(iv['value']):+.4f} [{lo:+.4f}, {hi:+.4f}])")
    side = "IFT" if wins["ift"] > wins["optuna"] else "Optuna" if wins["optuna"] > wins["ift"] else "neither side"
    return f"{side} is ahead"


def reading(rows: list[dict[str, Any]], quick: bool, extend: float = EXTEND, ivs: list[dict[str, Any]] | None = None) -> str:
    ivs = ivs if ivs is not None else intervals(rows, extend, n_boot=500 if quick else 10000)
    b = budgets(rows)
    seeds = sorted(b)
    n = len(seeds)
    s = summary(rows, extend)
    space = optuna_space()
    ift_rows = [r for r in rows if r["side"] == "ift"]
    steps = max(r["step"] for r in ift_rows)
    last = [max((r for r in ift_rows if r["seed"] == sd), key=lambda r: r["step"]) for sd in seeds]
    hg_ratio = mean_std([r["hypergrad_per_grad"] for r in last])
    hvp = mean_std([r["hvp_per_hypergrad"] for r in last])
    durations = []
    for sd in seeds:
        ends = sorted(r["t_s"] for r in rows if r["side"] == "optuna" and r["seed"] == sd)
        durations += [b - a for a, b in zip([0.0, *ends[:-1]], ends, strict=True)]
    trial_s = mean_std(durations)
    loads = [r["load1_start"] for r in rows if "load1_start" in r and isinstance(r["load1_start"], float)]
    table = []
    for r in s:
        pct = f"{r['fraction'] * 100:.0f} %"
        table.append([LABEL[r["side"]], pct, _over_seeds(r["val_loss"], n=n), _over_seeds(r["test_loss"], n=n), _over_seeds(r["test_acc"], ".3f", n=n),
                      _over_seeds(r["decay"], ".2g", n=n), _over_seeds([float(x) for x in r["trials"]], ".1f") if r["trials"] else "—",
                      _over_seeds(r["grad_eq"], ".0f")])
    parts = ["# Against black-box tuning at equal compute — IFT vs Optuna", "",
             f"Generated by `{output.command('paper_blackbox', quick).replace('results/perf', 'results/paper/blackbox')}"
             f"{'' if quick else ' --max-wait-min 0'}` (`benchmarks/paper_blackbox.py`, whose docstring says exactly what "
             "is run). CSV: `blackbox.csv` (one row per IFT evaluation and per Optuna trial, with the wall time since that "
             "side's clock started); plot: `blackbox.png`.", ""]
    if quick:
        parts += ["> **QUICK SMOKE RUN** (`--quick`): a few hyper-steps, one seed — these numbers only show that the code runs.", ""]
    parts += ["**The paper's setting and claim**: the paper does not run a black-box tuner at equal compute. It claims its "
              "IFT hypergradient makes tuning \"only a few times more costly in memory and compute than standard "
              "training\", and on the PTB LSTM (its Table of RNN results) reports IFT at val/test perplexity 69.22/66.40 "
              "against Bayesian optimisation 72.13/69.29, random search 84.81/81.46 and grid search 97.32/94.58 "
              "(budgets not restated). Issue 11 asks for the comparison at equal compute: the same search space for both "
              "sides, the budget in wall time (and gradient equivalents, hypergradients included), best validation loss "
              "against wall time.", "",
              f"**Ours** (`experiment={PRESET}`: sklearn digits, 500 train / 500 val / 797 test, a 64-32-10 MLP, SGD lr 0.1, "
              f"batches of 128; **{steps} hyper-steps × 10 weight updates** per run and per trial (the preset's full length "
              f"is 200), IFT evaluated every {steps if quick else EVAL_EVERY} hyper-steps; {n} seed(s), interleaved; the search "
              f"space of both sides: one global weight decay, Optuna on `{space['name']}` ∈ [{space['low']:g}, {space['high']:g}]"
              f"{' (log)' if space['log'] else ''}, TPE with {space['n_startup_trials']} random start-up trials; IFT starts "
              f"at the interval's log-centre). Budget B per seed = the IFT run's wall time: **{mean_std(list(b.values()))[0]:.1f} ± "
              f"{mean_std(list(b.values()))[1]:.1f} s**; an Optuna trial took {trial_s[0]:.2f} ± {trial_s[1]:.2f} s. "
              f"A Neumann-5 hypergradient ({hvp[0]:.0f} HVPs) cost {hg_ratio[0]:.1f} ± {hg_ratio[1]:.1f} inner steps of time, "
              f"so one IFT run is {steps * 10} weight updates + {steps} hypergradients ≈ "
              f"{mean_std([r['grad_eq'] for r in last])[0]:.0f} gradient equivalents, one trial {steps * 10}. Load average (1 min) "
              f"before the runs: {min(loads):.2f}–{max(loads):.2f} on {machine.machine_info()['cores']} cores. Each cell: mean ± std "
              "over seeds of the side's choice so far — the IFT evaluation / Optuna trial with the lowest val loss by that "
              "time — \"none yet\" where no seed has a result (the count where only some have):", "",
              output.md_table(["side", "at × B", "best val loss", "its test loss", "its test acc", "its decay",
                               "Optuna trials done", "gradient equivalents spent"], table), "",
              "![best val loss vs wall time](blackbox.png)", ""]
    verdicts = []
    for f in FRACTIONS:
        w = ahead(rows, f)
        ift_v = next(r for r in s if r["side"] == "ift" and r["fraction"] == f)["val_loss"]
        opt_v = next(r for r in s if r["side"] == "optuna" and r["fraction"] == f)["val_loss"]
        iv = next((r for r in ivs if r["comparison"] == f"optuna_at_{f:g}B_minus_ift_at_{f:g}B: val_loss"), None)
        lead = lead_words(w, iv if opt_v and ift_v else None)
        verdicts.append(f"at {f * 100:.0f} % of B {lead} (lower best val loss in {w['ift']} seed(s) for IFT, "
                        f"{w['optuna']} for Optuna, {w['tie']} tied; means "
                        + (f"{mean_std(ift_v)[0]:.4f}" if ift_v else "no IFT evaluation yet") + " vs "
                        + (f"{mean_std(opt_v)[0]:.4f}" if opt_v else "no Optuna trial finished yet") + ")")
    cu = catch_up(rows)
    reached = [v for v in cu.values() if v is not None]
    pw = [r for r in s if r["side"] == "ift_per_weight" and r["fraction"] == 1.0]
    ift1 = next(r for r in s if r["side"] == "ift" and r["fraction"] == 1.0)
    pw_last = [max((r for r in rows if r["side"] == "ift_per_weight" and r["seed"] == sd), key=lambda r: r["step"]) for sd in seeds] if pw else []
    pw_end = {k: [r[k] for r in pw_last] for k in ("val_loss", "test_loss")}
    pw_end_t = [r["t_s"] / b[r["seed"]] for r in pw_last]
    opt_end = [float(x) for x in next(r for r in s if r["side"] == "optuna" and r["fraction"] == extend)["trials"]]
    opt_trials = [float(x) for x in next(r for r in s if r["side"] == "optuna" and r["fraction"] == 1.0)["trials"]]
    trials_note = f"Optuna's budget at B was {_over_seeds(opt_trials, '.1f')} trials"
    if max(opt_trials) < space["n_startup_trials"]:
        trials_note += (f": fewer than the sampler's {space['n_startup_trials']} random start-up trials, so at equal "
                        "compute TPE never models the loss — it is random search on the log interval")
    guided = [max(0.0, t - space["n_startup_trials"]) for t in opt_end]
    trials_note += (f". By {extend:g} × B it had run {_over_seeds(opt_end, '.1f')} trials, of which {_over_seeds(guided, '.1f')} were chosen "
                    "by TPE's model rather than at random.")
    opt1 = next(r for r in s if r["side"] == "optuna" and r["fraction"] == 1.0)
    parts += ["**Reading**: " + "; ".join(verdicts) + ". " + first_trial(rows, b)
              + (f"Optuna's best trial reached IFT's best val loss at B in {len(reached)} of {n} seed(s), after "
                 + ", ".join(f"{v:.2f}" for v in reached) + " × B" if reached else
                 f"Optuna's best trial did not reach IFT's best val loss at B in any seed within {extend:g} × B")
              + (f" (not within {extend:g} × B in {n - len(reached)})" if reached and len(reached) < n else "") + ". "
              + "At B the choices' test losses are IFT " + _over_seeds(ift1["test_loss"]) + " and Optuna "
              + _over_seeds(opt1["test_loss"], n=n) + " (accuracy " + _over_seeds(ift1["test_acc"], ".3f") + " and "
              + _over_seeds(opt1["test_acc"], ".3f", n=n) + ")"
              + (f"; with one decay per weight (a space Optuna cannot search) IFT's best val loss at B is "
                 f"{_over_seeds(pw[0]['val_loss'])}, test loss {_over_seeds(pw[0]['test_loss'])}, and at the end of its run ("
                 f"{_over_seeds(pw_end_t, '.2f')} × B: the same work as the global-decay run, timed at another moment) "
                 f"{_over_seeds(pw_end['val_loss'])}, test loss {_over_seeds(pw_end['test_loss'])}" if pw else "")
              + ". " + trials_note, ""]
    if ivs:
        parts += [f"**Intervals** (`blackbox_intervals.csv`, with each seed's value; 95 %): differences of losses and the "
                  f"times are Student's t over the {n} seeds (a percentile bootstrap over so few seeds is about their range, too "
                  "narrow); differences of test accuracy "
                  "are a paired bootstrap over the seeds × the 797 test images (points); \"within noise\" = the interval "
                  "includes 0. Seeds where a side has no result yet are left out (the count says how many are in):", ""]
        parts += [f"- {describe(r['comparison'])}: {_words(r)} ({r['n_seeds']} seeds)" for r in ivs]
        parts += ["", "Every wall-time number here (B, the fractions of B, the catch-up times, the trial and hypergradient "
                  f"costs) depends on the machine's load — {min(loads):.2f}–{max(loads):.2f} (1-minute load average on "
                  f"{machine.machine_info()['cores']} cores) before the runs of this study — and another run on another day "
                  "gives other times; the val and test losses of a given trial or evaluation do not depend on it.", ""]
    parts += ["**Where we differ from the paper**: the paper has no equal-compute comparison with a black-box tuner; its "
              "RNN table compares final perplexities on PTB with tuners whose budgets it does not restate, with 7 "
              "dropout-type hyperparameters of an AWD-LSTM. Ours is a small task on 2 shared CPU cores (digits, one "
              "weight decay, a 2,410-weight MLP), sized to run in minutes: runs of "
              f"{steps} hyper-steps (the preset's full length is 200), {n} seed(s), Optuna run on to {extend:g} × B. Wall time on a "
              "shared machine is noisy: the sides' seeds are interleaved and the load is recorded per run in the CSV; "
              "the gradient-equivalent axis of the plot does not depend on the load. The inner learning rate is fixed "
              "at the IFT run's (0.1) on both sides; the earlier baseline also searched it, which the gradient methods "
              "cannot tune. Hyper-optimiser settings (Adam lr 0.1 on log λ, λ started at the interval's log-centre) "
              "are ours; an IFT run started near the optimum, or with a smaller hyper learning rate, moves the curves.", ""]
    return "\n".join(parts)


def rewrite(out: Path) -> None:
    """Intervals, plot and README again from the runs' CSV in ``out`` (after a change to how they are
    computed or drawn; ``blackbox_intervals.csv`` then carries this tree's commit and the runs')."""
    machine.machine_info()  # the commit the CSVs name: this tree's before anything is written
    rows = output.read_csv(out / "blackbox.csv")
    for r in rows:
        for k in ("val_loss", "test_loss", "test_acc", "val_acc", "decay", "t_s", "grad_eq", "hypergrad_per_grad", "load1_start"):
            r[k] = float(r[k]) if r.get(k) not in ("", None) else float("nan")
    quick = max(r["step"] for r in rows) < HYPER_STEPS
    extend = 2.0 if quick else EXTEND
    plot(rows, out, extend)
    ivs = intervals(rows, extend, n_boot=500 if quick else 10000)
    output.write_derived_csv(out, "blackbox_intervals", ivs, rows)
    (out / "README.md").write_text(reading(rows, quick, extend, ivs))


def run(out: Path, quick: bool = False, device: str = "auto", reps: int | None = None) -> list[dict[str, Any]]:
    dev = str(resolve_device(device))
    out.mkdir(parents=True, exist_ok=True)
    with timing.one_thread():  # a shared machine: one core for both sides alike (recorded in the CSV's threads column)
        return _run(out, quick, dev)


def _run(out: Path, quick: bool, dev: str) -> list[dict[str, Any]]:
    steps, every = (3, 3) if quick else (HYPER_STEPS, EVAL_EVERY)
    extend = 2.0 if quick else EXTEND
    rows: list[dict[str, Any]] = []
    import optuna  # noqa: F401 - imported (slowly) before any clock starts

    warm_up(dev)
    for seed in (SEEDS[:1] if quick else SEEDS):
        ift = ift_run("ift", seed, dev, steps, every)
        budget = ift[-1]["t_s"]
        opt = optuna_side(seed, dev, steps, every, budget, extend, 2 if quick else MAX_TRIALS)
        pw = ift_run("ift_per_weight", seed, dev, steps, every)
        rows += ift + opt + pw
        print(f"  paper_blackbox seed {seed}: budget {budget:.1f} s; IFT best val {min(r['val_loss'] for r in ift):.4f}; "
              f"Optuna {len(opt)} trials in {opt[-1]['t_s']:.1f} s, best val {min(r['val_loss'] for r in opt):.4f}; "
              f"IFT per weight best val {min(r['val_loss'] for r in pw):.4f} in {pw[-1]['t_s']:.1f} s", flush=True)
    output.write_csv(out, "blackbox", rows, dev)
    ivs = intervals(rows, extend, n_boot=500 if quick else 10000)
    output.write_csv(out, "blackbox_intervals", ivs, dev)
    plot(rows, out, extend)
    (out / "README.md").write_text(reading(rows, quick, extend, ivs))
    return rows
