import os
import tempfile

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="hgbench-mpl-"))
os.environ.setdefault("HGBENCH_DISABLE_ENTRY_POINTS", "1")  # results must not depend on what is installed
os.environ.pop("MLFLOW_TRACKING_URI", None)
# one torch thread per process (this one and every hgbench it starts): the suite runs two test
# workers on two cores, and torch's default threads crawl on contended cores
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from hgbench import build_experiment  # noqa: E402
from helpers import polish  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture
def ridge():
    """Ridge regression with one decay per feature, float64, no bias: has a closed form."""
    exp = build_experiment(
        dataset="synthetic_linear", model="linear", hyperparam="weight_decay_per_param",
        overrides=["model.bias=false", "dtype=float64", "hyperparam.init_decay=0.05",
                   "dataset.num_features=8", "dataset.train_size=40", "dataset.val_size=30"],
    )
    # spread the decays so that each coordinate matters differently
    exp.lam.data = torch.linspace(-4.0, 0.5, exp.problem.num_hyperparams, dtype=torch.float64)
    return exp


@pytest.fixture
def tiny_mlp():
    """A 4-3-1 tanh MLP with per-weight decay on a small regression set, float64, at its optimum."""
    exp = build_experiment(
        dataset="synthetic_linear", model="mlp", hyperparam="weight_decay_per_param",
        overrides=["model.hidden=[3]", "model.activation=tanh", "dtype=float64",
                   "hyperparam.init_decay=0.02", "dataset.num_features=4", "dataset.informative=3",
                   "dataset.train_size=30", "dataset.val_size=20", "inner_optimizer.lr=0.1"],
    )
    g = torch.Generator().manual_seed(1)
    exp.lam.data += 0.5 * torch.randn(exp.problem.num_hyperparams, generator=g, dtype=torch.float64)
    exp.train_inner(2000)
    polish(exp)
    return exp


# The suite runs on two xdist workers, a file's tests on one worker (--dist loadfile). Files are
# handed out in collection order, so the longest ones go first: the rest then fill the gaps.
LONGEST_FIRST = ["test_cluster.py", "test_bench.py", "test_concurrency.py", "test_models.py", "test_resume.py", "test_faults.py", "test_external_plugin.py",
                 "test_sweeps.py", "test_reproducibility.py", "test_cli.py", "test_report.py", "test_datasets.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept


@pytest.fixture(scope="session", autouse=True)
def the_checkout_stays_clean():
    """No test writes MLflow stores, artifacts or Hydra folders into the checkout."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    names = ("mlruns", "mlartifacts", "mlflow.db", "outputs", "multirun")
    before = {n for n in names if (root / n).exists()}
    yield
    left = sorted(n for n in names if (root / n).exists() and n not in before)
    assert not left, f"the tests left {left} in {root}"
