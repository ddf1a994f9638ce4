"""The same config and seed give bitwise-identical metric histories on the CPU — in two separate
``hgbench`` processes recording to one MLflow store (each a grid, so every run is also preceded
by different runs in its process), and twice in one process through the Python API — and another
seed gives different ones. Timing metrics are left out (they measure the
machine). Covers per-weight decay with Neumann and with unrolling, and a family with noise
(``dropout_per_unit`` with fresh noise from torch's global RNG, seeded by the run's seed)."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from helpers import hgbench_in_process

from hgbench import build_experiment, hookimpl, registry
from hgbench.provenance import git_commit

COMMON = ["dataset=digits", "model.hidden=[8]", "hyper_steps=4", "inner_steps=2", "eval_every=2",
          "dataset.train_size=100", "dataset.val_size=60", "dataset.test_size=60",
          "train_batch_size=32", "val_batch_size=32", "device=cpu", "progress=false"]
CASES = {  # minibatches (32 of 100) so the seed also decides the sampling order
    "wdpp_neumann": ["hyperparam=weight_decay_per_param", "hypergrad=neumann"],
    "wdpp_unroll": ["hyperparam=weight_decay_per_param", "hypergrad=unroll"],
    "dropout_noise": ["hyperparam=dropout_per_unit", "hyperparam.fixed_noise=false", "hypergrad=neumann"],
}
EXPERIMENT = "repro"
ROOT = Path(__file__).resolve().parent.parent


def timing(key: str) -> bool:
    """Metrics of the machine, not of the run: wall-clock, memory and the load other processes put on it."""
    return key.endswith("_time_s") or key.startswith("load_avg_") or key in ("elapsed_s", "runtime_s", "peak_memory_mb")


def exact(history: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[int, str]]]:
    """Values as float.hex: equal iff bitwise equal (and readable in a failure message)."""
    return {k: [(s, float(v).hex()) for s, v in h] for k, h in history.items()}


def first_difference(a: dict, b: dict) -> str:
    if set(a) != set(b):
        return f"metric keys differ: {sorted(set(a) ^ set(b))}"
    for k in sorted(a):
        if a[k] != b[k]:
            i = next((i for i, (x, y) in enumerate(zip(a[k], b[k], strict=False)) if x != y), min(len(a[k]), len(b[k])))
            return f"{k}: first difference at entry {i}: {a[k][i:i + 1]} vs {b[k][i:i + 1]}"
    return "identical"


# --- two processes, one store -------------------------------------------------------------------
def hgbench(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "hgbench.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def mlflow_histories(client: MlflowClient, run) -> dict[str, list[tuple[int, float]]]:
    out = {}
    for key in run.data.metrics:
        if not timing(key):
            hist = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp))
            out[key] = [(m.step, m.value) for m in hist]
    return out


GRID = ["hypergrad=neumann,unroll", "hyperparam=weight_decay_per_param,dropout_per_unit"]  # fixed_noise: false by default


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory, copy_store):
    """Two processes at once, one sqlite store: process A, a fresh ``hgbench``, runs every method ×
    family with seeds 0 and 1; process B, this test process (which has run other tests before),
    the same with seed 0 through the same ``main()`` (each job a fresh ``Experiment``)."""
    root = tmp_path_factory.mktemp("repro")
    uri = f"sqlite:///{copy_store(root / 'mlflow.db')}"
    client = MlflowClient(uri)  # the store exists before the two processes start
    for name in ("A", "B"):
        client.create_experiment(f"{EXPERIMENT}_{name}", artifact_location=(root / "mlartifacts" / name).as_uri())
    args = {k: ["-m", *GRID, seeds, *COMMON, f"mlflow.experiment={EXPERIMENT}_{k}", f"hydra.sweep.dir=multirun/{k}"]
            for k, seeds in (("A", "seed=0,1"), ("B", "seed=0"))}
    with ThreadPoolExecutor(max_workers=1) as pool:
        a = pool.submit(hgbench, root, *args["A"])
        outs = {"B": hgbench_in_process(root, *args["B"]), "A": a.result()}
    runs = {}
    for name, out in outs.items():
        assert out.returncode == 0, f"process {name}:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
        exp = client.get_experiment_by_name(f"{EXPERIMENT}_{name}")
        for r in client.search_runs([exp.experiment_id], max_results=100):
            p = r.data.params
            runs[(name, p["hypergrad.name"], p["hyperparam.name"], int(p["seed"]))] = r
    assert len(runs) == 8 + 4, sorted(runs)
    return client, runs


CLI_CASES = [(m, f) for f in ("weight_decay", "dropout_per_unit") for m in ("neumann", "unroll")]  # weight_decay: per_param


@pytest.mark.slow
@pytest.mark.parametrize("method,family", CLI_CASES)
def test_same_seed_in_two_processes_gives_bitwise_identical_histories(cli_runs, method, family):
    client, runs = cli_runs
    a, b, other = runs[("A", method, family, 0)], runs[("B", method, family, 0)], runs[("A", method, family, 1)]
    ha, hb, ho = (exact(mlflow_histories(client, r)) for r in (a, b, other))
    assert {"hypergrad_norm", "inner_loss", "train_loss", "val_loss", "test_loss", "val_acc"} <= set(ha)
    assert [s for s, _ in ha["hypergrad_norm"]] == [1, 2, 3, 4] and [s for s, _ in ha["val_loss"]] == [0, 2, 4]
    assert ha == hb, f"{method} · {family}, seed 0 in two processes: {first_difference(ha, hb)}"
    assert ha["hypergrad_norm"] != ho["hypergrad_norm"] and ha["val_loss"] != ho["val_loss"], \
        f"{method} · {family}: seed 1 gave the same histories as seed 0"
    assert all(r.info.status == "FINISHED" for r in (a, b, other))
    if family == "dropout_per_unit":
        assert a.data.params["hyperparam.fixed_noise"] == "False"  # fresh noise at every step


@pytest.mark.slow
def test_every_run_records_seed_versions_commit_and_device(cli_runs):
    _, runs = cli_runs
    assert git_commit()[0] != "unknown", "the tests run from a git checkout"
    for (proc, method, family, seed), r in runs.items():
        t, p, name = r.data.tags, r.data.params, f"{proc} {method} {family} {seed}"
        assert p["seed"] == str(seed), name
        # the checkout's commit when the run started (HEAD may have moved since: compare with git)
        commit = t["mlflow.source.git.commit"]
        assert re.fullmatch(r"[0-9a-f]{40}", commit), (name, commit)
        assert subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT, capture_output=True).returncode == 0, \
            f"{name}: {commit} is not a commit of this repository"
        assert t["hgbench.git_dirty"] in ("true", "false"), name
        assert t["hgbench.torch_version"] == torch.__version__, name
        assert t["hgbench.python_version"] == platform.python_version(), name
        assert t["hgbench.device"] == "cpu" and p["device"] == "cpu", name


# --- twice in one process ---------------------------------------------------------------------
class Capture:
    """A plugin that keeps every metric each run reports (what recorders see), per hyper-step."""

    def __init__(self):
        self.history: dict[str, list[tuple[int, float]]] = {}

    @hookimpl
    def on_hyper_step(self, run, step, metrics):
        for k, v in metrics.items():
            if not timing(k):
                self.history.setdefault(k, []).append((step, float(v)))


def run_in_process(case: str, seed: int):
    cap = Capture()
    name = f"repro-capture-{id(cap)}"
    registry.register(cap, name=name)
    try:
        exp = build_experiment([*COMMON, *CASES[case], f"seed={seed}"])
        result = exp.run()
    finally:
        registry.unregister(name)
    assert result.status == "FINISHED", result.error
    return exact(cap.history), exp.w.detach().clone(), exp.lam.detach().clone()


@pytest.mark.parametrize("case", list(CASES))
def test_same_seed_twice_in_one_process_gives_bitwise_identical_histories(case):
    ha, wa, la = run_in_process(case, 0)
    hb, wb, lb = run_in_process(case, 0)
    ho, wo, lo = run_in_process(case, 1)
    assert [s for s, _ in ha["hypergrad_norm"]] == [1, 2, 3, 4]
    assert ha == hb, f"{case}, seed 0 twice: {first_difference(ha, hb)}"
    assert torch.equal(wa, wb) and torch.equal(la, lb), "final weights and hyperparameters differ"
    assert ha["hypergrad_norm"] != ho["hypergrad_norm"] and not torch.equal(wa, wo), f"{case}: seed 1 = seed 0"
