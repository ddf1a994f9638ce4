"""The options several hypergradient methods share (curvature, hessian_batch_size, damping,
warm_start) are each declared once, in a base class of hgbench.base; a method has one by deriving
from it, a misspelt option is refused naming the valid ones, and a new Krylov method is a few
lines."""

import dataclasses
from dataclasses import dataclass

import pytest
import torch

from hgbench import ConfigError, Curvature, Damping, KrylovMethod, Preconditioner, WarmStart, registry
from hgbench.api import compose_config
from hgbench.cli_checks import check_overrides
from hgbench.config import build_plugin
from hgbench.linalg import cg_solve, minres_solve

from test_hypergradients import at_ridge_optimum

SHARED = {"curvature": Curvature, "hessian_batch_size": Curvature, "damping": Damping, "warm_start": WarmStart,
          **dict.fromkeys(("preconditioner", "preconditioner_rank", "refresh_every", "preconditioner_shift"), Preconditioner)}


def methods():
    return {name: registry.get("hypergrad", name) for name in registry.available("hypergrad")}


def rel(a, b):
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)).item()


def test_a_method_has_a_shared_option_only_through_its_base_class():
    having = set()
    for name, cls in methods().items():
        for f in dataclasses.fields(cls):
            if f.name in SHARED:
                assert issubclass(cls, SHARED[f.name]), f"{name}.{f.name} is declared outside {SHARED[f.name].__name__}"
                having.add(f.name)
    assert having == set(SHARED)
    # the methods that had these options before they were shared still have them
    assert {n for n, c in methods().items() if issubclass(c, Curvature)} >= {"cg", "minres", "neumann", "nystrom", "exact"}
    assert {n for n, c in methods().items() if issubclass(c, WarmStart)} >= {"cg", "neumann", "fixed_point"}


@pytest.mark.parametrize("name", ["cg", "minres", "neumann", "nystrom", "exact"])
def test_every_curvature_method_takes_the_curvature_overrides(name):
    cfg = compose_config([f"hypergrad={name}", "hypergrad.curvature=ggn", "hypergrad.hessian_batch_size=8"])
    method = build_plugin("hypergrad", cfg.hypergrad)
    assert isinstance(method, Curvature) and (method.curvature, method.hessian_batch_size) == ("ggn", 8)
    with pytest.raises(ValueError, match="hessian_batch_size must be >= 1 or null, got 0"):
        type(method)(hessian_batch_size=0)
    with pytest.raises(ValueError, match="curvature must be 'hessian' or 'ggn', got 'gnn'"):
        type(method)(curvature="gnn")


def test_damping_is_checked_once_and_nystrom_needs_it_positive():
    for cls in methods().values():
        if issubclass(cls, Damping):
            with pytest.raises(ValueError, match="damping must be >= 0, got -1"):
                cls(damping=-1.0)
    nystrom = registry.get("hypergrad", "nystrom")
    assert nystrom().damping == 1.0  # its own default: nystrom scales missed directions by 1/damping
    with pytest.raises(ValueError, match="damping must be > 0"):
        nystrom(damping=0.0)


def test_a_misspelt_option_is_refused_naming_the_valid_ones():
    # on the command line, before Hydra runs
    line = check_overrides(["hypergrad=cg", "hypergrad.curvatur=ggn"])
    assert line is not None and "did you mean hypergrad.curvature?" in line
    assert "curvature, damping, hessian_batch_size, iterations, name, preconditioner, preconditioner_rank, preconditioner_shift, " \
           "refresh_every, tol, warm_start" in line
    # nystrom's damping is no longer called rho
    line = check_overrides(["hypergrad=nystrom", "hypergrad.rho=0.3"])
    assert line is not None and "unknown key 'rho'" in line and "damping" in line
    # added with +: refused when the config is checked
    cfg = compose_config(["hypergrad=cg", "+hypergrad.curvatur=ggn"])
    with pytest.raises(ConfigError, match=r"hypergrad.curvatur: unknown parameter of hypergrad 'cg'.*Allowed: curvature, damping"):
        build_plugin("hypergrad", cfg.hypergrad)
    # and in Python, the dataclass refuses it
    with pytest.raises(TypeError, match="curvatur"):
        registry.get("hypergrad", "cg")(curvatur="ggn")


