"""Section ``overhead``: what Hydra + MLflow cost around a run, and what the joblib launcher buys.

1. One run through the CLI (``python -m hgbench.cli ...`` in a subprocess, recording to a
   fresh sqlite MLflow store; a first, untimed CLI run creates the store's schema) vs the bare
   runner (``Experiment(cfg).run()`` with ``mlflow.enabled=false``, also in a fresh subprocess),
   on the same config sized to about 60 s (the default run, its ``hyper_steps`` calibrated on
   this machine). Compared: the ``runtime_s`` each records (the loop itself: MLflow's per-step
   logging) and each process's whole wall time (imports, config composition, MLflow set-up).
   Target: ≤ 5 % of a 60-second run.
2. A 4-job grid (``seed=0,1,2,3``) with ``-m hydra/launcher=joblib hydra.launcher.n_jobs=2`` vs
   the same grid sequential (basic launcher), whole wall time of each command. Target ≥ 1.8× on
   2 cores. The joblib launcher gives each job cores / n_jobs = 1 torch thread; the sequential
   jobs use torch's default (2 here).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hgbench.benchmarks import output, plotting, worker
from hgbench.benchmarks.stats import spread
from hgbench.machine import resolve_device

QUICK_BASE = ["dataset=digits", "model.hidden=[16]", "dataset.train_size=200", "dataset.val_size=100", "eval_every=5"]


def bare(spec: dict) -> dict:
    """In a fresh process: ``Experiment(cfg).run()`` with MLflow off; what the run records."""
    import time as _t

    t0 = _t.perf_counter()
    from hgbench.api import compose_config
    from hgbench.runner import Experiment

    cfg = compose_config(["mlflow.enabled=false", "progress=false", *spec["overrides"]])
    res = Experiment(cfg).run()
    return {"status": "ok" if res.status == "FINISHED" else "error", "runtime_s": res.summary["runtime_s"],
            "in_process_s": _t.perf_counter() - t0, "run_status": res.status}


def calibrate(spec: dict) -> dict:
    """Seconds per hyper-step of the config (warm), to size a run to a target duration."""
    import time as _t

    from hgbench import build_experiment

    exp = build_experiment(overrides=spec["overrides"])
    exp.warm_up()
    for s in range(5):
        exp.hyper_step(s + 1)
    n = spec["steps"]
    t0 = _t.perf_counter()
    for s in range(n):
        exp.hyper_step(s + 1)
    per_step = (_t.perf_counter() - t0) / n
    t0 = _t.perf_counter()
    exp.evaluate()
    return {"per_step_s": per_step, "eval_s": _t.perf_counter() - t0}


def cli(args: list[str], cwd: Path, env: dict, timeout: float = 900) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "hgbench.cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=timeout)
    return time.perf_counter() - t0, out


def run(out: Path, quick: bool = False, device: str = "auto", reps: int | None = None, seconds: float | None = None) -> list[dict]:
    from hgbench.callbacks import RESULT_FILE

    dev = resolve_device(device)
    reps = reps or (1 if quick else 2)
    target_s = seconds or (1.0 if quick else 60.0)
    base = [f"device={dev}", *(QUICK_BASE if quick else [])]
    tmp = Path(tempfile.mkdtemp(prefix="hgbench-bench-overhead-"))
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", HGBENCH_DISABLE_ENTRY_POINTS="1",
               PYTHONPATH=str(worker.ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MLFLOW_TRACKING_URI", None)
    env.setdefault("MPLCONFIGDIR", str(tmp / "mpl"))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    rows = []
    try:
        if quick:
            steps = 10
        else:
            cal = worker.run_worker("overhead:calibrate", {"overrides": [*base, "mlflow.enabled=false", "progress=false"],
                                                           "steps": 100}, timeout=300)
            if cal["status"] != "ok":
                raise RuntimeError(f"calibration failed: {cal.get('error', '')[-500:]}")
            steps = max(10, int(target_s / cal["per_step_s"]))
            evals = cal["eval_s"] * (steps // 100 + 1)
            steps = max(10, int((target_s - evals) / cal["per_step_s"]))
            print(f"  overhead: {cal['per_step_s'] * 1e3:.1f} ms per hyper-step -> hyper_steps={steps} for ~{target_s:.0f} s", flush=True)
        ov = [*base, f"hyper_steps={steps}"]

        # 1. one run: CLI (Hydra + MLflow) vs the bare runner, ABBA order
        cli_args = [*ov, f"mlflow.tracking_uri={uri}", "progress=false"]
        if not quick:  # warm-up: creates the MLflow schema (not counted)
            cli([*cli_args[:len(base)], "hyper_steps=2", f"mlflow.tracking_uri={uri}", "progress=false",
                 f"hydra.run.dir={tmp / 'warm'}"], tmp, env)
        runs = {"cli": [], "bare": []}
        order = ["cli", "bare"]
        for r in range(reps):
            for kind in (order if r % 2 == 0 else order[::-1]):
                if kind == "cli":
                    d = tmp / f"cli{r}"
                    wall, res = cli([*cli_args, f"hydra.run.dir={d}"], tmp, env)
                    if res.returncode != 0:
                        raise RuntimeError(f"hgbench CLI failed: {res.stderr[-800:]}")
                    runtime = json.loads((d / RESULT_FILE).read_text())["runtime_s"]
                elif quick:  # a smoke run: the bare side in this process (no interpreter start-up to compare)
                    res = bare({"overrides": ov})
                    wall, runtime = res["in_process_s"], res["runtime_s"]
                else:
                    res = worker.run_worker("overhead:bare", {"overrides": ov}, timeout=900)
                    if res["status"] != "ok":
                        raise RuntimeError(f"bare runner failed: {res.get('error', '')[-800:]}")
                    wall, runtime = res["wall_s"], res["runtime_s"]
                runs[kind].append((wall, runtime))
                print(f"  overhead {kind:4s} run: runtime_s {runtime:6.2f}, process wall {wall:6.2f} s", flush=True)
        c_wall = spread(w for w, _ in runs["cli"])
        c_run = spread(t for _, t in runs["cli"])
        b_wall = spread(w for w, _ in runs["bare"])
        b_run = spread(t for _, t in runs["bare"])
        in_run = c_run["median"] / b_run["median"] - 1
        total = (c_wall["median"] - b_wall["median"]) / b_run["median"]
        common_row = {"section": "overhead", "config": " ".join(ov), "hyper_steps": steps, "reps": reps}
        rows.append({**common_row, "what": "single_run", "cli_runtime_s": c_run["median"], "bare_runtime_s": b_run["median"],
                     "cli_wall_s": c_wall["median"], "bare_wall_s": b_wall["median"],
                     "cli_runtime_s_min": c_run["min"], "cli_runtime_s_max": c_run["max"],
                     "bare_runtime_s_min": b_run["min"], "bare_runtime_s_max": b_run["max"],
                     "overhead_in_run": in_run, "overhead_whole_process": total,
                     "ratio_median": c_run["median"] / b_run["median"],
                     "target": "overhead ≤ 5% of the run", "target_met": bool(in_run <= 0.05)})

        # 2. a 4-job grid: joblib with 2 workers vs sequential (not in --quick: three more processes
        # of start-up for a figure a smoke run cannot give; test_concurrency.py runs joblib grids)
        seeds = "seed=0,1,2,3"
        if not quick:
            # ++resume=false: a grid job that already FINISHED in the store would otherwise be reused, not run
            grid = [*base, f"hyper_steps={max(5, steps // 6)}", seeds, "++resume=false", f"mlflow.tracking_uri={uri}",
                    "progress=false", "mlflow.experiment=grid"]
            walls = {"sequential": [], "joblib": []}
            for r in range(reps):
                for kind in (("sequential", "joblib") if r % 2 == 0 else ("joblib", "sequential")):
                    extra = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if kind == "joblib" else []
                    wall, res = cli(["-m", *extra, *grid, f"hydra.sweep.dir={tmp / f'{kind}{r}'}"], tmp, env)
                    if res.returncode != 0:
                        raise RuntimeError(f"grid ({kind}) failed: {res.stdout[-500:]} {res.stderr[-800:]}")
                    walls[kind].append(wall)
                    print(f"  overhead grid {kind:10s}: {wall:6.2f} s", flush=True)
            s_seq, s_par = spread(walls["sequential"]), spread(walls["joblib"])
            speedup = s_seq["median"] / s_par["median"]
            rows.append({**common_row, "what": "grid", "jobs": len(seeds.split(",")), "config": " ".join(grid[:-3]),
                         "hyper_steps": int(grid[len(base)].split("=")[1]),
                         "sequential_wall_s": s_seq["median"], "joblib_wall_s": s_par["median"],
                         "sequential_wall_s_min": s_seq["min"], "sequential_wall_s_max": s_seq["max"],
                         "joblib_wall_s_min": s_par["min"], "joblib_wall_s_max": s_par["max"],
                         "ratio_median": speedup, "speedup": speedup,
                         "target": "joblib n_jobs=2 ≥ 1.8× faster", "target_met": bool(speedup >= 1.8)})
            print(f"  overhead grid speed-up {speedup:.2f}×", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    output.write_csv(out, "overhead", rows, dev)
    plot(rows, out / "overhead.png")
    output.write_fragment(out, "overhead", fragment(rows, quick), headline(rows), dev, quick=quick)
    return rows


def plot(rows, path: Path) -> None:
    one = next(r for r in rows if r["what"] == "single_run")
    grid = next((r for r in rows if r["what"] == "grid"), None)  # None with --quick
    fig, (a1, a2) = plotting.subplots(1, 2, figsize=(12, 4.2))
    labels = ["bare runner\n(Experiment.run, no MLflow)", "hgbench CLI\n(Hydra + MLflow)"]
    loop = [one["bare_runtime_s"], one["cli_runtime_s"]]
    rest = [one["bare_wall_s"] - one["bare_runtime_s"], one["cli_wall_s"] - one["cli_runtime_s"]]
    a1.barh(labels, loop, label="the run (runtime_s)")
    a1.barh(labels, rest, left=loop, label="process start-up, imports, set-up, teardown")
    for k, (lp, rs) in enumerate(zip(loop, rest, strict=True)):
        a1.text(lp + rs, k, f" {lp:.1f} + {rs:.1f} s", va="center", fontsize=8)
    a1.set_xlabel("seconds (median)")
    a1.set_xlim(0, (max(a + b for a, b in zip(loop, rest, strict=True))) * 1.3)
    a1.set_title(f"One run: in-run overhead {100 * one['overhead_in_run']:+.1f} %, "
                 f"whole process {100 * one['overhead_whole_process']:+.1f} % of the run", fontsize=9)
    a1.legend(fontsize=8, loc="lower right")
    if grid is None:
        a2.axis("off")
        a2.text(0.5, 0.5, "grid: not measured with --quick", ha="center", va="center")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        return
    a2.bar(["sequential\n(basic launcher)", "joblib n_jobs=2"], [grid["sequential_wall_s"], grid["joblib_wall_s"]],
           color=["tab:gray", "tab:green"])
    for k, v in enumerate([grid["sequential_wall_s"], grid["joblib_wall_s"]]):
        a2.text(k, v, f"{v:.1f} s", ha="center", va="bottom", fontsize=8)
    a2.set_ylabel("wall time of the whole grid command, s")
    a2.set_title(f"{grid['jobs']}-job grid: joblib speed-up {grid['speedup']:.2f}× (target ≥ 1.8×)" if grid.get("valid", True)
                 else "grid: NOT VALID (jobs were reused from the MLflow store; see README)", fontsize=9,
                 color="black" if grid.get("valid", True) else "red")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def fragment(rows, quick: bool) -> str:
    one = next(r for r in rows if r["what"] == "single_run")
    grid = next((r for r in rows if r["what"] == "grid"), None)
    t = output.md_table(
        ["", "bare runner", "hgbench CLI (Hydra + MLflow)", "overhead", "target ≤ 5 %"],
        [["runtime_s (the run)", f"{one['bare_runtime_s']:.2f} s ({one['bare_runtime_s_min']:.2f}–{one['bare_runtime_s_max']:.2f})",
          f"{one['cli_runtime_s']:.2f} s ({one['cli_runtime_s_min']:.2f}–{one['cli_runtime_s_max']:.2f})",
          f"{100 * one['overhead_in_run']:+.1f} %", output.verdict(one["target_met"])],
         ["whole process wall", f"{one['bare_wall_s']:.2f} s", f"{one['cli_wall_s']:.2f} s",
          f"{100 * one['overhead_whole_process']:+.1f} % of the run (CLI − bare)", "—"]])
    g = "The grid (joblib n_jobs=2 vs sequential) is not measured with --quick." if grid is None else output.md_table(
        [f"grid ({grid['jobs']} jobs)", "sequential", "joblib n_jobs=2", "speed-up", "target ≥ 1.8×"],
        [[f"hyper_steps={grid['hyper_steps']} each", f"{grid['sequential_wall_s']:.1f} s ({grid['sequential_wall_s_min']:.1f}–{grid['sequential_wall_s_max']:.1f})",
          f"{grid['joblib_wall_s']:.1f} s ({grid['joblib_wall_s_min']:.1f}–{grid['joblib_wall_s_max']:.1f})",
          f"{grid['speedup']:.2f}×", output.verdict(grid["target_met"])]])
    return "\n".join([
        "## 6. overhead — Hydra + MLflow around a run, and the joblib launcher", "",
        f"Reproduce: `{output.command('overhead', quick)}` (CSV: `overhead.csv`, plot: `overhead.png`). Config: "
        f"`{one['config']}` (the default run, hyper_steps calibrated to ~{'1' if quick else '60'} s here). "
        f"{'With --quick the bare side runs in the bench process (a smoke run)' if quick else 'Each side in a fresh process'}, "
        f"{one['reps']} each in ABBA order (median, min–max); a first CLI run that creates the MLflow "
        "schema is not counted. The in-run overhead is MLflow's per-step metric logging (batched) and the recorder hooks; "
        "the whole-process figure adds Hydra's config composition, importing MLflow and opening the store.", "",
        t, "", g, "",
        "The joblib launcher gives each of its 2 jobs 1 torch thread (cores / n_jobs); the sequential grid runs each job "
        "with 2 threads, and pays process start-up once instead of once per worker.", "",
    ])


def headline(rows) -> list[list]:
    one = next(r for r in rows if r["what"] == "single_run")
    grid = next((r for r in rows if r["what"] == "grid"), None)
    out = [["overhead", f"Hydra + MLflow vs bare runner, in-run (runtime_s, ~{one['bare_runtime_s']:.0f} s run)",
             f"{100 * one['overhead_in_run']:+.1f} %", "≤ 5 %", output.verdict(one["target_met"])],
            ["overhead", "Hydra + MLflow vs bare runner, whole process (start-up included)",
             f"{100 * one['overhead_whole_process']:+.1f} % of the run", "—", ""]]
    if grid is not None:
        out.append(["overhead", f"{grid['jobs']}-job grid: joblib n_jobs=2 vs sequential", f"{grid['speedup']:.2f}× faster", "≥ 1.8×",
                    output.verdict(grid["target_met"])])
    return out
