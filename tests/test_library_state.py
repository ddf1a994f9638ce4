"""hgbench uses the libraries it builds on through their public API and leaves their process-wide
state alone:

- no module of framework/, plugins/, benchmarks/ or hydra_plugins/ imports a private module or
  name of submitit, Hydra, joblib/loky, MLflow or OmegaConf (``hydra._internal``), reads or writes
  a private attribute of their objects (``executor._processes``, ``self._registered`` in a
  subclass of theirs), or assigns to their classes' attributes (patching); none sets library-wide
  state when it is imported (``matplotlib.use``, ``os.environ``, MLflow's tracking URI), and the
  library (framework/, plugins/) never switches matplotlib's backend or MLflow's tracking URI,
  not even in a function — checked on the source, like tests/test_layers.py, and the checker is
  shown to find each kind;
- importing every hgbench module leaves matplotlib's backend, the ``MLFLOW_*`` environment
  variables and MLflow's tracking URI as they were (in a fresh interpreter);
- ``hgbench-report`` reads its store through its own client: MLflow's tracking URI is untouched.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import dotted

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("framework", "plugins", "benchmarks", "hydra_plugins")
LIBRARIES = ("submitit", "hydra", "hydra_plugins", "joblib", "loky", "mlflow", "omegaconf")
# calls that change library-wide state: never at import (module level)
STATEFUL_CALLS = {"matplotlib.use", "mlflow.set_tracking_uri", "mlflow.set_registry_uri", "mlflow.set_experiment",
                  "os.putenv", "os.environ.setdefault", "os.environ.update", "os.environ.pop", "os.environ.clear",
                  "torch.set_num_threads", "torch.manual_seed", "torch.set_default_dtype", "plt.switch_backend",
                  "matplotlib.pyplot.switch_backend", "matplotlib.rcParams.update", "logging.basicConfig"}
# ... and these never in the library (framework/, plugins/): a caller's backend or store is its own
NEVER_CALLED = {"matplotlib.use", "mlflow.set_tracking_uri", "mlflow.set_registry_uri", "plt.switch_backend",
                "matplotlib.pyplot.switch_backend"}
LIBRARY = ("framework", "plugins", "benchmarks", "hydra_plugins")



def is_private(name: str) -> bool:
    """``_x``, not ``__x__`` nor a Hydra config key such as ``_target_`` (public config)."""
    return name.startswith("_") and not name.endswith("_")


def foreign(module: str) -> bool:
    top = module.split(".")[0]
    return top in LIBRARIES and not module.startswith("hydra_plugins.hgbench_")


def problems(source: str, where: str = "<planted>", library: bool = False) -> list[str]:
    """What ``source`` does to another library's internals or state, one line each (``library``:
    it is library code, where ``NEVER_CALLED`` is never called, not even in a function)."""
    tree = ast.parse(source, where)
    found: list[str] = []
    names: set[str] = set()  # local names bound to a library's module, class, function or object

    def root(node: ast.AST) -> str:
        while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
            node = node.func if isinstance(node, ast.Call) else node.value
        return node.id if isinstance(node, ast.Name) else ""

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if foreign(a.name):
                    names.add((a.asname or a.name).split(".")[0])
                    if any(is_private(part) for part in a.name.split(".")):
                        found.append(f"{where}:{node.lineno}: imports the private module {a.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and foreign(node.module):
            if any(is_private(part) for part in node.module.split(".")):
                found.append(f"{where}:{node.lineno}: imports from the private module {node.module}")
            for a in node.names:
                names.add(a.asname or a.name)
                if is_private(a.name):
                    found.append(f"{where}:{node.lineno}: imports the private name {node.module}.{a.name}")
    # objects made from them: `executor = submitit.AutoExecutor(...)`, `client = MlflowClient(uri)`
    for _ in range(2):
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None and root(node.value) in names:
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    if isinstance(target, ast.Name):
                        names.add(target.id)
            elif isinstance(node, ast.withitem) and isinstance(node.optional_vars, ast.Name) and root(node.context_expr) in names:
                names.add(node.optional_vars.id)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr) and root(node) in names:
            found.append(f"{where}:{node.lineno}: reads or writes the private attribute {dotted(node)}")
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(target, ast.Attribute) and root(target) in names:
                    found.append(f"{where}:{node.lineno}: patches {dotted(target)}")
        elif isinstance(node, ast.Call) and dotted(node.func) == "setattr" and node.args and root(node.args[0]) in names:
            found.append(f"{where}:{node.lineno}: patches {dotted(node.args[0])} with setattr")
        elif isinstance(node, ast.ClassDef) and any(root(b) in names for b in node.bases):
            own = {t.id for n in ast.walk(node) if isinstance(n, (ast.Assign, ast.AnnAssign))
                   for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
            own |= {n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
            own |= {t.attr for n in ast.walk(node) if isinstance(n, (ast.Assign, ast.AnnAssign))
                    for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
                    if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"}
            for n in ast.walk(node):  # what the subclass inherits privately: self._x, super()._x
                if isinstance(n, ast.Attribute) and is_private(n.attr) and n.attr not in own and (
                        (isinstance(n.value, ast.Name) and n.value.id in ("self", "cls"))
                        or (isinstance(n.value, ast.Call) and dotted(n.value.func) == "super")):
                    found.append(f"{where}:{n.lineno}: uses {n.attr}, private to {dotted(node.bases[0])}, in its subclass {node.name}")
    for node in ast.walk(tree) if library else []:
        if isinstance(node, ast.Call) and dotted(node.func) in NEVER_CALLED:
            found.append(f"{where}:{node.lineno}: sets library-wide state: {dotted(node.func)}(...)")
    # at import: no library-wide state set
    for stmt in tree.body:
        for node in ast.walk(stmt) if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else []:
            if isinstance(node, ast.Call) and dotted(node.func) in STATEFUL_CALLS:
                found.append(f"{where}:{node.lineno}: sets library-wide state at import: {dotted(node.func)}(...)")
            elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Subscript) and dotted(t.value) == "os.environ" for t in node.targets):
                found.append(f"{where}:{node.lineno}: sets an environment variable at import")
    return found


def sources() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py"))


def test_no_module_uses_another_librarys_internals_or_sets_its_state_at_import():
    assert len(sources()) > 50
    found = [line for path in sources()
             for line in problems(path.read_text(), str(path.relative_to(ROOT)), library=path.relative_to(ROOT).parts[0] in LIBRARY)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(("planted", "said"), [
    ("from hydra._internal.utils import get_args_parser", "imports from the private module hydra._internal.utils"),
    ("import mlflow.tracking._tracking_service.utils as u", "imports the private module"),
    ("from submitit.core.core import _time", "imports the private name submitit.core.core._time"),
    ("from joblib.externals.loky import reusable_executor\nx = reusable_executor._executor", "private attribute reusable_executor._executor"),
    ("import submitit\ndef f():\n    executor = submitit.AutoExecutor(folder='.')\n    return executor._executor", "private attribute executor._executor"),
    ("from submitit.slurm.slurm import SlurmJob\ndef f():\n    SlurmJob.watcher = None", "patches SlurmJob.watcher"),
    ("from submitit.slurm.slurm import SlurmExecutor\nSlurmExecutor._submit_command = print", "private attribute SlurmExecutor._submit_command"),
    ("import submitit\nsetattr(submitit.AutoExecutor, 'which', None)", "patches submitit.AutoExecutor with setattr"),
    ("from submitit.slurm.slurm import SlurmInfoWatcher\nclass W(SlurmInfoWatcher):\n    def update(self):\n        return self._registered",
     "uses _registered, private to SlurmInfoWatcher, in its subclass W"),
    ("import matplotlib\nmatplotlib.use('Agg')", "sets library-wide state at import: matplotlib.use"),
    ("import os\nos.environ.setdefault('MLFLOW_DISABLE_TELEMETRY', 'true')", "at import: os.environ.setdefault"),
    ("import os\nos.environ['MLFLOW_HTTP_REQUEST_MAX_RETRIES'] = '1'", "sets an environment variable at import"),
    ("import mlflow\nif True:\n    mlflow.set_tracking_uri('x')", "at import: mlflow.set_tracking_uri"),
    ("import matplotlib\ndef figure():\n    matplotlib.use('Agg')", "sets library-wide state: matplotlib.use"),
    ("import mlflow\ndef search(uri):\n    mlflow.set_tracking_uri(uri)", "sets library-wide state: mlflow.set_tracking_uri"),
])
def test_the_check_finds_each_kind(planted, said):
    found = problems(planted, library=True)
    assert found and any(said in line for line in found), found


@pytest.mark.parametrize("fine", [
    "class A:\n    def f(self):\n        return self._own",  # one's own private attributes
    "from submitit.slurm.slurm import SlurmInfoWatcher\nclass W(SlurmInfoWatcher):\n    def __init__(self):\n        self._mine = 1\n    def f(self):\n        return self._mine",
    "import os\ndef main():\n    os.environ.setdefault('MLFLOW_DISABLE_TELEMETRY', 'true')",  # at run time, by a command
    "from matplotlib.figure import Figure\ndef plot():\n    fig = Figure()\n    return fig, fig.subplots()",
    "from hydra.core.hydra_config import HydraConfig\ndef f():\n    hc = HydraConfig.get()\n    return hc.launcher._target_",  # a config key
])
def test_the_check_lets_public_use_pass(fine):
    assert problems(fine, library=True) == []


IMPORT_ALL = r"""
import importlib, json, os, pkgutil, sys
import matplotlib
import mlflow

