"""Records every run in MLflow, through the run-lifecycle hooks.

- params: every resolved config value (dotted keys), ``num_weights``, ``num_hyperparams``;
- metrics, with step = hyper-step: losses/accuracies on eval steps, ``hypergrad_norm``,
  ``hypergrad_time_s``, ``inner_time_s``, ``elapsed_s``; at the end ``runtime_s`` and
  ``peak_memory_mb`` (see ``framework.memory`` for what is measured on CPU vs CUDA);
- tags: the plugins used (``hgbench.<kind>``), device, versions, ``mlflow.source.git.commit``,
  ``hgbench.status`` and, when a run fails or is skipped, ``hgbench.error`` / ``hgbench.skip_reason``;
- artifacts: the composed ``config.yaml`` (and ``error.txt`` with the traceback of a failure).

Where: ``mlflow.tracking_uri`` in config, else ``$MLFLOW_TRACKING_URI``, else a sqlite file
``mlflow.db`` in the launch directory (absolute path; artifacts beside it in ``mlartifacts/``).
Metrics are buffered and written in batches every ``mlflow.flush_every_s`` seconds.
"""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from framework import hookimpl
from framework.config import flatten

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

MLFLOW_STATUS = {"FINISHED": "FINISHED", "FAILED": "FAILED", "SKIPPED": "KILLED", "KILLED": "KILLED"}


def resolve_tracking_uri(configured: str | None = None) -> str:
    """Config value, else $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db (absolute)."""
    if configured:
        return str(configured)
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(Path.cwd() / 'mlflow.db').resolve()}"


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
    a wrong address or missing credentials fail in seconds, not after minutes of retries."""
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
             "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
    saved = {k: os.environ.get(k) for k in quick}
    os.environ.update({k: v for k, v in quick.items() if saved[k] is None})
    try:
        return ensure_experiment(uri, name)
    except Exception as exc:
        raise RuntimeError(f"cannot use the MLflow store at {uri}: {type(exc).__name__}: {str(exc)[:300]}") from exc
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


class MlflowRun:
    """One MLflow run: buffered metric logging through ``MlflowClient`` (no global state)."""

    def __init__(self, cfg, tags: dict[str, str], params: dict[str, Any]):
        from mlflow.tracking import MlflowClient

        self.uri = resolve_tracking_uri(cfg.get("tracking_uri"))
        self.experiment = str(cfg.get("experiment", "hgbench"))
        self.flush_every_s = float(cfg.get("flush_every_s", 5.0))
        self.client = MlflowClient(self.uri)
        self.experiment_id = ensure_experiment(self.uri, self.experiment)
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=cfg.get("run_name"))
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


def _copy_history(rec: MlflowRun, old_run_id: str, upto_step: int) -> None:
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


def _log_figures(rec: MlflowRun, exp) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lam = exp.problem.lam_spec.unflatten(exp.lam.detach())
    for name, fig in exp.problem.family.figures(lam).items():
        rec.client.log_figure(rec.run_id, fig, name)
        plt.close(fig)


def _enabled(run) -> bool:
    return bool(run.config.get("mlflow", {}).get("enabled", True))


@hookimpl
def on_run_start(run):
    if not _enabled(run):
        return
    exp = run.experiment
    params = flatten(OmegaConf.to_container(run.config, resolve=True))
    params.pop("mlflow.tracking_uri", None)
    if exp is not None:
        params.update(num_weights=exp.problem.num_weights, num_hyperparams=exp.problem.num_hyperparams)
    rec = MlflowRun(run.config.mlflow, run.tags, params)
    rec.client.log_text(rec.run_id, OmegaConf.to_yaml(run.config), "config.yaml")
    if run.resumed_from and exp is not None:
        _copy_history(rec, run.resumed_from, exp.step)
    run.extras["mlflow"] = rec
    run.info.update(
        mlflow_tracking_uri=rec.uri, mlflow_experiment=rec.experiment,
        mlflow_experiment_id=rec.experiment_id, mlflow_run_id=rec.run_id,
    )


@hookimpl
def on_hyper_step(run, step, metrics):
    rec = run.extras.get("mlflow")
    if rec is not None:
        rec.log_metrics(metrics, step)


@hookimpl
def on_run_end(run, status, error, summary):
    rec = run.extras.get("mlflow")
    if rec is None:
        return
    final = {k: summary[k] for k in ("runtime_s", "peak_memory_mb") if k in summary}
    rec.log_metrics(final, summary.get("hyper_steps_done", 0), force=True)
    tags = {"hgbench.status": "interrupted" if status == "KILLED" else status.lower()}
    if status == "SKIPPED":
        tags["hgbench.skip_reason"] = str(error)[:5000]
    elif error is not None:
        tags["hgbench.error"] = f"{type(error).__name__}: {error}"[:5000]
        tags["hgbench.failed_step"] = str(summary.get("failed_step", ""))
        tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        rec.client.log_text(rec.run_id, tb, "error.txt")
    if "compile" in run.info:  # compile=true: on | unverified | fallback, and why
        tags.update({"hgbench.compile": run.info["compile"], "hgbench.compile_note": run.info["compile_note"][:5000]})
    exp = run.experiment
    if exp is not None and status in ("FINISHED", "FAILED"):
        _log_figures(rec, exp)
    for k, v in tags.items():
        rec.client.set_tag(rec.run_id, k, v)
    rec.client.set_terminated(rec.run_id, MLFLOW_STATUS[status])
