"""Every fault answered in seconds with the right words, and nothing left behind (issue 24 §3, §4):
a folder or read-only file given as the store, a full launch, checkpoint or artifact folder or
store (a real full disk: a filled 1 MB tmpfs, which needs root — skipped elsewhere — next to the
injected ones of test_faults.py), runs whose process is gone, Ctrl-C on a joblib grid, a grid
whose launching process is killed; checkpoints and downloads left over, a checkpoint of another
job put in a job's place."""

import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from helpers import hgbench_in_process, session_processes
from mlflow.tracking import MlflowClient

from hgbench import store
from hgbench.errors import StoreError

QUICK = ["experiment=quick", "eval_every=5", "mlflow.flush_every_s=1000"]


def runs(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000, order_by=["attributes.start_time ASC"])


def steps(client, run, key="elapsed_s"):
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, key))


@pytest.fixture
def tmpfs(tmp_path):
    """``(folder, fill)``: a 1 MB tmpfs mounted at ``folder``; ``fill()`` fills it to the last
    byte (files can still be created empty: a free inode, as on a real full disk). Needs root."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a full disk is made by mounting a small tmpfs, which needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")

    def fill() -> None:
        fd = os.open(folder / ".filler", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        assert shutil.disk_usage(folder).free == 0

    try:
        yield folder, fill
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


# --- 1. stores refused before MLflow is asked ------------------------------------------------------

def test_a_folder_or_a_read_only_uri_as_the_store_is_refused_in_milliseconds(tmp_path, mlflow_db):
    for uri, said in ((f"sqlite:///{tmp_path}", f"{tmp_path} is a folder, not a sqlite file (give the file inside it, "
                                                 f"e.g. sqlite:///{tmp_path / 'mlflow.db'})"),
                      (f"sqlite:///file:{mlflow_db}?mode=ro&uri=true", "it is opened read-only (mode=ro); hgbench records into it")):
        t0 = time.perf_counter()
        with pytest.raises(StoreError) as err:
            store.check_store(uri, "x")
        assert time.perf_counter() - t0 < 2  # MLflow itself retries a folder for ~2 minutes
        assert str(err.value) == f"cannot use the MLflow store at {uri}: {said}"
    assert store.check_store(f"sqlite:///{mlflow_db}", "x")  # the same file, writable: used


@pytest.mark.slow
def test_every_folder_a_run_writes_and_the_store_are_checked_on_a_full_disk(tmp_path, mlflow_db, copy_store, tmpfs, monkeypatch):
    """Launch folder, checkpoint folder, artifact folder, the store's own disk: each full one is
    one line and exit 2, in seconds, before any training — never a traceback from Hydra or a run
    that dies at its first checkpoint."""
    full, fill = tmpfs
    full_store = copy_store(full / "mlflow.db")
    MlflowClient(f"sqlite:///{mlflow_db}").create_experiment("art", artifact_location=(full / "art").as_uri())
    fill()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{mlflow_db}")
    nospace = "No space left on device"
    cases = [
        (full, [], f"hgbench: error: cannot write the output folder {full}/outputs/", f"{nospace} (launch from a writable folder, or set hydra.run.dir)"),
        (full, ["-m"], f"hgbench: error: cannot write the output folder {full}/multirun/", f"{nospace} (launch from a writable folder, or set hydra.sweep.dir)"),
        (tmp_path, ["checkpoint.every=2", f"checkpoint.dir={full}/ck"],
         f"hgbench: error: cannot write the checkpoint folder {full}/ck: {nospace}", "(free some space there, or set checkpoint.dir)"),
        (tmp_path, ["-m", "checkpoint.every=2", f"checkpoint.dir={full}/ck"],
         f"hgbench: error: cannot write the checkpoint folder {full}/ck: {nospace}", "(free some space there, or set checkpoint.dir)"),
        (tmp_path, ["mlflow.experiment=art"], f"hgbench: error: cannot write the MLflow artifact folder {full}/art: {nospace}", ""),
        (tmp_path, [f"mlflow.tracking_uri=sqlite:///{full_store}"],
         f"hgbench: error: cannot use the MLflow store at sqlite:///{full_store}: sqlite3.OperationalError: database or disk is full",
         "(free some space on its disk)"),
    ]
    for cwd, args, start, end in cases:
        t0 = time.perf_counter()
        out = hgbench_in_process(cwd, *args, *QUICK, "hyper_steps=500")
        took = time.perf_counter() - t0
        assert out.returncode == 2, (args, out.stdout[-1000:], out.stderr[-2000:])
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1, (args, lines)
        line = lines[0]
        assert line.startswith(start) and line.endswith(end), (args, line)
        assert "hgbench run" not in out.stdout and took < 15, (args, took)
    assert runs(MlflowClient(f"sqlite:///{mlflow_db}"), "art") == []


# --- 2. what was and was not recorded ------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:hgbench. plugin")
def test_a_store_that_fills_up_during_a_run_says_what_it_holds_and_the_next_launch_ends_the_run(tmp_path, copy_store, tmpfs, monkeypatch):
    """The disk under the store fills up after step 2's metrics: the run stops at once, its
    summary names the run and the last hyper-step the store holds, says it is left RUNNING (its
    status cannot be written), without MLflow's tracebacks; once there is space again, the next
    launch marks it interrupted instead of leaving it RUNNING forever."""
    from hgbench.store import MlflowRun

    full, fill = tmpfs
    db = copy_store(full / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    real = MlflowRun.flush

    def flush(self):
        real(self)
        if self.recorded_step == 2:
            fill()

    monkeypatch.setattr(MlflowRun, "flush", flush)
    out = hgbench_in_process(tmp_path, *QUICK, "hyper_steps=50", "mlflow.flush_every_s=0", "mlflow.experiment=fills")
    monkeypatch.setattr(MlflowRun, "flush", real)
    assert out.returncode == 1
    assert "Traceback" not in out.stdout + out.stderr
    client = MlflowClient(f"sqlite:///{db}")
    (run,) = runs(client, "fills")
    assert run.info.status == "RUNNING" and steps(client, run) == [0, 1, 2]
    assert "hgbench run failed but NOT RECORDED in full" in out.stdout
    assert "(sqlite3.OperationalError) database or disk is full" in out.stdout
    assert (f"  recorded: MLflow run {run.info.run_id} as RUNNING (its final status could not be written; the next launch "
            "on this store marks it interrupted), with its metrics up to hyper-step 2") in out.stdout
    assert len(out.stdout.splitlines()) + len(out.stderr.splitlines()) < 30

    again = hgbench_in_process(tmp_path, *QUICK, "hyper_steps=1", "mlflow.experiment=fills")
    assert again.returncode == 2 and "database or disk is full (free some space on its disk)" in again.stderr
    (full / ".filler").unlink()
    assert hgbench_in_process(tmp_path, *QUICK, "hyper_steps=1", "mlflow.experiment=fills").returncode == 0
    old = client.get_run(run.info.run_id)
    assert old.info.status == "KILLED" and old.data.tags["hgbench.status"] == "interrupted"


def test_the_summary_says_exactly_what_the_store_holds():
    from omegaconf import OmegaConf

    from hgbench.cli import format_summary, store_complete
    from hgbench.hookspecs import PluginFailure, RunResult

    cfg = OmegaConf.create({"hypergrad": {"name": "cg"}, "hyperparam": {"name": "wd"}, "dataset": {"name": "digits"},
                            "model": {"name": "mlp"}, "hyper_steps": 10})
    summary = {"num_weights": 10, "num_hyperparams": 1, "hyper_steps_done": 4}
    info = {"mlflow_run_id": "r1", "mlflow_experiment": "e", "mlflow_tracking_uri": "sqlite:///x.db", "mlflow_recorded_step": 4}
    checkpoint = PluginFailure("ck", "on_hyper_step: OSError: [Errno 28] No space left on device")
    tracker = PluginFailure("mlflow", "on_run_end: StoreWriteError: database or disk is full")

    whole = RunResult("FAILED", summary, {**info, "mlflow_status": "FAILED", "mlflow_end_written": True}, None, [checkpoint], [checkpoint])
    text = format_summary(cfg, whole)
    assert store_complete(whole) and text.startswith("hgbench run FAILED in")
    assert ("  recorded: MLflow run r1 as FAILED, with every metric (its metrics up to hyper-step 4), tags and artifacts\n"
            "  NOT recorded: what ck writes (on_hyper_step: OSError: [Errno 28] No space left on device)") in text

    running = RunResult("FAILED", summary, {**info, "mlflow_unwritten_metrics": 7}, None, [tracker], [tracker])
    text = format_summary(cfg, running)
    assert not store_complete(running) and text.startswith("hgbench run failed but NOT RECORDED in full")
    assert "  recorded: MLflow run r1 as RUNNING (its final status could not be written" in text
    assert "  NOT recorded: 7 metric values, the end-of-run metrics, tags and artifacts — only in this output" in text

    # a finished run whose end could not be written is held as FAILED, never as FINISHED
    half = RunResult("FINISHED", summary, {**info, "mlflow_status": "FAILED"}, None, [tracker], [tracker])
    assert "recorded: MLflow run r1 as FAILED (not FINISHED: it is incomplete)" in format_summary(cfg, half)

    nothing = RunResult("FINISHED", summary, {}, None, [tracker], [tracker])
    text = format_summary(cfg, nothing)
    assert text.startswith("hgbench run finished but NOT RECORDED in") and "nothing of this run is in the MLflow store" in text
    assert store_complete(RunResult("FINISHED", summary, info, None))


# --- 3. runs whose process is gone -----------------------------------------------------------------

def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_run_whose_process_is_gone_is_marked_interrupted_by_the_next_launch_of_anything(tmp_path, mlflow_db):
    """Without ``resume``, in another experiment: any launch on the store (its pre-flight check,
    ``check_store``, which every run and grid calls) marks it, and so does a report."""
    uri = f"sqlite:///{mlflow_db}"
    client = MlflowClient(uri)
    exp = client.create_experiment("old")
    here = {"hgbench.host": platform.node()}
    dead = client.create_run(exp, tags={**here, "hgbench.pid": str(_dead_pid())})
    alive = client.create_run(exp, tags={**here, "hgbench.pid": str(os.getppid())})
    elsewhere_quiet = client.create_run(exp, tags={"hgbench.host": "other-host", "hgbench.pid": "1"}, start_time=int((time.time() - 3600) * 1000))
    elsewhere_busy = client.create_run(exp, tags={"hgbench.host": "other-host", "hgbench.pid": "1"})
    not_ours = client.create_run(exp)  # a run of another tool: no hgbench tags, never touched

    store.check_store(uri, "new")
    status = {r.info.run_id: (r.info.status, r.data.tags.get("hgbench.status")) for r in runs(client, "old")}
    assert status[dead.info.run_id] == ("KILLED", "interrupted")
    assert status[elsewhere_quiet.info.run_id] == ("KILLED", "interrupted")  # no sign of life for resume_stale_after_s
    assert client.get_run(dead.info.run_id).data.tags["hgbench.error"] == "interrupted: its process is gone (killed?)"
    for run in (alive, elsewhere_busy, not_ours):
        assert status[run.info.run_id] == ("RUNNING", None)

    from hgbench.report import open_store

    later = client.create_run(exp, tags={**here, "hgbench.pid": str(_dead_pid())})
    open_store(uri, ["old"])
    assert client.get_run(later.info.run_id).info.status == "KILLED"


def _start_grid(tmp_path, experiment):
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *QUICK, "hyper_steps=3000", "num_threads=1",
            "mlflow.flush_every_s=0.2", "seed=0,1,2", f"mlflow.experiment={experiment}"]
    proc = subprocess.Popen([sys.executable, "-m", "hgbench.cli", *args], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    end = time.time() + 120
    while time.time() < end and sum(bool(r.data.metrics.get("hypergrad_norm")) for r in runs(client, experiment)) < 2:
        time.sleep(0.3)
    return proc, client


@pytest.mark.slow
def test_ctrl_c_on_a_joblib_grid_ends_it_with_its_summary_and_no_run_left_running(tmp_path, mlflow_db):
    """Ctrl-C: the terminal sends SIGINT to the whole process group, workers included."""
    proc, client = _start_grid(tmp_path, "ctrlc")
    try:
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "3 jobs — 2 killed, 1 not started" in stdout
    assert [(r.info.status, r.data.tags.get("hgbench.status")) for r in runs(client, "ctrlc")] == [("KILLED", "interrupted")] * 2
    time.sleep(1)
    assert session_processes(proc.pid) == [], "worker processes outlived the grid"


@pytest.mark.slow
def test_the_workers_of_a_grid_whose_launcher_is_killed_stop_within_seconds(tmp_path, mlflow_db):
    proc, client = _start_grid(tmp_path, "orphans")
    try:
        proc.kill()  # SIGKILL to the launching process alone: its workers are orphaned
        proc.wait(timeout=10)
        end = time.time() + 30
        while time.time() < end and session_processes(proc.pid):
            time.sleep(0.3)
        left = session_processes(proc.pid)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.stdout.close()
        proc.stderr.close()
    assert left == [], "worker processes ran on without their grid"
    got = runs(client, "orphans")
    assert len(got) == 2 and [(r.info.status, r.data.tags.get("hgbench.status")) for r in got] == [("KILLED", "interrupted")] * 2
    assert all("the grid's launching process" in r.data.tags["hgbench.error"] for r in got)


def test_a_signal_delivered_twice_is_one_request_and_a_later_one_stops_at_once(monkeypatch):
    """Ctrl-C reaches a grid worker from the terminal and again forwarded by its launcher: that is
    still a stop after the hyper-step; a signal more than ``SAME_REQUEST_S`` later stops at once."""
    from hgbench import cli, stop

    clock = [100.0]
    monkeypatch.setattr(stop.time, "monotonic", lambda: clock[0])
    try:
        cli._interrupt(signal.SIGINT, None)
        clock[0] += 0.01
        cli._interrupt(signal.SIGTERM, None)  # the forwarded copy: no KeyboardInterrupt
        assert stop.stop_requested() and stop.grid_stop_reason() == "received signal SIGINT"
        clock[0] += stop.SAME_REQUEST_S
        with pytest.raises(KeyboardInterrupt, match="received signal SIGTERM"):
            cli._interrupt(signal.SIGTERM, None)
    finally:
        stop.clear_stop()
        stop.clear_grid_stop()


CHILD = """
import sys, time
from hgbench import stop
stop.PARENT_POLL_S = 0.05
stop.set_in_job(sys.argv[2] == "job")
stop.watch_parent(int(sys.argv[1]))
print("watching", flush=True)
while not stop.stop_requested():
    time.sleep(0.02)
