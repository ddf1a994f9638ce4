"""Hydra callbacks for sweeps (``hgbench -m ...``), registered in ``conf/config.yaml``.

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


def format_sweep_summary(results: list[dict[str, Any]], expected: int | None = None) -> str:
    counts: dict[str, int] = {}
    for r in results:
        counts[_shown(r)] = counts.get(_shown(r), 0) + 1
    lines = [f"hgbench sweep {os.environ.get(SWEEP_ENV, '')}: {len(results)} jobs — "
             + ", ".join(f"{n} {s.lower().replace('_', ' ')}" for s, n in sorted(counts.items()))]
    if expected is not None and expected > len(results):
        lines.append(f"  {expected - len(results)} job(s) left no result (killed?)")
    for r in results:
        done = r["status"] == "FINISHED"
        vals = "  ".join(f"{k}={r[k]:.4f}" for k in ("val_loss", "test_loss") if done and isinstance(r.get(k), float))
        vals += "".join(f"  {k}={r[k]:.2f}" for k in ("val_ppl", "test_ppl") if done and isinstance(r.get(k), float))
        why = f"  ({r['error']})" if r.get("error") else ""
        if r.get("reused"):
            why += "  (finished earlier: not run again)"
        if r.get("recording_failed"):
            why += "  (NOT RECORDED in MLflow: its results are only in its output above)"
        lines.append(f"  #{r.get('job_num', '?'):<3} {_shown(r):<11} {r.get('overrides', '')}  {vals}{why}")
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


_own_sweep_id: list[str] = []  # the sweep id SweepCallback set, dropped when the launch fails


def drop_own_sweep_id() -> None:
    """A grid that never launched: the sweep id its callback set is taken back (the next grid in
    this process gets its own; one given by the user stays)."""
    if _own_sweep_id and os.environ.get(SWEEP_ENV) == _own_sweep_id[0]:
        os.environ.pop(SWEEP_ENV, None)


class SweepCallback(Callback):
    def __init__(self) -> None:
        self._set_sweep_id = False
        self._browse: list[str] = []

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_output_dir(config.hydra.run.dir, "hydra.run.dir")

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
                self._browse = browse_lines(uri, check_store(uri, str(mlflow_cfg.experiment), float(config.resume_stale_after_s)))
            except StoreError as exc:  # stop before launching jobs that could record nothing
                if self._set_sweep_id:
                    os.environ.pop(SWEEP_ENV, None)
                print(f"hgbench: error: {exc}", file=sys.stderr)
                sys.exit(2)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        results = read_job_results(config.hydra.sweep.dir)
        print("\n".join([format_sweep_summary(results), *(f"  {line}" for line in self._browse)]), flush=True)
        if self._set_sweep_id:  # the id was this sweep's: the next sweep in the process gets its own
            os.environ.pop(SWEEP_ENV, None)
        if any(r["status"] == "FAILED" or r.get("recording_failed") for r in results):
            sys.exit(1)
