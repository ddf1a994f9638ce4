"""Hydra callbacks for sweeps (``hgbench -m ...``), registered in ``conf/config.yaml``.

- before the first job: give the sweep an id (``$HGBENCH_SWEEP_ID``, inherited by every job and
  recorded as the tag ``hgbench.sweep_id``) and create the MLflow store and experiment once, so
  parallel jobs (joblib, submitit) never race to create a fresh sqlite schema;
- after the last job: print one line per job (status, final losses, reason) from the result file
  each job leaves in its output directory, and exit non-zero if any job failed;
- under the SLURM launcher (``hydra/launcher=slurm``, ``slurm_cpu`` or ``submitit_slurm``): a
  submission that sbatch refuses (no such partition, a GPU on nodes without one, sbatch not on
  PATH) is one line naming the setting to change, exit 2, not submitit's traceback; a job that
  SLURM ended without a result is a line of the summary; on clusters without accounting (sacct
  off) the jobs are followed with squeue, said once instead of a warning per poll.

``${hgbench.python_bin:}`` in a config is the folder of the Python running hgbench (the SLURM
presets put it first on the jobs' PATH, so they start from any submit folder).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import shutil
import subprocess
import sys
import time
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


# --- the SLURM launcher --------------------------------------------------------------------
SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
SBATCH_TIMEOUT_S = 60
_own_sweep_id: list[str] = []  # the sweep id SweepCallback set, dropped when the launch fails


def _launch_error(message: str) -> None:
    """A grid that SLURM refused: one line, exit 2 (``main`` turns the SystemExit into the code)."""
    if _own_sweep_id and os.environ.get(SWEEP_ENV) == _own_sweep_id[0]:
        os.environ.pop(SWEEP_ENV, None)
    print(f"hgbench: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def _partitions() -> str:
    """The cluster's partitions as sinfo lists them ('gpu, debug (default)'), or '' if unknown."""
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], check=False, capture_output=True, text=True, timeout=SBATCH_TIMEOUT_S).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    names = [p.strip() for p in out.split() if p.strip()]
    return ", ".join(p[:-1] + " (default)" if p.endswith("*") else p for p in dict.fromkeys(names))


def sbatch_error_message(stderr: str, params: dict) -> str:
    """sbatch's refusal (its stderr) as one line naming the hydra.launcher setting to change."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    said = lines[-1] if lines else "no message"
    low = stderr.lower()
    partition = params.get("partition")
    where = f"partition {partition!r}" if partition else "the default partition"
    if "invalid partition" in low or "no partition specified" in low:
        known = _partitions()
        known = f" — the cluster's partitions: {known}" if known else " (sinfo lists them)"
        if partition:
            return f"hydra.launcher.partition={partition}: SLURM has no such partition ({said}); set hydra.launcher.partition=<name>{known}"
        return f"hydra.launcher.partition is not set and SLURM has no default partition ({said}); set hydra.launcher.partition=<name>{known}"
    gpus = params.get("gpus_per_node") or params.get("gpus_per_task") or params.get("gres")
    if "gres" in low or "generic resource" in low:
        if gpus:
            return (f"hydra.launcher.gpus_per_node={params.get('gpus_per_node')}: {where} has no GPU (GRES gpu) to give "
                    f"({said}); on CPU nodes use hydra/launcher=slurm_cpu (or hydra.launcher.gpus_per_node=0), "
                    "else pick a GPU partition with hydra.launcher.partition=<name>")
        return f"hydra.launcher.gres={params.get('gres')}: {where} cannot give that generic resource ({said}); change or remove it"
    if "time limit" in low:
        return f"hydra.launcher.timeout_min={params.get('timeout_min')}: {where} does not allow that time limit ({said}); lower hydra.launcher.timeout_min"
    if "memory" in low or "node configuration is not available" in low or "more processors" in low or "cpu count" in low:
        asked = ", ".join(f"hydra.launcher.{k}={params[k]}" for k in ("cpus_per_task", "mem_gb", "gpus_per_node")
                          if params.get(k) is not None)
        return (f"{where} has no node with {asked} ({said}); lower them to fit its nodes "
                "(sinfo -o '%P %c %m %G' lists cores, memory in MB and GPUs)")
    if "account" in low or "qos" in low:
        return f"SLURM refused the account/QOS ({said}); set hydra.launcher.account=<name> and/or hydra.launcher.qos=<name>"
    return (f"sbatch refused the grid ({said}); change the hydra.launcher settings to fit the cluster "
            "(partition, gpus_per_node, cpus_per_task, mem_gb, timeout_min)")


def _squeue_states(job_ids: set[str]) -> str:
    """squeue's view of the jobs, in sacct's format (header JobID|State|NodeList), or '' if it fails."""
    try:
        out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%T|%N", "-j", ",".join(sorted(job_ids))],
                             check=False, capture_output=True, text=True, timeout=SBATCH_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return ""
    return "JobID|State|NodeList\n" + out.stdout if out.returncode == 0 else ""


@functools.cache
def _watcher_class():
    """submitit's SLURM job watcher, but for clusters without accounting: when sacct fails (its
    storage disabled, slurmdbd down), say so once and follow the jobs with squeue — instead of
    submitit's warning (and sacct's own message) at every poll and job states it never learns."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    class Watcher(SlurmInfoWatcher):
        sacct_error: str | None = None

        def update(self) -> None:
            command = self._make_command()
            if command is None:
                return
            self._num_calls += 1
            output = ""
            if self.sacct_error is None:
                try:
                    run = subprocess.run(command, check=False, capture_output=True, text=True, timeout=SBATCH_TIMEOUT_S)
                    output = run.stdout if run.returncode == 0 else ""
                    problem = None if run.returncode == 0 else (run.stderr.strip() or f"exit status {run.returncode}")
                except (OSError, subprocess.SubprocessError) as exc:
                    problem = str(exc)
                if problem is not None:
                    self.sacct_error = problem.splitlines()[-1]
                    print(f"hgbench: sacct is not available on this cluster ({self.sacct_error}): "
                          "the SLURM jobs are followed with squeue instead (said once)", file=sys.stderr, flush=True)
            if self.sacct_error is not None:
                output = _squeue_states({x.split("_")[0] for x in self._registered - self._finished})
            if output:
                self._info_dict.update(self.read_info(output))
            self._last_status_check = time.time()
            for job_id in self._registered - self._finished:
                if self.is_done(job_id, mode="cache"):
                    self._finished.add(job_id)

    return Watcher


