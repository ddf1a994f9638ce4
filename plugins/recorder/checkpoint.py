"""Checkpoints every ``checkpoint.every`` hyper-steps: weights, λ, optimiser states, sampler and
RNG states (``Experiment.state_dict``), saved atomically to ``checkpoint.dir`` (default
``./checkpoints``) and referenced from the MLflow run: tag ``hgbench.checkpoint`` (the file, set
when the run starts), ``hgbench.checkpoint_step``, and the artifact ``checkpoint/<file>`` when
``checkpoint.log_artifact``. The file also says whose it is (run id and job fingerprint), so a
resume refuses a checkpoint of another run or job put in its place. Once a run ends FINISHED or
FAILED its file is removed, and a FINISHED job's earlier interrupted runs' files with it, unless
``checkpoint.keep``. A relaunched grid continues an
interrupted run from it (``hgbench.store``); it is read back with ``torch.load(...,
weights_only=True)``, which loads tensors and plain containers only, never arbitrary objects.

Crash-consistent order, so a kill at any moment loses nothing: (1) this step's metrics are
flushed to the store, (2) the checkpoint is written to a temporary file, synced, and renamed over
the previous one, (3) the tag ``hgbench.checkpoint_step`` and the artifact follow. A checkpoint is thus never ahead of the metrics the
store holds; a resume also checks that (``hgbench.store.latest_checkpoint``). A failed write
(a full disk) leaves no temporary file behind.
"""

from __future__ import annotations

import os

import torch

from hgbench import hookimpl
from hgbench.config import fingerprint
from hgbench.store import CHECKPOINT_ARTIFACT_DIR, CHECKPOINT_OWNER_KEY, checkpoint_dir, remove_job_checkpoints


def _settings(run):
    c = run.config.checkpoint
    return int(c.every), c.dir, bool(c.keep), bool(c.log_artifact)


@hookimpl(trylast=True)  # after the MLflow recorder has opened its run
def on_run_start(run):
    every, _, _, _ = _settings(run)
    if every <= 0 or run.experiment is None:
        return
    rec = run.extras.get("mlflow")
    name = rec.run_id if rec is not None else fingerprint(run.config)
    path = checkpoint_dir(run.config.checkpoint) / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    run.extras["checkpoint"] = path
    if rec is not None:  # where it will be, before the first is written: a kill right after it is found
        rec.client.set_tag(rec.run_id, "hgbench.checkpoint", str(path))


@hookimpl(trylast=True)  # after the MLflow recorder has buffered this step's metrics
def on_hyper_step(run, step, metrics):
    path = run.extras.get("checkpoint")
    every, _, _, log_artifact = _settings(run)
    if path is None or step <= 0 or step % every or step >= run.config.hyper_steps:
        return
    rec = run.extras.get("mlflow")
    if rec is not None:
        rec.flush()  # the metrics up to this step are in the store before a checkpoint claims them
    tmp = path.with_suffix(".tmp")
    try:
        state = run.experiment.state_dict()
        # whose it is: a resume refuses a file of another run or job put in its place
        state[CHECKPOINT_OWNER_KEY] = {"run_id": rec.run_id if rec is not None else "",
                                       "fingerprint": run.tags.get("hgbench.fingerprint", "")}
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # a kill mid-write never leaves a torn checkpoint
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if rec is not None:
        rec.client.set_tag(rec.run_id, "hgbench.checkpoint_step", str(step))
        if log_artifact:
            rec.client.log_artifact(rec.run_id, str(path), CHECKPOINT_ARTIFACT_DIR)
    run.info["checkpoint"] = str(path)


@hookimpl
def on_run_end(run, status, error, summary):
    """A run that ended FINISHED or FAILED is never resumed: its local checkpoint is removed, and
    once a job FINISHED, those of its earlier interrupted or failed runs too (a long grid of
    killed-and-resumed jobs leaves none behind) — unless ``checkpoint.keep``. The MLflow artifact
    copies stay. A KILLED run keeps its checkpoint: the next launch resumes from it."""
    path = run.extras.get("checkpoint")
    every, _, keep, _ = _settings(run)
    if keep or every <= 0 or status not in ("FINISHED", "FAILED"):
        return
    if path is not None:
        path.unlink(missing_ok=True)
    rec = run.extras.get("mlflow")
    fp = run.tags.get("hgbench.fingerprint")
    if status == "FINISHED" and rec is not None and fp:
        remove_job_checkpoints(rec.client, rec.experiment_id, fp)
