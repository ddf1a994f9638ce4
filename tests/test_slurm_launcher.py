"""``hydra/launcher=slurm`` on every machine: fake ``sbatch``, ``srun``, ``sinfo``, ``sacct`` and
``squeue`` scripts first on PATH stand for the cluster (tests/test_cluster.py runs the same
launcher on a real one). What they check is hgbench's: a refused submission is one line naming
the setting (exit 2); a job that SLURM ends without a result is a line of the summary; without
sacct the jobs are followed with squeue, said once."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import run_cli

from hgbench import submitit_slurm

GRID = ["hypergrad=neumann,cg", "experiment=quick", "mlflow.enabled=false"]


def fake_slurm(folder: Path, monkeypatch, **scripts: str) -> Path:
    """Each ``name=body`` as an executable shell script ``folder/bin/name`` that also logs its
    arguments to ``folder/calls.log``; that bin folder alone on PATH (no real SLURM command is
    found, whatever this machine has)."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    for name, body in {"srun": "exit 0", **scripts}.items():
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\necho "{name} $*" >> "{folder}/calls.log"\n{body}\n')
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(bin_dir))
    return folder / "calls.log"


def calls(log: Path, name: str) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith(f"{name} ")] if log.exists() else []


def test_a_partition_sbatch_refuses_is_one_line_naming_the_setting(tmp_path, monkeypatch):
    log = fake_slurm(tmp_path, monkeypatch,
                     sbatch='echo "sbatch: error: Batch job submission failed: Invalid partition name specified" >&2; exit 1',
                     sinfo='echo "debug*"; echo gpu')
    code, out, err = run_cli(monkeypatch, tmp_path, "-m", "hydra/launcher=slurm_cpu", "hydra.launcher.partition=nosuch", *GRID)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (code, out[-2000:], err[-3000:])
    assert len(calls(log, "sbatch")) == 1, "the refusal is sbatch's own, through submitit"
    assert lines[0].startswith("hgbench: error: hydra.launcher.partition=nosuch: SLURM has no such partition")
    assert "Invalid partition name specified" in lines[0] and "partitions: debug (default), gpu" in lines[0]
    assert not list(tmp_path.glob("**/hgbench_result.json")), "no job ran"
    assert "HGBENCH_SWEEP_ID" not in os.environ


def test_no_sbatch_on_path_is_one_line_before_anything_is_submitted(tmp_path, monkeypatch):
    log = fake_slurm(tmp_path, monkeypatch, sinfo="echo debug")
    (tmp_path / "bin" / "srun").unlink()  # neither sbatch nor srun
    code, out, err = run_cli(monkeypatch, tmp_path, "-m", "hydra/launcher=slurm", *GRID)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (code, out[-2000:], err[-3000:])
    assert "hydra/launcher=slurm: sbatch and srun not found on PATH" in lines[0] and "hydra/launcher=joblib" in lines[0]
    assert not calls(log, "sinfo") and "HGBENCH_SWEEP_ID" not in os.environ


SACCT_OFF = 'echo "sacct: error: Slurm accounting storage is disabled" >&2; exit 1'


@pytest.mark.slow
@pytest.mark.parametrize("sacct", [SACCT_OFF, None], ids=["accounting-off", "no-sacct"])
def test_a_job_slurm_ends_without_a_result_is_a_line_of_the_summary_and_no_sacct_is_said_once(tmp_path, monkeypatch, sacct):
    """Accepted (array job 4242), never run: squeue says PENDING twice, then CANCELLED; sacct
    fails as on a cluster without accounting, or is not installed."""
    monkeypatch.setattr(submitit_slurm, "RESULT_GRACE_S", 0.0)
    monkeypatch.setattr(submitit_slurm, "POLL_MAX_S", 0.0)  # read the states at every check (1 s)
    count = tmp_path / "squeue.count"  # shell builtins only: nothing else is on PATH
    squeue = (f'n=0; [ -f "{count}" ] && read n < "{count}"; n=$((n + 1)); echo $n > "{count}"\n'
              'if [ $n -le 2 ]; then echo "4242_[0-1]|PENDING|"; else echo "4242_0|CANCELLED|"; echo "4242_1|CANCELLED|node1"; fi')
    scripts = {"sbatch": 'echo "Submitted batch job 4242"', "squeue": squeue, **({"sacct": sacct} if sacct else {})}
    log = fake_slurm(tmp_path, monkeypatch, **scripts)
    code, out, err = run_cli(monkeypatch, tmp_path, "-m", "hydra/launcher=slurm_cpu", *GRID)
    assert code == 0 and "Traceback" not in err, (code, out[-3000:], err[-3000:])
    assert "2 jobs — 2 killed" in out, out[-3000:]
    assert out.count("ended without a result (state CANCELLED)") == 2 and "SLURM job 4242_1" in out
    assert len(calls(log, "sacct")) == (1 if sacct else 0) and len(calls(log, "squeue")) == 3, log.read_text()
    why = "sacct: error: Slurm accounting storage is disabled" if sacct else "No such file or directory: 'sacct'"
    assert err.count("sacct is not available on this cluster") == 1 and why in err, err
    assert "Bypassing sacct error" not in out + err
    script = next(tmp_path.glob("multirun/*/*/.submitit/*/*_submission.sh")).read_text()
    assert "#SBATCH --array=0-1%" in script and "gpus" not in script, "the slurm_cpu preset's settings reach sbatch"


