"""The MLflow store: where it is, the experiment, one run's buffered writes, and what the store
already knows about a job (for resuming interrupted grids). Every MLflow store access of
hgbench goes through this module (the recorder plugin, the CLI's checks, the sweep callback, the
report); ``mlflow`` itself is imported lazily (it takes seconds).

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

from framework.errors import StoreError

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

CHECKPOINT_ARTIFACT_DIR = "checkpoint"
# hgbench's run status -> MLflow's (a skipped run is "KILLED" there, with tag hgbench.status=skipped)
MLFLOW_STATUS = {"FINISHED": "FINISHED", "FAILED": "FAILED", "SKIPPED": "KILLED", "KILLED": "KILLED"}


def resolve_tracking_uri(configured: str | None = None) -> str:
    """Config value, else $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db (absolute)."""
    if configured:
        return str(configured)
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(Path.cwd() / 'mlflow.db').resolve()}"


UI_PORT = 5000  # mlflow ui's default port


def browse_lines(uri: str, experiment_id: str | None) -> list[str]:
    """How to look at an experiment's runs, as commands that work in a fresh shell: the UI (for a
    sqlite store, ``mlflow ui`` from this environment, bound to 127.0.0.1) and the link that opens
    the runs table itself — MLflow 3 otherwise opens an experiment in its GenAI view."""
    if uri.startswith(("http://", "https://")):
        base, start = uri.rstrip("/"), []
    else:
        import sys

        exe = Path(sys.executable).with_name("mlflow")
        mlflow_cmd = str(exe) if exe.exists() else "mlflow"
        base = f"http://127.0.0.1:{UI_PORT}"
        start = [f"browse it: {mlflow_cmd} ui --backend-store-uri {uri} --host 127.0.0.1 --port {UI_PORT}"]
    link = base if experiment_id is None else f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    return start + [f"{'then open' if start else 'browse it: open'} {link}"]


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def ensure_experiment(uri: str, name: str) -> str:
    """Create the store's schema and the experiment once (call it before parallel jobs start)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    db = sqlite_path(uri)
    location = (db.parent / "mlartifacts" / name).as_uri() if db else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created meanwhile by a parallel job
        return client.get_experiment_by_name(name).experiment_id


def check_store(uri: str, name: str) -> str:
    """``ensure_experiment`` with few HTTP retries and a short timeout: a pre-flight check that
    a wrong address or missing credentials fail in seconds, not after minutes of retries.
    Raises ``StoreError``."""
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
             "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
    saved = {k: os.environ.get(k) for k in quick}
    os.environ.update({k: v for k, v in quick.items() if saved[k] is None})
    try:
        return ensure_experiment(uri, name)
    except Exception as exc:
        raise StoreError(f"cannot use the MLflow store at {uri}: {type(exc).__name__}: {str(exc)[:300]}") from exc
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


class MlflowRun:
    """One MLflow run: buffered metric logging through ``MlflowClient`` (no global state)."""

    def __init__(self, cfg, tags: dict[str, str], params: dict[str, Any], default_name: str | None = None):
        from mlflow.tracking import MlflowClient

        self.uri = resolve_tracking_uri(cfg.tracking_uri)
        self.experiment = str(cfg.experiment)
        self.flush_every_s = float(cfg.flush_every_s)
        self.client = MlflowClient(self.uri)
        self.experiment_id = ensure_experiment(self.uri, self.experiment)
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=cfg.run_name or default_name)
        self.run_id = run.info.run_id
        self.log_params(params)
        self._buffer: list = []
        self._last_flush = time.monotonic()

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100], synchronous=True)

    def log_metrics(self, metrics: dict[str, float], step: int, force: bool = False) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._buffer += [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        if force or time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        for i in range(0, len(self._buffer), 1000):
            self.client.log_batch(self.run_id, metrics=self._buffer[i : i + 1000], synchronous=True)
        self._buffer = []
        self._last_flush = time.monotonic()


def copy_history(rec: MlflowRun, old_run_id: str, upto_step: int) -> None:
    """A run resumed from a checkpoint starts with its predecessor's metrics up to that step,
    so the new run alone holds the whole history."""
    from mlflow.entities import Metric

    old = rec.client.get_run(old_run_id)
    metrics = []
    for key in old.data.metrics:
        metrics += [Metric(m.key, m.value, m.timestamp, m.step)
                    for m in rec.client.get_metric_history(old_run_id, key) if m.step <= upto_step]
    for i in range(0, len(metrics), 1000):
        rec.client.log_batch(rec.run_id, metrics=metrics[i : i + 1000], synchronous=True)


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
