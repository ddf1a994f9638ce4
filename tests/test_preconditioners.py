"""Preconditioned Krylov solves (``preconditioner``: jacobi, nystrom — hgbench.base.Preconditioner,
hgbench.linalg): the same answer as the plain solve in float64 (closed-form ridge, a dense
Gauss–Newton solve), fewer iterations where the curvature is ill-conditioned, the preconditioner
reused across hyper-steps and rebuilt every ``refresh_every``, and what a run records."""

import pytest
import torch

from hgbench import registry
from hgbench.ift import count_products
from hgbench.linalg import NystromPreconditioner, cg_solve, diagonal, minres_solve, nystrom_sketch

from test_hypergradients import at_ridge_optimum

PRECONDITIONED = [("jacobi", {}), ("jacobi", {"preconditioner_rank": 3}), ("nystrom", {"preconditioner_rank": 3}),
                  ("nystrom", {"preconditioner_rank": 50})]


def rel(a, b):
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)).item()


def ill_conditioned(n=120, seed=0):
    """An SPD matrix with eigenvalues spread over six decades (fast decay at the top) and a b."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    eigs = torch.cat([torch.logspace(6, 1, 15, dtype=torch.float64), torch.linspace(1, 2, n - 15, dtype=torch.float64)])
    return q @ torch.diag(eigs) @ q.T, torch.randn(n, generator=g, dtype=torch.float64), eigs


class Product:
    """v ↦ A v with a batched form, as hgbench's curvature products have."""

    def __init__(self, a):
        self.a = a

    def __call__(self, v):
        return self.a @ v

    def batched(self, vs):
        return vs @ self.a.T


@pytest.mark.parametrize("solver", ["cg", "minres"])
def test_every_preconditioner_gives_the_closed_form_on_ridge(ridge, solver):
    """Preconditioning changes the speed, never the answer: float64 ridge, tight tolerance — the
    exact diagonal (n = 8 ≤ rank 100) and Hutchinson's (3 probes), a rank-3 and a full sketch."""
    hyper, _ = at_ridge_optimum(ridge)
    torch.manual_seed(0)
    plain = ridge.hypergradient(solver, iterations=100, tol=1e-13)["log_decay"]
    for pc, settings in PRECONDITIONED:
        got = ridge.hypergradient(solver, iterations=100, tol=1e-13, preconditioner=pc, **settings)["log_decay"]
        torch.testing.assert_close(got, hyper, rtol=1e-9, atol=1e-13)
        torch.testing.assert_close(got, plain, rtol=1e-9, atol=1e-13)


def test_every_preconditioner_gives_the_dense_gauss_newton_solve(tiny_mlp):
    """The tiny tanh MLP at its optimum, ``curvature=ggn``: preconditioned CG = the dense solve of
    the Gauss–Newton matrix (``exact``), with and without damping."""
    torch.manual_seed(0)
    for damping in (0.0, 0.1):
        dense = tiny_mlp.hypergradient("exact", curvature="ggn", damping=damping)["log_decay"]
        for pc, settings in PRECONDITIONED:
            got = tiny_mlp.hypergradient("cg", curvature="ggn", damping=damping, iterations=200, tol=1e-13, preconditioner=pc,
                                         **settings)["log_decay"]
            assert rel(got, dense) < 1e-9, (pc, settings, damping, rel(got, dense))


def test_nystrom_preconditioned_cg_needs_fewer_iterations_on_an_ill_conditioned_system():
    a, b, eigs = ill_conditioned()
    want = torch.linalg.solve(a, b)
    torch.manual_seed(0)
    u, lam = nystrom_sketch(Product(a), b, rank=20)
    torch.testing.assert_close(lam[:10], eigs[:10], rtol=0.05, atol=0)  # the sketch finds the top of the spectrum
    m = NystromPreconditioner(u, lam)
    used = {}
    for name, solve in (("cg", cg_solve), ("minres", minres_solve)):
        for label, kw in (("plain", {}), ("nystrom", {"M": m})):
            info = {}
            x = solve(Product(a), b, iterations=1000, tol=1e-10, info=info, **kw)
            assert rel(x, want) < 1e-7, (name, label)
            used[name, label] = info["iterations"]
        assert used[name, "nystrom"] * 3 < used[name, "plain"], used
    # the Jacobi baseline on a diagonally dominant system with a spread diagonal
    d = torch.logspace(0, 5, 120, dtype=torch.float64)
    a2 = torch.diag(d) + 0.1 * torch.ones(120, 120, dtype=torch.float64)
    diag, exact = diagonal(Product(a2), b, probes=120)
    assert exact and torch.equal(diag, a2.diagonal())
    plain, jac = {}, {}
    cg_solve(Product(a2), b, iterations=1000, tol=1e-10, info=plain)
    cg_solve(Product(a2), b, iterations=1000, tol=1e-10, info=jac, M=lambda v: v / diag)
    assert jac["iterations"] * 3 < plain["iterations"], (jac, plain)


