"""Many jobs writing to ONE MLflow store at the same time: a fresh sqlite file (joblib and
submitit_local launchers) and a real ``mlflow server`` on 127.0.0.1 (the setup recommended for
many parallel writers / several machines). Every job must leave one complete run: status,
params, tags, every metric at every step, and its artifacts."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import assert_every_step_recorded, free_port, healthy
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

HYPER_STEPS = 3
TINY = ["dataset=digits", "model.hidden=[8]", f"hyper_steps={HYPER_STEPS}", "inner_steps=2", "eval_every=1",
        "dataset.train_size=100", "dataset.val_size=100"]
GRID = ["hypergrad=neumann,cg", "seed=0,1,2"]  # 6 jobs
EXPECTED = {(m, s) for m in ("neumann", "cg") for s in ("0", "1", "2")}

TAGS = ("hgbench.hypergrad", "hgbench.hyperparam", "hgbench.dataset", "hgbench.model", "hgbench.device",
        "hgbench.status", "hgbench.sweep_id", "hgbench.job_num", "hgbench.launcher",
        "mlflow.source.git.commit", "hgbench.torch_version")
PARAMS = ("seed", "hypergrad.name", "hyperparam.name", "dataset.name", "dataset.train_size", "hyper_steps",
          "inner_steps", "num_weights", "num_hyperparams")

SERVER_START_TIMEOUT_S = 60
NO_PROXY = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


def hgbench(cwd: Path, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, **NO_PROXY, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "hgbench.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def check_grid(out: subprocess.CompletedProcess, uri: str, launcher: str, expected=EXPECTED) -> tuple[MlflowClient, list]:
    """Exactly N runs, all FINISHED, each with every metric at every step, its params and tags."""
    N = len(expected)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert f"{N} jobs — {N} finished" in out.stdout, out.stdout[-3000:]
    assert "database is locked" not in out.stderr and "Traceback" not in out.stderr, out.stderr[-3000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("hgbench")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert len(runs) == N, f"{len(runs)} runs recorded for {N} jobs"
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {(r.data.params["hypergrad.name"], r.data.params["seed"]) for r in runs} == expected
    assert len({r.data.tags["hgbench.sweep_id"] for r in runs}) == 1
    assert sorted(int(r.data.tags["hgbench.job_num"]) for r in runs) == list(range(N))
    assert {r.data.tags["hgbench.launcher"] for r in runs} == {launcher}
    param_keys = {r.data.params["hypergrad.name"]: set(r.data.params) for r in runs}
    for r in runs:
        rid = r.info.run_id
        assert set(r.data.params) == param_keys[r.data.params["hypergrad.name"]], "every run of a method has its params"
        for key in PARAMS:
            assert r.data.params.get(key), (rid, key)
        assert r.data.params["dataset.train_size"] == "100" and r.data.params["hyper_steps"] == str(HYPER_STEPS)
        for key in TAGS:
            assert r.data.tags.get(key), (rid, key)
        assert r.data.tags["hgbench.status"] == "finished"
        assert_every_step_recorded(client, rid, HYPER_STEPS)
    return client, runs


@pytest.mark.parametrize("launcher,args,seeds", [
    ("joblib", ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], ("0", "1", "2")),
    # every job a fresh process, all started at once (the SLURM launcher's code path)
    ("submitit_local", ["hydra/launcher=submitit_local"], ("0",)),
])
def test_parallel_jobs_on_one_fresh_sqlite_store(tmp_path, launcher, args, seeds):
    assert not (tmp_path / "mlflow.db").exists()
    out = hgbench(tmp_path, "-m", *args, "hypergrad=neumann,cg", f"seed={','.join(seeds)}", *TINY)
    check_grid(out, f"sqlite:///{tmp_path / 'mlflow.db'}", launcher, {(m, s) for m in ("neumann", "cg") for s in seeds})


# --- a real tracking server -------------------------------------------------------------------
def stop(proc: subprocess.Popen) -> None:
    """End the server and its worker processes (its own process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
    else:  # the parent is gone; its workers may not be
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory, copy_store):
    """``mlflow server`` on 127.0.0.1:<free port>, sqlite backend (its schema already made:
    ``copy_store``), proxied artifacts; skipped with the reason when it does not come up in time;
    always stopped at the end."""
    if sys.platform == "win32":
        pytest.skip("the server fixture uses POSIX process groups")
    root = tmp_path_factory.mktemp("mlflow-server")
    copy_store(root / "srv.db")
    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent))
    base = [exe] if exe else [sys.executable, "-m", "mlflow"]
    env = {**os.environ, **NO_PROXY, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    reasons = []
    for attempt in range(2):  # a second port if the first was taken meanwhile
        port = free_port()
        log = root / f"server-{attempt}.log"
        cmd = [*base, "server", "--backend-store-uri", f"sqlite:///{root / 'srv.db'}",
               "--artifacts-destination", str(root / "art"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        with open(log, "wb") as fh:
            proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None and not healthy(port):
            time.sleep(0.5)
        if proc.poll() is None and healthy(port):
            try:
                yield {"uri": f"http://127.0.0.1:{port}", "root": root}
            finally:
                stop(proc)
            return
        stop(proc)
        tail = log.read_text(errors="replace")[-1500:]
        reasons.append(f"attempt {attempt + 1}: {'exited with ' + str(proc.returncode) if proc.returncode is not None else 'no answer'}"
                       f" within {SERVER_START_TIMEOUT_S} s; log tail:\n{tail}")
    pytest.skip("`mlflow server` could not be started on 127.0.0.1: " + "\n".join(reasons))


def test_parallel_jobs_against_a_tracking_server(tmp_path, mlflow_server):
    uri = mlflow_server["uri"]
    out = hgbench(tmp_path, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *GRID, *TINY,
                  f"mlflow.tracking_uri={uri}")
    client, runs = check_grid(out, uri, "joblib")
    assert not (tmp_path / "mlflow.db").exists(), "nothing was written to a local sqlite file"
    exp = client.get_experiment_by_name("hgbench")
    assert exp.artifact_location.startswith("mlflow-artifacts:"), "artifacts go through the server"
    stored = mlflow_server["root"] / "art"
    for r in runs:  # uploaded over HTTP, stored where the server keeps artifacts
        assert (stored / exp.experiment_id / r.info.run_id / "artifacts" / "config.yaml").is_file()
        assert "hgbench.sweep_id" in r.data.tags
