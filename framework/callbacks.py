"""Hydra callbacks for sweeps (``hgbench -m ...``), registered in ``conf/config.yaml``.

- before a single run: reach the MLflow store (``check_store``) before Hydra creates the run's
  folder, so a store that cannot be used leaves no ``outputs/`` behind;
- before the first job: give the sweep an id (``$HGBENCH_SWEEP_ID``, inherited by every job and
  recorded as the tag ``hgbench.sweep_id``) and create the MLflow store and experiment once, so
  parallel jobs (joblib, submitit) never race to create a fresh sqlite schema;
- after the last job: print one line per job (status, final losses, reason) from the result file
  each job leaves in its output directory, and exit non-zero if any job failed;
- (SLURM's refusals and lost jobs are the launcher's: ``hgbench.submitit_slurm``).

``${hgbench.python_bin:}`` in a config is the folder of the Python running hgbench (the SLURM
presets put it first on the jobs' PATH, so they start from any submit folder).
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

RESULT_FILE = "hgbench_result.json"
SWEEP_ENV = "HGBENCH_SWEEP_ID"

# the folder of this Python (a venv's bin/, a conda env's bin/): the SLURM presets' setup line
OmegaConf.register_new_resolver("hgbench.python_bin", lambda: os.path.dirname(os.path.abspath(sys.executable)), replace=True)

# a launch's own suffix for its output folder (conf/config.yaml: hydra.run.dir, hydra.sweep.dir):
# two launches in the same second never share ``outputs/<day>/<second>-<id>`` or
# ``multirun/<day>/<second>-<id>``. Set once per launch (``hgbench.cli`` starts each launch
# without one) and inherited by the jobs' processes (joblib workers, submitit jobs).
LAUNCH_ENV = "HGBENCH_LAUNCH_ID"


def launch_id() -> str:
    return os.environ.setdefault(LAUNCH_ENV, uuid.uuid4().hex[:6])


OmegaConf.register_new_resolver("hgbench.launch_id", launch_id, replace=True)


def new_sweep_id() -> str:
    return f"{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def write_job_result(output_dir: str | Path, result: dict[str, Any]) -> None:
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / RESULT_FILE).write_text(json.dumps(result, indent=1, default=str))


def read_job_results(sweep_dir: str | Path) -> list[dict[str, Any]]:
    out = []
    for p in Path(sweep_dir).rglob(RESULT_FILE):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(out, key=lambda r: (r.get("job_num") is None, r.get("job_num", 0)))


def _shown(r: dict[str, Any]) -> str:
    """A job's status as the summary shows it: never FINISHED for one whose recording failed."""
    return "UNRECORDED" if r.get("recording_failed") else r["status"]


def contended(r: dict[str, Any]) -> bool:
    """A job whose 1-minute load average (at its start or end, its own threads included) was above
    the cores of its machine: other work competed for them, and its runtime shows it."""
    loads = [r.get(k) for k in ("load_avg_start", "load_avg_end") if isinstance(r.get(k), (int, float))]
    cores = r.get("cores")
    return bool(loads and cores and max(loads) > cores)


def _numbers(r: dict[str, Any]) -> str:
    """A finished job's final losses, last hypergradient cosine, runtime, memory and load."""
    if r["status"] != "FINISHED":
        return ""
    out = "  ".join(f"{k}={r[k]:.4f}" for k in ("val_loss", "test_loss") if isinstance(r.get(k), float))
    out += "".join(f"  {k}={r[k]:.2f}" for k in ("val_ppl", "test_ppl") if isinstance(r.get(k), float))
    if isinstance(r.get("hg_cosine"), float):
        out += f"  hg_cosine={r['hg_cosine']:.3f}"
    if isinstance(r.get("runtime_s"), (int, float)):
        out += f"  {r['runtime_s']:.1f} s{'*' if contended(r) else ''}"
    if isinstance(r.get("peak_memory_mb"), (int, float)):
        out += f"  {r['peak_memory_mb']:.1f} MB"
    loads = [r.get(k) for k in ("load_avg_start", "load_avg_end")]
    if all(isinstance(x, (int, float)) for x in loads):
        out += f"  load {loads[0]:.1f}→{loads[1]:.1f}"
    return out


def format_sweep_summary(results: list[dict[str, Any]], expected: int | None = None) -> str:
    counts: dict[str, int] = {}
    for r in results:
        counts[_shown(r)] = counts.get(_shown(r), 0) + 1
    lines = [f"hgbench sweep {os.environ.get(SWEEP_ENV, '')}: {len(results)} jobs — "
             + ", ".join(f"{n} {s.lower().replace('_', ' ')}" for s, n in sorted(counts.items()))]
    if expected is not None and expected > len(results):
        lines.append(f"  {expected - len(results)} job(s) left no result (killed?)")
    for r in results:
        why = f"  ({r['error']})" if r.get("error") else ""
        if r.get("reused"):
            why += "  (finished earlier: not run again)"
        if r.get("recording_failed"):
            why += "  (NOT RECORDED in MLflow: its results are only in its output above)"
        lines.append(f"  #{r.get('job_num', '?'):<3} {_shown(r):<11} {r.get('overrides', '')}  {_numbers(r)}{why}")
    flagged = [r for r in results if r["status"] == "FINISHED" and contended(r)]
    if flagged:
        cores = sorted({r["cores"] for r in flagged})
        lines.append(f"  * runtime measured at a load average above the {'/'.join(map(str, cores))} cores (other work "
                     "competed for them): slower than the method itself; compare runtimes taken at a lower load")
    return "\n".join(lines)


