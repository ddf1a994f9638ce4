"""The ``hgbench`` command: a Hydra app (overrides as arguments, ``-m`` for multirun).

Exit status of a single run: 0 FINISHED (or finished earlier, not run again), 1 FAILED or not
recorded, 2 refused before anything started (``hgbench.cli_checks.preflight``), 3 SKIPPED (a
combination a plugin cannot run, or the same job running elsewhere: nothing was trained),
128 + n stopped by signal n (130 Ctrl-C, 143 SIGTERM). A grid: 0 when no job failed (skipped ones
included), 1 when one did, 2 refused, 128 + n stopped.

Importing this module loads neither torch nor MLflow (a refused command answers before they are
needed): what needs them is imported where it is used."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from hgbench import claims, store
from hgbench.callbacks import LAUNCH_ENV, SWEEP_ENV, write_job_result
from hgbench.cli_checks import preflight
from hgbench.errors import HgbenchError, SkipRun, StoreError, describe
from hgbench.hookspecs import RunResult
from hgbench.stop import (
    clear_grid_stop,
    grid_stop_reason,
    repeated,
    request_grid_stop,
    request_stop,
    set_in_job,
    stop_requested,
    watch_parent,
)

# errors in building a run that are the user's to fix: a config mistake (hgbench's own errors),
# data files or an optional package that are not installed (their messages say how to install
# them). Reported in one line, no traceback; anything else is a bug and shows its traceback.
USER_ERRORS = (HgbenchError, FileNotFoundError, ModuleNotFoundError)

# a single run's exit status when it was SKIPPED (see the module's docstring for the others)
EXIT_SKIPPED = 3


def format_summary(cfg: DictConfig, result: RunResult) -> str:
    s, info = result.summary, result.info
    names = f"{cfg.hypergrad.name} · {cfg.hyperparam.name} · {cfg.dataset.name} · {cfg.model.name}"
    if "num_weights" not in s:  # the run could not be built
        lines = [f"hgbench run {result.status} before it started — {names}", f"  reason: {describe(result.error)}"]
        if "mlflow_run_id" in info:
            lines.append(f"  MLflow run {info['mlflow_run_id']} in experiment '{info['mlflow_experiment']}' at {info['mlflow_tracking_uri']}")
        return "\n".join(lines)
    # a run whose recording failed is never announced as FINISHED: its results are only here
    complete, recorded = recording_report(result)
    status = result.status if complete else f"{result.status.lower()} but NOT RECORDED" + (" in full" if "mlflow_run_id" in info else "")
    lines = [
        f"hgbench run {status} in {s.get('runtime_s', 0):.1f} s — {names} "
        f"({s['num_weights']:,} weights, {s['num_hyperparams']:,} hyperparameter{'s' if s['num_hyperparams'] != 1 else ''}, "
        f"{s.get('hyper_steps_done', 0)}/{cfg.hyper_steps} hyper-steps)",
    ]
    if result.error is not None:
        lines.append(f"  reason: {describe(result.error) if str(result.error) else type(result.error).__name__ + ' (Ctrl-C)'}")
    start = s.get("initial", {})
    rows = [sp for sp in ("train", "val", "test") if f"{sp}_loss" in s]
    if rows:
        acc = any(f"{sp}_acc" in s for sp in rows)
        ppl = any(f"{sp}_ppl" in s for sp in rows)  # sequence tasks: perplexity, as language models are compared
        lines.append(f"  {'':6}{'loss (start → end)':>26}" + (f"{'acc (start → end)':>22}" if acc else "")
                     + (f"{'ppl (start → end)':>26}" if ppl else ""))
        for sp in rows:
            line = f"  {sp:6}{start.get(f'{sp}_loss', float('nan')):13.4f} → {s[f'{sp}_loss']:<10.4f}"
            if f"{sp}_acc" in s:
                line += f"{start.get(f'{sp}_acc', float('nan')):11.3f} → {s[f'{sp}_acc']:<8.3f}"
            if f"{sp}_ppl" in s:
                line += f"{start.get(f'{sp}_ppl', float('nan')):13.2f} → {s[f'{sp}_ppl']:.2f}"
            lines.append(line.rstrip())
        if ppl:
            lines.append("  ppl = exp(mean cross-entropy per token)")
    what = {"cuda_max_allocated": "peak CUDA memory allocated", "cpu_peak_rss_growth": "peak memory (growth of the process's peak RSS during the run)"}
    lines.append(f"  {what.get(s.get('memory_kind'), 'peak memory')}: {s.get('peak_memory_mb', 0):.1f} MB")
    if "compile" in info:
        lines.append(f"  compile: {info['compile']} — {info['compile_note']}")
    if "hessian_indefinite" in info:
        lines.append(f"  WARNING: {info['hessian_indefinite']}")
    if "hg_cosine" in s:
        lines.append(f"  accuracy at the last check vs the reference ({cfg.reference.method.name}): cosine {s['hg_cosine']:.4f}, "
                     f"relative error {s['hg_rel_err']:.3g}, scale-free error {s.get('hg_scale_free_err', float('nan')):.3g}, "
                     f"‖∂L_T/∂w‖ {s['inner_grad_norm']:.3g}")
    if "retrain_descent_method" in s:
        lines.append(f"  retraining check at the last check: dL_V/dλ realised along the method {s['retrain_descent_method']:.3g}, "
                     f"along the reference {s.get('retrain_descent_reference', float('nan')):.3g}, "
                     f"predicted/realised {s['retrain_predicted_vs_realised']:.3g}, "
                     f"noise floor {s.get('retrain_noise_floor', float('nan')):.3g}")
    if "mlflow_run_id" in info:
        uri = info["mlflow_tracking_uri"]
        lines.append(f"  MLflow run {info['mlflow_run_id']} in experiment '{info['mlflow_experiment']}' at {uri}")
        lines += [f"  {line}" for line in store.browse_lines(uri, info.get("mlflow_experiment_id"))]
    lines += recorded
    for e in result.plugin_errors:
        if e not in result.recording_errors:
            lines.append(f"  WARNING: plugin {e.source!r} failed ({e.error})")
    return "\n".join(lines)


def store_complete(result: RunResult) -> bool:
    """Whether the MLflow store holds all of a run: its status, every metric, its end-of-run tags
    (what the MLflow recorder reports in ``result.info``). Without MLflow: no recorder failed."""
    info = result.info
    if not result.recording_errors:
        return True
    if "mlflow_run_id" not in info:
        return False
    return (info.get("mlflow_status") == store.MLFLOW_STATUS.get(result.status) and bool(info.get("mlflow_end_written"))
            and not info.get("mlflow_unwritten_metrics"))


def recording_report(result: RunResult) -> tuple[bool, list[str]]:
    """(the store holds all of the run, the summary's lines saying exactly what was and was not
    recorded — none when everything was)."""
    if not result.recording_errors:
        return True, []
    info, errors = result.info, result.recording_errors
    failed = "; ".join(f"{e.source}: {e.error}" for e in errors)
    complete = store_complete(result)
    if "mlflow_run_id" not in info:
        return False, [f"  WARNING: recording failed ({failed}); nothing of this run is in the MLflow store: its results are only in this output"]
    run_id, held = info["mlflow_run_id"], info.get("mlflow_status")
    upto = info.get("mlflow_recorded_step", -1)
    steps = f"its metrics up to hyper-step {upto}" if upto >= 0 else "no metric"
    if complete:
        return True, [f"  recorded: MLflow run {run_id} as {held}, with every metric ({steps}), tags and artifacts",
                      *(f"  NOT recorded: what {e.source} writes ({e.error})" for e in errors)]
    missing = [f"{info['mlflow_unwritten_metrics']} metric values"] if info.get("mlflow_unwritten_metrics") else []
    if not info.get("mlflow_end_written"):
        missing.append("the end-of-run metrics, tags and artifacts")
    if held is None:
        held_note = "RUNNING (its final status could not be written; the next launch on this store marks it interrupted)"
    elif held != store.MLFLOW_STATUS.get(result.status):
        held_note = f"{held} (not {result.status}: it is incomplete)"
    else:
        held_note = held
    return False, [f"  WARNING: recording failed ({failed})",
                   f"  recorded: MLflow run {run_id} as {held_note}, with {steps}",
                   f"  NOT recorded: {', '.join(missing) or 'the final status'} — only in this output"]


def check_store(cfg: DictConfig) -> None:
    """Reach the MLflow store (and create the experiment) and write into every folder the run
    will write (checkpoints; the store checks its artifact folder) before any work, so a wrong
    URI, missing credentials or a full disk stop the job at once instead of losing what it computes."""
    store.check_checkpoint_dir(cfg.checkpoint)
    if cfg.mlflow.enabled:
        store.check_store(store.resolve_tracking_uri(cfg.mlflow.tracking_uri), str(cfg.mlflow.experiment),
                          float(cfg.resume_stale_after_s))


def _plugin_short_name(target: str) -> str:
    """'hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher' -> 'joblib'."""
    cls = target.rsplit(".", 1)[-1].lower()
    name = cls.replace("sweeper", "").replace("launcher", "") or cls
    return f"submitit_{name}" if "submitit" in target else name


def hydra_tags(hc) -> dict[str, str]:
    tags = {
        "hgbench.overrides": " ".join(hc.overrides.task)[:5000],
        "hgbench.sweeper": _plugin_short_name(hc.sweeper._target_),
        "hgbench.launcher": _plugin_short_name(hc.launcher._target_),
    }
    if hc.mode == RunMode.MULTIRUN:
        tags["hgbench.sweep_id"] = os.environ.get(SWEEP_ENV) or os.path.basename(str(hc.sweep.dir))
        tags["hgbench.job_num"] = str(hc.job.num)
    return {**tags, **_auto_threads}


# what num_threads=auto chose for the job running in this process, and why (its MLflow tag)
_auto_threads: dict[str, str] = {}


def configure_threads(cfg: DictConfig, hc) -> None:
    """``num_threads``: an integer as given; null: torch's default; ``auto``: the cores the load
    average leaves free at the start (a local grid's start, for its jobs), shared out between the
    jobs running at once — on a cluster (submitit), the cores the scheduler gave the job — said in
    one line when the run starts. Under the joblib launcher its jobs share the cores (null: all of them)."""
    import torch

    from hgbench import machine

    n = cfg.num_threads
    cpus = os.cpu_count() or 1
    joblib = "joblib" in hc.launcher._target_
    jobs = 1
    if joblib:
        n_jobs = hc.launcher.get("n_jobs") or -1
        jobs = cpus if n_jobs < 0 else n_jobs
    if n == "auto":
        if "submitit" in hc.launcher._target_:
            # the node's load average counts other jobs on other cores: torch's default, which
            # follows the cores the job was given
            n, note = None, f"{torch.get_num_threads()} torch threads (a cluster job: the cores its scheduler gave it)"
        else:
            grid_load = os.environ.get(machine.GRID_LOAD_ENV) if hc.mode == RunMode.MULTIRUN else None
            load = float(grid_load) if grid_load else machine.load_average()
            n, note = machine.auto_threads(load, cpus, jobs, ceiling=torch.get_num_threads() if jobs == 1 else None,
                                           when=" at the grid's start" if grid_load else "")
        _auto_threads["hgbench.num_threads_auto"] = note  # said when the run starts (announce_threads)
    elif n is None and joblib:
        n = max(1, cpus // jobs)
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:  # anything else is the schema's to refuse
        torch.set_num_threads(n)


def announce_threads() -> None:
    """What ``num_threads=auto`` chose, in one line, as the run starts (a refused command says
    nothing but its error)."""
    if _auto_threads:
        print(f"hgbench: num_threads=auto: {_auto_threads['hgbench.num_threads_auto']}", flush=True)


# the pid of the process that launched the grid: its launcher's worker processes see it too
GRID_PID_ENV = "HGBENCH_GRID_PID"


def _signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def exit_code(reason: str) -> int:
    """The shell's convention for a process ended by a signal: 128 + its number (SIGTERM: 143;
    Ctrl-C, whose KeyboardInterrupt carries no message: 130)."""
    return 128 + (signal.SIGTERM if "SIGTERM" in reason else signal.SIGINT)


def _interrupt(signum, frame):
    """SIGTERM during a job (a cluster's scancel, a killed grid) ends the run as KILLED after the
    current hyper-step, so no MLflow write is cut in half, and no further job of the grid starts in
    this process; a second SIGTERM interrupts at once (one more than ``SAME_REQUEST_S`` after the
    first: a Ctrl-C reaches a grid worker directly and forwarded by its launcher). SIGINT in a
    grid worker's job does the same."""
    reason = f"received signal {_signal_name(signum)}"
    request_grid_stop(reason)
    if stop_requested():
        if repeated("run"):
            raise KeyboardInterrupt(reason)
        return
    request_stop(reason)


def _grid_workers() -> list[int]:
    """The pids of the worker processes this grid started (the joblib launcher's): this process's
    children that inherited its ``$HGBENCH_GRID_PID`` — read from /proc (Linux; elsewhere none,
    and a SIGTERM then reaches only this process). Other children (the loky resource tracker
    ignores SIGTERM; a server a caller started before the grid) are left alone."""
    me, mark = os.getpid(), f"{GRID_PID_ENV}={os.getpid()}".encode()
    pids = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            if ppid != me:
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                if mark in f.read().split(b"\0"):
                    pids.append(int(entry))
        except (OSError, ValueError, IndexError):  # gone meanwhile, or not ours to read
            continue
    return pids


@contextlib.contextmanager
def _sigterm_handler(handler):
    """``handler`` for SIGTERM while the block runs, the previous one put back after (nothing
    outside the main thread, where signals cannot be handled)."""
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _sigint_handler(handler):
    """``handler`` for SIGINT while the block runs (None: unchanged), the previous one put back after."""
    previous = None
    if handler is not None:
        with contextlib.suppress(ValueError):  # not the main thread
            previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _ctrl_c_grid(signum, frame):
    """Ctrl-C in the process that launched a grid with worker processes (joblib): as a first
    SIGTERM — the workers' running jobs end KILLED (Ctrl-C reaches them too; a SIGTERM is
    forwarded in case it did not), no other job starts, and the grid ends with its summary, so
    no run is left RUNNING. Without workers, or a second time: KeyboardInterrupt, at once."""
    if grid_stop_reason() or not _grid_workers():
        raise KeyboardInterrupt
    reason = f"received signal {_signal_name(signum)}"
    request_grid_stop(reason)
    for pid in _grid_workers():
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    print(f"hgbench: {reason}: stopping — running jobs end after their current hyper-step, "
          "the others are not started (Ctrl-C again: at once)", file=sys.stderr, flush=True)


def _stop_grid(signum, frame):
    """SIGTERM outside a job — in the process that launched a grid, or a grid worker between
    jobs: the grid stops. Running jobs (in worker processes, which get the signal forwarded) end
    KILLED after their current hyper-step, the others are not started, and the grid ends with its
    summary; a second SIGTERM stops at once."""
    reason = f"received signal {_signal_name(signum)}"
    if grid_stop_reason():
        if repeated("grid"):
            raise KeyboardInterrupt(reason)
        return  # the same request, delivered twice
    request_grid_stop(reason)
    workers = _grid_workers()
    for pid in workers:
        with contextlib.suppress(OSError):
            os.kill(pid, signum)
    if os.environ.get(GRID_PID_ENV) == str(os.getpid()):
        print(f"hgbench: {reason}: stopping — running jobs end after their current hyper-step, "
              "the others are not started", file=sys.stderr, flush=True)


@contextlib.contextmanager
def grid_signals():
    """The launching process's SIGTERM and SIGINT handlers (``_stop_grid``, ``_ctrl_c_grid``)
    while Hydra runs, put back after."""
    os.environ[GRID_PID_ENV] = str(os.getpid())
    try:
        with _sigterm_handler(_stop_grid), _sigint_handler(_ctrl_c_grid):
            yield
    finally:
        os.environ.pop(GRID_PID_ENV, None)


def _shutdown_workers() -> None:
    """joblib keeps its worker processes for reuse; a finished (or stopped) grid leaves none —
    through loky's public ``get_reusable_executor().shutdown``, as joblib's maintainers advise
    (joblib issue #945)."""
    if not _grid_workers():
        return
    from joblib.externals.loky import get_reusable_executor

    with contextlib.suppress(Exception):
        get_reusable_executor().shutdown(wait=True, kill_workers=True)


@contextlib.contextmanager
def job_process_state(cfg: DictConfig, hc):
    """The process-wide settings of one job — torch's thread count and the SIGTERM handler —
    set for the job and put back after it (a joblib worker runs many jobs). A grid's worker
    process keeps ``_stop_grid`` between jobs, so a SIGTERM while it waits for the next job stops
    the grid instead of killing the worker."""
    import torch

    threads = torch.get_num_threads()
    configure_threads(cfg, hc)
    in_worker = os.environ.get(GRID_PID_ENV, str(os.getpid())) != str(os.getpid())
    if in_worker and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:  # a grid worker's first job
        with contextlib.suppress(ValueError):  # not the main thread: no handlers there
            signal.signal(signal.SIGTERM, _stop_grid)
            signal.signal(signal.SIGINT, _stop_grid)  # Ctrl-C between jobs: no job starts, the worker lives
    if in_worker and os.environ[GRID_PID_ENV].isdigit():
        watch_parent(int(os.environ[GRID_PID_ENV]))  # a worker whose grid was killed stops
    set_in_job(True)
    try:
        # in a grid worker Ctrl-C is a stop after the hyper-step, as SIGTERM: a KeyboardInterrupt could
        # cut an MLflow write in half and leave the store locked, the run RUNNING
        with _sigterm_handler(_interrupt), _sigint_handler(_interrupt if in_worker else None):
            yield
    finally:
        set_in_job(False)
        torch.set_num_threads(threads)
        _auto_threads.clear()


def resume_wanted(cfg: DictConfig, multirun: bool) -> bool:
    mode = cfg.resume
    return bool(cfg.mlflow.enabled) and (mode is True or (mode == "auto" and multirun))


def _code_note(run) -> str:
    tags = run.data.tags
    commit = tags.get("mlflow.source.git.commit", "unknown")[:10]
    dirty = " with local changes" if tags.get("hgbench.git_dirty") == "true" else ""
    return f"hgbench {tags.get('hgbench.version', '?')}, commit {commit}{dirty}"


def previous_result(cfg: DictConfig) -> tuple[RunResult | None, str | None, dict | None]:
    """(a result to report instead of running, the run to resume, its checkpoint state)."""
    from hgbench.config import config_fingerprint, fingerprint

    uri = store.resolve_tracking_uri(cfg.mlflow.tracking_uri)
    experiment = str(cfg.mlflow.experiment)
    prev = store.previous_runs(uri, experiment, fingerprint(cfg), float(cfg.resume_stale_after_s))
    if prev.finished:
        run = prev.finished[0]
        summary = {k: v for k, v in run.data.metrics.items()}
        info = {"mlflow_run_id": run.info.run_id, "mlflow_tracking_uri": uri, "mlflow_experiment": experiment,
                "mlflow_experiment_id": run.info.experiment_id}
        print(f"hgbench: this job already FINISHED as MLflow run {run.info.run_id} with the same code "
              f"({_code_note(run)}); not run again (resume=false to rerun)")
        return RunResult("FINISHED", summary, info, None), None, None
    if prev.running:
        run = prev.running[0]
        why = f"this job is running now as MLflow run {run.info.run_id} (pid {run.data.tags.get('hgbench.pid')} on {run.data.tags.get('hgbench.host')}); not started twice"
        print(f"hgbench: {why}")
        return RunResult("SKIPPED", {}, {"mlflow_run_id": run.info.run_id}, SkipRun(why)), None, None
    older = store.finished_with_other_code(uri, experiment, config_fingerprint(cfg))
    if older is not None:
        print(f"hgbench: MLflow run {older.info.run_id} finished this configuration with other code ({_code_note(older)}, "
              "or other plugin versions or thread count); running it again with the current code")
    refused: list[str] = []

    def warn(line: str) -> None:
        refused.append(line)
        print(line, file=sys.stderr)

    found = store.latest_checkpoint(uri, prev.interrupted, warn=warn)
    if found is None:
        if refused:
            print("hgbench: warning: no usable checkpoint: the job starts from scratch", file=sys.stderr)
        return None, None, None
    print(f"hgbench: resuming interrupted MLflow run {found.run.info.run_id} from its checkpoint at hyper-step {found.step} ({found.where})")
    return None, found.run.info.run_id, found.state


_claims: list[claims.Claim] = []  # the claim on the job this process runs now (released by ``app``)


def claim_or_skip(cfg: DictConfig) -> RunResult | None:
    """Claim the job in the store before looking at what the store holds for it, so that of two
    launches of the same job at once one runs it and the other skips it (a SKIPPED result, said
    in one line naming the process that runs it). None: claimed, or a store without claims."""
    import sqlite3

    from hgbench.config import fingerprint

    uri = store.resolve_tracking_uri(cfg.mlflow.tracking_uri)
    try:
        claim, holder = claims.claim_job(uri, claims.job_key(str(cfg.mlflow.experiment), fingerprint(cfg)),
                                        float(cfg.resume_stale_after_s))
    except sqlite3.Error as exc:
        raise StoreError(f"cannot claim the job in the MLflow store at {uri}: {type(exc).__name__}: {exc}") from exc
    if claim is not None:
        _claims.append(claim)
    if holder is None:
        return None
    why = f"this job is being run now by {holder.describe()} (its claim in the store); not started twice"
    print(f"hgbench: {why}", flush=True)
    return RunResult("SKIPPED", {}, {}, SkipRun(why))


def release_claims() -> None:
    while _claims:
        _claims.pop().release()


def _fail(exc: BaseException) -> None:
    print(f"hgbench: error: {describe(exc)}", file=sys.stderr)
    sys.exit(2)


@hydra.main(version_base="1.3", config_path="pkg://hgbench.conf", config_name="config")
def app(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    with job_process_state(cfg, hc):
        try:
            return run_job(cfg, hc)
        finally:  # the run's end is recorded by now: the next launch of this job finds it
            release_claims()


def run_job(cfg: DictConfig, hc) -> float | None:
    """One job: check and build the config once, check the store, reuse or resume an earlier
    run of the same job, run it, print its summary and leave its result file for the sweep."""
    from hgbench.parts import build_parts, record_unbuilt
    from hgbench.runner import Experiment

    multirun = hc.mode == RunMode.MULTIRUN
    if grid_stop_reason():  # a signal stopped the grid before this job began: it is not started
        write_job_result(hc.runtime.output_dir, {
            "job_num": hc.job.num if multirun else None, "overrides": " ".join(hc.overrides.task),
            "status": "NOT_STARTED", "error": f"not started: the grid was stopped — {grid_stop_reason()}"})
        return None
    tags = hydra_tags(hc)
    parts, build_error = None, None
    try:
        parts = build_parts(cfg)  # a typo fails before the store is even touched
    except HgbenchError as exc:
        if not multirun:
            _fail(exc)
        build_error = exc  # one bad job must not stop the grid: it is recorded as FAILED
    except Exception as exc:  # a bug in a plugin's own checks: shown, and recorded below
        traceback.print_exc()
        build_error = exc
    try:
        check_store(cfg)
    except StoreError as exc:
        _fail(exc)
    earlier, resumed_from, state = None, None, None
    if resume_wanted(cfg, multirun):
        try:
            earlier = claim_or_skip(cfg)
        except StoreError as exc:
            _fail(exc)
        if earlier is None:
            earlier, resumed_from, state = previous_result(cfg)
    if earlier is not None:
        result = earlier
    else:
        result = None if build_error is None else record_unbuilt(cfg, build_error, tags)
        if result is None:
            try:
                exp = Experiment(cfg, parts)
            except USER_ERRORS as exc:
                if not multirun and not isinstance(exc, SkipRun):
                    _fail(exc)
                result = record_unbuilt(cfg, exc, tags)
            except Exception as exc:  # a bug (in a plugin, most likely): recorded, and its traceback shown
                traceback.print_exc()
                result = record_unbuilt(cfg, exc, tags)
        if result is None and state is not None:
            try:
                exp.load_state_dict(state)
            except Exception as exc:  # a checkpoint of another shape (the code changed): start afresh
                print(f"hgbench: warning: the checkpoint of run {resumed_from} does not fit this job "
                      f"({type(exc).__name__}: {str(exc)[:200]}); the job starts from scratch", file=sys.stderr)
                exp, resumed_from = Experiment(cfg, parts), None
        if result is None:
            try:
                announce_threads()
                result = exp.run(tags, resumed_from=resumed_from)
            except KeyboardInterrupt as exc:  # SIGTERM / Ctrl-C: recorded as KILLED by the run itself
                result = getattr(exp, "last_result", None) or RunResult("KILLED", {}, {}, exc)
                request_grid_stop(str(exc) or "interrupted (SIGINT)")  # Ctrl-C stops a grid too
        print(format_summary(cfg, result), flush=True)
    s = result.summary
    write_job_result(hc.runtime.output_dir, {
        "job_num": hc.job.num if multirun else None,
        "overrides": " ".join(hc.overrides.task),
        "status": result.status,
        "error": None if result.error is None else str(result.error) if result.status == "KILLED" else f"{type(result.error).__name__}: {result.error}",
        **{k: s.get(k) for k in ("val_loss", "test_loss", "val_acc", "test_acc", "val_ppl", "test_ppl", "runtime_s", "peak_memory_mb",
                                 "load_avg_start", "load_avg_end", "hg_cosine")},
        "cores": os.cpu_count(),
        "mlflow_run_id": result.info.get("mlflow_run_id"),
        "reused": earlier is not None and earlier.status == "FINISHED",
        "recording_failed": not store_complete(result),
    })
    if result.status == "KILLED" and not multirun:
        sys.exit(exit_code(str(result.error)))
    if (result.status == "FAILED" or result.recording_errors) and not multirun:
        sys.exit(1)
    if result.status == "SKIPPED" and not multirun:  # nothing was trained: a script must be able to tell
        sys.exit(EXIT_SKIPPED)
    # the objective for sweepers such as Optuna; None marks a failed or skipped trial
    return s.get("val_loss") if result.status == "FINISHED" else None


def main() -> None:
    with store.scoped_env(store.NO_TELEMETRY):  # this command's, inherited by the jobs it launches
        _main()


def _main() -> None:
    problem = preflight(sys.argv[1:])  # registers the plugins' configs; refuses before Hydra creates anything
    if problem:
        print(f"hgbench: error: {problem}", file=sys.stderr)
        sys.exit(2)
    clear_grid_stop()
    os.environ.pop(LAUNCH_ENV, None)  # this launch's output folder gets its own suffix
    code = 0
    try:
        with grid_signals():
            app()
    except SystemExit as exc:
        code = exc.code
    except KeyboardInterrupt as exc:  # Ctrl-C, or a second SIGTERM: at once, in one line
        reason = str(exc) or "interrupted (SIGINT)"
        print(f"hgbench: stopped at once ({reason}); an unfinished run is marked interrupted by the next launch", file=sys.stderr)
        request_grid_stop(reason)
    finally:
        _shutdown_workers()
        os.environ.pop(LAUNCH_ENV, None)
    if grid_stop_reason():
        code = exit_code(grid_stop_reason())
    clear_grid_stop()
    sys.exit(code)


if __name__ == "__main__":
    main()
