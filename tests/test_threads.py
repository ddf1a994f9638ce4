"""``num_threads: auto``: the torch threads a run takes adapt to the load it finds at its start
(a grid's start for a grid's local jobs), said in one line and recorded; explicit values stay.
The load source is ``hgbench.machine.load_average``, replaced here."""

import math
import os

import pytest
import torch
from helpers import run_cli
from omegaconf import OmegaConf

from hgbench import cli, machine

QUICK = ["experiment=quick", "hyper_steps=1", "eval_every=1"]


@pytest.mark.parametrize("load, cores, jobs, expected", [
    (4.0, 2, 1, 1),          # the case: other work keeps both cores busy
    (0.2, 2, 1, 2),          # a quiet machine: all of them
    (0.5, 2, 1, 2),          # a core half idle counts as free
    (0.6, 2, 1, 1),
    (1.0, 4, 1, 3),
    (0.0, 8, 2, 4),          # joblib's jobs share the free cores
    (3.0, 8, 2, 2),
    (30.0, 8, 4, 1),         # never fewer than one
    (float("nan"), 4, 1, 4),  # no load average on this OS: as on a quiet machine
])
def test_auto_takes_the_free_cores_shared_between_the_jobs(load, cores, jobs, expected):
    n, note = machine.auto_threads(load, cores, jobs)
    assert n == expected
    assert note.startswith(f"{n} torch thread")
    assert f"on {cores} cores" in note and (math.isnan(load) or f"{load:.2f}" in note)


def test_auto_never_takes_more_than_torchs_default():
    assert machine.auto_threads(0.0, 16, ceiling=8)[0] == 8


def _hc(target="hydra._internal.core_plugins.basic_launcher.BasicLauncher", mode="RUN", **launcher):
    from hydra.types import RunMode

    return OmegaConf.create({"launcher": {"_target_": target, **launcher}, "mode": RunMode[mode],
                             "overrides": {"task": []}, "sweeper": {"_target_": "x.BasicSweeper"}})


@pytest.fixture
def two_busy_cores(monkeypatch):
    """A 2-core machine at load 4, torch's default 2 threads; the thread count is put back after."""
    monkeypatch.setattr(machine, "load_average", lambda: 4.0)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.delenv(machine.GRID_LOAD_ENV, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("setting, load, expected", [("auto", 4.0, 1), ("auto", 0.3, 2), (2, 4.0, 2), (1, 0.0, 1), (None, 4.0, 2)])
def test_configure_threads_adapts_auto_only(two_busy_cores, monkeypatch, capsys, setting, load, expected):
    monkeypatch.setattr(machine, "load_average", lambda: load)
    with cli.job_process_state(OmegaConf.create({"num_threads": setting}), _hc()):
        assert torch.get_num_threads() == expected
        tag = cli.hydra_tags(_hc()).get("hgbench.num_threads_auto")
        assert capsys.readouterr().out == ""  # said when the run starts, not before a refusal
        cli.announce_threads()
    out = capsys.readouterr().out
    if setting == "auto":
        assert out.count("hgbench: num_threads=auto: ") == 1 and tag and tag.startswith(f"{expected} torch thread")
    else:  # an explicit value (or null) is taken as it is, silently
        assert out == "" and tag is None
    assert torch.get_num_threads() == 2 and "hgbench.num_threads_auto" not in cli.hydra_tags(_hc())


def test_auto_under_joblib_shares_the_free_cores(two_busy_cores, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(machine, "load_average", lambda: 2.0)  # 6 free cores for 3 jobs at once
    hc = _hc("hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", n_jobs=3)
    with cli.job_process_state(OmegaConf.create({"num_threads": "auto"}), hc):
        assert torch.get_num_threads() == 2
    with cli.job_process_state(OmegaConf.create({"num_threads": None}), hc):
        assert torch.get_num_threads() == 8 // 3  # null: all the cores shared out, as before


def test_auto_on_a_cluster_takes_the_cores_the_scheduler_gave(two_busy_cores, capsys):
    """The node's load average counts other jobs on other cores: not this job's business."""
    hc = _hc("hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", mode="MULTIRUN")
    with cli.job_process_state(OmegaConf.create({"num_threads": "auto"}), hc):
        assert torch.get_num_threads() == 2
        cli.announce_threads()
    assert "2 torch threads (a cluster job" in capsys.readouterr().out


def test_a_run_says_and_records_what_auto_chose(two_busy_cores, tmp_path, monkeypatch, mlflow_db):
    from mlflow.tracking import MlflowClient

    code, out, err = run_cli(monkeypatch, tmp_path, *QUICK)
    assert code == 0, err
    line = [ln for ln in out.splitlines() if ln.startswith("hgbench: num_threads=auto")]
    assert line == ["hgbench: num_threads=auto: 1 torch thread (load average 4.00 on 2 cores: 1 free)"]
    assert "warning: load average" not in err  # one thread on busy cores: nothing to warn about
    run, = MlflowClient(f"sqlite:///{mlflow_db}").search_runs(["0", "1"])
    assert run.data.tags["hgbench.torch_threads"] == "1"
    assert run.data.tags["hgbench.num_threads_auto"] == line[0].split(": ", 2)[2]
    assert run.data.params["num_threads"] == "auto"
    assert run.data.metrics["load_avg_start"] == 4.0
    assert torch.get_num_threads() == 2


def test_a_grids_jobs_share_the_load_measured_at_its_start(two_busy_cores, tmp_path, monkeypatch):
    """A sequential grid's later jobs would find the load its own earlier jobs made: every job
    uses the load measured before the first one (and a single run after it measures its own)."""
    loads = iter([0.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0])
    monkeypatch.setattr(machine, "load_average", lambda: next(loads))
    code, out, err = run_cli(monkeypatch, tmp_path, "-m", *QUICK, "seed=0,1", "mlflow.enabled=false")
    assert code == 0, err
    chosen = [ln for ln in out.splitlines() if ln.startswith("hgbench: num_threads=auto")]
    assert chosen == ["hgbench: num_threads=auto: 2 torch threads (load average 0.00 at the grid's start on 2 cores: 2 free)"] * 2
    assert machine.GRID_LOAD_ENV not in os.environ
