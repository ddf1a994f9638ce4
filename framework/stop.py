"""Stop signals: a stop of the current run (the CLI's SIGTERM handler asks for one) and a stop of
the whole process's work (a grid, or a grid worker).

A run stops at the next point where that is safe — between hyper-steps, never in the middle of an
MLflow write — as KILLED; ``Experiment.run`` clears the run's stop when it returns, so the next
run in the process starts clean. A grid stop keeps jobs that have not started yet from starting.
Both live here, in an imported module, not in the CLI's: under ``python -m hgbench.cli`` the CLI
is ``__main__``, and a joblib worker gets a fresh copy of its globals with every job.
"""

from __future__ import annotations

_stop_requested: list[str] = []  # the reasons a stop of the current run was asked for
_grid_stop: list[str] = []  # the reasons a stop of the grid was asked for


def request_stop(reason: str) -> None:
    _stop_requested.append(reason)


def stop_requested() -> bool:
    return bool(_stop_requested)


def check_stop() -> None:
    """Raise KeyboardInterrupt (the run ends as KILLED) if a stop was asked for."""
    if _stop_requested:
        raise KeyboardInterrupt(_stop_requested[0])


def clear_stop() -> None:
    _stop_requested.clear()


def request_grid_stop(reason: str) -> None:
    _grid_stop.append(reason)


def grid_stop_reason() -> str | None:
    return _grid_stop[0] if _grid_stop else None


def clear_grid_stop() -> None:
    _grid_stop.clear()
