"""What the MLflow store already knows about a job: for resuming interrupted grids.

A job is identified by its fingerprint (``framework.config.fingerprint``: the resolved config
and seed, without recording options), recorded as the tag ``hgbench.fingerprint``. Relaunching a
grid then:
- skips a job that already FINISHED (``resume: true``; ``auto`` = in grids only);
- does not start a job that is RUNNING right now in a live process;
- marks a run left RUNNING by a dead process (same host: its pid is gone; another host: no
  metric for ``resume_stale_after_s``) as interrupted (MLflow status KILLED), and reruns the job,
  from the latest checkpoint of an interrupted run if there is one.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHECKPOINT_ARTIFACT_DIR = "checkpoint"


@dataclass
class Previous:
    finished: list[Any] = field(default_factory=list)
    running: list[Any] = field(default_factory=list)  # alive, elsewhere
    interrupted: list[Any] = field(default_factory=list)  # orphaned or KILLED, newest first


def _alive(run, stale_after_s: float, client) -> bool:
    tags = run.data.tags
    if tags.get("hgbench.host") == platform.node() and tags.get("hgbench.pid", "").isdigit():
        pid = int(tags["hgbench.pid"])
        if pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    history = client.get_metric_history(run.info.run_id, "elapsed_s")
    last = max([m.timestamp for m in history] + [run.info.start_time or 0]) / 1000
    return time.time() - last < stale_after_s


def previous_runs(uri: str, experiment: str, fp: str, stale_after_s: float = 900) -> Previous:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    prev = Previous()
    if exp is None:
        return prev
    runs = client.search_runs([exp.experiment_id], f"tags.`hgbench.fingerprint` = '{fp}'", max_results=1000, order_by=["attributes.start_time DESC"])
    for run in runs:
        status = run.info.status
        if status == "FINISHED" and run.data.tags.get("hgbench.status", "finished") == "finished":
            prev.finished.append(run)
        elif status == "RUNNING":
            if _alive(run, stale_after_s, client):
                prev.running.append(run)
            else:
                mark_interrupted(client, run, "its process is gone (killed?)")
                prev.interrupted.append(run)
        elif status == "KILLED" and run.data.tags.get("hgbench.status") == "interrupted":
            prev.interrupted.append(run)
    return prev


def mark_interrupted(client, run, why: str) -> None:
    client.set_tag(run.info.run_id, "hgbench.status", "interrupted")
    client.set_tag(run.info.run_id, "hgbench.error", f"interrupted: {why}")
    client.set_terminated(run.info.run_id, "KILLED")


def latest_checkpoint(uri: str, runs: list[Any]) -> tuple[Any, Path] | None:
    """The newest interrupted run with a readable checkpoint (local file, else its artifact)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    for run in runs:
        path = run.data.tags.get("hgbench.checkpoint")
        if path and Path(path).is_file():
            return run, Path(path)
        if path:
            try:
                dst = client.download_artifacts(run.info.run_id, f"{CHECKPOINT_ARTIFACT_DIR}/{Path(path).name}", tempfile.mkdtemp())
                return run, Path(dst)
            except Exception:
                continue
    return None
