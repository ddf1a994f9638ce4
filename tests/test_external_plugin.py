"""The third-party plugin story: an installed package's plugin, a broken one, ``hgbench-plugins``,
and the plugin guide (docs/PLUGINS.md) kept in step with framework/hookspecs.py."""

import ast
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from hgbench import ConfigError, hookspecs, registry, testing
from hgbench.config import build_plugin
from hgbench.linalg import neumann_solve
from hgbench.plugin_list import collect, main, render

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "hgbench-example-plugin"
GUIDE = ROOT / "docs" / "PLUGINS.md"
TINY = ["dataset=digits", "hyper_steps=4", "inner_steps=2", "dataset.train_size=200", "dataset.val_size=100"]


# --- the example package's maths, imported from its source tree -------------------------------


@pytest.fixture
def dn(monkeypatch):
    """The example's module ``hgbench_example_plugin.damped_neumann`` (not registered)."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    return importlib.import_module("hgbench_example_plugin.damped_neumann")


def spd(eigenvalues, seed=0):
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


def test_damped_neumann_without_damping_is_neumann(dn):
    h = spd([0.2, 0.7, 1.0, 1.9])
    b = torch.arange(1.0, 5.0, dtype=torch.float64)
    for i in (0, 1, 7):
        got = dn.damped_neumann_solve(lambda v: h @ v, b, iterations=i, alpha=0.5, damping=0.0)
        torch.testing.assert_close(got, neumann_solve(lambda v: h @ v, b, iterations=i, alpha=0.5), rtol=0, atol=0)


def test_damped_neumann_solves_the_damped_system(dn):
    h, delta = spd([0.05, 0.3, 1.0, 2.0]), 0.2
    b = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    exact = torch.linalg.solve(h + delta * torch.eye(4, dtype=torch.float64), b)
    got = dn.damped_neumann_solve(lambda v: h @ v, b, iterations=400, alpha=0.8, damping=delta)
    torch.testing.assert_close(got, exact, rtol=1e-10, atol=1e-12)
    # truncated: the error shrinks as the series grows
    errs = [(dn.damped_neumann_solve(lambda v: h @ v, b, i, 0.8, delta) - exact).norm() for i in (5, 20, 80)]
    assert errs[0] > errs[1] > errs[2]


def test_damping_makes_the_series_converge_on_an_indefinite_hessian(dn):
    h, delta = spd([-0.05, 0.3, 1.0, 2.0], seed=1), 0.1  # a saddle: one negative curvature
    b = torch.ones(4, dtype=torch.float64)
    damped = dn.damped_neumann_solve(lambda v: h @ v, b, iterations=3000, alpha=0.4, damping=delta)
    exact = torch.linalg.solve(h + delta * torch.eye(4, dtype=torch.float64), b)
    torch.testing.assert_close(damped, exact, rtol=1e-9, atol=1e-10)
    plain = neumann_solve(lambda v: h @ v, b, iterations=3000, alpha=0.4)
    assert plain.norm() > 1e6 * exact.norm(), "without damping the series diverges"


def test_the_method_equals_neumann_and_damped_exact_on_ridge(dn, ridge):
    p, lam = ridge.problem, ridge.lam.detach()
    batch = p.full_batch("train")
    h = torch.autograd.functional.hessian(lambda w: p.train_loss(w, lam, batch), ridge.w.detach())
    delta = 0.1
    alpha = 1.0 / (torch.linalg.eigvalsh(h).max().item() + delta)
    undamped = ridge.hypergradient(dn.DampedNeumann(iterations=7, alpha=alpha, damping=0.0))
    neumann = ridge.hypergradient("neumann", iterations=7, alpha=alpha)
    torch.testing.assert_close(undamped, neumann, rtol=1e-14, atol=1e-14)
    damped = ridge.hypergradient(dn.DampedNeumann(iterations=300, alpha=alpha, damping=delta))
    exact = ridge.hypergradient("exact", damping=delta)
    torch.testing.assert_close(damped, exact, rtol=1e-8, atol=1e-10)
    assert not torch.allclose(damped["log_decay"], ridge.hypergradient("exact")["log_decay"], rtol=1e-3)


def test_the_example_declares_its_entry_point_and_ships_no_yaml():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    meta = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    assert meta["build-system"]["build-backend"] == "setuptools.build_meta"
    assert meta["project"]["entry-points"]["hgbench"] == {"damped_neumann": "hgbench_example_plugin.damped_neumann"}
    assert not list(EXAMPLE.rglob("*.yaml")) and not list(EXAMPLE.rglob("*.yml"))
    assert "hgbench-plugins" in (EXAMPLE / "README.md").read_text()


def test_registered_at_run_time_it_is_listed_configured_and_checked(dn):
    with testing.registered(dn, name="damped_neumann"):  # the kit of docs/PLUGINS.md
        assert registry.get("hypergrad", "damped_neumann") is dn.DampedNeumann
        (row,) = [r for r in collect("hypergrad")["plugins"]["hypergrad"] if r["name"] == "damped_neumann"]
        assert row["origin"] == "run time" and row["config"] == "dataclass defaults"
        assert row["parameters"] == [
            {"name": "iterations", "type": "int", "default": 5},
            {"name": "alpha", "type": "float | null", "default": None},
            {"name": "damping", "type": "float", "default": 0.01},
        ]
        assert build_plugin("hypergrad", {"name": "damped_neumann", "damping": 0.1}).damping == 0.1
        with pytest.raises(ConfigError, match="hypergrad 'damped_neumann': damping must be >= 0, got -1"):
            build_plugin("hypergrad", {"name": "damped_neumann", "damping": -1})
        testing.check_registration("hypergrad", "damped_neumann")  # the contract checks of the built-ins
        testing.check_method("damped_neumann")
    assert "damped_neumann" not in registry.available("hypergrad")


# --- hgbench-plugins, in process (built-ins only: conftest switches entry points off) -----------


def test_hgbench_plugins_lists_every_kind_with_origin_and_parameters(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for kind in registry.KINDS:
        assert f"{kind} ({len(registry.available(kind))} registered" in out
        for name in registry.available(kind):
            assert f"\n  {name} " in out
    assert "built-in: hgbench.plugins.hypergrad.neumann" in out
    assert re.search(r"\n\s+alpha\s+float \| null\s+null\n", out)
    assert "hgbench.plugins.recorder.mlflow_recorder" in out and "on_run_start, on_hyper_step, on_run_end" in out
    assert "no plugin failed to load" in out


def test_hgbench_plugins_json_and_kind_filter(capsys):
    assert main(["--json", "--kind", "hypergrad"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert list(data["plugins"]) == ["hypergrad"] and data["failures"] == [] and data["modules"] == []
    by = {r["name"]: r for r in data["plugins"]["hypergrad"]}
    assert sorted(by) == registry.available("hypergrad")
    cg = by["cg"]
    assert cg["origin"] == "built-in" and cg["module"] == "hgbench.plugins.hypergrad.cg" and cg["config"] == "dataclass defaults"
    assert {p["name"]: (p["type"], p["default"]) for p in cg["parameters"]} == {
        "iterations": ("int", 10), "tol": ("float", 0.0), "damping": ("float", 0.0), "curvature": ("'hessian' | 'ggn'", "hessian"),
        "warm_start": ("bool", False), "hessian_batch_size": ("int | null", None),
        "preconditioner": ("'none' | 'jacobi' | 'nystrom' | 'kfac'", "none"), "preconditioner_rank": ("int", 100),
        "refresh_every": ("int", 10), "preconditioner_shift": ("float", 0.0)}
    with pytest.raises(SystemExit):
        main(["--kind", "nope"])


def test_a_failure_is_rendered_with_its_plugin_and_error():
    data = {"plugins": {}, "modules": [], "failures": [
        {"source": "bad (bad_mod)", "plugin": "bad", "distribution": "bad-dist", "version": "1.2", "error": "ImportError: no"}]}
    assert "failed to load (1)\n  bad (bad_mod) [bad-dist 1.2]: ImportError: no" in render(data)


# --- a real install of the example package, and a broken distribution ---------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """examples/hgbench-example-plugin installed by pip from its own pyproject into a target dir."""
    # offline, so no build isolation: the venv's setuptools builds it (>= 70.1 builds wheels without `wheel`)
    pytest.importorskip("setuptools", minversion="70.1", reason="building the example offline needs setuptools>=70.1 in the venv")
    tmp = tmp_path_factory.mktemp("example")
    src = tmp / "src"  # build from a copy: setuptools writes build/ and *.egg-info next to the sources
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"))
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(tmp / "site"), str(src)],
        check=False, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp / "site" / "hgbench_example_plugin-0.1.0.dist-info" / "entry_points.txt").is_file()
    return tmp / "site"


def fake_distribution(root: Path, dist: str, entry_point: str, module: str, source: str) -> Path:
    """A distribution as importlib.metadata finds it: a .dist-info (METADATA, entry_points.txt) on the path."""
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[hgbench]\n{entry_point} = {module}\n")
    (root / f"{module}.py").write_text(source)
    return root


def broken_distributions(root: Path) -> Path:
    """One plugin that raises on import, one with a mistyped hook name."""
    fake_distribution(root, "hgbench-broken-example", "broken_example", "hgbench_broken_example",
                      'raise RuntimeError("this plugin is broken on purpose")\n')
    return fake_distribution(root, "hgbench-typo-example", "typo_example", "hgbench_typo_example",
                             "from hgbench import hookimpl\n\n@hookimpl\ndef register_hypergradient():\n    return []\n")


def env_with(*paths: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HGBENCH_DISABLE_ENTRY_POINTS"}
    env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), *filter(None, [env.get("PYTHONPATH")])])
    return env


def hgbench(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hgbench.cli", *args], cwd=cwd, env=env, check=False, capture_output=True, text=True, timeout=300)


def mlflow_runs(cwd: Path):
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    return client.search_runs([client.get_experiment_by_name("hgbench").experiment_id])


@pytest.mark.slow
def test_the_installed_plugin_runs_in_a_grid_with_no_yaml(site, tmp_path, mlflow_db):
    out = hgbench(tmp_path, env_with(site), "-m", "hypergrad=damped_neumann,neumann", *TINY)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 jobs — 2 finished" in out.stdout
    runs = mlflow_runs(tmp_path)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    damped = [r for r in runs if r.data.tags["hgbench.hypergrad"] == "damped_neumann"]
    assert len(damped) == 1
    for r in damped:  # the config came from the dataclass defaults (ConfigStore), not a file
        assert r.data.params["hypergrad.damping"] == "0.01" and r.data.params["hypergrad.iterations"] == "5"
        assert r.data.metrics["hypergrad_norm"] > 0


@pytest.mark.slow
def test_plugins_that_fail_to_load_are_reported_and_the_others_still_run(site, tmp_path, mlflow_db):
    env = env_with(broken_distributions(tmp_path / "broken"), site)
    out = hgbench(tmp_path, env, "hypergrad=damped_neumann", "hypergrad.damping=0.1", "dataset=digits", "hyper_steps=2",
                  "inner_steps=1", "dataset.train_size=100", "dataset.val_size=50", "dataset.test_size=50")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "UserWarning: hgbench: plugin 'broken_example (hgbench_broken_example)' failed to import: " \
           "RuntimeError: this plugin is broken on purpose" in out.stderr
    assert "UserWarning: hgbench: plugin 'typo_example (hgbench_typo_example)' failed to register: " \
           "PluginValidationError: unknown hook register_hypergradient" in out.stderr
    (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "FINISHED" and run.data.tags["hgbench.hypergrad"] == "damped_neumann"
    assert run.data.params["hypergrad.damping"] == "0.1"

    script = Path(sys.executable).with_name("hgbench-plugins")  # the console script of pyproject
    listing = subprocess.run([str(script)], cwd=tmp_path, env=env, check=False, capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert "entry point 'damped_neumann' (hgbench-example-plugin 0.1.0)" in listing.stdout
    assert "failed to load (2)\n" in listing.stdout
    assert ("\n  broken_example (hgbench_broken_example) [hgbench-broken-example 0.1]: "
            "RuntimeError: this plugin is broken on purpose") in listing.stdout
    assert ("\n  typo_example (hgbench_typo_example) [hgbench-typo-example 0.1]: "
            "PluginValidationError: unknown hook register_hypergradient") in listing.stdout
    assert "broken_example" in listing.stderr  # and the warning

    js = subprocess.run([str(script), "--json"], cwd=tmp_path, env=env, check=False, capture_output=True, text=True, timeout=120)
    data = json.loads(js.stdout)
    (row,) = [r for r in data["plugins"]["hypergrad"] if r["name"] == "damped_neumann"]
    assert (row["origin"], row["entry_point"], row["distribution"], row["version"]) == (
        "entry point", "damped_neumann", "hgbench-example-plugin", "0.1.0")
    assert row["module"] == "hgbench_example_plugin.damped_neumann" and row["config"] == "dataclass defaults"
    assert {"name": "damping", "type": "float", "default": 0.01} in row["parameters"]
    assert sorted((f["plugin"], f["distribution"], f["error"].split(" (")[0]) for f in data["failures"]) == [
        ("broken_example", "hgbench-broken-example", "RuntimeError: this plugin is broken on purpose"),
        ("typo_example", "hgbench-typo-example", "PluginValidationError: unknown hook register_hypergradient")]
    assert "neumann" in {r["name"] for r in data["plugins"]["hypergrad"]}


@pytest.mark.slow
def test_the_examples_own_tests_pass_against_the_installed_package(site):
    """examples/hgbench-example-plugin/tests, as its author runs them: ``pytest`` in the package's
    folder with the package installed and entry points on — the test kit's fixture must not
    clash with the registration of the installed entry point (registry.register would)."""
    src = site.parent / "src"  # the copy the site fixture built from, tests/ included
    script = Path(sys.executable).with_name("pytest")
    out = subprocess.run([str(script), "-q", "-p", "no:cacheprovider"], cwd=src, env=env_with(site),
                         check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "4 passed" in out.stdout


# --- the guide cannot drift from the hookspecs ---------------------------------------------------


def hookspec_signatures() -> dict[str, str]:
    """Hook name -> ``def name(args) -> ret`` exactly as written in framework/hookspecs.py."""
    src = Path(hookspecs.__file__).read_text()
    lines = src.splitlines()
    out = {}
    for node in ast.parse(src).body:
        if isinstance(node, ast.FunctionDef) and any("hookspec" in ast.unparse(d) for d in node.decorator_list):
            head = "\n".join(lines[node.lineno - 1 : node.body[0].lineno - 1])  # the def line(s)
            out[node.name] = " ".join(head.split()).rstrip(":")
    return out


def test_every_hookspec_is_in_the_guide_with_its_full_signature():
    sigs = hookspec_signatures()
    specs = {n for n, f in vars(hookspecs).items() if callable(f) and hasattr(f, "hgbench_spec")}
    assert set(sigs) == specs and len(specs) >= 7
    guide = " ".join(GUIDE.read_text().split())
    for name, sig in sigs.items():
        assert sig in guide, f"docs/PLUGINS.md lacks `{sig}`"
        assert f"### `{name}`" in GUIDE.read_text(), f"docs/PLUGINS.md has no section for {name}"