# sbatch and srun that run an array job's tasks on this machine, one after the other, in the
# background, with the environment SLURM gives a task: the launcher's whole path, job side too
RUNNING_SBATCH = f"""#!{sys.executable}
import os, re, subprocess, sys
script = sys.argv[-1]
text = open(script).read()
m = re.search(r"^#SBATCH --array=0-(\\d+)", text, re.M)
job, tasks = "4300", int(m.group(1)) + 1 if m else 1
runs = []
for i in range(tasks):
    env = dict(os.environ, SLURM_JOB_ID=str(4301 + i), SLURM_ARRAY_JOB_ID=job, SLURM_ARRAY_TASK_ID=str(i),
               SLURM_NTASKS="1", SLURM_JOB_NUM_NODES="1", SLURM_NODEID="0", SLURM_JOB_NODELIST="localhost",
               SLURM_PROCID="0", SLURM_LOCALID="0")
    log = lambda key: re.search(rf"^#SBATCH --{{key}}=(.*)$", text, re.M).group(1).replace("%A", job).replace("%a", str(i))
    runs.append((env, log("output"), log("error")))
if os.fork() == 0:  # sbatch returns at once: the tasks run detached, their output in their logs
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    for env, out, err in runs:
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "w") as o, open(err, "w") as e:
            subprocess.run(["/bin/bash", script], env=env, stdout=o, stderr=e, stdin=subprocess.DEVNULL, check=False)
    os._exit(0)
print(f"Submitted batch job {{job}}")
"""
RUNNING_SRUN = f"""#!{sys.executable}
import os, sys
args = sys.argv[1:]
while args and args[0].startswith("-"):
    args = args[2:] if args[0] in ("--output", "--error", "-o", "-e") else args[1:]
os.execvp(args[0], args)
"""


@pytest.mark.slow
def test_a_grid_runs_through_the_slurm_launcher_and_every_result_is_collected(tmp_path, monkeypatch):
    """Without sacct or squeue (states unknown), the results are collected as their files appear."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", RUNNING_SBATCH), ("srun", RUNNING_SRUN)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    code, out, err = run_cli(monkeypatch, tmp_path, "-m", "hydra/launcher=slurm_cpu", *GRID)
    logs = "".join(p.read_text() for p in tmp_path.glob("multirun/*/*/.submitit/*/*_log.err"))
    assert code == 0 and "Traceback" not in err, (code, out[-3000:], err[-3000:], logs[-3000:])
    assert "2 jobs — 2 finished" in out, out[-3000:] + logs[-3000:]
    assert err.count("sacct is not available on this cluster") == 1
    assert sorted(p.parent.name for p in tmp_path.glob("multirun/*/*/.submitit/*/*_result.pkl")) == ["4300_0", "4300_1"]


class FakeJob:
    """A submitted job as ``collect`` sees it: its id, paths, result and submission."""

    def __init__(self, folder: Path, job_id: str, num: int, result_after: int | None):
        self.job_id, self.num, self.result_after, self.checks = job_id, num, result_after, 0
        folder.mkdir(parents=True)
        self.paths = SimpleNamespace(folder=folder, stderr=folder / "log.err", result_pickle=self)

    def exists(self) -> bool:  # stands for paths.result_pickle.exists()
        self.checks += 1
        return self.result_after is not None and self.checks > self.result_after

    def results(self):
        return [f"result of #{self.num}"]

    def submission(self):
        return SimpleNamespace(args=([f"seed={self.num}"], "hydra.sweep.dir", self.num))


def test_collect_keeps_every_result_in_order_when_one_job_is_lost(tmp_path, monkeypatch):
    monkeypatch.setattr(submitit_slurm, "RESULT_GRACE_S", 0.0)
    jobs = [FakeJob(tmp_path / "0", "7_0", 0, result_after=3), FakeJob(tmp_path / "1", "7_1", 1, result_after=None),
            FakeJob(tmp_path / "2", "7_2", 2, result_after=0)]
    states = SimpleNamespace(read=lambda ids: {"7_0": "RUNNING", "7_1": "OUT_OF_MEMORY", "7_2": "COMPLETED"})
    slept: list[float] = []
    got = submitit_slurm.collect(jobs, states, sleep=slept.append)
    assert got[0] == "result of #0" and got[2] == "result of #2"
    assert got[1].overrides == ["seed=1"] and got[1].return_value is None
    from hgbench.callbacks import read_job_results

    [lost] = read_job_results(tmp_path)
    assert lost["status"] == "KILLED" and lost["job_num"] == 1 and "state OUT_OF_MEMORY" in lost["error"]
    assert len(slept) == 3, "polled until the last result appeared"


@pytest.mark.parametrize(("stderr", "expected"), [
    ("sbatch: error: Batch job submission failed: Requested time limit is invalid (missing or exceeds some limit)",
     "hydra.launcher.timeout_min=120"),
    ("sbatch: error: Batch job submission failed: Requested node configuration is not available", "hydra.launcher.mem_gb=16"),
    ("sbatch: error: Batch job submission failed: Invalid account", "hydra.launcher.account"),
    ("sbatch: error: Invalid generic resource (gres) specification", "hydra.launcher.gpus_per_node=1: partition 'gpu' has no GPU"),
])
def test_sbatch_messages_name_the_setting(stderr, expected):
    p = {"partition": "gpu", "gpus_per_node": 1, "cpus_per_task": 4, "mem_gb": 16, "timeout_min": 120}
    assert expected in submitit_slurm.sbatch_error_message(stderr, p)


def test_slurm_states_parse_array_ranges_and_skip_steps():
    table = "JobID|State|NodeList\n12_0|RUNNING|n1\n12_[1-3%2]|PENDING|\n12_0.batch|RUNNING|n1\n13|CANCELLED by 0|"
    assert submitit_slurm.parse_states(table) == {"12_0": "RUNNING", "12_1": "PENDING", "12_2": "PENDING", "12_3": "PENDING",
                                                  "13": "CANCELLED by 0"}