def _check_output_dir(folder: str, key: str) -> None:
    """Hydra creates the job's output folder next: an unwritable one is one line and exit 2, not
    Hydra's traceback."""
    from hgbench.store import StoreError, probe_dir

    try:
        probe_dir(Path(folder), "the output folder", hint=f"launch from a writable folder, or set {key}")
    except StoreError as exc:
        print(f"hgbench: error: {exc}", file=sys.stderr)
        sys.exit(2)


def _measure_grid_load(config: DictConfig) -> bool:
    """``num_threads=auto`` in a grid whose jobs run on this machine (Hydra's basic launcher, one
    after another, or joblib's, several at once): the load is measured once, before the first job,
    for all of them (``$HGBENCH_GRID_LOAD``) — each job measuring it would count the grid's own
    earlier or sibling jobs as other work. Cluster launchers' jobs measure their own machine."""
    from hgbench.machine import GRID_LOAD_ENV, load_average

    target = str(config.hydra.launcher.get("_target_", ""))
    if not (target.endswith("BasicLauncher") or "joblib" in target):
        os.environ.pop(GRID_LOAD_ENV, None)
        return False
    os.environ[GRID_LOAD_ENV] = repr(load_average())
    return True


_own_sweep_id: list[str] = []  # the sweep id SweepCallback set, dropped when the launch fails


def drop_own_sweep_id() -> None:
    """A grid that never launched: the sweep id its callback set is taken back (the next grid in
    this process gets its own; one given by the user stays)."""
    if _own_sweep_id and os.environ.get(SWEEP_ENV) == _own_sweep_id[0]:
        os.environ.pop(SWEEP_ENV, None)


class SweepCallback(Callback):
    def __init__(self) -> None:
        self._set_sweep_id = False
        self._set_grid_load = False
        self._browse: list[str] = []
        self._browse_args: tuple[str, str] | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_output_dir(config.hydra.run.dir, "hydra.run.dir")
        if config.mlflow.enabled:  # before Hydra creates the run's folder: a refused store leaves none
            from hgbench.store import StoreError, check_store, resolve_tracking_uri

            try:
                check_store(resolve_tracking_uri(config.mlflow.tracking_uri), str(config.mlflow.experiment))
            except StoreError as exc:
                print(f"hgbench: error: {exc}", file=sys.stderr)
                sys.exit(2)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_output_dir(config.hydra.sweep.dir, "hydra.sweep.dir")
        if SWEEP_ENV not in os.environ:  # a relaunch under a given id keeps it
            os.environ[SWEEP_ENV] = new_sweep_id()
            self._set_sweep_id = True
        _own_sweep_id[:] = [os.environ[SWEEP_ENV]] if self._set_sweep_id else []
        mlflow_cfg = config.mlflow
        if mlflow_cfg.enabled:
            from hgbench.store import (
                StoreError,
                browse_lines,
                check_checkpoint_dir,
                check_store,
                resolve_tracking_uri,
            )

            try:
                uri = resolve_tracking_uri(mlflow_cfg.tracking_uri)
                check_checkpoint_dir(config.checkpoint)
                self._browse_args = (uri, check_store(uri, str(mlflow_cfg.experiment), float(config.resume_stale_after_s)))
                self._browse = browse_lines(*self._browse_args)
            except StoreError as exc:  # stop before launching jobs that could record nothing
                if self._set_sweep_id:
                    os.environ.pop(SWEEP_ENV, None)
                print(f"hgbench: error: {exc}", file=sys.stderr)
                sys.exit(2)
        self._set_grid_load = _measure_grid_load(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        results = read_job_results(config.hydra.sweep.dir)
        browse = self._browse
        if self._browse_args:  # and a compare-runs link for the grid's recorded runs
            from hgbench.store import browse_lines

            browse = browse_lines(*self._browse_args, run_ids=[r["mlflow_run_id"] for r in results if r.get("mlflow_run_id")])
        print("\n".join([format_sweep_summary(results), *(f"  {line}" for line in browse)]), flush=True)
        if self._set_sweep_id:  # the id was this sweep's: the next sweep in the process gets its own
            os.environ.pop(SWEEP_ENV, None)
        if self._set_grid_load:
            from hgbench.machine import GRID_LOAD_ENV

            os.environ.pop(GRID_LOAD_ENV, None)
        if any(r["status"] == "FAILED" or r.get("recording_failed") for r in results):
            sys.exit(1)
