"""Scale-out for real: grids through ``hydra/launcher=slurm_cpu`` on a real one-node SLURM
cluster (munge, slurmctld, slurmd from Debian's packages; accounting off, as on many small
clusters), recording to an ``mlflow server`` backed by a real PostgreSQL — the README's recipes,
started by the tests (tests/cluster.py) and stopped after. Skipped, with the install command,
where the packages are missing; ``.ci/run`` installs them.

One grid of 4 jobs (an array job, 2 at a time) serves the recording, failure and report tests;
a second, one-job grid is cancelled with scancel and resumed. sbatch's refusals are one line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import cluster as cluster_mod
import pytest
from helpers import assert_every_step_recorded, run_cli
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

HYPER_STEPS = 3
TINY = ["dataset=digits", "model.hidden=[8]", f"hyper_steps={HYPER_STEPS}", "inner_steps=2", "eval_every=1",
        "dataset.train_size=100", "dataset.val_size=100", "num_threads=1"]
LRS = ("0.1",)
DIVERGING_LR = "1000000.0"  # the inner weights blow up: the hypergradient is not finite at hyper-step 1
GRID = ["hypergrad=neumann,cg", f"inner_optimizer.lr={','.join(LRS)},1e6"]  # 4 jobs, 2 diverge: two waves of PARALLEL
PARALLEL = 2  # array_parallelism; the node has 4 CPUs for the jobs' 1 each, so SLURM alone would run 4
ON_THE_NODE = ["hydra/launcher=slurm_cpu", f"hydra.launcher.partition={cluster_mod.PARTITION}",
               "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", f"hydra.launcher.array_parallelism={PARALLEL}"]



@pytest.fixture(scope="module")
def cluster():
    """The SLURM cluster and the PostgreSQL-backed server, started once for this file and always
    stopped after it (module scope: nothing of them outlives the file on its test worker)."""
    try:
        cluster_mod.check_available()
    except cluster_mod.ClusterUnavailable as exc:
        pytest.skip(str(exc))
    with cluster_mod.started(cpus=2 * PARALLEL) as c:
        yield c


@pytest.fixture
def slurm_env(cluster, monkeypatch):
    """This process's environment as a user's on the cluster: sbatch finds the cluster's config;
    MLflow reaches the server directly."""
    for k, v in {**cluster["slurm"].env, **cluster_mod.NO_PROXY}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return cluster


def hgbench_env(cluster) -> dict:
    env = {**os.environ, **cluster["slurm"].env, **cluster_mod.NO_PROXY, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def hgbench_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "hgbench.cli", *args]


def runs_of(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)


def submitted(cwd: Path) -> list[Path]:
    """The sbatch scripts submitit wrote for the grids launched in ``cwd``."""
    return sorted(cwd.glob("multirun/*/*/.submitit/*/*_submission.sh"))


# --- one grid on the cluster ------------------------------------------------------------------
@pytest.fixture(scope="module")
def grid(cluster, tmp_path_factory):
    """``hgbench -m hydra/launcher=slurm_cpu ...`` as a user types it, from a folder that is not
    the project's, recording to the server: 2 methods × 2 inner learning rates, of which 1e6
    diverges in both methods."""
    cwd = tmp_path_factory.mktemp("slurm-grid")
    uri = cluster["mlflow"].uri
    out = subprocess.run(hgbench_cmd("-m", *ON_THE_NODE, *GRID, *TINY, f"mlflow.tracking_uri={uri}", "mlflow.experiment=slurm"),
                         check=False, cwd=cwd, env=hgbench_env(cluster), capture_output=True, text=True, timeout=400)
    return {"out": out, "cwd": cwd, "uri": uri, "runs": runs_of(uri, "slurm")}


def test_a_grid_on_slurm_records_every_job_in_the_postgres_backed_server(grid, cluster):
    out, runs, uri = grid["out"], grid["runs"], grid["uri"]
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]  # the diverged jobs failed
    assert "4 jobs — 2 failed, 2 finished" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    # N jobs launched = N runs, one sweep, every job number, the launcher that ran them
    assert len(runs) == 4
    assert len({r.data.tags["hgbench.sweep_id"] for r in runs}) == 1
    assert sorted(int(r.data.tags["hgbench.job_num"]) for r in runs) == list(range(4))
    assert {r.data.tags["hgbench.launcher"] for r in runs} == {"submitit_slurm"}
    assert {(r.data.params["hypergrad.name"], r.data.params["inner_optimizer.lr"]) for r in runs} == \
        {(m, lr) for m in ("neumann", "cg") for lr in (*LRS, DIVERGING_LR)}
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("slurm")
    assert exp.artifact_location.startswith("mlflow-artifacts:"), "artifacts go through the server"
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len(finished) == 2 and {r.data.params["inner_optimizer.lr"] for r in finished} == set(LRS)
    for r in finished:
        rid = r.info.run_id
        assert r.data.tags["hgbench.status"] == "finished" and r.data.params["hyper_steps"] == str(HYPER_STEPS)
        assert_every_step_recorded(client, rid, HYPER_STEPS)
        # uploaded over HTTP, stored where the server keeps artifacts
        assert (cluster["mlflow"].artifacts / exp.experiment_id / rid / "artifacts" / "config.yaml").is_file()


def test_a_job_that_diverges_inside_slurm_is_failed_with_its_reason(grid):
    out, runs = grid["out"], grid["runs"]
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert sorted(r.data.params["hypergrad.name"] for r in failed) == ["cg", "neumann"]
    for r in failed:
        assert r.data.params["inner_optimizer.lr"] == DIVERGING_LR
        step = r.data.tags["hgbench.failed_step"]
        assert step in ("1", "2", "3")
        assert "DivergenceError" in r.data.tags["hgbench.error"] and f"not finite at hyper-step {step}" in r.data.tags["hgbench.error"]
    lines = [line for line in out.stdout.splitlines() if re.match(r"\s+#\d+\s+FAILED", line)]
    assert len(lines) == 2 and all("inner_optimizer.lr=1000000.0" in line and "is not finite at hyper-step" in line for line in lines)


def test_the_array_job_honours_array_parallelism_and_starts_from_any_folder(grid):
    cwd, runs = grid["cwd"], grid["runs"]
    [script] = submitted(cwd)  # one array job for the whole grid
    text = script.read_text()
    assert f"#SBATCH --array=0-3%{PARALLEL}" in text and f"#SBATCH --partition={cluster_mod.PARTITION}" in text
    assert "gpus" not in text and "gres" not in text, "slurm_cpu asks for no GPU"
    # the setup line: the submitting Python's environment by its absolute path, not .venv/bin/activate
    assert f'export PATH="{Path(sys.executable).parent}:$PATH"' in text and "activate" not in text
    for log in cwd.glob("multirun/*/*/.submitit/*/*_log.err"):
        assert "No such file" not in log.read_text(), log
    # never more than PARALLEL jobs running at once (the runs' own start and end times)
    events = sorted([(r.info.start_time, 1) for r in runs] + [(r.info.end_time, -1) for r in runs])
    running, most = 0, 0
    for _, change in events:
        running += change
        most = max(most, running)
    assert 1 <= most <= PARALLEL


def test_without_sacct_the_jobs_are_followed_quietly(grid):
    """Accounting is off on this cluster (as on many small ones): said once, not at every poll."""
    out = grid["out"]
    both = out.stdout + out.stderr
    assert out.stderr.count("sacct is not available on this cluster") == 1, out.stderr[-3000:]
    assert "Bypassing sacct error" not in both and both.count("accounting storage is disabled") == 1


def test_the_report_reads_the_grid_from_the_server(grid, tmp_path):
    from hgbench.report import main as report

    rc = report(["--tracking-uri", grid["uri"], "--experiment", "slurm", "--out-dir", str(tmp_path), "--name", "slurm"])
    assert rc == 0
    text = (tmp_path / "slurm" / "summary.md").read_text()
    assert f"- store: `{grid['uri']}`" in text and "- experiments: `slurm`" in text
    rows = [line for line in text.split("## Runs not aggregated")[0].splitlines() if line.startswith("| ") and ("neumann" in line or " cg " in line)]
    assert len(rows) == 4, text  # one row per method × learning rate
    assert "DivergenceError" in text.split("## Runs not aggregated", 1)[1]
    assert (tmp_path / "slurm" / "metrics.csv").is_file()


# --- scancel, then the rerun resumes ------------------------------------------------------------
def test_scancel_leaves_the_run_interrupted_and_the_rerun_resumes_it(slurm_env, tmp_path, monkeypatch):
    """A one-job grid, scancel'ed once its first checkpoint is written (by a thread of this test,
    while the grid runs in this process), then the same command again."""
    uri, steps = slurm_env["mlflow"].uri, 400
    job = ["-m", *ON_THE_NODE, "hypergrad=neumann", "seed=7", "dataset=digits", "model.hidden=[8]", "inner_steps=2",
           f"hyper_steps={steps}", "eval_every=200", "checkpoint.every=20", "dataset.train_size=100",
           "dataset.val_size=100", "num_threads=1", f"mlflow.tracking_uri={uri}", "mlflow.experiment=slurm-cancel"]
    cancelled: list = []

    def cancel_after_the_first_checkpoint():
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not list(tmp_path.glob("checkpoints/*.pt")):
            time.sleep(0.1)
        job_ids = [d.name for d in tmp_path.glob("multirun/*/*/.submitit/*") if d.name.isdigit()]
        cancelled.append((job_ids, slurm_env["slurm"].run("scancel", *job_ids) if job_ids else None))

    canceller = threading.Thread(target=cancel_after_the_first_checkpoint, daemon=True)
    canceller.start()
    code, stdout, stderr = run_cli(monkeypatch, tmp_path, *job)
    canceller.join(timeout=60)
    [(job_ids, scancel)] = cancelled
    assert len(job_ids) == 1 and scancel.returncode == 0, (job_ids, scancel)
    assert "1 jobs — 1 killed" in stdout and "received signal SIGTERM" in stdout, stdout[-3000:] + stderr[-3000:]
    assert code == 0 and "Traceback" not in stderr, stderr[-3000:]
    [killed] = runs_of(uri, "slurm-cancel")
    assert killed.info.status == "KILLED" and killed.data.tags["hgbench.status"] == "interrupted"
    at = int(killed.data.tags["hgbench.checkpoint_step"])
    assert 20 <= at < steps

    again_code, again_out, again_err = run_cli(monkeypatch, tmp_path, *job)  # the same command, again
    assert again_code == 0, again_out[-3000:] + again_err[-3000:]
    assert "1 jobs — 1 finished" in again_out
    runs = {r.info.status: r for r in runs_of(uri, "slurm-cancel")}
    assert sorted(runs) == ["FINISHED", "KILLED"], "the killed run is kept, one new run finishes it"
    resumed = runs["FINISHED"]
    assert resumed.data.tags["hgbench.resumed_from"] == killed.info.run_id
    assert resumed.data.tags["hgbench.resumed_at_step"] == str(at)
    hist = MlflowClient(uri).get_metric_history(resumed.info.run_id, "hypergrad_norm")
    assert sorted(m.step for m in hist) == list(range(1, steps + 1)), "every step once: before and after the cancel"


def test_a_job_that_slurm_ends_without_a_result_is_a_line_of_the_summary(slurm_env, tmp_path, monkeypatch):
    """Queued to begin in an hour (sbatch --begin), then scancel'ed before it ever started: no
    result, no MLflow run — the grid says so in its summary and ends, instead of submitit's
    traceback."""
    from hgbench import submitit_slurm

    monkeypatch.setattr(submitit_slurm, "RESULT_GRACE_S", 1.0)  # the wait for a result on a slow shared filesystem
    cancelled: list = []

    def cancel_once_queued():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not cancelled:
            ids = [d.name for d in tmp_path.glob("multirun/*/*/.submitit/*") if d.name.isdigit()]
            if ids:
                cancelled.append(slurm_env["slurm"].run("scancel", *ids))
            time.sleep(0.2)

    canceller = threading.Thread(target=cancel_once_queued, daemon=True)
    canceller.start()
    code, out, err = run_cli(monkeypatch, tmp_path, "-m", "hydra/launcher=slurm_cpu", f"hydra.launcher.partition={cluster_mod.PARTITION}",
                             "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "+hydra.launcher.additional_parameters.begin=now+1hour",
                             "hypergrad=neumann", "experiment=quick", "mlflow.enabled=false")
    canceller.join(timeout=10)
    assert cancelled and cancelled[0].returncode == 0
    assert code == 0 and "Traceback" not in err, err[-3000:]
    assert "1 jobs — 1 killed" in out and "ended without a result (state CANCELLED)" in out, out[-3000:]


# --- sbatch's refusals: one line naming the setting, exit 2 ----------------------------------------
def refused(cwd, monkeypatch, *args):
    code, out, err = run_cli(monkeypatch, cwd, "-m", *args, "hypergrad=neumann,cg", "experiment=quick", "mlflow.enabled=false")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("hgbench: error: "), (code, out[-2000:], err[-3000:])
    assert not list(cwd.glob("**/hgbench_result.json")), "no job ran"
    assert "HGBENCH_SWEEP_ID" not in os.environ
    return lines[0]


def job_ids(slurm) -> set[str]:
    return set(slurm.run("squeue", "-h", "-t", "all", "-o", "%A").stdout.split())


def test_no_such_partition_is_one_line(slurm_env, tmp_path, monkeypatch):
    before = job_ids(slurm_env["slurm"])
    line = refused(tmp_path, monkeypatch, "hydra/launcher=slurm_cpu", "hydra.launcher.partition=nosuch")
    assert "hydra.launcher.partition=nosuch: SLURM has no such partition" in line
    assert f"partitions: {cluster_mod.PARTITION} (default)" in line
    assert job_ids(slurm_env["slurm"]) == before, "nothing was queued"


def test_a_gpu_on_nodes_without_one_is_one_line(slurm_env, tmp_path, monkeypatch):
    before = job_ids(slurm_env["slurm"])
    line = refused(tmp_path, monkeypatch, "hydra/launcher=slurm", f"hydra.launcher.partition={cluster_mod.PARTITION}")
    assert job_ids(slurm_env["slurm"]) == before, "nothing was queued"
    assert f"hydra.launcher.gpus_per_node=1: partition '{cluster_mod.PARTITION}' has no GPU" in line
    assert "hydra/launcher=slurm_cpu" in line and "hydra.launcher.gpus_per_node=0" in line


def test_no_sbatch_on_path_is_one_line(tmp_path, monkeypatch):
    """Needs no cluster: a machine without slurm-client."""
    monkeypatch.setenv("PATH", str(tmp_path))
    line = refused(tmp_path, monkeypatch, "hydra/launcher=slurm")
    assert "sbatch and srun not found on PATH" in line and "apt-get install slurm-client" in line
    assert "hydra/launcher=submitit_local" in line


def test_sbatch_messages_name_the_setting():
    from hgbench.submitit_slurm import sbatch_error_message

    p = {"partition": "gpu", "gpus_per_node": 1, "cpus_per_task": 4, "mem_gb": "16", "timeout_min": 120}
    assert "hydra.launcher.timeout_min=120" in sbatch_error_message(
        "sbatch: error: Batch job submission failed: Requested time limit is invalid (missing or exceeds some limit)", p)
    assert "hydra.launcher.mem_gb=16" in sbatch_error_message(
        "sbatch: error: Batch job submission failed: Requested node configuration is not available", p)
    line = sbatch_error_message("sbatch: error: Batch job submission failed: Requested node configuration is not available",
                                {**p, "gpus_per_node": None})
    assert "cpus_per_task=4, hydra.launcher.mem_gb=16 (" in line and "gpus_per_node" not in line.split("(")[0]
    assert "hydra.launcher.account" in sbatch_error_message("sbatch: error: Batch job submission failed: Invalid account", p)
    assert "hydra.launcher.partition is not set" in sbatch_error_message(
        "sbatch: error: Batch job submission failed: No partition specified or system default partition", {**p, "partition": None})