before = (matplotlib.get_backend(), {k: v for k, v in os.environ.items() if k.startswith("MLFLOW")}, mlflow.get_tracking_uri())
import hgbench, hgbench.plugins, hgbench.benchmarks
names = []
for pkg in (hgbench, hgbench.plugins, hgbench.benchmarks):
    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        names.append(m.name)
names.append("hydra_plugins.hgbench_submitit_slurm")
failed = []
for name in names:
    try:
        importlib.import_module(name)
    except ImportError as exc:  # an optional peer (benchmarks' torchopt, betty) not installed
        failed.append(f"{name}: {exc}")
after = (matplotlib.get_backend(), {k: v for k, v in os.environ.items() if k.startswith("MLFLOW")}, mlflow.get_tracking_uri())
print(json.dumps({"names": names, "failed": failed, "before": before, "after": after,
                  "pyplot": "matplotlib.pyplot" in sys.modules}))
"""


@pytest.mark.slow  # a fresh interpreter importing everything: seconds
def test_importing_every_hgbench_module_leaves_the_libraries_state_alone(tmp_path):
    """A notebook's backend (here ``template``, set by MPLBACKEND), its MLFLOW_* variables and its
    tracking URI are the same after ``import`` of every hgbench module; none imports pyplot."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW")}
    env.update(MPLBACKEND="template", MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/user.db", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", IMPORT_ALL], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(got["names"]) > 60 and "hgbench.plots" in got["names"] and "hgbench.report" in got["names"]
    assert not [f for f in got["failed"] if not f.startswith("hgbench.benchmarks.")], got["failed"]
    assert got["before"][0] == "template" and got["before"][1] == {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/user.db"}
    assert got["after"] == got["before"]
    assert not got["pyplot"], "pyplot imported: it picks a backend"


def test_the_report_leaves_mlflows_tracking_uri_alone(tmp_path, monkeypatch):
    """The report reads another store than the global tracking URI, through its own client: it
    never sets the global one, not even for a moment (another thread would see it)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from hgbench.report import main as report

    store = f"sqlite:///{tmp_path}/runs.db"
    client = MlflowClient(store)
    exp = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    for seed, loss in ((0, 0.5), (1, 0.7)):
        run = client.create_run(exp, tags={"hgbench.hypergrad": "neumann", "hgbench.hyperparam": "weight_decay",
                                           "hgbench.dataset": "digits", "hgbench.model": "mlp", "hgbench.status": "finished"})
        client.log_param(run.info.run_id, "seed", str(seed))
        client.log_metric(run.info.run_id, "val_loss", loss, step=1)
        client.set_terminated(run.info.run_id, "FINISHED")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/elsewhere.db")
    set_to: list = []
    monkeypatch.setattr(mlflow, "set_tracking_uri", set_to.append)
    try:
        assert report(["--tracking-uri", store, "--experiment", "e", "--out-dir", str(tmp_path / "out"), "--name", "r"]) == 0
        assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path}/elsewhere.db" and set_to == []
    finally:
        monkeypatch.undo()
        mlflow.set_tracking_uri(None)
    runs = (tmp_path / "out" / "r" / "runs.csv").read_text().splitlines()
    assert len(runs) == 3, runs  # header + both runs, read from the other store
    assert not (tmp_path / "elsewhere.db").exists()


def test_the_store_check_sets_its_quick_http_settings_only_around_its_own_requests(tmp_path, monkeypatch):
    """MLflow reads its HTTP retries from the environment: the check's are there while it runs
    (a user's own kept), and gone after."""
    from hgbench import store

    seen: dict = {}
    real = store.ensure_experiment

    def spy(uri, name):
        seen.update({k: os.environ.get(k) for k in store.QUICK_HTTP})
        return real(uri, name)

    monkeypatch.setattr(store, "ensure_experiment", spy)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "99")  # the user's
    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        monkeypatch.delenv(key, raising=False)
    store.check_store(f"sqlite:///{tmp_path}/m.db", "e")
    assert seen == {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                    "MLFLOW_HTTP_REQUEST_TIMEOUT": "99"}
    assert {k: os.environ.get(k) for k in store.QUICK_HTTP} == {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": None,
                                                                "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": None,
                                                                "MLFLOW_HTTP_REQUEST_TIMEOUT": "99"}


@pytest.mark.parametrize("users", [None, "false"])
def test_the_command_switches_telemetry_off_for_its_own_run_only(tmp_path, monkeypatch, users):
    """``hgbench`` runs with MLflow's telemetry off unless the user chose; the process's
    environment is as before once it returns (hgbench.cli.main called in this process)."""
    from hgbench import cli

    if users is None:
        monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", users)
    during: list = []
    monkeypatch.setattr(cli, "_main", lambda: during.append(os.environ.get("MLFLOW_DISABLE_TELEMETRY")))
    cli.main()
    assert during == [users or "true"]
    assert os.environ.get("MLFLOW_DISABLE_TELEMETRY") == users
