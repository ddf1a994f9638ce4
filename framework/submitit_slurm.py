"""How hgbench's SLURM launcher launches a grid: Hydra's submitit launcher, with SLURM's refusals
and losses said in one line. ``conf/hydra/launcher/slurm.yaml`` (and ``slurm_cpu``) select it by
Hydra's public launcher config (``_target_: hydra_plugins.hgbench_submitit_slurm.SlurmLauncher``,
the class Hydra's plugin rules ask for, whose ``launch`` is ``launch`` here). It changes nothing
in submitit or in Hydra's launcher and uses their public API only (``submitit.AutoExecutor``,
``update_parameters``, ``map_array``; a job's ``job_id``, ``paths``, ``submission()``,
``results()``; submitit's reading of sacct's table, ``SlurmInfoWatcher.read_info``):

- before anything is submitted: sbatch and srun on PATH, else one line naming the way out;
- a submission that sbatch refuses (no such partition, a GPU on nodes without one, a time limit
  the partition does not allow) is one line naming the ``hydra.launcher`` setting to change,
  exit 2, not submitit's traceback;
- the launcher follows the jobs itself: a result file is collected as soon as it appears; the
  jobs' SLURM states are read with ``sacct`` — on clusters without accounting (sacct off, its
  daemon down) said once and read with ``squeue`` instead, not a warning at every poll;
- a job that SLURM ended without a result (cancelled before it started, killed for memory, its
  node lost) is a KILLED line of the grid's summary with its state and log, and the other jobs'
  results are still collected (submitit's ``results()`` would raise for it, losing them all).

Plain ``hydra/launcher=submitit_slurm`` is Hydra's own launcher, without these.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

from hgbench.callbacks import drop_own_sweep_id, write_job_result

log = logging.getLogger(__name__)

SBATCH_TIMEOUT_S = 60  # for sbatch, sacct, squeue, sinfo
RESULT_GRACE_S = 15.0  # a job SLURM says ended may take this long to show its result on a shared filesystem
POLL_MAX_S = 60.0  # the SLURM states are read at 2 s, 4 s, 8 s ... after submission, then every minute
# SLURM states of a job not ended yet (submitit's list); any other state is final
NOT_ENDED = {"READY", "PENDING", "RUNNING", "UNKNOWN", "REQUEUED", "COMPLETING", "PREEMPTED", "CONFIGURING",
             "RESIZING", "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}


def launch_error(message: str) -> None:
    """A grid that SLURM refused: one line, exit 2 (``hgbench.cli.main`` turns the SystemExit
    into the code); the sweep id that this grid's callback set is dropped with it."""
    drop_own_sweep_id()
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
    """sbatch's refusal (its stderr) as one line naming the hydra.launcher setting to change;
    ``params`` are the ``hydra.launcher`` settings."""
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


def parse_states(table: str) -> dict[str, str]:
    """``JobID|State|...`` lines (sacct --parsable2, or squeue in that format) -> {job id: state},
    an array's pending range (``12_[3-5%2]``) per task, job steps skipped: submitit's own reading
    of sacct (its public ``read_info``)."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    return {job: info.get("State", "") for job, info in SlurmInfoWatcher().read_info(table).items()}


class SlurmStates:
    """The SLURM states of jobs: from sacct; where sacct fails (accounting off), said once, and
    from squeue from then on."""

    def __init__(self) -> None:
        self.sacct_error: str | None = None

    def _run(self, command: list[str]) -> tuple[str, str | None]:
        """(stdout, None), or ('', why it failed)."""
        try:
            run = subprocess.run(command, check=False, capture_output=True, text=True, timeout=SBATCH_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as exc:
            return "", str(exc) or type(exc).__name__
        if run.returncode != 0:
            return "", (run.stderr.strip() or f"exit status {run.returncode}").splitlines()[-1]
        return run.stdout, None

    def read(self, job_ids: set[str]) -> dict[str, str]:
        bases = sorted({j.split("_")[0] for j in job_ids})
        if not bases:
            return {}
        if self.sacct_error is None:
            out, problem = self._run(["sacct", "-o", "JobID,State,NodeList", "--parsable2", *(x for b in bases for x in ("-j", b))])
            if problem is None:
                return parse_states(out)
            self.sacct_error = problem
            print(f"hgbench: sacct is not available on this cluster ({problem}): "
                  "the SLURM jobs are followed with squeue instead (said once)", file=sys.stderr, flush=True)
        out, problem = self._run(["squeue", "-h", "-t", "all", "-o", "%i|%T|%N", "-j", ",".join(bases)])
        return {} if problem is not None else parse_states("JobID|State|NodeList\n" + out)


def lost_job(job: Any, state: str) -> JobReturn:
    """A job that SLURM ended in ``state`` without a result: its result file says KILLED, why, and
    where its log is, so the grid's summary shows it."""
    try:
        overrides, _, job_num = job.submission().args[:3]
    except Exception:  # noqa: BLE001 - the submission file is gone: the job is still reported
        overrides, job_num = [], None
    why = (f"SLURM job {job.job_id} ended without a result (state {state}): cancelled before it started, "
           f"out of memory or time, or its node lost — its log: {job.paths.stderr}")
    write_job_result(job.paths.folder, {"job_num": job_num, "overrides": " ".join(overrides), "status": "KILLED",
                                        "error": why, "mlflow_run_id": None, "reused": False, "recording_failed": False})
    return JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=None)


