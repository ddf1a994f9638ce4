"""Runs that share a process (a joblib worker, a notebook) never see each other's state: what a
run changes process-wide — torch's global RNG, deterministic algorithms, the stop flag — it puts
back when it ends."""

import pytest
import torch

from hgbench import build_experiment
from hgbench import machine, stop

QUICK = ["experiment=quick", "hyper_steps=3", "eval_every=3", "mlflow.enabled=false"]
NOISY = [*QUICK, "hyperparam=dropout_per_unit", "model.hidden=[8]"]  # draws dropout noise from the global RNG


def test_building_and_running_leave_the_global_rng_alone():
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    exp = build_experiment(overrides=NOISY)
    assert torch.equal(torch.get_rng_state(), before), "building the problem consumed the global RNG"
    assert exp.run().status == "FINISHED"
    assert torch.equal(torch.get_rng_state(), before), "the run left the global RNG changed"


def test_a_run_does_not_depend_on_what_ran_before_it_in_the_process():
    a = build_experiment(overrides=NOISY).run()
    torch.rand(1000)  # someone else uses the global RNG in between
    torch.manual_seed(99)
    b = build_experiment(overrides=NOISY).run()
    for key in ("hypergrad_norm", "val_loss", "inner_loss"):
        assert a.summary[key] == b.summary[key], key


def test_deterministic_algorithms_are_switched_back_after_the_run():
    assert not torch.are_deterministic_algorithms_enabled()
    seen = []
    exp = build_experiment(overrides=[*QUICK, "deterministic=true"])
    step = exp.hyper_step
    exp.hyper_step = lambda s: (seen.append(torch.are_deterministic_algorithms_enabled()), step(s))[1]
    assert exp.run().status == "FINISHED"
    assert seen == [True, True, True]
    assert not torch.are_deterministic_algorithms_enabled()


def test_a_stop_ends_its_own_run_only(monkeypatch):
    monkeypatch.setattr(stop, "_stop_requested", [])
    first = build_experiment(overrides=QUICK)
    stop.request_stop("received signal SIGTERM")
    with pytest.raises(KeyboardInterrupt):
        first.run()
    assert not stop.stop_requested()
    assert build_experiment(overrides=QUICK).run().status == "FINISHED"


def test_checkpoint_state_carries_the_experiments_own_rng():
    """A checkpoint saved mid-run holds the run's RNG state, not the caller's; restoring it into a
    fresh experiment continues the noise exactly."""
    whole = build_experiment(overrides=[*NOISY, "hyper_steps=4"])
    ref = whole.run()
    first = build_experiment(overrides=[*NOISY, "hyper_steps=2"])
    first.run()
    state = first.state_dict()
    second = build_experiment(overrides=[*NOISY, "hyper_steps=4"])
    second.load_state_dict(state)
    rest = second.run()
    assert rest.summary["hypergrad_norm"] == ref.summary["hypergrad_norm"]


def test_an_in_process_sweep_leaves_no_sweep_id_behind(tmp_path, monkeypatch):
    """The sweep id a grid sets for its jobs ($HGBENCH_SWEEP_ID) goes with the grid: the next grid
    launched from the same process (a notebook, a test) gets its own."""
    import os

    from helpers import run_cli

    from hgbench.callbacks import SWEEP_ENV, read_job_results

    monkeypatch.delenv(SWEEP_ENV, raising=False)
    ids = []
    for name in ("a", "b"):
        code, out, _ = run_cli(monkeypatch, tmp_path, "-m", "experiment=quick", "hyper_steps=1", "mlflow.enabled=false",
                               f"hydra.sweep.dir=multirun/{name}")
        assert code == 0, out
        assert SWEEP_ENV not in os.environ
        ids.append(out.split("hgbench sweep ", 1)[1].split(":", 1)[0])
        assert read_job_results(tmp_path / "multirun" / name)[0]["status"] == "FINISHED"
    assert ids[0] != ids[1] and all(ids)


def test_an_oversubscribed_cpu_is_said_once_with_the_remedy_and_the_load_is_recorded(monkeypatch, capsys):
    """Under a load above the core count, a run with several torch threads warns once (with
    num_threads=1 as the remedy); every run records the load average at its start and end."""
    import os

    monkeypatch.setattr(os, "getloadavg", lambda: (5.0, 5.0, 5.0))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = build_experiment(overrides=QUICK).run()
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert err.count("hgbench: warning: load average 5.0 on 2 cores and this run uses 2 torch threads") == 1
    assert "set num_threads=1" in err
    assert result.summary["load_avg_start"] == result.summary["load_avg_end"] == 5.0
    assert machine.oversubscription_warning(5.0, 1, 2) is None  # one thread: nothing to change
    assert machine.oversubscription_warning(0.5, 2, 2) is None  # a quiet machine
