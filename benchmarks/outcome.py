"""Does a faster, more accurate hypergradient matter for the outcome? Whole runs, 3 seeds each,
plain CG against the best preconditioned CG (Nyström), K-FAC, Neumann and identity, on two
problems (issue 25 §4; the grids are ``conf/sweep/outcome_<problem>.yaml``, the methods'
settings ``conf/outcome/``):

- ``weight_decay``: per-weight decay on the digits MLP (64-32-10, 2,410 weights = hyperparameters),
  200 hyper-steps of 10 inner steps (the ``methods_x_seeds`` task); CG, Nyström CG and Neumann on
  the Gauss–Newton matrix (``curvature: ggn``: the Hessian is indefinite there).
- ``reweighting``: one weight per training example on mnist_5k with 40 % of the training labels
  flipped (as ``experiment=loss_reweight_noisy``), MLP 784-32-10, 150 hyper-steps; the Hessian
  (the family has no task-loss-plus-penalty form, so neither the Gauss–Newton matrix nor K-FAC
  exists for it: ``kfac`` is skipped there, with its reason).
- ``reweighting_linear``: the same with multinomial logistic regression (``model=linear``, 7,850
  weights): a convex inner problem, where CG's solve is well posed.

CG and Nyström CG get the same budget: warm-started, at most 20 iterations or a relative residual
of 1e-2; Nyström rank 100 rebuilt every 10 hyper-steps (its products counted in ``hvp_calls``).
Neumann 20 terms, α = the inner learning rate. K-FAC and identity at their defaults.

    python -m hgbench.benchmarks.outcome run --store /tmp/outcome/mlflow.db      # the grids (hgbench -m, joblib, 2 jobs)
    python -m hgbench.benchmarks.outcome report --store /tmp/outcome/mlflow.db --out results/outcome

``report`` reads the curves back from the MLflow store (``hgbench.report``'s readers) and writes
``outcome.csv`` (one row per configuration: problem × method, over its seeds), ``curves.csv`` (one
row per evaluation of a run), ``outcome.png`` (validation and test loss against wall time and
against products) and ``table.md``. Wall time is what the runs logged (``elapsed_s``) on a shared
machine: the load at each run's start and end is in ``curves.csv``; the products (``hvp_calls``,
cumulative) do not depend on it.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

PROBLEMS = ("weight_decay", "reweighting", "reweighting_linear")
BASELINE = "identity"  # the paired differences: each run's final loss minus identity's with the same seed  # conf/sweep/outcome_<problem>.yaml; methods: conf/outcome/


def commands(store: str, quick: bool = False, n_jobs: int = 2) -> list[list[str]]:
    """One ``hgbench`` grid per problem (its sweep: 5 methods × 3 seeds), ``n_jobs`` in parallel; then
    Nyström CG with its sketch rebuilt every hyper-step on the first problem (3 seeds)."""
    hgbench = str(Path(sys.executable).with_name("hgbench"))
    return [[hgbench, f"sweep=outcome_{problem}", "num_threads=1", f"mlflow.tracking_uri={store}",
             *(["hyper_steps=3", "eval_every=1", "seed=0"] if quick else []),
             *(["hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}"] if n_jobs > 1 else [])] for problem in PROBLEMS] + [
        [hgbench, "sweep=outcome_weight_decay", "+outcome=wd_cg_nystrom_every_step", f"seed={'0' if quick else '0,1,2'}",
         "num_threads=1", f"mlflow.tracking_uri={store}", *(["hyper_steps=3", "eval_every=1"] if quick else []),
         *(["hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}"] if n_jobs > 1 else [])]]


def run(store: Path, quick: bool = False, n_jobs: int = 2) -> None:
    uri = f"sqlite:///{store.resolve()}"
    store.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as cwd:  # Hydra's multirun folders stay out of the checkout
        for cmd in commands(uri, quick, n_jobs):
            print("$", " ".join(cmd[1:]), flush=True)
            subprocess.run(cmd, cwd=cwd, check=False)


def curves(uri: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, curves): one row per run, and one row per evaluation of a run: step, wall time,
    cumulative products, validation and test loss."""
    from hgbench.report import fetch_history, open_store, search, tidy_runs

    names = [f"outcome_{p}" for p in PROBLEMS]
    client, ids = open_store(uri, [n for n in names if _exists(uri, n)])
    runs = tidy_runs(search(client, ids, ""), ids)
    runs["problem"] = runs["experiment"].str.replace("outcome_", "", regex=False)
    runs = label_configurations(runs)
    keys = ["val_loss", "test_loss", "elapsed_s", "hvp_calls", "hg_rel_err", "hg_cosine"]
    hist = fetch_history(client, runs[runs["status"] == "finished"], {r: keys for r in runs["run_id"]})
    return with_accuracy(runs, hist), curves_from_history(runs, hist)


