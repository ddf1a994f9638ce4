"""``hgbench-report``: compare recorded runs — a markdown table, CSVs and plots from MLflow.

    hgbench-report --experiment methods_x_seeds
    hgbench-report --sweep-id 20260101-120000-1a2b3c --filter "params.dataset.name = 'digits'"

Writes ``<out-dir>/<name>/``: ``summary.md`` (one row per method × family × dataset × model,
mean ± std over seeds of the final values of FINISHED runs; failed and skipped runs are counted;
for runs with accuracy checks, ``reference.every > 0``, the median cosine, relative error and
scale-free error of the hypergradient against the reference over a run's checks, and with
``reference=retrain`` the retraining check's descent, its ratio to the reference's, the
predicted-over-realised ratio and the noise floor, each column only where some run has it),
``runs.csv`` (one row per run), ``metrics.csv`` (one row per logged (run, key, step)) and PNG
plots (``hgbench.plots``). Trials of an Optuna sweep (tag ``hgbench.sweeper`` = optuna) enter as
one run per sweep: the trial with the lowest final val_loss, labelled ``optuna(<hypergrad>)``; the
whole sweep's cost is listed in weight updates and in wall time as a multiple of a gradient-based
run's (equal weight updates are not equal compute: the gradient runs' hypergradients cost too).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd

from hgbench.rowkey import GROUP, config_columns

STATUSES = ["finished", "failed", "skipped"]
# summary columns: run column -> header (the per-step hypergradient time is in milliseconds)
FINAL = {"val_loss": "val loss", "test_loss": "test loss", "val_acc": "val acc", "test_acc": "test acc",
         "runtime_s": "runtime (s)", "peak_memory_mb": "peak memory (MB)", "hypergrad_ms": "hypergrad / step (ms)",
         # accuracy against the reference (runs with reference.every > 0): the median over a run's checks
         "hg_cosine_median": "hg cosine (median)", "hg_rel_err_median": "hg rel. error (median)",
         "hg_scale_free_err_median": "hg scale-free error (median)",
         # the retraining check (reference=retrain): realised dL_V/dλ after retraining, by central differences
         "retrain_descent_method_median": "retrained descent (median)",
         "retrain_descent_ratio_median": "retrained descent / reference's (median)",
         "retrain_predicted_vs_realised_median": "predicted / realised (median)",
         "retrain_noise_floor_median": "retrain noise floor (median)",
         "hvp_calls_mean": "HVPs / step",
         # sequence tasks: perplexity = exp(cross-entropy per token)
         "val_ppl": "val ppl", "test_ppl": "test ppl",
         # distillation evaluated the paper's way: models trained from scratch on the images only
         "hp/distill/fresh_test_acc": "fresh test acc (learned images)",
         "hp/distill/random_real_fresh_test_acc": "fresh test acc (random real images)",
         "hp/distill/class_mean_fresh_test_acc": "fresh test acc (class-mean images)"}
# the accuracy metrics summarised per run by their median over its checks (a column where any run has them)
ACCURACY_MEDIANS = ("hg_cosine", "hg_rel_err", "hg_scale_free_err", "retrain_descent_method", "retrain_descent_ratio",
                    "retrain_predicted_vs_realised", "retrain_noise_floor")
TAGS = {"hypergrad": "hypergrad", "family": "hyperparam", "dataset": "dataset", "model": "model",
        "device": "device", "memory_kind": "memory_kind", "sweep_id": "sweep_id", "sweeper": "sweeper",
        "launcher": "launcher", "error": "error", "skip_reason": "skip_reason", "failed_step": "failed_step"}
METRICS_COLUMNS = ["run_id", "experiment", "method", "family", "dataset", "model", "seed", "status",
                   "sweep_id", "key", "step", "value", "timestamp"]
MLFLOW_TO_STATUS = {"FINISHED": "finished", "FAILED": "failed", "KILLED": "skipped"}
SEARCH_PAGE = 1000  # runs per request to the store


class ReportError(Exception):
    """Something the user can fix (unknown experiment, no runs): one line, no traceback."""


def open_store(uri: str, experiments: list[str]):
    """An MlflowClient and {experiment id: name}; ReportError listing what exists if a name does not.
    Runs that dead processes left RUNNING are marked interrupted first (``store.mark_dead_runs``)."""
    from mlflow.tracking import MlflowClient

    from hgbench.store import StoreError, check_not_half_migrated, mark_dead_runs, plain_sqlite_path, sqlite_path, sqlite_state

    db = sqlite_path(uri)
    if db is not None and not db.exists():  # MlflowClient would create an empty store
        raise ReportError(f"no MLflow store at {uri} (run hgbench first, or pass --tracking-uri)")
    plain = plain_sqlite_path(uri)
    if plain is not None and plain.is_file():  # MLflow would try to migrate a half-migrated one again
        try:
            check_not_half_migrated(plain, sqlite_state(plain))
        except StoreError as exc:
            raise ReportError(str(exc)) from None
    client = MlflowClient(uri)
    mark_dead_runs(uri)  # a run whose process is gone reads as interrupted, not RUNNING forever
    ids, missing = {}, []
    for name in experiments:
        exp = client.get_experiment_by_name(name)
        if exp is None or exp.lifecycle_stage == "deleted":
            missing.append(name)
        else:
            ids[exp.experiment_id] = name
    if missing:
        names = sorted(e.name for e in client.search_experiments())
        listing = "\n".join(f"  - {n}" for n in names) or "  (none)"
        raise ReportError(f"experiment {', '.join(map(repr, missing))} not found in {uri}. "
                          f"Available experiments:\n{listing}")
    return client, ids


def search(client, experiment_ids: dict[str, str], filter_string: str) -> pd.DataFrame:
    """The matching runs as one table, the columns of ``mlflow.search_runs`` (``run_id``,
    ``experiment_id``, ``status``, ``start_time``, ``end_time``, ``metrics.*``, ``params.*``,
    ``tags.*``) — read through ``client`` (its own store), never MLflow's global tracking URI."""
    import numpy as np
    from mlflow.exceptions import MlflowException

    runs, token = [], None
    try:
        while True:
            page = client.search_runs(list(experiment_ids), filter_string, max_results=SEARCH_PAGE, page_token=token)
            runs += page
            token = page.token
            if not token:
                break
    except MlflowException as exc:
        raise ReportError(f"bad filter {filter_string!r}: {exc.message}") from None
    data: dict[str, list] = {
        "run_id": [r.info.run_id for r in runs], "experiment_id": [r.info.experiment_id for r in runs],
        "status": [r.info.status for r in runs], "artifact_uri": [r.info.artifact_uri for r in runs],
        "start_time": [pd.to_datetime(r.info.start_time, unit="ms", utc=True) for r in runs],
        "end_time": [pd.to_datetime(r.info.end_time, unit="ms", utc=True) for r in runs]}
    for kind, missing in (("metrics", np.nan), ("params", None), ("tags", None)):
        keys = sorted({k for r in runs for k in getattr(r.data, kind)})
        data.update({f"{kind}.{k}": [getattr(r.data, kind).get(k, missing) for r in runs] for k in keys})
    return pd.DataFrame(data)


