"""``hgbench-report``: the aggregation on hand-made frames, and the whole command on a real grid
recorded through the CLI (2 methods × 2 seeds, a diverging run, a skipped run)."""

import contextlib
import io
import math
import shlex
import struct
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import hgbench_in_process
from mlflow.tracking import MlflowClient

from hgbench.report import aggregate, fmt, main, select_optuna, summary_table

SMALL = ["dataset=digits", "hyper_steps=6", "inner_steps=2", "eval_every=3", "dataset.train_size=200", "dataset.val_size=100"]
PLOTS = ("val_loss_vs_time.png", "peak_memory.png", "hypergrad_time.png")
FINAL = {"val loss": "val_loss", "test loss": "test_loss", "val acc": "val_acc", "test acc": "test_acc",
         "runtime (s)": "runtime_s", "peak memory (MB)": "peak_memory_mb"}


# --- the aggregation, on frames made by hand ----------------------------------------------------

def hand_runs():
    rows = [  # method, status, seed, val_loss, runtime_s
        ("a", "finished", 0, 1.0, 10.0), ("a", "finished", 1, 2.0, 20.0), ("a", "finished", 2, 3.0, 30.0),
        ("a", "failed", 3, 100.0, 1000.0),  # must be counted, never averaged
        ("b", "skipped", 0, math.nan, 0.0),
        ("c", "finished", 0, 0.5, 5.0),
        ("d", "running", 0, 7.0, 7.0),
    ]
    df = pd.DataFrame(rows, columns=["method", "status", "seed", "val_loss", "runtime_s"])
    return df.assign(family="weight_decay", dataset="digits", model="mlp")


def test_aggregate_counts_every_run_and_averages_only_finished_ones():
    agg = aggregate(hand_runs()).set_index("method")
    assert list(agg.columns[:7]) == ["family", "dataset", "model", "n_finished", "n_failed", "n_skipped", "n_running"]
    assert agg.loc["a", ["n_finished", "n_failed", "n_skipped"]].tolist() == [3, 1, 0]
    assert agg.loc["a", "val_loss_mean"] == pytest.approx(2.0) and agg.loc["a", "val_loss_std"] == pytest.approx(1.0)
    assert agg.loc["a", "runtime_s_mean"] == pytest.approx(20.0) and agg.loc["a", "val_loss_n"] == 3
    assert agg.loc["b", ["n_finished", "n_skipped"]].tolist() == [0, 1] and math.isnan(agg.loc["b", "val_loss_mean"])
    assert agg.loc["c", "val_loss_mean"] == 0.5 and math.isnan(agg.loc["c", "val_loss_std"])  # one run: no std
    assert agg.loc["d", "n_running"] == 1 and math.isnan(agg.loc["d", "val_loss_mean"])
    assert "test_acc_mean" not in agg  # only metrics that exist
    # one task: sorted by mean val loss, runs with none last
    assert list(agg.index) == ["c", "a", "b", "d"]


def test_aggregate_keeps_tasks_apart():
    runs = pd.concat([hand_runs(), hand_runs().assign(dataset="mnist_5k", val_loss=lambda d: d["val_loss"] * 10)])
    agg = aggregate(runs).set_index(["method", "dataset"])
    assert agg.loc[("a", "digits"), "val_loss_mean"] == pytest.approx(2.0)
    assert agg.loc[("a", "mnist_5k"), "val_loss_mean"] == pytest.approx(20.0)
    assert len(agg) == 8


def test_the_table_shows_the_load_and_flags_runtimes_timed_above_the_cores():
    runs = hand_runs().assign(load_avg_start=[0.2, 0.3, 3.5, 9.0, 0.0, 0.1, 0.0], load_avg_end=[1.1, 1.2, 1.0, 9.0, 0.0, 1.9, 0.0],
                              **{"tags.hgbench.cpu_count": "2"})
    agg = aggregate(runs).set_index("method")
    assert agg.loc["a", "load_max"] == 3.5 and agg.loc["a", "contended_n"] == 1  # the failed run's 9.0 is not a timing
    assert agg.loc["c", "contended_n"] == 0
    table = summary_table(agg.reset_index()).splitlines()
    header = [h.strip() for h in table[0].strip("|").split("|")]
    assert header[-1] == "load (max)"
    row = {r.split("|")[1].strip(): [c.strip() for c in r.strip("|").split("|")] for r in table[2:]}
    assert row["a"][header.index("runtime (s)")] == "20.00 ± 10 *" and row["a"][-1] == "3.5"
    assert row["c"][header.index("runtime (s)")] == "5.000" and row["c"][-1] == "1.9"
    # runs recorded before the core count was (no tag): the load is shown, nothing is flagged
    assert "*" not in summary_table(aggregate(runs.drop(columns="tags.hgbench.cpu_count")))