print("stop:", stop._stop_requested[0], "| grid:", stop.grid_stop_reason(), flush=True)
time.sleep(0.3)  # the current hyper-step ends
print("step done", flush=True)
stop.set_in_job(False)
time.sleep(60)
"""
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(__import__("os").getpid()), sys.argv[2]], stdout=open(sys.argv[3], "w"))
print(child.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("when", ["job", "between jobs"])
def test_a_grid_worker_notices_its_parent_is_gone(tmp_path, when):
    """In a job: the run is asked to stop (it ends KILLED after its hyper-step), then the worker
    exits; between jobs it exits at once — either way with status 143, within a second."""
    out = tmp_path / "child.out"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD, when, str(out)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        child = int(parent.stdout.readline())
        end = time.time() + 30
        while time.time() < end and "watching" not in out.read_text():
            time.sleep(0.05)
        parent.kill()
        parent.wait()
        t0 = time.time()
        while time.time() - t0 < 10 and Path(f"/proc/{child}").exists() and (Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"):
            time.sleep(0.05)
        took = time.time() - t0
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.stdout.close()
    said = out.read_text()
    assert took < 3, said
    if when == "job":
        assert f"stop: the grid's launching process (pid {parent.pid}) is gone | grid: the grid's launching process" in said
        assert "step done" in said
    else:
        assert "stop:" not in said


# --- 4. nothing left behind ------------------------------------------------------------------------

@pytest.mark.slow
def test_no_checkpoint_or_download_is_left_and_another_jobs_checkpoint_is_refused(tmp_path, mlflow_db, monkeypatch):
    downloads = tmp_path / "tmp"
    downloads.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(downloads))
    client = MlflowClient(f"sqlite:///{mlflow_db}")
    job = ["-m", *QUICK, "hyper_steps=12", "checkpoint.every=4", "mlflow.experiment=left"]
    kept = [*job, "checkpoint.keep=true"]
    for seed in (0, 1):
        assert hgbench_in_process(tmp_path, *kept, f"seed={seed}").returncode == 0
    first = {r.data.params["seed"]: r for r in runs(client, "left")}
    for run in first.values():  # as if both had been killed after their last checkpoint
        client.set_tag(run.info.run_id, "hgbench.status", "interrupted")
        client.set_terminated(run.info.run_id, "KILLED")
    ck = {seed: Path(run.data.tags["hgbench.checkpoint"]) for seed, run in first.items()}
    assert all(p.is_file() for p in ck.values())

    # seed 0's file replaced by seed 1's (a valid checkpoint of another job), no artifact copy
    shutil.copyfile(ck["1"], ck["0"])
    for f in (tmp_path / "mlartifacts").rglob(ck["0"].name):
        f.unlink()
    out = hgbench_in_process(tmp_path, *job, "seed=0")
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"hgbench: warning: checkpoint {ck['0']} belongs to another job (fingerprint {first['1'].data.tags['hgbench.fingerprint']}" in out.stderr
    assert "no usable checkpoint: the job starts from scratch" in out.stderr
    new = next(r for r in runs(client, "left") if r.data.params["seed"] == "0" and r.info.status == "FINISHED")
    assert "hgbench.resumed_from" not in new.data.tags and steps(client, new) == list(range(13))
    assert not ck["0"].exists()  # the finished job's checkpoints are gone, the interrupted run's too

    # seed 1 resumes from its artifact copy (local file gone): the download is removed after
    ck["1"].unlink()
    out = hgbench_in_process(tmp_path, *job, "seed=1")
    assert out.returncode == 0 and "from its checkpoint at hyper-step 8 (the MLflow artifact" in out.stdout, out.stderr[-2000:]
    assert list(downloads.iterdir()) == []
    assert list((tmp_path / "checkpoints").iterdir()) == []

    # a resumed run's own earlier checkpoint is removed when the job finishes
    assert hgbench_in_process(tmp_path, *kept, "seed=2").returncode == 0
    (third,) = [r for r in runs(client, "left") if r.data.params["seed"] == "2"]
    client.set_tag(third.info.run_id, "hgbench.status", "interrupted")
    client.set_terminated(third.info.run_id, "KILLED")
    state = torch.load(third.data.tags["hgbench.checkpoint"], weights_only=True)
    assert state[store.CHECKPOINT_OWNER_KEY] == {"run_id": third.info.run_id, "fingerprint": third.data.tags["hgbench.fingerprint"]}
    out = hgbench_in_process(tmp_path, *job, "seed=2")
    assert out.returncode == 0 and "resuming interrupted MLflow run" in out.stdout
    assert list((tmp_path / "checkpoints").iterdir()) == []