def tidy_runs(df: pd.DataFrame, experiments: dict[str, str]) -> pd.DataFrame:
    """One row per run: core columns, final metrics (plain names), ``params.*`` and ``tags.*``."""
    col = lambda name: df[name] if name in df else pd.Series([None] * len(df), index=df.index, dtype=object)  # noqa: E731
    out = pd.DataFrame({"run_id": df["run_id"], "experiment": df["experiment_id"].map(experiments)})
    for name, tag in TAGS.items():
        out[name] = col(f"tags.hgbench.{tag}")
    out["seed"] = pd.to_numeric(col("params.seed"), errors="coerce").astype("Int64")  # params are str
    out["mlflow_status"] = df["status"]
    out["status"] = col("tags.hgbench.status").fillna(df["status"].map(MLFLOW_TO_STATUS)).fillna(df["status"].str.lower())
    out["method"] = out["hypergrad"]
    out["start_time"], out["end_time"] = df["start_time"], df["end_time"]
    for c in sorted(c for c in df if c.startswith("metrics.")):
        out[c[len("metrics."):]] = pd.to_numeric(df[c], errors="coerce")
    promoted = {f"tags.hgbench.{t}" for t in TAGS.values()} | {"tags.hgbench.status"}
    extra = [c for c in df if (c.startswith("params.") and not c.startswith(("params.mlflow.", "params.hydra.")))
             or (c.startswith("tags.") and c not in promoted)]
    out = pd.concat([out, df[extra]], axis=1)
    return out.sort_values(["experiment", "method", "seed", "start_time"], na_position="last").reset_index(drop=True)