def label_configurations(runs: pd.DataFrame) -> pd.DataFrame:
    """``method`` made one label per configuration: where runs of one problem and method differ in
    a ``params.hypergrad.*`` setting (e.g. ``refresh_every``), the setting is appended, so that a
    row never averages runs that differ in anything but the seed."""
    runs = runs.copy()
    cols = [c for c in runs if c.startswith("params.hypergrad.")]
    for (_, _), g in runs.groupby(["problem", "method"], sort=False):
        varying = [c for c in cols if g[c].nunique(dropna=False) > 1]
        for i in g.index:
            extra = ", ".join(f"{c.rsplit('.', 1)[1]}={runs.at[i, c]}" for c in varying)
            if extra:
                runs.at[i, "method"] = f"{runs.at[i, 'method']} ({extra})"
    return runs


def with_accuracy(runs: pd.DataFrame, hist: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with each run's median over its accuracy checks (``reference.every``) of the
    hypergradient's relative error and cosine against the reference: ``hg_rel_err_run``, ``hg_cosine_run``."""
    runs = runs.copy()
    for key in ("hg_rel_err", "hg_cosine"):
        med = hist[hist["key"] == key].groupby("run_id")["value"].median()
        runs[f"{key}_run"] = runs["run_id"].map(med)
    return runs


def _exists(uri: str, name: str) -> bool:
    from mlflow.tracking import MlflowClient

    e = MlflowClient(uri).get_experiment_by_name(name)
    return e is not None and e.lifecycle_stage != "deleted"


def run_commit(r: pd.Series) -> str:
    """The commit a run's code came from (MLflow's git tag, 12 digits), ``+dirty`` where its
    checkout had local changes (``hgbench.git_dirty``); "unknown" without the tag."""
    c = r.get("tags.mlflow.source.git.commit")
    if not isinstance(c, str) or not c:
        return "unknown"
    return c[:12] + ("+dirty" if r.get("tags.hgbench.git_dirty") == "true" else "")


def curves_from_history(runs: pd.DataFrame, hist: pd.DataFrame) -> pd.DataFrame:
    """The evaluations of each run with the wall time and the products spent up to them, and the
    commit of the code that ran it."""
    rows = []
    for run_id, h in hist.groupby("run_id", sort=False):
        by = {k: g.drop_duplicates("step", keep="last").set_index("step")["value"] for k, g in h.groupby("key")}
        hvp = by.get("hvp_calls", pd.Series(dtype=float)).sort_index().cumsum()
        t = by.get("elapsed_s", pd.Series(dtype=float))
        r = runs.loc[runs["run_id"] == run_id].iloc[0]
        for step, v in by.get("val_loss", pd.Series(dtype=float)).sort_index().items():
            rows.append({"problem": r["problem"], "method": r["method"], "seed": int(r["seed"]), "run_id": run_id,
                         "step": int(step), "elapsed_s": float(t.get(step, math.nan)),
                         "hvps": float(hvp[hvp.index <= step].iloc[-1]) if (hvp.index <= step).any() else 0.0,
                         "val_loss": float(v), "test_loss": float(by.get("test_loss", {}).get(step, math.nan)),
                         "load_start": r.get("load_avg_start", math.nan), "load_end": r.get("load_avg_end", math.nan),
                         "commit": run_commit(r)})
    return pd.DataFrame(rows)


def _first(c: pd.DataFrame, level: float, col: str) -> float:
    hit = c[c["val_loss"] <= level]
    return float(hit[col].iloc[0]) if len(hit) else math.nan


def table(runs: pd.DataFrame, cv: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, float]]:
    """One row per configuration (problem × method; its runs differ only in the seed): the final
    validation and test loss (mean ± std, min–max over seeds), their differences from identity's
    with the same seed (mean, min–max and a 95 % Student's t interval over the seeds), wall time and products to the end,
    and wall time and products to two validation losses: ``target`` (every run reaches it: the
    largest of the runs' lowest validation losses) and ``target2`` (the median of the
    configurations' mean final validation losses: about half of them get there). A run that does
    not reach a level is counted in ``reached``, never extrapolated; the times are over the runs
    that do."""
    from hgbench.benchmarks.stats import t_interval

    rows, targets = [], {}
    for problem, cp in cv.groupby("problem", sort=False):
        last = cp.sort_values("step").groupby("run_id").tail(1)
        levels = {"": float(cp.groupby("run_id")["val_loss"].min().max()),
                  "2": float(last.groupby("method")["val_loss"].mean().median())}
        targets[problem] = levels[""]
        targets[problem + " (2)"] = levels["2"]
        base = last[last["method"] == BASELINE].set_index("seed")
        for method, cm in cp.groupby("method", sort=False):
            fin = cm.sort_values("step").groupby("run_id").tail(1)
            row: dict[str, Any] = {"problem": problem, "method": method, "seeds": len(fin)}
            for col in ("val_loss", "test_loss"):  # paired by seed (same initialisation and batches): the seeds' spread cancels
                d = pd.Series([r[col] - base.at[r["seed"], col] for r in fin.to_dict("records") if r["seed"] in base.index], dtype=float)
                iv = t_interval(d) if len(d) else {"lo": math.nan, "hi": math.nan}  # Student's t over the seeds
                row.update({f"d_{col}_mean": d.mean() if len(d) else math.nan, f"d_{col}_min": d.min() if len(d) else math.nan,
                            f"d_{col}_max": d.max() if len(d) else math.nan, f"d_{col}_lo": iv["lo"], f"d_{col}_hi": iv["hi"]})
            mine = runs[runs["run_id"].isin(set(cm["run_id"]))] if "run_id" in runs else runs.iloc[:0]
            for key in ("hg_rel_err", "hg_cosine"):  # the median over a run's checks, then min–max over its seeds
                v = mine[f"{key}_run"].dropna().astype(float) if f"{key}_run" in mine else pd.Series(dtype=float)
                row.update({f"{key}_min": v.min() if len(v) else math.nan, f"{key}_max": v.max() if len(v) else math.nan})
            for col in ("val_loss", "test_loss", "elapsed_s", "hvps"):
                v = fin[col].astype(float)
                row.update({f"{col}_mean": v.mean(), f"{col}_std": v.std(ddof=1) if len(v) > 1 else 0.0,
                            f"{col}_min": v.min(), f"{col}_max": v.max()})
            for suffix, level in levels.items():
                per_seed = [(_first(c.sort_values("step"), level, "elapsed_s"), _first(c.sort_values("step"), level, "hvps"))
                            for _, c in cm.groupby("run_id")]
                t_hit = [t for t, _ in per_seed if not math.isnan(t)]
                n_hit = [n for _, n in per_seed if not math.isnan(n)]
                row.update({f"target{suffix}_val_loss": level, f"reached{suffix}": f"{len(t_hit)}/{len(per_seed)}"})
                for name, v in ((f"time_to_target{suffix}_s", t_hit), (f"hvps_to_target{suffix}", n_hit)):
                    s = pd.Series(v, dtype=float)
                    row.update({f"{name}_mean": s.mean() if len(s) else math.nan, f"{name}_min": s.min() if len(s) else math.nan,
                                f"{name}_max": s.max() if len(s) else math.nan})
            row["load_min"], row["load_max"] = float(cm[["load_start", "load_end"]].min().min()), float(cm[["load_start", "load_end"]].max().max())
            rows.append(row)
    other = runs[runs["status"] != "finished"]
    for r in other.itertuples(index=False):
        rows.append({"problem": r.problem, "method": r.method, "seeds": 0, "reached": f"{r.status}: {getattr(r, 'skip_reason', '') or getattr(r, 'error', '') or ''}"[:200]})
    return pd.DataFrame(rows).drop_duplicates(["problem", "method"]), targets


