"""The solvers of hgbench.linalg against torch.linalg.solve on SPD matrices (float64)."""

import pytest
import torch

from hgbench.linalg import cg_solve, dense_solve, identity_solve, neumann_solve


def spd(n, cond=20.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=dtype))
    eig = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=dtype)
    return q @ torch.diag(eig) @ q.T, torch.randn(n, generator=g, dtype=dtype)


def test_cg_solves_exactly_in_n_steps():
    a, b = spd(12)
    x = cg_solve(lambda v: a @ v, b, iterations=12)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-9, atol=1e-9)


def test_cg_tolerance_stops_early_and_meets_it():
    a, b = spd(50, cond=5.0)
    calls = []
    x = cg_solve(lambda v: calls.append(1) or a @ v, b, iterations=50, tol=1e-6)
    assert len(calls) < 50
    assert torch.linalg.norm(a @ x - b) <= 1e-6 * torch.linalg.norm(b) * 1.0001


def test_cg_damping_solves_shifted_system():
    a, b = spd(10)
    x = cg_solve(lambda v: a @ v, b, iterations=10, damping=0.7)
    torch.testing.assert_close(x, torch.linalg.solve(a + 0.7 * torch.eye(10, dtype=a.dtype), b))


def test_neumann_is_the_truncated_series_and_converges():
    a, b = spd(10, cond=10.0)
    alpha = 1.0 / 10.0  # λ_max = 10
    m = torch.eye(10, dtype=a.dtype) - alpha * a
    for i in (0, 1, 3):
        series = alpha * sum(torch.linalg.matrix_power(m, j) @ b for j in range(i + 1))
        torch.testing.assert_close(neumann_solve(lambda v: a @ v, b, iterations=i, alpha=alpha), series)
    exact = torch.linalg.solve(a, b)
    errors = [torch.linalg.norm(neumann_solve(lambda v: a @ v, b, i, alpha) - exact).item() for i in (1, 10, 100, 1000)]
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 1e-8 * torch.linalg.norm(exact)


def test_identity_scales():
    b = torch.arange(3.0, dtype=torch.float64)
    torch.testing.assert_close(identity_solve(None, b, scale=0.5), 0.5 * b)


@pytest.mark.parametrize("batched", [False, True])
def test_dense_solve_builds_the_matrix(batched):
    a, b = spd(30)

    class MV:
        def __call__(self, v):
            return a @ v

    mv = MV()
    if batched:
        mv.batched = lambda vs: vs @ a.T
    torch.testing.assert_close(dense_solve(mv, b, chunk=7), torch.linalg.solve(a, b))
