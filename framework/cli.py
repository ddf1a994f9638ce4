"""The ``hgbench`` command: a Hydra app (overrides as arguments, ``-m`` for multirun)."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from framework.errors import HgbenchError  # noqa: E402
from framework.hydra_config import register_plugin_configs  # noqa: E402
from framework.runner import Experiment, RunResult  # noqa: E402


def format_summary(cfg: DictConfig, result: RunResult) -> str:
    s, info = result.summary, result.info
    lines = [
        f"hgbench run {result.status} in {s.get('runtime_s', 0):.1f} s — "
        f"{cfg.hypergrad.name} · {cfg.hyperparam.name} · {cfg.dataset.name} · {cfg.model.name} "
        f"({s.get('num_weights', 0):,} weights, {s.get('num_hyperparams', 0):,} hyperparameters, "
        f"{s.get('hyper_steps_done', 0)}/{cfg.hyper_steps} hyper-steps)",
    ]
    if result.error is not None:
        lines.append(f"  reason: {result.error}")
    start = s.get("initial", {})
    rows = [sp for sp in ("train", "val", "test") if f"{sp}_loss" in s]
    if rows:
        acc = any(f"{sp}_acc" in s for sp in rows)
        lines.append(f"  {'':6}{'loss (start → end)':>26}" + (f"{'acc (start → end)':>22}" if acc else ""))
        for sp in rows:
            line = f"  {sp:6}{start.get(f'{sp}_loss', float('nan')):13.4f} → {s[f'{sp}_loss']:<10.4f}"
            if f"{sp}_acc" in s:
                line += f"{start.get(f'{sp}_acc', float('nan')):11.3f} → {s[f'{sp}_acc']:.3f}"
            lines.append(line)
    what = {"cuda_max_allocated": "peak CUDA memory allocated", "cpu_peak_rss_growth": "peak memory (growth of the process's peak RSS during the run)"}
    lines.append(f"  {what.get(s.get('memory_kind'), 'peak memory')}: {s.get('peak_memory_mb', 0):.1f} MB")
    if "mlflow_run_id" in info:
        uri = info["mlflow_tracking_uri"]
        lines.append(f"  MLflow run {info['mlflow_run_id']} in experiment '{info['mlflow_experiment']}' at {uri}")
        lines.append(f"  browse it: mlflow ui --backend-store-uri {uri} --host 127.0.0.1")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="pkg://conf", config_name="config")
def app(cfg: DictConfig) -> float | None:
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        exp = Experiment(cfg)
    except HgbenchError as exc:
        if multirun:
            raise
        print(f"hgbench: error: {exc}", file=sys.stderr)
        sys.exit(2)
    result = exp.run()
    print(format_summary(cfg, result), flush=True)
    if result.status == "FAILED":
        if multirun:
            raise result.error  # Hydra records the job as failed and runs the rest of the grid
        sys.exit(1)
    return result.summary.get("val_loss")


def main() -> None:
    register_plugin_configs()
    app()


if __name__ == "__main__":
    main()