def markdown(tab: pd.DataFrame) -> str:
    def pm(r, col, fmt=".4f"):
        m = r.get(f"{col}_mean", math.nan)
        if m is None or (isinstance(m, float) and math.isnan(m)):
            return "—"
        return f"{m:{fmt}} ± {r[f'{col}_std']:{fmt}} [{r[f'{col}_min']:{fmt}}–{r[f'{col}_max']:{fmt}}]"

    def mm(r, col, fmt):
        m = r.get(f"{col}_mean", math.nan)
        if m is None or (isinstance(m, float) and math.isnan(m)):
            return "—"
        return f"{m:{fmt}} [{r[f'{col}_min']:{fmt}}–{r[f'{col}_max']:{fmt}}]"

    def dt(r, col):  # a paired difference with its t interval over the seeds
        m, lo, hi = (r.get(f"{col}_{k}", math.nan) for k in ("mean", "lo", "hi"))
        if not isinstance(m, float) or math.isnan(m):
            return "—"
        if not isinstance(lo, float) or math.isnan(lo):
            return f"{m:+.4f} (one seed: no interval)"
        return f"{m:+.4f} [{lo:+.4f}, {hi:+.4f}]" + (", within noise" if lo <= 0 <= hi else "")

    def lv(r, key):
        v = r.get(key)
        return f"{v:.4f}" if isinstance(v, float) and not math.isnan(v) else "—"

    head = ["problem", "method", "seeds", "final val loss, mean ± std [min–max]", "final test loss", "wall s to the end",
            "products to the end", "target 1 (all runs)", "reached", "wall s to it, mean [min–max]", "products to it",
            "target 2 (median config)", "reached", "wall s to it", "products to it",
            "hypergradient rel. error vs reference (run medians, min–max)",
            "Δ final val loss vs identity, same seed: mean [95 % t interval over seeds]", "Δ final test loss vs identity", "load"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in tab.to_dict("records"):
        lines.append("| " + " | ".join(str(x) for x in [
            r["problem"], f"`{r['method']}`", r["seeds"], pm(r, "val_loss"), pm(r, "test_loss"), mm(r, "elapsed_s", ".1f"),
            mm(r, "hvps", ".0f"), lv(r, "target_val_loss"), r["reached"], mm(r, "time_to_target_s", ".1f"), mm(r, "hvps_to_target", ".0f"),
            lv(r, "target2_val_loss"), r.get("reached2") if isinstance(r.get("reached2"), str) else "—",
            mm(r, "time_to_target2_s", ".1f"), mm(r, "hvps_to_target2", ".0f"),
            (f"{r['hg_rel_err_min']:.2g}–{r['hg_rel_err_max']:.2g}" if isinstance(r.get("hg_rel_err_min"), float)
             and not math.isnan(r["hg_rel_err_min"]) else "—"),
            dt(r, "d_val_loss"), dt(r, "d_test_loss"),
            f"{r['load_min']:.1f}–{r['load_max']:.1f}" if isinstance(r.get("load_min"), float) and not math.isnan(r["load_min"]) else "—"]) + " |")
    return "\n".join(lines) + "\n"


def plot(cv: pd.DataFrame, path: Path) -> None:
    from hgbench.benchmarks import plotting

    problems = list(dict.fromkeys(cv["problem"]))
    fig, axes = plotting.subplots(len(problems), 4, figsize=(19, 4.2 * len(problems)), squeeze=False)
    methods = list(dict.fromkeys(cv["method"]))
    for i, problem in enumerate(problems):
        cp = cv[cv["problem"] == problem]
        for j, (y, x) in enumerate((("val_loss", "elapsed_s"), ("val_loss", "hvps"), ("test_loss", "elapsed_s"), ("test_loss", "hvps"))):
            ax = axes[i][j]
            for k, m in enumerate(methods):
                for n, (_, c) in enumerate(cp[cp["method"] == m].groupby("run_id")):
                    c = c.sort_values("step")
                    ax.plot(c[x], c[y], color=f"C{k}", lw=1, alpha=0.8, label=m if n == 0 else None)
            ax.set_xlabel({"elapsed_s": "wall time (s, shared machine)", "hvps": "curvature-vector products (cumulative)"}[x])
            if x == "hvps":
                ax.set_xscale("symlog", linthresh=100)
            ax.set_ylabel(y.replace("_", " "))
            ax.set_title(f"{problem}: {y.replace('_', ' ')} vs {'time' if x == 'elapsed_s' else 'products'} (one line per seed)", fontsize=9)
            lo, hi = cp[y].quantile(0.0), cp[y].quantile(0.9)
            ax.set_ylim(lo - 0.05 * (hi - lo), hi)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def report(store: Path, out: Path) -> pd.DataFrame:
    from hgbench.benchmarks.machine import machine_info

    runs, cv = curves(f"sqlite:///{store.resolve()}")
    tab, _ = table(runs, cv)
    out.mkdir(parents=True, exist_ok=True)
    meta = machine_info()
    commits = sorted({run_commit(r) for _, r in runs.iterrows()} - {"unknown"})
    tab = tab.assign(run_commits=" ".join(commits) or "unknown", report_commit=meta["commit"], cpu=meta["cpu"], cores=meta["cores"])
    tab.to_csv(out / "outcome.csv", index=False)
    cv.to_csv(out / "curves.csv", index=False)
    plot(cv, out / "outcome.png")
    (out / "table.md").write_text(markdown(tab))
    print(markdown(tab))
    return tab


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["run", "report"])
    p.add_argument("--store", type=Path, default=Path("/tmp/hgbench_outcome/mlflow.db"))
    p.add_argument("--out", type=Path, default=Path("results/outcome"))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--n-jobs", type=int, default=2)
    a = p.parse_args(argv)
    if a.what == "run":
        run(a.store, a.quick, a.n_jobs)
    else:
        report(a.store, a.out)


if __name__ == "__main__":
    main()