def select_optuna(runs: pd.DataFrame) -> pd.DataFrame:
    """Keep the best FINISHED trial (lowest final val_loss) of each Optuna sweep; label its method
    ``optuna(<hypergrad>)``. Sets ``in_report`` (False for the other trials) and ``optuna_trials``."""
    runs = runs.copy()
    runs["in_report"] = True
    runs["optuna_trials"] = pd.NA
    optuna = runs["sweeper"].eq("optuna").fillna(False).astype(bool)
    runs.loc[optuna, "method"] = "optuna(" + runs.loc[optuna, "hypergrad"].fillna("?").astype(str) + ")"
    for _, trials in runs[optuna].groupby(runs.loc[optuna, "sweep_id"].fillna(""), sort=False):
        done = trials[(trials["status"] == "finished") & trials["val_loss"].notna()] if "val_loss" in trials else trials.iloc[:0]
        if len(done):  # else every trial stays: they are counted, none is aggregated
            runs.loc[trials.index.difference([done["val_loss"].idxmin()]), "in_report"] = False
        runs.loc[trials.index, "optuna_trials"] = len(trials)
    return runs


def fetch_history(client, runs: pd.DataFrame, keys_by_run: dict[str, list[str]]) -> pd.DataFrame:
    """Every logged value of every metric of ``runs`` (long format, ``METRICS_COLUMNS``)."""
    rows = []
    for r in runs.itertuples(index=False):
        for key in keys_by_run.get(r.run_id, []):
            for m in client.get_metric_history(r.run_id, key):
                rows.append((r.run_id, r.experiment, r.method, r.family, r.dataset, r.model, r.seed, r.status,
                             r.sweep_id, key, m.step, m.value, m.timestamp))
    out = pd.DataFrame(rows, columns=METRICS_COLUMNS)
    out["seed"] = out["seed"].astype("Int64")
    return out.sort_values(["run_id", "key", "step", "timestamp"], kind="stable").reset_index(drop=True)


def per_step_mean(metrics: pd.DataFrame, key: str) -> pd.Series:
    """Mean over the hyper-steps of a per-step metric, per run_id."""
    return metrics.loc[metrics["key"] == key].groupby("run_id")["value"].mean()


def per_step_median(metrics: pd.DataFrame, key: str) -> pd.Series:
    """Median over the steps where a metric was logged, per run_id."""
    return metrics.loc[metrics["key"] == key].groupby("run_id")["value"].median()


