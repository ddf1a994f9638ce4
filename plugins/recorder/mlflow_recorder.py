"""Records every run in MLflow, through the run-lifecycle hooks.

- params: every resolved config value (dotted keys), ``num_weights``, ``num_hyperparams``;
- metrics, with step = hyper-step: losses/accuracies on eval steps, ``hypergrad_norm``,
  ``hypergrad_time_s``, ``inner_time_s``, ``elapsed_s``; at the end ``runtime_s`` and
  ``peak_memory_mb`` (see ``hgbench.memory`` for what is measured on CPU vs CUDA);
- tags: the plugins used (``hgbench.<kind>``), device, versions, ``mlflow.source.git.commit``,
  ``hgbench.status`` and, when a run fails or is skipped, ``hgbench.error`` / ``hgbench.skip_reason``;
- artifacts: the composed ``config.yaml`` (and ``error.txt`` with the traceback of a failure).

Where: ``mlflow.tracking_uri`` in config, else ``$MLFLOW_TRACKING_URI``, else a sqlite file
``mlflow.db`` in the launch directory (absolute path; artifacts beside it in ``mlartifacts/``).
Metrics are buffered and written in batches every ``mlflow.flush_every_s`` seconds. The store
itself (URIs, experiments, buffered writes) is ``hgbench.store``; this module is the hooks.
"""

from __future__ import annotations

import logging
import sys
import traceback

from omegaconf import OmegaConf

from hgbench import hookimpl
from hgbench.config import NOT_IN_FINGERPRINT, flatten
from hgbench.registry import KINDS
from hgbench.store import MLFLOW_STATUS, MlflowRun, StoreWriteError, brief, copy_history, ensure_default_view

# this plugin records results: a failure in its hooks flags the run as not recorded
HGBENCH_RECORDER = True


def _log_figures(rec: MlflowRun, exp) -> None:
    lam = exp.problem.lam_spec.unflatten(exp.lam.detach())
    for name, fig in exp.problem.family.figures(lam).items():
        rec.client.log_figure(rec.run_id, fig, name)
        pyplot = sys.modules.get("matplotlib.pyplot")  # a figure a plugin made with pyplot: released
        if pyplot is not None:  # (never imported here: importing pyplot picks a backend)
            pyplot.close(fig)


def run_name(cfg, tags: dict[str, str]) -> str:
    """The run's name in MLflow when ``mlflow.run_name`` is null: its plugins and seed, plus the
    values a grid job sets (``neumann·weight_decay·digits·mlp·s0·iterations=5``), so the UI's
    table, charts and compare views say what each run is."""
    named = ("seed", "experiment", "sweep", "hydra", *KINDS, "inner_optimizer", "outer_optimizer", *NOT_IN_FINGERPRINT)
    parts = [str(cfg[k].name) for k in ("hypergrad", "hyperparam", "dataset", "model")] + [f"s{cfg.seed}"]
    for item in tags.get("hgbench.overrides", "").split():
        key, _, value = item.partition("=")
        key = key.lstrip("+~")
        root, leaf = key.split(".")[0], key.rsplit(".", 1)[-1]
        if not value or "/" in key or leaf in ("name", "_target_"):
            continue
        if root in ("inner_optimizer", "outer_optimizer") and "." in key:
            parts.append(f"{root.split('_')[0]}_{leaf}={value}")  # inner_lr=0.2
        elif root in KINDS and "." in key or root not in named:
            parts.append(f"{leaf}={value}")
    return "·".join(parts)[:250]


def _log_dataset(rec: MlflowRun, run) -> None:
    """The dataset as an MLflow dataset input (the UI's Dataset column): its name, a digest of its
    settings (sizes, split seed, …) and their JSON as the source, with the split sizes as profile."""
    import hashlib
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag

    settings = OmegaConf.to_container(run.config.dataset, resolve=True)
    source = json.dumps(settings, sort_keys=True, default=str)
    data = run.experiment.problem.data
    profile = json.dumps({split: len(getattr(data, split).x) for split in ("train", "val", "test")})
    ds = Dataset(name=str(settings["name"]), digest=hashlib.sha256(source.encode()).hexdigest()[:8],
                 source_type="hgbench", source=source, profile=profile)
    inputs = [DatasetInput(ds, tags=[InputTag("mlflow.data.context", "training")])]
    try:
        rec.client.log_inputs(rec.run_id, inputs)
    except Exception as exc:  # noqa: BLE001 - parallel jobs logging the same new dataset race on MLflow's
        # check-then-insert ("UNIQUE constraint failed: datasets…"): the other job inserted it, so a
        # second try finds it and only links it to this run
        if "unique" not in str(exc).lower() and "duplicate" not in str(exc).lower():
            raise
        rec.client.log_inputs(rec.run_id, inputs)


def _enabled(run) -> bool:
    return bool(run.config.mlflow.enabled)