def test_hutchinson_estimates_the_diagonal():
    a = torch.diag(torch.logspace(0, 2, 200, dtype=torch.float64)) + 0.1 * torch.ones(200, 200, dtype=torch.float64)
    torch.manual_seed(0)
    est, exact = diagonal(Product(a), a[0], probes=100)
    assert not exact and rel(est, a.diagonal()) < 0.1


def test_the_preconditioner_is_reused_and_rebuilt_every_refresh_every(ridge):
    """Built at the first hyper-step (its products counted), reused while w moves, rebuilt every
    ``refresh_every``; warm start and preconditioner together; the counts are the method's
    metrics (``hypergrad/<key>`` in a run) and its state (so in a checkpoint)."""
    hyper, _ = at_ridge_optimum(ridge)
    cls = registry.get("hypergrad", "cg_nystrom")
    m = cls(iterations=100, tol=1e-10, preconditioner_rank=4, refresh_every=2, warm_start=True)
    tb, vb = ridge.problem.full_batch("train"), ridge.problem.full_batch("val")
    seen = []
    for _ in range(5):
        with count_products() as n:
            got = ridge.hypergradient_flat(m, tb, vb)
        seen.append((n.value, m.metrics()))
        assert rel(got, hyper) < 1e-8
    refreshes = [s["preconditioner_refreshes"] for _, s in seen]
    assert refreshes == [1, 1, 2, 2, 3]
    assert [s["preconditioner_products"] for _, s in seen] == [4, 0, 4, 0, 4]
    # every product is the sketch's, the loop's or the warm start's residual
    assert all(n == s["preconditioner_products"] + s["iterations"] + (i > 0) for i, (n, s) in enumerate(seen))
    assert seen[0][1]["iterations"] > 0 and seen[1][1]["iterations"] == 0  # same point: the warm start is the answer
    assert set(m.state_dict()) >= {"pc_u", "pc_eigs", "pc_age", "pc_refreshes", "x0"}


def test_a_run_logs_iterations_and_refreshes(ridge):
    ridge.method = registry.get("hypergrad", "cg")(iterations=50, tol=1e-8, preconditioner="nystrom", preconditioner_rank=3,
                                                   refresh_every=3)
    out = [ridge.hyper_step(step) for step in range(4)]
    assert [o["hypergrad/preconditioner_refreshes"] for o in out] == [1, 1, 1, 2]
    assert all(0 < o["hypergrad/iterations"] < 50 for o in out)
    assert out[0]["hvp_calls"] == 3 + out[0]["hypergrad/iterations"]


def test_preconditioner_options_are_checked():
    cg = registry.get("hypergrad", "cg")
    for bad, match in (({"preconditioner": "ilu"}, "preconditioner must be one of none, jacobi, nystrom, kfac"),
                       ({"preconditioner_rank": 0}, "preconditioner_rank must be >= 1"),
                       ({"refresh_every": 0}, "refresh_every must be >= 1"),
                       ({"preconditioner_shift": -1.0}, "preconditioner_shift must be >= 0")):
        with pytest.raises(ValueError, match=match):
            cg(**bad)
    assert registry.get("hypergrad", "cg_jacobi")().preconditioner == "jacobi"
    assert registry.get("hypergrad", "minres")(preconditioner="nystrom").preconditioner == "nystrom"


def test_the_frontier_lists_the_preconditioned_variants_without_edits(ridge):
    """``hgbench-bench frontier`` builds its method list from the registry: the preset variants
    are there at every budget of their iterations, beside ``cg``."""
    from hgbench.benchmarks import frontier

    nodes = frontier.points(ridge, quick=True)
    series = {label for label, _ in nodes}
    assert {"cg", "cg_nystrom", "cg_jacobi", "cg_nystrom (ggn)", "cg_kfac", "kfac"} <= series
    assert [n["iterations"] for label, n in nodes if label == "cg_nystrom"] == list(frontier.QUICK_BUDGETS)