def test_a_new_krylov_method_is_a_few_lines_and_has_every_shared_option(ridge):
    def steepest_descent(matvec, b, iterations, tol=0.0, damping=0.0, x0=None):
        """Steepest descent with exact line search on (H + damping·I) x = b: slow, but a solver of its own."""
        x = torch.zeros_like(b) if x0 is None else x0.clone()
        for _ in range(iterations):
            r = b - matvec(x) - damping * x
            if torch.linalg.vector_norm(r) <= tol * torch.linalg.vector_norm(b):
                break
            x = x + (r @ r) / (r @ (matvec(r) + damping * r)) * r
        return x

    @dataclass
    class SteepestDescent(KrylovMethod):
        name = "steepest_descent"
        solver = steepest_descent

    hyper, _ = at_ridge_optimum(ridge)
    assert {f.name for f in dataclasses.fields(SteepestDescent)} == {
        "curvature", "hessian_batch_size", "damping", "warm_start", "iterations", "tol",
        "preconditioner", "preconditioner_rank", "refresh_every", "preconditioner_shift"}
    exact = ridge.hypergradient("exact")["log_decay"]
    assert rel(exact, hyper) < 1e-8
    got = ridge.hypergradient(SteepestDescent(iterations=3000, tol=1e-12))["log_decay"]
    assert rel(got, exact) < 1e-6
    assert rel(ridge.hypergradient(SteepestDescent(iterations=2))["log_decay"], exact) > 1e-3  # it does iterate
    damped = ridge.hypergradient(SteepestDescent(iterations=3000, tol=1e-12, damping=0.5))["log_decay"]
    assert rel(damped, ridge.hypergradient("exact", damping=0.5)["log_decay"]) < 1e-6
    # warm start: the second solve starts at the first's answer, so few iterations suffice
    warm = SteepestDescent(iterations=3000, tol=1e-12, warm_start=True)
    ridge.hypergradient(warm)
    warm.iterations = 1
    assert rel(ridge.hypergradient(warm)["log_decay"], exact) < 1e-6
    with pytest.raises(ValueError, match="iterations must be >= 0"):
        SteepestDescent(iterations=-1)
    with pytest.raises(ValueError, match="steepest_descent's solver takes no preconditioner"):
        SteepestDescent(preconditioner="nystrom")  # its solver has no M=

    @dataclass
    class NoSolver(KrylovMethod):
        name = "no_solver"

    with pytest.raises(TypeError, match="NoSolver is a KrylovMethod without a solver"):
        NoSolver()


@pytest.mark.parametrize("solve", [cg_solve, minres_solve])
def test_a_warm_start_solves_the_same_system(solve):
    g = torch.Generator().manual_seed(0)
    m = torch.randn(12, 12, generator=g, dtype=torch.float64)
    a = m @ m.T + 12 * torch.eye(12, dtype=torch.float64)
    b = torch.randn(12, generator=g, dtype=torch.float64)
    want = torch.linalg.solve(a + 0.3 * torch.eye(12, dtype=torch.float64), b)
    near = want + 1e-4 * torch.randn(12, generator=g, dtype=torch.float64)
    cold = solve(lambda v: a @ v, b, iterations=3, damping=0.3)
    warm = solve(lambda v: a @ v, b, iterations=3, damping=0.3, x0=near)
    assert rel(warm, want) < 0.1 * rel(cold, want)  # the guess helps,
    assert rel(warm, want) < 0.5 * rel(near, want)  # and the solver improves on it (the residual is b − (H + δI)x0)
    torch.testing.assert_close(solve(lambda v: a @ v, b, iterations=12, damping=0.3, x0=near), want)