def test_number_format():
    assert fmt(2.20834, 0.011234) == "2.208 ± 0.011"
    assert fmt(1234.6, 56.7) == "1,235 ± 57"
    assert fmt(0.5, float("nan")) == "0.5000"
    assert fmt(float("nan"), 1.0) == "—"


def test_optuna_sweeps_enter_as_their_best_finished_trial():
    runs = pd.DataFrame([  # run_id, sweeper, sweep_id, hypergrad, status, val_loss
        ("t1", "optuna", "s1", "fixed", "finished", 0.9),
        ("t2", "optuna", "s1", "fixed", "finished", 0.4),
        ("t3", "optuna", "s1", "fixed", "failed", 0.1),  # lower, but failed
        ("u1", "optuna", "s2", "fixed", "failed", math.nan),  # no finished trial: all stay, counted
        ("u2", "optuna", "s2", "fixed", "skipped", math.nan),
        ("g1", "basic", "s3", "neumann", "finished", 0.2),
        ("g2", None, None, "cg", "finished", 0.3),  # a run without the new tags
    ], columns=["run_id", "sweeper", "sweep_id", "hypergrad", "status", "val_loss"])
    runs["method"] = runs["hypergrad"]
    out = select_optuna(runs).set_index("run_id")
    assert out["in_report"].to_dict() == {"t1": False, "t2": True, "t3": False, "u1": True, "u2": True, "g1": True, "g2": True}
    assert set(out.loc[["t1", "t2", "t3", "u1", "u2"], "method"]) == {"optuna(fixed)"}
    assert out.loc["g1", "method"] == "neumann" and out.loc["g2", "method"] == "cg"
    assert out.loc["t2", "optuna_trials"] == 3 and out.loc["u1", "optuna_trials"] == 2


# --- the whole command on a real store ----------------------------------------------------------

def hgbench(cwd, *args):
    return hgbench_in_process(cwd, *args)


def run_main(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(args))
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def store(tmp_path_factory, copy_store):
    """A grid (neumann, identity × seeds 0, 1; a 64-16-10 MLP), then a second sweep on the default
    64-128-10 MLP: neumann with a step size that diverges (FAILED) and exact, refusing its 9,610
    weights (more than max_weights = 5,000: SKIPPED)."""
    root = tmp_path_factory.mktemp("report")
    copy_store(root / "mlflow.db")
    grid = hgbench(root, "-m", "hypergrad=neumann,identity", "seed=0,1", "model.hidden=[16]", *SMALL)
    assert grid.returncode == 0, grid.stderr[-3000:]
    bad = hgbench(root, "-m", "hypergrad=neumann,exact", "inner_optimizer.lr=1e6", *SMALL)
    assert bad.returncode == 1 and "1 failed, 1 skipped" in bad.stdout, bad.stdout[-3000:] + bad.stderr[-3000:]
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("hgbench").experiment_id])
    assert len(runs) == 6
    return root, uri, client, runs


@pytest.fixture(scope="module")
def report(store):
    root, uri, _, _ = store
    rc, out, err = run_main("--tracking-uri", uri, "--out-dir", str(root / "results"), "--name", "all")
    assert rc == 0, err
    return root / "results" / "all", out