def _guarded_submit(submit):
    """submitit's sbatch call, with sbatch's refusal (which submitit prints, then raises with a
    traceback) as one line naming the setting to change, exit 2."""

    def wrapper(self, command):
        from submitit.core.utils import FailedJobError, FailedSubmissionError

        said = io.StringIO()
        try:
            with contextlib.redirect_stderr(said):
                return submit(self, command)
        except FailedJobError as exc:
            cause = exc.__cause__
            if not isinstance(cause, subprocess.CalledProcessError):
                raise
            _launch_error(sbatch_error_message(str(cause.stderr or exc), _launcher_settings(self.parameters)))
        except FailedSubmissionError as exc:
            _launch_error(f"sbatch's answer is not a job id ({str(exc).splitlines()[0]}); check that sbatch works on this machine")
        except FileNotFoundError as exc:  # sbatch gone from PATH since the grid started
            _launch_error(f"hydra/launcher=slurm: {exc.filename or 'sbatch'} not found — install slurm-client, "
                          "or use hydra/launcher=submitit_local or hydra/launcher=joblib")
        finally:
            if said.getvalue() and sys.exc_info()[0] is None:
                sys.stderr.write(said.getvalue())

    wrapper.hgbench_guarded = True
    return wrapper


def _guarded_results(results):
    """A SLURM job that ended without a result — cancelled before it started, killed for memory,
    its node lost — becomes one line of the grid's summary (KILLED, with its state and log)
    instead of submitit's traceback, which also lost every other job's result."""

    def wrapper(self):
        from submitit.core.utils import UncompletedJobError

        try:
            return results(self)
        except UncompletedJobError:
            if self._sub_jobs:
                raise
            return [_lost_job(self)]

    wrapper.hgbench_guarded = True
    return wrapper


def _lost_job(job):
    from hydra.core.utils import JobReturn, JobStatus

    try:
        overrides, _, job_num = job.submission().args[:3]
    except Exception:  # noqa: BLE001 - the submission file is gone: the job is still reported
        overrides, job_num = [], None
    why = (f"SLURM job {job.job_id} ended without a result (state {job.state}): cancelled before it started, "
           f"out of memory or time, or its node lost — its log: {job.paths.stderr}")
    write_job_result(job.paths.folder, {"job_num": job_num, "overrides": " ".join(overrides), "status": "KILLED",
                                        "error": why, "mlflow_run_id": None, "reused": False, "recording_failed": False})
    return JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=None)


def _launcher_settings(sbatch: dict) -> dict:
    """submitit's sbatch parameters under the names of ``hydra.launcher``."""
    mem = str(sbatch.get("mem") or "")
    return {"partition": sbatch.get("partition"), "gpus_per_node": sbatch.get("gpus_per_node"),
            "gpus_per_task": sbatch.get("gpus_per_task"), "gres": sbatch.get("gres"),
            "cpus_per_task": sbatch.get("cpus_per_task"), "timeout_min": sbatch.get("time"),
            "mem_gb": mem[:-2] if mem.upper().endswith("GB") else mem or None}


def guard_slurm_launcher(config: DictConfig) -> None:
    """Under the SLURM launcher, before anything is submitted: sbatch and srun on PATH, sbatch's
    refusals as one line (submitit's submission wrapped once per process) and the jobs followed
    without sacct where the cluster has no accounting."""
    if str(config.hydra.launcher.get("_target_")) != SLURM_LAUNCHER:
        return
    missing = [exe for exe in ("sbatch", "srun") if shutil.which(exe) is None]
    if missing:
        _launch_error(f"hydra/launcher={config.hydra.runtime.choices.get('hydra/launcher', 'slurm')}: "
                      f"{' and '.join(missing)} not found on PATH — install slurm-client (Debian/Ubuntu: "
                      "apt-get install slurm-client) on the machine that submits the grid, or run the grid "
                      "here with hydra/launcher=submitit_local or hydra/launcher=joblib")
    from submitit.slurm.slurm import SlurmExecutor, SlurmJob

    if not getattr(SlurmExecutor._submit_command, "hgbench_guarded", False):
        SlurmExecutor._submit_command = _guarded_submit(SlurmExecutor._submit_command)
    if not getattr(SlurmJob.results, "hgbench_guarded", False):
        SlurmJob.results = _guarded_results(SlurmJob.results)
    watcher = _watcher_class()
    if not isinstance(SlurmJob.watcher, watcher):
        SlurmJob.watcher = watcher(delay_s=SlurmJob.watcher._delay_s)


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
        guard_slurm_launcher(config)
        mlflow_cfg = config.mlflow
        if mlflow_cfg.enabled:
            from hgbench.store import (
                StoreError,
                browse_lines,
                check_store,
                resolve_tracking_uri,
            )

            try:
                uri = resolve_tracking_uri(mlflow_cfg.tracking_uri)
                self._browse = browse_lines(uri, check_store(uri, str(mlflow_cfg.experiment)))
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
