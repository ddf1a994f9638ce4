import os
import tempfile

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="hgbench-mpl-"))
os.environ.setdefault("HGBENCH_DISABLE_ENTRY_POINTS", "1")  # results must not depend on what is installed
os.environ.pop("MLFLOW_TRACKING_URI", None)
# one torch thread per process (this one and every hgbench it starts): the suite runs two test
# workers on two cores, and torch's default threads crawl on contended cores
os.environ.setdefault("OMP_NUM_THREADS", "1")

import shutil  # noqa: E402
import sqlite3  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from filelock import FileLock  # noqa: E402

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


def trained_tiny_mlp():
    """``tiny_mlp``'s experiment built, trained and polished (seconds)."""
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


@pytest.fixture(scope="session")
def tiny_mlp_at_optimum():
    """``tiny_mlp``'s experiment, trained and polished once per test worker."""
    return trained_tiny_mlp()


@pytest.fixture
def tiny_mlp(tiny_mlp_at_optimum):
    """A 4-3-1 tanh MLP with per-weight decay on a small regression set, float64, at its optimum:
    each test's own copy of one trained and polished experiment (every tensor, optimiser and
    sampler state copied: the same as building and training it again)."""
    import copy

    return copy.deepcopy(tiny_mlp_at_optimum)


# The suite runs on two xdist workers (pyproject.toml: -n 2 --dist loadgroup --no-loadscope-reorder).
# Each test is a unit of work of its own, handed to whichever worker is free, except the files
# below, whose tests share a module-scoped fixture that is slow to build or must exist once at a
# time (a SLURM cluster, an MLflow server, a wheel and its venv, a benchmark or study run, a grid's
# store, full datasets): each of them is one unit, run on one worker.
ONE_WORKER = {"test_cluster.py", "test_bench.py", "test_concurrency.py", "test_external_plugin.py", "test_packaging.py",
              "test_report.py", "test_reproducibility.py", "test_paper_overfit.py", "test_datasets.py"}
# Units are handed out in collection order (xdist's reordering by test count is off): the longest
# files go first, so that the last units handed out are short single tests that even the workers out.
LONGEST_FIRST = ["test_cluster.py", "test_bench.py", "test_concurrency.py", "test_reproducibility.py", "test_packaging.py", "test_external_plugin.py",
                 "test_mlflow_ui.py",  # ~2 min where Chromium is installed (a server and a browser), else skipped
                 "test_faults.py", "test_resume.py", "test_simultaneous.py", "test_models.py", "test_sweeps.py", "test_compile.py", "test_paper_distill.py", "test_api.py",
                 "test_cli.py", "test_report.py", "test_paper_overfit.py", "test_datasets.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept


def pytest_xdist_make_scheduler(config, log):
    """``--dist loadgroup`` with the ONE_WORKER files as the groups. xdist 3.8 marks a group by
    appending ``@name`` to ``item._nodeid``, which pytest 9 no longer reads (tests marked
    ``xdist_group`` would be spread over the workers), so the grouping is done here, by file, in
    the scheduler's own extension point; any other ``--dist`` is xdist's."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class OneWorkerFiles(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0]
            return file if Path(file).name in ONE_WORKER else nodeid

    return OneWorkerFiles(config, log)


@pytest.fixture(scope="session")
def copy_store(tmp_path_factory):
    """``copy_store(path)``: an empty MLflow sqlite store at ``path`` (returned), its schema already
    at head — what hgbench's first write to a new store makes, without the seconds of schema
    migrations MLflow runs to make it (a copy takes milliseconds). The template store is migrated
    once per test session, by whichever xdist worker needs it first (a file lock in the folder the
    workers share). MLflow gives its Default experiment an artifact folder under the launch folder
    when it creates a store; the copy's points beside it, as if hgbench had been launched there.

    Tests about creating a store (a fresh one under parallel first writes, a missing folder, where
    a store appears) do not use it."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # .../pytest-N under xdist
    template = shared / "mlflow-template.db"
    with FileLock(f"{template}.lock"):
        if not template.exists():
            from mlflow.tracking import MlflowClient

            partial = shared / f"mlflow-template-{os.getpid()}.db"
            MlflowClient(f"sqlite:///{partial}").search_experiments()  # creates the store: every migration
            os.replace(partial, template)

    def copy(path: Path) -> Path:
        path = Path(path)
        shutil.copyfile(template, path)
        with sqlite3.connect(path) as db:
            db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (str(path.parent / "mlruns" / "0"),))
        db.close()
        return path

    return copy


@pytest.fixture
def mlflow_db(tmp_path, copy_store) -> Path:
    """``tmp_path/mlflow.db``: the store a run launched from ``tmp_path`` records to, already
    created (``copy_store``)."""
    return copy_store(tmp_path / "mlflow.db")


@pytest.fixture(scope="session", autouse=True)
def the_checkout_stays_clean():
    """No test writes MLflow stores, artifacts or Hydra folders into the checkout."""
    root = Path(__file__).resolve().parent.parent
    names = ("mlruns", "mlartifacts", "mlflow.db", "mlflow.db.lock", "outputs", "multirun")
    before = {n for n in names if (root / n).exists()}
    yield
    left = sorted(n for n in names if (root / n).exists() and n not in before)
    assert not left, f"the tests left {left} in {root}"
