"""A kill, a broken file or a broken disk at the worst moment loses nothing: each case is made to
happen on purpose (the kill injected between two writes, the checkpoint truncated, the store
opened read-only, the disk made full at the write), never left to luck."""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import hgbench_in_process, session_processes
from mlflow.tracking import MlflowClient


QUICK = ["experiment=quick", "eval_every=5", "mlflow.flush_every_s=1000"]  # metrics buffered: only a flush writes them


def client_for(cwd):
    return MlflowClient(f"sqlite:///{Path(cwd) / 'mlflow.db'}")


def runs(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000, order_by=["attributes.start_time ASC"])


def steps(client, run, key="elapsed_s"):
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, key))


def interrupt(client, run):
    """Make a run look like one a dead process left behind (what the next launch looks for)."""
    client.set_tag(run.info.run_id, "hgbench.status", "interrupted")
    client.set_terminated(run.info.run_id, "KILLED")


# --- 1. the kill between the checkpoint and the metrics: test_resume.py's killed grid is killed
# right there (injected); here, what an older hgbench could leave behind ------------------------------

@pytest.mark.slow
def test_a_checkpoint_ahead_of_the_store_is_refused_and_the_job_starts_over(tmp_path, mlflow_db):
    """What an older hgbench (checkpoint written before the metrics were flushed) could leave:
    a resume from it would skip the steps the store never got."""
    job = ["-m", *QUICK, "hyper_steps=12", "checkpoint.every=4", "checkpoint.keep=true", "mlflow.experiment=ahead"]
    assert hgbench_in_process(tmp_path, *job).returncode == 0
    client = client_for(tmp_path)
    (first,) = runs(client, "ahead")
    path = Path(first.data.tags["hgbench.checkpoint"])
    state = torch.load(path, weights_only=True)
    state["step"] = 40  # beyond anything the store holds for this run
    torch.save(state, path)
    for f in (tmp_path / "mlartifacts").rglob(path.name):
        f.unlink()  # no artifact copy to fall back on
    interrupt(client, first)

    out = hgbench_in_process(tmp_path, *job)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"checkpoint {path} is at hyper-step 40 but the store holds run {first.info.run_id}'s metrics only up to hyper-step 12" in out.stderr
    assert "no usable checkpoint: the job starts from scratch" in out.stderr
    new = next(r for r in runs(client, "ahead") if r.info.status == "FINISHED")
    assert "hgbench.resumed_from" not in new.data.tags
    assert steps(client, new) == list(range(13))


# --- 2. unreadable checkpoints -------------------------------------------------------------------

