"""Stop signals: a stop of the current run (the CLI's SIGTERM handler asks for one) and a stop of
the whole process's work (a grid, or a grid worker).

A run stops at the next point where that is safe — between hyper-steps, never in the middle of an
MLflow write — as KILLED; ``Experiment.run`` clears the run's stop when it returns, so the next
run in the process starts clean. A grid stop keeps jobs that have not started yet from starting.
Both live here, in an imported module, not in the CLI's: under ``python -m hgbench.cli`` the CLI
is ``__main__``, and a joblib worker gets a fresh copy of its globals with every job.
"""

from __future__ import annotations

import time

_stop_requested: list[str] = []  # the reasons a stop of the current run was asked for
_grid_stop: list[str] = []  # the reasons a stop of the grid was asked for
_since: dict[str, float] = {}  # when the first stop of the run / of the grid was asked for (monotonic)

# signals this close to the first are the same request delivered twice (Ctrl-C reaches every
# process of the terminal's group, and the launching process forwards it to its workers), not
# the "second signal" that stops at once
SAME_REQUEST_S = 1.0


def request_stop(reason: str) -> None:
    if not _stop_requested:
        _since["run"] = time.monotonic()
    _stop_requested.append(reason)


def repeated(what: str) -> bool:
    """Whether a stop of ``what`` ("run" or "grid") was asked for more than ``SAME_REQUEST_S`` ago."""
    return what in _since and time.monotonic() - _since[what] > SAME_REQUEST_S


def stop_requested() -> bool:
    return bool(_stop_requested)


def check_stop() -> None:
    """Raise KeyboardInterrupt (the run ends as KILLED) if a stop was asked for."""
    if _stop_requested:
        raise KeyboardInterrupt(_stop_requested[0])


def clear_stop() -> None:
    _stop_requested.clear()
    _since.pop("run", None)


def request_grid_stop(reason: str) -> None:
    if not _grid_stop:
        _since["grid"] = time.monotonic()
    _grid_stop.append(reason)


def grid_stop_reason() -> str | None:
    return _grid_stop[0] if _grid_stop else None


def clear_grid_stop() -> None:
    _grid_stop.clear()
    _since.pop("grid", None)


# --- a grid worker whose launching process is gone ------------------------------------------------
# A joblib worker outlives a launching process killed with SIGKILL (it is re-parented, to PID 1 or
# a subreaper) and would run its job, then idle, for minutes. Each worker watches its parent.

PARENT_POLL_S = 0.5
_in_job: list[bool] = [False]
_watching: list[int] = []  # the parent pid watched (once per process)


def set_in_job(running: bool) -> None:
    _in_job[0] = running


def watch_parent(parent: int) -> None:
    """From now on (once per process), a daemon thread checks every ``PARENT_POLL_S`` that this
    process's parent is still ``parent``. When it is gone, the grid stops here: a running job ends
    KILLED after its current hyper-step (recorded as interrupted; the next launch resumes it), and
    the process exits (status 143) once no job runs."""
    import os
    import threading

    if _watching or os.getppid() != parent:
        return
    _watching.append(parent)

    def watch() -> None:
        import sys
        import time

        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        reason = f"the grid's launching process (pid {parent}) is gone"
        request_grid_stop(reason)
        if _in_job[0]:
            request_stop(reason)
            print(f"hgbench: {reason}: this worker (pid {os.getpid()}) stops after the current hyper-step", file=sys.stderr, flush=True)
        while _in_job[0]:
            time.sleep(PARENT_POLL_S)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed or broken stream: nothing more to say
                pass
        os._exit(143)

    threading.Thread(target=watch, name="hgbench-parent-watch", daemon=True).start()