def collect(jobs: Sequence[Any], states: SlurmStates | None = None, sleep=time.sleep) -> list[Any]:
    """Each job's result (``job.results()[0]``, read once its result file exists), in order; a
    job SLURM ended without one (after ``RESULT_GRACE_S``) is a ``lost_job``."""
    states = states or SlurmStates()
    out: dict[int, Any] = {}
    ended_at: dict[int, float] = {}
    known: dict[str, str] = {}
    start, last_read = time.monotonic(), float("-inf")
    while len(out) < len(jobs):
        now = time.monotonic()
        pending = [i for i in range(len(jobs)) if i not in out]
        if now - last_read >= min(POLL_MAX_S, max(2.0, (now - start) / 2)):
            known.update(states.read({jobs[i].job_id for i in pending}))
            last_read = now
        for i in pending:
            job = jobs[i]
            if job.paths.result_pickle.exists():
                out[i] = job.results()[0]
                continue
            state = known.get(job.job_id, "UNKNOWN")
            if (state.split() or ["UNKNOWN"])[0].upper() in NOT_ENDED:
                continue
            ended_at.setdefault(i, now)
            if now - ended_at[i] >= RESULT_GRACE_S:
                out[i] = lost_job(job, state.split()[0])
        if len(out) < len(jobs):
            sleep(1.0)
    return [out[i] for i in range(len(jobs))]


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
    """``launcher.launch``: the grid as one SLURM array job (as Hydra's submitit launcher submits
    it: its executor, settings and job arguments), then each job's result, in order. ``launcher``
    is the Hydra launcher (its ``params``: the ``hydra.launcher`` settings; ``config``)."""
    import submitit
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    assert launcher.config is not None and len(job_overrides) > 0
    missing = [exe for exe in ("sbatch", "srun") if shutil.which(exe) is None]
    if missing:
        choice = launcher.config.hydra.runtime.choices.get("hydra/launcher", "slurm")
        launch_error(f"hydra/launcher={choice}: {' and '.join(missing)} not found on PATH — install slurm-client "
                     "(Debian/Ubuntu: apt-get install slurm-client) on the machine that submits the grid, or run "
                     "the grid here with hydra/launcher=submitit_local or hydra/launcher=joblib")
    # the executor as Hydra's launcher builds it: the queue settings shared by submitit's
    # executors by name, the others as slurm_<name>
    init = {"submitit_folder", "max_num_timeout"}
    executor = submitit.AutoExecutor(cluster="slurm", folder=launcher.params["submitit_folder"],
                                     slurm_max_num_timeout=launcher.params.get("max_num_timeout", 0))
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in shared else f"slurm_{k}": v for k, v in launcher.params.items() if k not in init})
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if "mode" in launcher.config.hydra.sweep:
        os.chmod(sweep_dir, mode=int(str(launcher.config.hydra.sweep.mode), 8))
    log.info(f"Submitit 'slurm' sweep output dir : {sweep_dir}")
    job_params = [(list(overrides), "hydra.sweep.dir", initial_job_idx + i, f"job_id_for_{initial_job_idx + i}",
                   Singleton.get_state()) for i, overrides in enumerate(job_overrides)]
    for overrides, _, idx, _, _ in job_params:
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
    said = io.StringIO()  # submitit prints sbatch's refusal before raising it: said in one line instead
    try:
        with contextlib.redirect_stderr(said):
            jobs = executor.map_array(launcher, *zip(*job_params, strict=True))
    except FailedJobError as exc:
        cause = exc.__cause__
        if not isinstance(cause, subprocess.CalledProcessError):
            raise
        launch_error(sbatch_error_message(str(cause.stderr or exc), launcher.params))
    except FailedSubmissionError as exc:
        launch_error(f"sbatch's answer is not a job id ({str(exc).splitlines()[0]}); check that sbatch works on this machine")
    except FileNotFoundError as exc:  # sbatch gone from PATH since the grid started
        launch_error(f"hydra/launcher=slurm: {exc.filename or 'sbatch'} not found — install slurm-client, "
                     "or use hydra/launcher=submitit_local or hydra/launcher=joblib")
    if said.getvalue():
        sys.stderr.write(said.getvalue())
    return collect(jobs)