def row_keys(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """``runs`` with its row-key columns as strings ("—" where a run has no such parameter), and
    those columns: GROUP, then the differing parameters (named without ``params.``)."""
    runs = runs.copy()
    for c in GROUP:
        runs[c] = runs[c].fillna("?").astype(str)
    extra = []
    for c in config_columns(runs):
        name = c[len("params."):]
        runs[name] = runs[c].astype(object).where(runs[c].notna(), "—").astype(str)
        extra.append(name)
    return runs, GROUP + extra


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration (``row_keys``): run counts ``n_<status>``, and over the FINISHED
    runs — one per seed: a seed run twice with the same configuration is counted in
    ``n_duplicates`` and only its latest run is used — ``<m>_mean``, ``<m>_std`` (sample std over
    seeds; NaN for one) and ``<m>_n`` for every column of FINAL."""
    runs, key = row_keys(runs)
    counts = pd.crosstab([runs[c] for c in key], runs["status"])
    order = STATUSES + sorted(set(counts) - set(STATUSES))  # e.g. running, killed
    counts = counts.reindex(columns=order, fill_value=0).add_prefix("n_")
    done = runs[runs["status"] == "finished"]
    if "start_time" in done:
        done = done.sort_values("start_time", kind="stable")
    seed = done["seed"].astype(str) if "seed" in done else pd.Series("", index=done.index)
    repeated = done.assign(_seed=seed).duplicated(subset=[*key, "_seed"], keep="last")
    counts["n_duplicates"] = repeated.groupby([done[c] for c in key]).sum().reindex(counts.index, fill_value=0).astype(int)
    done = done[~repeated]
    stats = {}
    for m in FINAL:
        if m in done:
            g = done.groupby(key)[m]
            stats.update({f"{m}_mean": g.mean(), f"{m}_std": g.std(), f"{m}_n": g.count()})
    loads = [c for c in ("load_avg_start", "load_avg_end") if c in done]
    if loads:  # the load each row's runs were timed under: its highest, and how many were contended
        load = done[loads].max(axis=1)
        cores = pd.to_numeric(done["tags.hgbench.cpu_count"], errors="coerce") if "tags.hgbench.cpu_count" in done else pd.Series(float("nan"), index=done.index)
        g = lambda x: x.groupby([done[c] for c in key])  # noqa: E731
        stats.update({"load_max": g(load).max(), "contended_n": g(load > cores).sum().astype(int)})
    out = counts.join(pd.DataFrame(stats), how="left") if stats else counts
    out = out.reset_index()
    out.columns.name = None
    order = ["dataset", "model", "family"] + (["val_loss_mean"] if "val_loss_mean" in out else []) + ["method"]
    return out.sort_values(order, na_position="last").reset_index(drop=True)


def fmt(mean: float, std: float | None = None) -> str:
    """4 significant digits for the mean, 2 for the std: 2.208 ± 0.011, 1,234 ± 56; — for none."""
    if mean is None or pd.isna(mean):
        return "—"
    num = lambda x: "0" if x == 0 else f"{x:,.0f}" if abs(x) >= 1000 else f"{x:#.4g}".rstrip(".")  # noqa: E731
    spread = lambda x: f"{x:,.0f}" if abs(x) >= 100 else f"{x:.2g}"  # noqa: E731
    return num(mean) if std is None or pd.isna(std) else f"{num(mean)} ± {spread(std)}"


def code(text: str) -> str:
    """Inline markdown code, also when the text holds backticks."""
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def quote(arg: str) -> str:
    """Shell quoting that keeps MLflow filters readable: "params.seed = '0'"."""
    if shlex.quote(arg) != arg and not any(c in arg for c in '"$`\\!'):
        return f'"{arg}"'
    return shlex.quote(arg)


def cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows])


LOAD_COLUMNS = ("load_max", "contended_n")  # aggregate's load columns (not row keys)
CONTENDED_NOTE = ("`*` runtime measured at a 1-minute load average above the machine's cores (at the start or "
                  "end of at least one of the row's runs; the load counts the run's own threads): other work "
                  "competed for the cores, so it is slower than the method itself — compare runtimes taken at a lower load.")


def summary_table(agg: pd.DataFrame) -> str:
    metrics = [m for m in FINAL if f"{m}_mean" in agg and agg[f"{m}_mean"].notna().any()]
    counts = [c for c in agg.columns if c.startswith("n_") and (c != "n_duplicates" or agg[c].any())]
    key = [c for c in agg.columns if not c.startswith("n_") and not c.endswith(("_mean", "_std", "_n")) and c not in LOAD_COLUMNS]
    load = "load_max" in agg and agg["load_max"].notna().any()
    header = key + [c[2:] for c in counts] + [FINAL[m] for m in metrics] + (["load (max)"] if load else [])

    def value(r, m: str) -> str:
        text = fmt(r[f"{m}_mean"], r[f"{m}_std"])
        return text + " *" if m == "runtime_s" and text != "—" and r.get("contended_n", 0) > 0 else text

    rows = [[r[c] for c in key] + [int(r[c]) for c in counts] + [value(r, m) for m in metrics]
            + ([f"{r['load_max']:.1f}" if pd.notna(r["load_max"]) else "—"] if load else [])
            for _, r in agg.iterrows()]
    return markdown_table(header, rows)


def write_summary(path: Path, *, name, uri, experiments, sweep_id, filter_string, command, runs, agg, plots) -> None:
    shown = runs[runs["in_report"]]
    n = shown["status"].value_counts()
    statuses = STATUSES + sorted(set(n.index) - set(STATUSES))
    lines = [
        f"# hgbench report: {name}", "",
        f"- store: {code(uri)}",
        f"- experiments: {', '.join(code(e) for e in experiments)}",
        f"- sweep id: {code(sweep_id)}" if sweep_id else "- sweep id: any",
        f"- filter: {code(filter_string)}" if filter_string else "- filter: none",
        f"- runs: {len(shown)} in the table (" + ", ".join(f"{n.get(s, 0)} {s}" for s in statuses) + ")"
        + (f"; {len(runs) - len(shown)} other Optuna trials left out" if len(runs) > len(shown) else ""),
        f"- generated: {datetime.now():%Y-%m-%d %H:%M:%S}",
        f"- regenerate (from {code(str(Path.cwd()))}): {code(command)}", "",
        "A row is one configuration: besides method, family, dataset and model, every resolved "
        "parameter that differs among runs of those (e.g. `hypergrad.iterations`, `hyper_steps`) is a "
        "column. Each cell: mean ± sample std over seeds of the run's final value, FINISHED runs only "
        "(a single run shows no ±); a seed run more than once with the same configuration counts once "
        "(its latest run) and the rest show under `duplicates`. Failed and skipped runs are counted, "
        "never aggregated. "
        "`hypergrad / step`: the run's mean `hypergrad_time_s` over its hyper-steps, in ms. "
        "`load (max)`: the highest 1-minute load average at the start or end of the row's FINISHED runs "
        "(MLflow's `load_avg_start` / `load_avg_end`), the load their runtimes were measured under. "
        "`peak memory`: on CPU the growth of the process's peak RSS during the run, on CUDA "
        "`max_memory_allocated` (`peak_memory.png` draws a bar only where it is resolved above noise). "
        "`ppl`: perplexity, exp of the cross-entropy per token (sequence tasks). `fresh test acc`: "
        "distillation judged the paper's way — models trained from scratch on the learned images only "
        "(mean over the family's `fresh_seeds`), beside the same recipe on random real and on class-mean images.", "",
        summary_table(agg), "",
    ]
    if "contended_n" in agg and agg["contended_n"].fillna(0).gt(0).any():
        lines += [CONTENDED_NOTE, ""]
    optuna = runs[runs["sweeper"].eq("optuna").fillna(False).astype(bool)]
    if len(optuna):
        lines += ["## Optuna baselines", "",
                  "Black-box baseline: each Optuna sweep enters the table as ONE run, its trial with the lowest "
                  "final val_loss, labelled `optuna(<hypergrad>)`; its runtime is that of that trial alone, the "
                  "whole sweep's is below. Equal weight updates are not equal compute: a gradient-based run also "
                  "computes a hypergradient every hyper-step (`HVPs / step` above; a Neumann or CG hypergradient with "
                  "i steps costs a validation gradient and i Hessian-vector products, each about one to two gradients "
                  "of time). The sweep's cost is therefore compared in wall time: `× a gradient run` is the sweep's "
                  "runtime over the mean runtime of the FINISHED gradient-based runs (not `fixed`, not Optuna) on the "
                  "same dataset and model in this report.", ""]
        grad = shown[(shown["status"] == "finished") & ~shown["sweeper"].eq("optuna").fillna(False).astype(bool)
                     & ~shown["hypergrad"].eq("fixed").fillna(False).astype(bool)]
        rows = []
        for sid, t in optuna.groupby(optuna["sweep_id"].fillna("?"), sort=True):
            best = t[t["in_report"]]
            b = best.iloc[0] if len(best) == 1 else None
            total = t["runtime_s"].sum() if "runtime_s" in t else float("nan")
            same = grad[(grad["dataset"] == t["dataset"].iloc[0]) & (grad["model"] == t["model"].iloc[0])] if len(grad) else grad
            per_run = same["runtime_s"].mean() if len(same) and "runtime_s" in same else float("nan")
            rows.append([sid, len(t), ", ".join(f"{k} {v}" for k, v in t["status"].value_counts().items()),
                         weight_updates(t), fmt(total) if "runtime_s" in t else "—",
                         f"{total / per_run:.1f}" if pd.notna(total) and pd.notna(per_run) and per_run > 0 else "—",
                         b["run_id"][:12] if b is not None else "none finished",
                         fmt(b["val_loss"]) if b is not None else "—",
                         (b.get("tags.hgbench.overrides") or "") if b is not None else ""])
        lines += [markdown_table(["sweep id", "trials", "status", "weight updates (all trials)", "sweep runtime (s)",
                                  "× a gradient run", "best run", "best val loss", "best trial's overrides"], rows), ""]
    bad = shown[shown["status"] != "finished"]
    if len(bad):
        lines += ["## Runs not aggregated", ""]
        rows = [[r.run_id[:12], r.method, r.family, r.dataset, r.model, "" if pd.isna(r.seed) else r.seed, r.status,
                 str(r.error if isinstance(r.error, str) else r.skip_reason if isinstance(r.skip_reason, str) else "")[:200]]
                for r in bad.itertuples()]
        lines += [markdown_table(["run", "method", "family", "dataset", "model", "seed", "status", "reason"], rows), ""]
    lines += ["## Files", "", "- `runs.csv`: one row per matched run (final metrics, params, tags; `in_report`)",
              "- `metrics.csv`: one row per logged (run, metric key, step) of the runs in the table"]
    lines += [f"- `{p.name}`" for p in plots] + [""]
    path.write_text("\n".join(lines))


def weight_updates(trials: pd.DataFrame) -> str:
    """Σ hyper_steps × inner_steps over an Optuna sweep's trials (from their params; "—" where a
    trial lacks them)."""
    cols = ("params.hyper_steps", "params.inner_steps")
    if not all(c in trials for c in cols):
        return "—"
    n = pd.to_numeric(trials[cols[0]], errors="coerce") * pd.to_numeric(trials[cols[1]], errors="coerce")
    return "—" if n.isna().any() else f"{int(n.sum()):,}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hgbench-report", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compare recorded hgbench runs: writes <out-dir>/<name>/summary.md (mean ± std over seeds),\n"
                    "runs.csv, metrics.csv and PNG plots, read from an MLflow store.",
        epilog="examples:\n  hgbench-report --experiment methods_x_seeds\n"
               "  hgbench-report --sweep-id 20260101-120000-1a2b3c --filter \"params.dataset.name = 'digits'\"")
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--experiment", action="append", metavar="NAME", help="experiment to read (repeatable; default: hgbench)")
    p.add_argument("--sweep-id", metavar="ID", help="only runs tagged hgbench.sweep_id = ID")
    p.add_argument("--filter", default="", metavar="STRING", help="an MLflow filter string, e.g. \"params.seed = '0'\"")
    p.add_argument("--name", help="results subfolder (default: the experiment name, or the sweep id)")
    p.add_argument("--out-dir", default="results", metavar="DIR", help="where <name>/ is written (default: results)")
    return p


def report(args: argparse.Namespace) -> Path:
    from hgbench import plots
    from hgbench.store import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    experiments = args.experiment or ["hgbench"]
    name = args.name or args.sweep_id or "+".join(experiments)
    filters = [args.filter.strip()] if args.filter.strip() else []  # MLflow filters take no parentheses
    if args.sweep_id:
        if "'" in args.sweep_id:
            raise ReportError(f"--sweep-id {args.sweep_id!r}: a sweep id holds no quotes")
        filters.append(f"tags.\"hgbench.sweep_id\" = '{args.sweep_id}'")
    filter_string = " and ".join(filters)
    client, ids = open_store(uri, experiments)
    df = search(client, ids, filter_string)
    if df.empty:
        raise ReportError(f"no runs matched in experiment(s) {', '.join(experiments)} at {uri}"
                          + (f" with filter: {filter_string}" if filter_string else ""))
    runs = select_optuna(tidy_runs(df, ids))
    keys = {r["run_id"]: [c[len("metrics."):] for c in df if c.startswith("metrics.") and pd.notna(r[c])] for _, r in df.iterrows()}
    metrics = fetch_history(client, runs[runs["in_report"]], keys)
    runs["hypergrad_ms"] = runs["run_id"].map(per_step_mean(metrics, "hypergrad_time_s")) * 1000
    runs["hvp_calls_mean"] = runs["run_id"].map(per_step_mean(metrics, "hvp_calls"))
    for key in ACCURACY_MEDIANS:
        runs[f"{key}_median"] = runs["run_id"].map(per_step_median(metrics, key))
    agg = aggregate(runs[runs["in_report"]])

    out = Path(args.out_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    first = ["run_id", "experiment", "method", "hypergrad", "family", "dataset", "model", "seed", "status", "mlflow_status",
             "in_report", "sweep_id", "sweeper", "optuna_trials", "launcher", "device", "memory_kind", "error", "skip_reason",
             "failed_step", "start_time", "end_time"]
    rest = [c for c in runs if c not in first]
    plain = [c for c in rest if not c.startswith(("params.", "tags."))]
    runs[first + plain + sorted(c for c in rest if c.startswith("params.")) + sorted(c for c in rest if c.startswith("tags."))] \
        .to_csv(out / "runs.csv", index=False)
    metrics.to_csv(out / "metrics.csv", index=False)
    written = plots.make_plots(runs, metrics, out)
    command = ["hgbench-report", "--tracking-uri", uri] + [a for e in experiments for a in ("--experiment", e)]
    command += (["--sweep-id", args.sweep_id] if args.sweep_id else []) + (["--filter", args.filter] if args.filter else [])
    command += ["--name", name, "--out-dir", args.out_dir]
    write_summary(out / "summary.md", name=name, uri=uri, experiments=experiments, sweep_id=args.sweep_id,
                  filter_string=args.filter.strip(), command=" ".join(map(quote, command)), runs=runs, agg=agg, plots=written)
    n = runs.loc[runs["in_report"], "status"].value_counts()
    print(f"hgbench-report: {int(runs['in_report'].sum())} runs (" + ", ".join(f"{n.get(s, 0)} {s}" for s in STATUSES)
          + f") from {uri}\nwrote {out.resolve()}/")
    for f in ["summary.md", "runs.csv", "metrics.csv"] + [p.name for p in written]:
        print(f"  {f}")
    return out


def main(argv: list[str] | None = None) -> int:
    from hgbench.store import NO_TELEMETRY, scoped_env

    args = build_parser().parse_args(argv)
    try:
        with scoped_env(NO_TELEMETRY):
            report(args)
    except ReportError as exc:
        print(f"hgbench-report: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