@pytest.mark.slow
def test_an_unreadable_checkpoint_falls_back_to_its_artifact_then_to_a_fresh_start(tmp_path, mlflow_db):
    job = ["-m", *QUICK, "hyper_steps=12", "checkpoint.every=4", "checkpoint.keep=true", "mlflow.experiment=torn"]
    assert hgbench_in_process(tmp_path, *job).returncode == 0
    client = client_for(tmp_path)
    (first,) = runs(client, "torn")
    interrupt(client, first)
    local = Path(first.data.tags["hgbench.checkpoint"])
    local.write_bytes(local.read_bytes()[: local.stat().st_size // 2])  # truncated to half

    out = hgbench_in_process(tmp_path, *job)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"checkpoint {local} is unreadable" in out.stderr
    assert f"from its checkpoint at hyper-step 8 (the MLflow artifact checkpoint/{local.name} of run {first.info.run_id})" in out.stdout
    second = next(r for r in runs(client, "torn") if r.info.status == "FINISHED")
    assert second.data.tags["hgbench.resumed_from"] == first.info.run_id
    assert steps(client, second) == list(range(13))

    # every copy unreadable: the job still runs, from scratch, and is recorded
    interrupt(client, second)
    for f in [*(tmp_path / "mlartifacts").rglob("*.pt"), *(tmp_path / "checkpoints").glob("*.pt")]:
        f.write_bytes(b"not a checkpoint")
    out = hgbench_in_process(tmp_path, *job)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "no usable checkpoint: the job starts from scratch" in out.stderr
    assert "1 finished" in out.stdout
    third = next(r for r in runs(client, "torn") if r.info.status == "FINISHED")
    assert "hgbench.resumed_from" not in third.data.tags and steps(client, third) == list(range(13))


# --- 3. stores and folders that cannot be written ------------------------------------------------

@pytest.mark.slow
def test_a_read_only_store_fails_in_seconds_before_any_training(tmp_path, mlflow_db, monkeypatch):
    assert hgbench_in_process(tmp_path, *QUICK, "hyper_steps=1", "mlflow.experiment=ro").returncode == 0
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///file:{tmp_path / 'mlflow.db'}?mode=ro&uri=true")
    for grid in ([], ["-m"]):
        t0 = time.perf_counter()
        out = hgbench_in_process(tmp_path, *grid, *QUICK, "hyper_steps=500", "mlflow.experiment=ro")
        assert out.returncode == 2
        assert out.stderr.strip().splitlines() == [
            f"hgbench: error: cannot use the MLflow store at sqlite:///file:{tmp_path / 'mlflow.db'}?mode=ro&uri=true: "
            "it is opened read-only (mode=ro); hgbench records into it"]
        assert "FINISHED" not in out.stdout and time.perf_counter() - t0 < 10  # refused before MLflow is asked


def test_an_unwritable_launch_folder_is_one_line(tmp_path):
    """Root may write anywhere it has permission bits for; not in /proc."""
    out = hgbench_in_process("/proc", *QUICK, "hyper_steps=1")
    assert out.returncode == 2
    assert out.stderr.strip().startswith("hgbench: error: cannot write the output folder /proc/outputs/")
    assert out.stderr.strip().endswith("(launch from a writable folder, or set hydra.run.dir)")
    t0 = time.perf_counter()
    out = hgbench_in_process("/proc", *QUICK, "hyper_steps=1", f"hydra.run.dir={tmp_path}/out")
    assert out.returncode == 2 and time.perf_counter() - t0 < 30
    assert out.stderr.strip() == ("hgbench: error: cannot write the MLflow store's folder /proc: No such file or directory "
                                  "(launch from a writable folder, or set mlflow.tracking_uri / $MLFLOW_TRACKING_URI)")
    out = hgbench_in_process("/proc", "-m", *QUICK, "hyper_steps=1", "seed=0,1")
    assert out.returncode == 2 and out.stderr.strip().startswith("hgbench: error: cannot write the output folder /proc/multirun/")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:hgbench. plugin")
def test_a_full_disk_at_the_checkpoint_ends_the_run_failed_and_leaves_no_torn_file(tmp_path, mlflow_db, monkeypatch):
    import hgbench.plugins.recorder.checkpoint as ck

    def torn_save(obj, f):
        f.write(b"half a checkpoint")  # what a write cut short by a full disk leaves
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", torn_save)
    out = hgbench_in_process(tmp_path, *QUICK, "hyper_steps=40", "checkpoint.every=4", "mlflow.experiment=full")
    assert out.returncode == 1
    assert "FINISHED" not in out.stdout
    (run,) = runs(client_for(tmp_path), "full")
    assert run.info.status == "FAILED" and steps(client_for(tmp_path), run) == list(range(5))
    # the store has the run, FAILED, with every metric: the summary says so, and what is missing
    assert "hgbench run FAILED in" in out.stdout and "NOT RECORDED" not in out.stdout
    assert "recording failed at hyper-step 4 (hgbench.plugins.recorder.checkpoint: on_hyper_step: OSError: [Errno 28] No space left on device)" in out.stdout
    assert (f"  recorded: MLflow run {run.info.run_id} as FAILED, with every metric (its metrics up to hyper-step 4), tags and artifacts\n"
            "  NOT recorded: what hgbench.plugins.recorder.checkpoint writes (on_hyper_step: OSError: [Errno 28] No space left on device)") in out.stdout
    assert list((tmp_path / "checkpoints").iterdir()) == []  # no .tmp left behind
    assert len(out.stdout.splitlines()) + len(out.stderr.splitlines()) < 30


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:hgbench. plugin")
def test_a_full_disk_under_the_store_stops_the_run_with_bounded_output(tmp_path, mlflow_db, monkeypatch):
    from hgbench.store import MlflowRun

    real = MlflowRun.flush
    calls = []

    def flush(self):
        calls.append(1)
        if len(calls) > 1:  # the first batch (step 0) is written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self)

    monkeypatch.setattr(MlflowRun, "flush", flush)
    out = hgbench_in_process(tmp_path, *QUICK, "hyper_steps=400", "mlflow.flush_every_s=0", "mlflow.experiment=fullstore")
    assert out.returncode == 1
    assert "FINISHED" not in out.stdout and "hgbench run failed but NOT RECORDED in full" in out.stdout
    assert "recording failed at hyper-step 1 (hgbench.plugins.recorder.mlflow_recorder: on_hyper_step: OSError: [Errno 28] No space left on device)" in out.stdout
    # exactly what the store holds: the run (its status written at the end), step 0's metrics
    (run,) = runs(client_for(tmp_path), "fullstore")
    assert run.info.status == "FAILED" and steps(client_for(tmp_path), run) == [0]
    assert f"  recorded: MLflow run {run.info.run_id} as FAILED, with its metrics up to hyper-step 0\n" in out.stdout
    assert "  NOT recorded: " in out.stdout and "metric values, the end-of-run metrics, tags and artifacts — only in this output" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr
    assert len(out.stdout.splitlines()) + len(out.stderr.splitlines()) < 30


# --- 4. signals ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_sigterm_to_a_single_run_is_one_summary_and_exit_143(tmp_path, mlflow_db, monkeypatch):
    from hgbench.runner import Experiment

    real = Experiment.hyper_step

    def hyper_step(self, step):
        out = real(self, step)
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by hgbench's handler, as from `kill`
        return out

    monkeypatch.setattr(Experiment, "hyper_step", hyper_step)
    before = signal.getsignal(signal.SIGTERM)
    out = hgbench_in_process(tmp_path, *QUICK, "hyper_steps=50", "mlflow.experiment=term1")
    assert signal.getsignal(signal.SIGTERM) == before
    assert out.returncode == 143
    assert "Traceback" not in out.stdout + out.stderr
    assert "hgbench run KILLED" in out.stdout and "3/50 hyper-steps" in out.stdout
    assert "reason: received signal SIGTERM" in out.stdout
    (run,) = runs(client_for(tmp_path), "term1")
    assert run.info.status == "KILLED" and run.data.tags["hgbench.status"] == "interrupted"


@pytest.mark.slow
def test_sigterm_in_a_sequential_grid_stops_it_with_its_summary(tmp_path, mlflow_db, monkeypatch):
    from hgbench.runner import Experiment

    real = Experiment.hyper_step

    def hyper_step(self, step):
        out = real(self, step)
        if step == 2 and self.cfg.seed == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(Experiment, "hyper_step", hyper_step)
    out = hgbench_in_process(tmp_path, "-m", *QUICK, "hyper_steps=5", "seed=0,1,2", "mlflow.experiment=term3")
    assert out.returncode == 143
    assert "3 jobs — 1 finished, 1 killed, 1 not started" in out.stdout
    assert "#1   KILLED" in out.stdout and "seed=1 mlflow.experiment=term3    (received signal SIGTERM)" in out.stdout
    assert "#2   NOT_STARTED" in out.stdout and "(not started: the grid was stopped — received signal SIGTERM)" in out.stdout
    client = client_for(tmp_path)
    got = {r.data.params["seed"]: r for r in runs(client, "term3")}
    assert sorted((s, r.info.status) for s, r in got.items()) == [("0", "FINISHED"), ("1", "KILLED")]
    assert got["1"].data.tags["hgbench.status"] == "interrupted" and "SIGTERM" in got["1"].data.tags["hgbench.error"]

    monkeypatch.setattr(Experiment, "hyper_step", real)
    again = hgbench_in_process(tmp_path, "-m", *QUICK, "hyper_steps=5", "seed=0,1,2", "mlflow.experiment=term3")
    assert again.returncode == 0 and "3 jobs — 3 finished" in again.stdout  # the killed job and the one never started run now
    assert sorted(r.info.status for r in runs(client, "term3")) == ["FINISHED", "FINISHED", "FINISHED", "KILLED"]


@pytest.mark.slow
def test_sigterm_to_a_joblib_grid_ends_it_with_its_summary_and_no_process_left(tmp_path, mlflow_db):
    client = client_for(tmp_path)
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *QUICK, "hyper_steps=3000",
            "mlflow.flush_every_s=0.2", "seed=0,1,2", "mlflow.experiment=termgrid"]
    proc = subprocess.Popen([sys.executable, "-m", "hgbench.cli", *args], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        end = time.time() + 120
        while time.time() < end and sum(bool(r.data.metrics.get("hypergrad_norm")) for r in runs(client, "termgrid")) < 2:
            time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "3 jobs — 2 killed, 1 not started" in stdout
    assert sorted(r.info.status for r in runs(client, "termgrid")) == ["KILLED", "KILLED"]
    assert all(r.data.tags["hgbench.status"] == "interrupted" for r in runs(client, "termgrid"))
    time.sleep(1)
    assert session_processes(proc.pid) == [], "worker processes outlived the grid"


# --- 5, 6. what a job's fingerprint covers ---------------------------------------------------------

def test_the_thread_count_is_part_of_the_fingerprint():
    from hgbench.api import compose_config
    from hgbench.config import config_fingerprint, fingerprint

    cfg = compose_config(QUICK)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fingerprint(cfg)
        torch.set_num_threads(2)
        two = fingerprint(cfg)
    finally:
        torch.set_num_threads(threads)
    assert one != two and config_fingerprint(cfg) == config_fingerprint(compose_config(QUICK))


def test_the_sources_of_a_plugin_package_are_part_of_its_digest(tmp_path, monkeypatch):
    from hgbench.provenance import package_digest

    pkg = tmp_path / "my_plugin_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "method.py").write_text("SCALE = 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = package_digest("my_plugin_pkg")
    package_digest.cache_clear()
    (pkg / "method.py").write_text("SCALE = 2.0\n")  # edited in place, no version bump
    assert package_digest("my_plugin_pkg") != before
    package_digest.cache_clear()


@pytest.mark.slow
def test_a_finished_job_is_run_again_when_its_code_changed(tmp_path, mlflow_db, monkeypatch):
    import hgbench.config as config

    job = ["-m", *QUICK, "hyper_steps=2", "mlflow.experiment=code"]
    assert hgbench_in_process(tmp_path, *job).returncode == 0
    out = hgbench_in_process(tmp_path, *job)
    assert "already FINISHED" in out.stdout and "with the same code (hgbench 0.1.0, commit" in out.stdout
    (first,) = runs(client_for(tmp_path), "code")

    real = config.code_versions
    monkeypatch.setattr(config, "code_versions", lambda cfg: {**real(cfg), "hypergrad": "my-plugin==0.1.1 0123456789ab"})
    out = hgbench_in_process(tmp_path, *job)
    assert out.returncode == 0
    assert f"MLflow run {first.info.run_id} finished this configuration with other code" in out.stdout
    assert "already FINISHED" not in out.stdout
    assert [r.info.status for r in runs(client_for(tmp_path), "code")] == ["FINISHED", "FINISHED"]


def test_a_plugin_module_edited_in_place_changes_the_fingerprint_of_the_jobs_using_it_only(monkeypatch):
    """A built-in plugin's own code is hashed (its module and the built-in modules it imports):
    editing it (here: its digest as if a file changed) gives the jobs using it another
    fingerprint; editing a plugin a job does not use changes nothing for that job."""
    from hgbench import provenance
    from hgbench.api import compose_config
    from hgbench.config import fingerprint

    neumann, cg = compose_config(QUICK), compose_config([*QUICK, "hypergrad=cg"])
    before = fingerprint(neumann), fingerprint(cg)
    real = provenance.module_digest
    monkeypatch.setattr(provenance, "module_digest", lambda m, within: "edited" if m == "hgbench.plugins.hypergrad.neumann" else real(m, within))
    assert fingerprint(neumann) != before[0]
    assert fingerprint(cg) == before[1]


def test_a_plugin_digest_covers_the_modules_it_imports_and_no_other(tmp_path, monkeypatch):
    from hgbench.provenance import module_digest

    pkg = tmp_path / "my_builtins"
    (pkg / "kind").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "kind" / "__init__.py").write_text("")
    (pkg / "kind" / "_common.py").write_text("SCALE = 1.0\n")
    (pkg / "kind" / "mine.py").write_text("from my_builtins.kind._common import SCALE\nfrom . import helper\n")
    (pkg / "kind" / "helper.py").write_text("X = 1\n")
    (pkg / "kind" / "other.py").write_text("Y = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def digest():
        module_digest.cache_clear()
        return module_digest("my_builtins.kind.mine", "my_builtins")

    before = digest()
    (pkg / "kind" / "other.py").write_text("Y = 2\n")  # a plugin it does not import
    assert digest() == before
    for dep in ("_common.py", "helper.py", "mine.py"):  # itself, and what it imports (absolute, relative)
        (pkg / "kind" / dep).write_text((pkg / "kind" / dep).read_text() + "# edited\n")
        after = digest()
        assert after != before, dep
        before = after
    module_digest.cache_clear()