def _one_line(hook):
    """A hook whose MLflow error (SQLAlchemy's: statement, parameters, links) is reported in one
    line (``StoreWriteError``); OS errors (one line already) as they are."""
    import functools

    @functools.wraps(hook)
    def wrapper(*args, **kwargs):
        try:
            return hook(*args, **kwargs)
        except (OSError, StoreWriteError):
            raise
        except Exception as exc:  # noqa: BLE001
            raise StoreWriteError(brief(exc)) from exc

    return wrapper


_DB_LOG = "mlflow.store.db.utils"  # logs each failed write with its traceback: hgbench reports it once


@hookimpl
@_one_line
def on_run_start(run):
    if not _enabled(run):
        return
    quiet = logging.getLogger(_DB_LOG)
    run.extras["mlflow_log_level"] = quiet.level
    quiet.setLevel(logging.CRITICAL)
    exp = run.experiment
    params = flatten(OmegaConf.to_container(run.config, resolve=True))
    params.pop("mlflow.tracking_uri", None)
    if exp is not None:
        params.update(num_weights=exp.problem.num_weights, num_hyperparams=exp.problem.num_hyperparams)
    rec = MlflowRun(run.config.mlflow, run.tags, default_name=run_name(run.config, run.tags))
    # the run exists in the store from here: if a write below fails, on_run_end still ends it
    run.extras["mlflow"] = rec
    run.info.update(
        mlflow_tracking_uri=rec.uri, mlflow_experiment=rec.experiment,
        mlflow_experiment_id=rec.experiment_id, mlflow_run_id=rec.run_id,
        mlflow_recorded_step=rec.recorded_step,
    )
    rec.log_params(params)
    rec.client.log_text(rec.run_id, OmegaConf.to_yaml(run.config), "config.yaml")
    ensure_default_view(rec.client, rec.experiment_id)  # the link the run prints opens on its numbers
    if exp is not None:
        _log_dataset(rec, run)
    if run.resumed_from and exp is not None:
        copy_history(rec, run.resumed_from, exp.step)
        run.info["mlflow_recorded_step"] = rec.recorded_step


@hookimpl
@_one_line
def on_hyper_step(run, step, metrics):
    rec = run.extras.get("mlflow")
    if rec is not None:
        rec.log_metrics(metrics, step)
        run.info["mlflow_recorded_step"] = rec.recorded_step


@hookimpl
@_one_line
def on_run_end(run, status, error, summary):
    """The end-of-run metrics, tags and artifacts, then the final status — written even when
    something before it failed (a run is never left RUNNING by a write that could be skipped).
    What reached the store is left in ``run.info`` for the summary: ``mlflow_recorded_step`` (the
    last hyper-step whose metrics it holds), ``mlflow_unwritten_metrics`` (values it never got),
    ``mlflow_end_written`` (the end-of-run metrics, tags and artifacts) and ``mlflow_status``
    (the status it holds, once set; FAILED for a finished run whose end could not be written)."""
    try:
        _end(run, status, error, summary)
    finally:
        if "mlflow_log_level" in run.extras:
            logging.getLogger(_DB_LOG).setLevel(run.extras.pop("mlflow_log_level"))


def _end(run, status, error, summary) -> None:
    rec = run.extras.get("mlflow")
    if rec is None:
        return
    failures = []
    try:
        _end_of_run(rec, run, status, error, summary)
        run.info["mlflow_end_written"] = True
    except Exception as exc:  # noqa: BLE001 - reported below, after the status is written
        failures.append(exc)
    # a run whose last metrics or tags are missing is never FINISHED in the store (nor reused)
    final = "FAILED" if failures and status == "FINISHED" else MLFLOW_STATUS[status]
    try:
        rec.client.set_terminated(rec.run_id, final)
        run.info["mlflow_status"] = final
    except Exception as exc:  # noqa: BLE001
        failures.append(exc)
    run.info.update(mlflow_recorded_step=rec.recorded_step, mlflow_unwritten_metrics=rec.unwritten)
    if failures:
        raise failures[0]


def _end_of_run(rec: MlflowRun, run, status, error, summary) -> None:
    final = {k: summary[k] for k in ("runtime_s", "peak_memory_mb", "load_avg_start", "load_avg_end") if k in summary}
    rec.log_metrics(final, summary.get("hyper_steps_done", 0), force=True)
    tags = {"hgbench.status": "interrupted" if status == "KILLED" else status.lower()}
    if status == "SKIPPED":
        tags["hgbench.skip_reason"] = str(error)[:5000]
    elif error is not None:
        tags["hgbench.error"] = f"{type(error).__name__}: {error}"[:5000]
        tags["hgbench.failed_step"] = str(summary.get("failed_step", ""))
        tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        rec.client.log_text(rec.run_id, tb, "error.txt")
    if "hessian_indefinite" in run.info:
        tags["hgbench.hessian_indefinite"] = run.info["hessian_indefinite"][:5000]
    if "compile" in run.info:  # compile=true: on | unverified | fallback, and why
        tags.update({"hgbench.compile": run.info["compile"], "hgbench.compile_note": run.info["compile_note"][:5000]})
    exp = run.experiment
    if exp is not None and status in ("FINISHED", "FAILED"):
        _log_figures(rec, exp)
    for k, v in tags.items():
        rec.client.set_tag(rec.run_id, k, v)
