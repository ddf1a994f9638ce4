"""Where the suite's CPU time goes: ``pytest -p cpu_census`` (opt-in; works with xdist).

For each test (setup, call and teardown together) it measures the CPU time of the test process
itself and of the processes the test started and waited for (``RUSAGE_CHILDREN``: an ``hgbench``
it ran, the joblib workers that ``hgbench`` started, a server it stopped), and at the end prints
the tests that cost most, the totals, and what the totals alone mean for the wall time on this
machine's cores. Not counted: the workers' own start-up and processes nobody waited for (jobs run
by a SLURM daemon, daemons that detach). The suite's time is a CPU budget: on ``n`` busy cores it
takes at least (CPU time) / ``n``, however the tests are shared out.
"""

from __future__ import annotations

import os
import resource

import pytest

KEY = "cpu_census"
SHOWN = 15


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    item.user_properties.append((KEY, [0.0, 0.0]))  # filled phase by phase, before each report is made
    yield


def _measured(item):
    for key, value in item.user_properties:
        if key == KEY:
            return value
    return None


def _phase(item):
    spent = _measured(item)
    self0, children0 = _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
    yield
    if spent is not None:
        spent[0] += _cpu(resource.RUSAGE_SELF) - self0
        spent[1] += _cpu(resource.RUSAGE_CHILDREN) - children0


pytest_runtest_setup = pytest.hookimpl(hookwrapper=True)(_phase)
pytest_runtest_call = pytest.hookimpl(hookwrapper=True)(_phase)
pytest_runtest_teardown = pytest.hookimpl(hookwrapper=True)(_phase)


class Census:
    def __init__(self):
        self.by_test: dict[str, list[float]] = {}

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report):
        for key, value in report.user_properties:
            if key == KEY and report.when == "teardown":  # the last report: every phase is in
                self.by_test[report.nodeid] = list(value)

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter):
        if not self.by_test:
            return
        tr = terminalreporter
        own = sum(v[0] for v in self.by_test.values())
        started = sum(v[1] for v in self.by_test.values())
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        tr.section("CPU census (cpu_census)")
        tr.write_line(f"{'CPU s':>7} {'test':>7} {'started':>7}  (the test process / the processes it started)")
        ranked = sorted(self.by_test.items(), key=lambda kv: -(kv[1][0] + kv[1][1]))
        for nodeid, (mine, theirs) in ranked[:SHOWN]:
            tr.write_line(f"{mine + theirs:7.1f} {mine:7.1f} {theirs:7.1f}  {nodeid}")
        total = own + started
        tr.write_line(f"{len(self.by_test)} tests: {total:.0f} CPU-s, {own:.0f} in the test processes and "
                      f"{started:.0f} ({100 * started / total if total else 0:.0f} %) in the processes they started; "
                      f"at least {total / cores / 60:.1f} min of wall time on these {cores} cores")


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist) adds it up
        config.pluginmanager.register(Census(), "cpu_census_summary")