def table(text):
    """The first markdown table of ``text`` as a list of {header: cell}."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert set(lines[1]) <= set("|-")
    rows = []
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != len(header):
            break  # the next table
        rows.append(dict(zip(header, cells, strict=True)))
    return rows


def parse(cell):
    """'2.208 ± 0.011' -> (2.208, 0.011); '0.5000' -> (0.5, None); '—' -> (None, None); a runtime's
    flag for a load above the cores ('0.016 *') is left off."""
    cell = cell.removesuffix(" *")
    if cell == "—":
        return None, None
    mean, _, std = cell.partition(" ± ")
    return float(mean.replace(",", "")), float(std.replace(",", "")) if std else None


def final(client, run, key):
    history = client.get_metric_history(run.info.run_id, key)
    return max(history, key=lambda m: (m.step, m.timestamp)).value if history else None


@pytest.mark.slow
def test_summary_rows_counts_and_means_match_mlflow(store, report):
    _, uri, client, runs = store
    out_dir, printed = report
    assert f"wrote {out_dir}/" in printed and "6 runs (4 finished, 1 failed, 1 skipped)" in printed
    text = (out_dir / "summary.md").read_text()
    assert f"- store: `{uri}`" in text and "- experiments: `hgbench`" in text and "- filter: none" in text
    # a row is one configuration: the diverging neumann run (another model and learning rate) is not
    # pooled with the grid's neumann runs
    table_rows = table(text)
    assert {"model.hidden", "inner_optimizer.lr"} <= set(table_rows[0])
    failed = [r for r in table_rows if r["method"] == "neumann" and r["inner_optimizer.lr"] == "1000000.0"]
    assert len(failed) == 1 and (int(failed[0]["finished"]), int(failed[0]["failed"])) == (0, 1)
    rows = {r["method"]: r for r in table_rows if r["inner_optimizer.lr"] != "1000000.0" or r["method"] == "exact"}
    assert set(rows) == {"neumann", "identity", "exact"} and len(table_rows) == 4
    for r in rows.values():
        assert (r["family"], r["dataset"], r["model"]) == ("weight_decay", "digits", "mlp")
    counts = {m: (int(r["finished"]), int(r["failed"]), int(r["skipped"])) for m, r in rows.items()}
    assert counts == {"neumann": (2, 0, 0), "identity": (2, 0, 0), "exact": (0, 0, 1)}
    assert all(v == "—" for k, v in rows["exact"].items() if k in FINAL or k.startswith("hypergrad"))

    # recompute every cell from MlflowClient: finished runs only, final = value at the last step
    for method in ("neumann", "identity"):
        done = [r for r in runs if r.data.tags["hgbench.hypergrad"] == method and r.info.status == "FINISHED"]
        everyone = [r for r in runs if r.data.tags["hgbench.hypergrad"] == method]
        assert len(done) == 2
        loads = [max(r.data.metrics["load_avg_start"], r.data.metrics["load_avg_end"]) for r in done]
        contended = any(load > int(r.data.tags["hgbench.cpu_count"]) for load, r in zip(loads, done, strict=True))
        assert rows[method]["runtime (s)"].endswith(" *") == contended
        assert float(rows[method]["load (max)"]) == pytest.approx(max(loads), abs=0.051)
        for header, key in FINAL.items():
            values = pd.Series([final(client, r, key) for r in done])
            mean, std = parse(rows[method][header])
            assert mean == pytest.approx(values.mean(), rel=1e-3, abs=1e-3), (method, key)
            assert std == pytest.approx(values.std(), rel=0.06, abs=1e-3), (method, key)
        per_step = pd.Series([pd.Series([m.value for m in client.get_metric_history(r.info.run_id, "hypergrad_time_s")]).mean()
                              for r in done]) * 1000
        assert parse(rows[method]["hypergrad / step (ms)"])[0] == pytest.approx(per_step.mean(), rel=1e-3)
        if method == "neumann":  # the diverged run would change the mean runtime if it were averaged
            with_failed = pd.Series([final(client, r, "runtime_s") for r in everyone]).mean()
            assert parse(rows[method]["runtime (s)"])[0] != pytest.approx(with_failed, rel=1e-3)

    assert "## Runs not aggregated" in text
    not_aggregated = text.split("## Runs not aggregated", 1)[1]
    assert "DivergenceError" in not_aggregated and "max_weights=5,000" in not_aggregated
    assert "Optuna" not in text  # no Optuna sweep in this store


@pytest.mark.slow
def test_metrics_csv_has_one_row_per_logged_value(store, report):
    _, _, client, runs = store
    out_dir, _ = report
    metrics = pd.read_csv(out_dir / "metrics.csv")
    assert list(metrics.columns) == ["run_id", "experiment", "method", "family", "dataset", "model", "seed", "status",
                                     "sweep_id", "key", "step", "value", "timestamp"]
    expected = [(r.info.run_id, key, m.step, m.value) for r in runs for key in r.data.metrics
                for m in client.get_metric_history(r.info.run_id, key)]
    assert len(metrics) == len(expected) > 6 * 10
    got = sorted(metrics[["run_id", "key", "step", "value"]].itertuples(index=False, name=None))
    assert [g[:3] for g in got] == sorted(e[:3] for e in expected)
    assert [g[3] for g in got] == pytest.approx([e[3] for e in sorted(expected)])
    assert set(metrics["status"]) == {"finished", "failed", "skipped"}
    assert set(metrics["experiment"]) == {"hgbench"} and metrics["sweep_id"].nunique() == 2
    steps = metrics[(metrics["method"] == "identity") & (metrics["key"] == "val_loss")].groupby("run_id")["step"].apply(list)
    assert steps.tolist() == [[0, 3, 6], [0, 3, 6]]

    table_runs = pd.read_csv(out_dir / "runs.csv")
    assert len(table_runs) == 6 and table_runs["in_report"].all()
    assert sorted(table_runs["status"]) == ["failed", "finished", "finished", "finished", "finished", "skipped"]
    by_id = table_runs.set_index("run_id")
    for r in runs:
        assert by_id.loc[r.info.run_id, "mlflow_status"] == r.info.status
        assert by_id.loc[r.info.run_id, "params.hyper_steps"] == 6
        if r.info.status == "FINISHED":
            assert by_id.loc[r.info.run_id, "val_loss"] == pytest.approx(final(client, r, "val_loss"))


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24]), len(data)


@pytest.mark.slow
def test_plots_are_real_pngs(report):
    out_dir, printed = report
    for name in PLOTS:
        (width, height), nbytes = png_size(out_dir / name)
        assert 500 <= width <= 4000 and 250 <= height <= 3000 and nbytes > 15_000, (name, width, height, nbytes)
        assert name in printed


@pytest.mark.slow
def test_the_regenerate_command_and_the_console_script(store, report, tmp_path):
    root, uri, _, runs = store
    out_dir, _ = report
    text = (out_dir / "summary.md").read_text()
    command = text.split("- regenerate (from ", 1)[1].split("): `", 1)[1].split("`\n", 1)[0]
    args = shlex.split(command)
    assert args[0] == "hgbench-report"
    rc, _, err = run_main(*args[1:-2], "--out-dir", str(tmp_path))  # same command, another folder
    assert rc == 0, err
    assert table((tmp_path / "all" / "summary.md").read_text()) == table(text)

    # the installed script, default store (./mlflow.db), one sweep, default name = the sweep id
    grid_id = next(r.data.tags["hgbench.sweep_id"] for r in runs if r.data.tags["hgbench.hypergrad"] == "identity")
    script = Path(sys.executable).parent / "hgbench-report"
    assert script.exists(), "pip install -e . --no-deps creates the console script"
    out = subprocess.run([str(script), "--sweep-id", grid_id], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    summary = root / "results" / grid_id / "summary.md"
    assert str(summary.parent) in out.stdout and "4 runs (4 finished, 0 failed, 0 skipped)" in out.stdout
    rows = table(summary.read_text())
    assert sorted((r["method"], r["finished"], r["failed"]) for r in rows) == [("identity", "2", "0"), ("neumann", "2", "0")]
    assert len(pd.read_csv(summary.parent / "runs.csv")) == 4


@pytest.mark.slow
def test_unknown_experiment_and_no_match_are_clear_errors(store, tmp_path):
    _, uri, _, _ = store
    rc, out, err = run_main("--tracking-uri", uri, "--experiment", "nope", "--out-dir", str(tmp_path))
    assert rc == 1 and "experiment 'nope' not found" in err and "Available experiments:\n" in err and "  - hgbench" in err
    rc, _, err = run_main("--tracking-uri", uri, "--filter", "params.seed = '99'", "--out-dir", str(tmp_path))
    assert rc == 1 and "no runs matched" in err and "params.seed = '99'" in err
    rc, _, err = run_main("--tracking-uri", uri, "--filter", "params.seed == oops", "--out-dir", str(tmp_path))
    assert rc == 1 and "bad filter" in err
    missing = tmp_path / "none.db"
    rc, _, err = run_main("--tracking-uri", f"sqlite:///{missing}", "--out-dir", str(tmp_path))
    assert rc == 1 and "no MLflow store" in err and not missing.exists()
    assert list(tmp_path.iterdir()) == []  # nothing written


# --- an Optuna sweep beside a gradient-based grid, in a store written by hand --------------------

def log_run(client, exp_id, tags, status, metrics=(), params=None):
    """``metrics``: (key, step, value) triples."""
    from mlflow.entities import Metric, Param

    run = client.create_run(exp_id, tags={f"hgbench.{k}": v for k, v in tags.items()})
    client.log_batch(run.info.run_id, metrics=[Metric(k, v, 1_000 + s, s) for k, s, v in metrics],
                     params=[Param(k, str(v)) for k, v in (params or {}).items()], synchronous=True)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def curve(val_losses, seconds, hypergrad_s, memory):
    out = [("val_loss", 2 * i, v) for i, v in enumerate(val_losses)]
    out += [("elapsed_s", s, seconds * (s + 1)) for s in range(2 * len(val_losses) - 1)]
    out += [("hypergrad_time_s", s, hypergrad_s * (1 + 0.1 * s)) for s in range(1, 2 * len(val_losses) - 1)]
    steps = 2 * len(val_losses) - 2
    return out + [("runtime_s", steps, seconds * (steps + 1)), ("peak_memory_mb", steps, memory)]


def test_an_optuna_sweep_enters_as_its_best_trial(tmp_path, mlflow_db):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("cmp", artifact_location=(tmp_path / "mlartifacts").as_uri())
    task = {"dataset": "digits", "model": "mlp"}
    grid = {**task, "hypergrad": "neumann", "hyperparam": "weight_decay_per_param", "sweeper": "basic", "sweep_id": "g"}
    for seed, (v, mem) in enumerate([(0.30, 10.0), (0.50, 30.0)]):
        log_run(client, exp, {**grid, "status": "finished"}, "FINISHED", curve([2.3, 1.0, v], 0.5, 0.004, mem), {"seed": seed})
    trial = {**task, "hypergrad": "fixed", "hyperparam": "weight_decay", "sweeper": "optuna", "sweep_id": "o"}
    best = None
    for v in (0.9, 0.4, 0.6):
        rid = log_run(client, exp, {**trial, "status": "finished"}, "FINISHED", curve([2.3, v], 0.1, 1e-5, 1.0), {"seed": 0})
        best = rid if v == 0.4 else best
    log_run(client, exp, {**trial, "status": "failed", "error": "DivergenceError: boom"}, "FAILED", [("val_loss", 0, 0.01)])
    log_run(client, exp, {**grid, "status": "failed", "error": "ValueError: bad config"}, "FAILED")  # no metrics at all

    rc, out, err = run_main("--tracking-uri", uri, "--experiment", "cmp", "--out-dir", str(tmp_path / "res"))
    assert rc == 0, err
    d = tmp_path / "res" / "cmp"
    text = (d / "summary.md").read_text()
    rows = {r["method"]: r for r in table(text)}
    assert set(rows) == {"neumann", "optuna(fixed)"}
    assert (rows["optuna(fixed)"]["finished"], rows["optuna(fixed)"]["failed"], rows["optuna(fixed)"]["val loss"]) == ("1", "0", "0.4000")
    assert rows["optuna(fixed)"]["family"] == "weight_decay"
    assert (rows["neumann"]["finished"], rows["neumann"]["failed"], rows["neumann"]["val loss"]) == ("2", "1", "0.4000 ± 0.14")
    assert rows["neumann"]["peak memory (MB)"] == "20.00 ± 14"
    assert rows["neumann"]["hypergrad / step (ms)"] == "5.000 ± 0"  # 4 ms × mean(1.1, 1.2, 1.3, 1.4), both seeds
    assert "val acc" not in rows["neumann"]  # no accuracy logged: no column
    assert "## Optuna baselines" in text and "labelled `optuna(<hypergrad>)`" in text
    optuna = table(text.split("## Optuna baselines", 1)[1])
    assert len(optuna) == 1 and optuna[0]["trials"] == "4" and optuna[0]["best run"] == best[:12]
    assert "3 other Optuna trials left out" in text  # two worse ones and the failed one
    runs = pd.read_csv(d / "runs.csv").set_index("run_id")
    assert runs["in_report"].sum() == 4 and runs.loc[best, "in_report"]
    metrics = pd.read_csv(d / "metrics.csv")
    assert set(metrics["run_id"]) == set(runs.index[runs["in_report"]]) - {runs.index[runs["error"] == "ValueError: bad config"][0]}
    assert set(metrics.loc[metrics["run_id"] == best, "method"]) == {"optuna(fixed)"}
    for name in PLOTS:
        assert png_size(d / name)[1] > 10_000


def test_run_times_decades_apart_get_a_log_time_axis_that_keeps_time_zero(monkeypatch, tmp_path):
    """exact taking 100× longer than the rest would squash every other curve against t = 0."""
    from hgbench import plots

    rows, metrics = [], []
    for method, seconds in (("neumann", 0.01), ("exact", 5.0)):
        rid = f"run-{method}"
        rows.append({"run_id": rid, "series": method, "dataset": "digits", "model": "mlp", "val_loss": 0.2,
                     "optuna_total_s": float("nan")})
        for step, v in enumerate([2.3, 0.5, 0.2]):
            metrics += [{"run_id": rid, "key": "val_loss", "step": step, "value": v},
                        {"run_id": rid, "key": "elapsed_s", "step": step, "value": seconds * step}]  # starts at 0
    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.append(fig) or path)
    plots.plot_val_loss_vs_time(pd.DataFrame(rows), pd.DataFrame(metrics), {"neumann": "C0", "exact": "C1"}, tmp_path / "v.png")
    (ax,) = figs[0].axes
    assert ax.get_xscale() == "symlog" and ax.get_xlim()[0] == 0 and "log scale" in ax.get_xlabel()


# --- a row is one configuration -----------------------------------------------------------------

def configured_runs(rows, params):
    """Runs of one method/family/task from (seed, start_time, val_loss, {param: value}) tuples."""
    recs = []
    for i, (seed, start, val, extra) in enumerate(rows):
        recs.append({"run_id": f"r{i}", "method": "neumann", "family": "weight_decay", "dataset": "digits", "model": "mlp",
                     "status": "finished", "seed": seed, "start_time": start, "val_loss": val,
                     "params.mlflow.experiment": "hgbench", "params.progress": "auto", "params.num_weights": "2410",
                     **{f"params.{k}": v for k, v in {**params, **extra}.items()}})
    return pd.DataFrame(recs)


def test_a_long_run_and_short_runs_are_different_rows_and_a_repeated_seed_is_flagged():
    """The issue's case: the quick start (3,000 hyper-steps, seed 0) and a grid with hyper_steps=100
    over seeds 0 and 1 — two rows, the long run never pooled with the short ones, seed 0 of the
    short runs counted once (its latest run) and flagged as a duplicate, not averaged as a seed."""
    runs = configured_runs([(0, 1, 0.03, {"hyper_steps": "3000"}),
                            (0, 2, 0.60, {"hyper_steps": "100"}), (1, 3, 0.50, {"hyper_steps": "100"}),
                            (0, 4, 0.40, {"hyper_steps": "100"})],  # seed 0 again, same config
                           {"hypergrad.iterations": "5"})
    agg = aggregate(runs).set_index("hyper_steps")
    assert sorted(agg.index) == ["100", "3000"]
    assert agg.loc["3000", "val_loss_mean"] == pytest.approx(0.03) and agg.loc["3000", "n_duplicates"] == 0
    short = agg.loc["100"]
    assert short["n_finished"] == 3 and short["n_duplicates"] == 1 and short["val_loss_n"] == 2
    assert short["val_loss_mean"] == pytest.approx(0.45)  # seeds 0 (its latest run: 0.40) and 1 (0.50)
    assert "hypergrad.iterations" not in agg  # the same everywhere: no column
    text = summary_table(aggregate(runs))
    header = [h.strip() for h in text.split("\n")[0].strip("|").split("|")]
    assert header[:5] == ["method", "family", "dataset", "model", "hyper_steps"] and "duplicates" in header


def test_the_neumann_iterations_grid_is_one_row_per_i():
    """The issue's other case: experiment=neumann_iterations (i ∈ {0, 1, 5, 20} × 3 seeds) is four
    rows, one per i, each over its 3 seeds."""
    rows = [(seed, 10 * i + seed, 0.5 + 0.01 * i, {"hypergrad.iterations": str(i)}) for i in (0, 1, 5, 20) for seed in (0, 1, 2)]
    agg = aggregate(configured_runs(rows, {"hyper_steps": "300"})).set_index("hypergrad.iterations")
    assert sorted(agg.index, key=int) == ["0", "1", "5", "20"]
    assert (agg["n_finished"] == 3).all() and (agg["val_loss_n"] == 3).all() and (agg["n_duplicates"] == 0).all()
    assert agg.loc["20", "val_loss_mean"] == pytest.approx(0.7)


def test_parameters_that_differ_only_between_methods_are_no_extra_column():
    """``iterations`` exists for neumann and not for identity: the method already separates them."""
    a = configured_runs([(0, 1, 0.5, {})], {"hypergrad.iterations": "5"})
    b = configured_runs([(0, 2, 0.6, {})], {}).assign(method="identity")
    agg = aggregate(pd.concat([a, b], ignore_index=True))
    assert "hypergrad.iterations" not in agg and len(agg) == 2


def test_accuracy_columns_are_the_median_of_each_runs_checks_and_get_a_cosine_plot(tmp_path, mlflow_db):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("acc", artifact_location=(tmp_path / "mlartifacts").as_uri())
    task = {"dataset": "digits", "model": "mlp", "hyperparam": "weight_decay_per_param", "sweeper": "basic", "status": "finished"}
    checks = {"neumann": [(0.2, 0.9, 3), (0.4, 0.8, 3)], "cg": [(0.95, 0.1, 10), (0.97, 0.05, 10)]}  # (cos, err, hvps) per run
    for method, per_seed in checks.items():
        for seed, (cos, err, hvps) in enumerate(per_seed):
            acc = [("hg_cosine", s, cos + 0.01 * s) for s in (2, 4, 6)] + [("hg_rel_err", s, err * s / 4) for s in (2, 4, 6)]
            acc += [("hvp_calls", s, hvps) for s in range(1, 5)]
            if method == "cg":  # the retraining check on cg's runs only (reference=retrain)
                acc += [(k, s, v * s) for s in (2, 4, 6) for k, v in (("retrain_descent_ratio", 0.5 + seed), ("retrain_noise_floor", 1e-3),
                                                                      ("hg_scale_free_err", 0.1))]
            log_run(client, exp, {**task, "hypergrad": method}, "FINISHED", curve([2.3, 1.0, 0.5], 0.5, 0.004, 1.0) + acc, {"seed": seed})
    none = {**task, "hypergrad": "identity"}
    log_run(client, exp, none, "FINISHED", curve([2.3, 1.0, 0.6], 0.5, 0.001, 1.0), {"seed": 0})  # no checks: "—"

    rc, _, err = run_main("--tracking-uri", uri, "--experiment", "acc", "--out-dir", str(tmp_path / "res"))
    assert rc == 0, err
    rows = {r["method"]: r for r in table((tmp_path / "res" / "acc" / "summary.md").read_text())}
    # per run the median over its checks (cos + 0.04; err × 1), then mean ± std over the seeds
    assert parse(rows["neumann"]["hg cosine (median)"]) == pytest.approx((0.34, 0.14), abs=0.002)
    assert parse(rows["cg"]["hg rel. error (median)"]) == pytest.approx((0.075, 0.035), abs=0.001)
    assert rows["cg"]["HVPs / step"] == "10.00 ± 0" and rows["identity"]["hg cosine (median)"] == "—"
    assert parse(rows["cg"]["retrained descent / reference's (median)"]) == pytest.approx((4.0, 2.0 * 2**0.5), abs=0.05)
    assert parse(rows["cg"]["retrain noise floor (median)"])[0] == pytest.approx(0.004)
    assert parse(rows["cg"]["hg scale-free error (median)"])[0] == pytest.approx(0.4)
    assert rows["neumann"]["retrained descent / reference's (median)"] == "—"
    assert "retrained descent (median)" not in rows["cg"]  # a metric no run has: no column
    assert png_size(tmp_path / "res" / "acc" / "hg_cosine.png")[1] > 10_000
