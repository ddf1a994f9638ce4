"""hgbench installs one import root: the wheel, installed (not editable) into a fresh virtual
environment, provides ``hgbench`` (framework/), ``hgbench.plugins``, ``hgbench.conf`` and
``hgbench.benchmarks`` and the console scripts — and none of the folder names (``framework``,
``plugins``, ``conf``, ``benchmarks``), which would collide with any other project's. Besides
it, only hgbench's SLURM launcher, in the one package Hydra takes launchers from
(``hydra_plugins.hgbench_submitit_slurm``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "framework", "plugins", "conf", "benchmarks", "hydra_plugins")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """hgbench's wheel, built offline from a copy of the sources (no build/ left in the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(out), str(src)], check=True, capture_output=True, text=True, timeout=300)
    (path,) = out.glob("hgbench-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed; hgbench's dependencies come from the
    test environment's site-packages (a path line, so its editable hgbench is not activated)."""
    env = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    python = env / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)
    (purelib / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env


def run_in(venv: Path, cwd: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HGBENCH_DISABLE_ENTRY_POINTS")}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", OMP_NUM_THREADS="1")
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def test_the_wheel_holds_one_import_root(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {"/".join(n.split("/")[:2]) if n.startswith("hydra_plugins/") else n.split("/")[0]
            for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"hgbench", "hydra_plugins/hgbench_submitit_slurm"}, tops
    assert "hydra_plugins/__init__.py" not in names, "hydra_plugins is a namespace package, shared with Hydra's plugins"
    for path in ("hgbench/registry.py", "hgbench/plugins/hypergrad/neumann.py", "hgbench/conf/config.yaml",
                 "hgbench/conf/experiment/quick.yaml", "hgbench/benchmarks/cli.py"):
        assert path in names, path


def test_only_hgbench_is_importable_and_its_plugins_load(venv, tmp_path):
    code = """
import importlib
for name in ("framework", "plugins", "conf", "benchmarks"):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit(f"{name} is importable")
import hgbench, hgbench.plugins, hgbench.conf, hgbench.benchmarks
from hgbench import HypergradientMethod, hookimpl, registry
assert hgbench.__file__.startswith(%r), hgbench.__file__
assert not registry.failures(), registry.failures()
assert {"neumann", "cg", "exact"} <= set(registry.available("hypergrad"))
assert registry.get("hypergrad", "neumann").__module__ == "hgbench.plugins.hypergrad.neumann"
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
launchers = [f"{c.__module__}.{c.__name__}" for c in Plugins.instance().discover(Launcher)]
assert "hydra_plugins.hgbench_submitit_slurm.SlurmLauncher" in launchers, launchers  # Hydra finds it itself
print("ok")
""" % str(venv)
    out = run_in(venv, tmp_path, str(venv / "bin" / "python"), "-c", code)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


def test_the_installed_hgbench_runs(venv, tmp_path, mlflow_db):
    """The console script runs a tiny job from the installed configs (``pkg://hgbench.conf``)."""
    out = run_in(venv, tmp_path, str(venv / "bin" / "hgbench"), "dataset=digits", "model.hidden=[8]", "hyper_steps=2",
                 "inner_steps=2", "progress=false", "num_threads=1", f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "FINISHED" in out.stdout, out.stdout
    listing = run_in(venv, tmp_path, str(venv / "bin" / "hgbench-plugins"), "--kind", "hypergrad")
    assert listing.returncode == 0 and "built-in: hgbench.plugins.hypergrad.neumann" in listing.stdout, listing.stdout + listing.stderr
