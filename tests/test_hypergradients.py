"""Every hypergradient method against ground truth, in float64.

- ridge regression with per-feature decay: closed-form w*(λ) and dL_V/dλ (derived by hand below,
  checked against finite differences of the closed form itself);
- the paper's theorem: at a fixed point, Neumann with i steps = unrolling i + 1 SGD steps;
- a tiny tanh MLP with per-weight decay: central finite differences of L_V(w*(λ)).
"""

from itertools import pairwise

import pytest
import torch

from hgbench.ift import ift_hypergradient
from helpers import finite_difference_hypergradient


def ridge_closed_form(exp, lam):
    """L_T = mean((Xw − y)²) + ½ Σ e^λ w², L_V = mean((X_v w − y_v)²), no bias."""
    d = exp.problem.data
    x, y, xv, yv = d.train.x, d.train.y, d.val.x, d.val.y
    n, m = len(x), len(xv)
    h = 2 * x.T @ x / n + torch.diag(lam.exp())
    w = torch.linalg.solve(h, 2 * x.T @ y / n)
    val = ((xv @ w - yv) ** 2).mean()
    gv = 2 * xv.T @ (xv @ w - yv) / m
    # dw*/dλ = −H⁻¹ diag(e^λ ⊙ w*)  ⇒  dL_V/dλ = −(e^λ ⊙ w*) ⊙ H⁻¹ g_V
    hyper = -(lam.exp() * w) * torch.linalg.solve(h, gv)
    return w, val, hyper, h


def at_ridge_optimum(exp):
    w, _, hyper, h = ridge_closed_form(exp, exp.lam.detach())
    exp.w = w.clone()
    return hyper, h


def test_ridge_closed_form_matches_finite_differences(ridge):
    lam = ridge.lam.detach()
    _, _, hyper, _ = ridge_closed_form(ridge, lam)
    eps = 1e-6
    fd = torch.stack([
        (ridge_closed_form(ridge, lam + eps * e)[1] - ridge_closed_form(ridge, lam - eps * e)[1]) / (2 * eps)
        for e in torch.eye(len(lam), dtype=lam.dtype)
    ])
    torch.testing.assert_close(hyper, fd, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("method,params", [("exact", {}), ("cg", {"iterations": 8}), ("cg", {"iterations": 100, "tol": 1e-12})])
def test_exact_and_cg_match_ridge_closed_form(ridge, method, params):
    hyper, _ = at_ridge_optimum(ridge)
    got = ridge.hypergradient(method, **params)["log_decay"]
    torch.testing.assert_close(got, hyper, rtol=1e-8, atol=1e-12)


def test_neumann_error_decreases_with_iterations_on_ridge(ridge):
    hyper, h = at_ridge_optimum(ridge)
    alpha = 1.0 / torch.linalg.eigvalsh(h).max().item()
    errors = [
        torch.linalg.norm(ridge.hypergradient("neumann", iterations=i, alpha=alpha)["log_decay"] - hyper).item()
        for i in (0, 2, 10, 50, 400)
    ]
    assert all(a > b for a, b in pairwise(errors)), errors
    assert errors[-1] < 1e-6 * torch.linalg.norm(hyper).item()


def test_identity_runs_and_equals_neumann_with_zero_iterations(ridge):
    at_ridge_optimum(ridge)
    ident = ridge.hypergradient("identity")["log_decay"]
    assert ident.shape == ridge.lam.shape and torch.isfinite(ident).all()
    torch.testing.assert_close(
        ridge.hypergradient("identity", scale=0.05)["log_decay"],
        ridge.hypergradient("neumann", iterations=0, alpha=0.05)["log_decay"],
    )


def test_alpha_null_uses_the_inner_learning_rate(ridge):
    at_ridge_optimum(ridge)
    torch.testing.assert_close(
        ridge.hypergradient("neumann", iterations=3)["log_decay"],
        ridge.hypergradient("neumann", iterations=3, alpha=ridge.inner_optimizer.lr)["log_decay"],
    )


@pytest.mark.parametrize("fixture", ["ridge", "tiny_mlp"])
@pytest.mark.parametrize("i", [0, 1, 4, 9])
def test_theorem_neumann_equals_unrolled_sgd_at_fixed_point(request, fixture, i):
    """Lorraine et al. (2020), Theorem: i Neumann steps of size α = i + 1 unrolled SGD steps, lr α."""
    exp = request.getfixturevalue(fixture)
    if fixture == "ridge":
        at_ridge_optimum(exp)
    alpha = exp.inner_optimizer.lr
    assert exp.inner_optimizer.momentum == 0
    neumann = exp.hypergradient("neumann", iterations=i, alpha=alpha)["log_decay"]
    unroll = exp.hypergradient("unroll", steps=i + 1)["log_decay"]
    torch.testing.assert_close(neumann, unroll, rtol=1e-8, atol=1e-12)
    # and it is not trivially true: one more unrolled step is a different sum
    assert not torch.allclose(neumann, exp.hypergradient("unroll", steps=i + 2)["log_decay"], rtol=1e-6, atol=0)


def test_exact_and_cg_match_finite_differences_on_tiny_mlp(tiny_mlp):
    exp = tiny_mlp
    fd = finite_difference_hypergradient(exp, range(exp.problem.num_hyperparams))
    assert fd.abs().max() > 1e-4  # the check has something to see
    exact = exp.hypergradient("exact")["log_decay"]
    torch.testing.assert_close(exact, fd, rtol=1e-4, atol=1e-6)  # FD truncation O(ε²), ε = 1e-4
    cg = exp.hypergradient("cg", iterations=200, tol=1e-14)["log_decay"]
    torch.testing.assert_close(cg, exact, rtol=1e-8, atol=1e-12)


def test_direct_term_is_included():
    """When L_V depends on λ directly, ∂L_V/∂λ is added: L_T = ½(w − λ)², L_V = ½w² + λ²."""
    w, lam = torch.tensor([0.3], dtype=torch.float64), torch.tensor([0.3], dtype=torch.float64)
    lt = lambda w, l: 0.5 * ((w - l) ** 2).sum()  # noqa: E731  w*(λ) = λ
    lv = lambda w, l: 0.5 * (w**2).sum() + (l**2).sum()  # noqa: E731  L_V(w*(λ)) = 1.5 λ²
    got = ift_hypergradient(lt, lv, w, lam, solve=lambda mv, b: b)  # H = 1
    torch.testing.assert_close(got, 3 * lam)


def test_exact_refuses_a_large_model_with_a_reason():
    from hgbench import build_experiment

    exp = build_experiment(hypergrad="exact", dataset="digits", overrides=["hypergrad.max_weights=100"])
    reason = exp.skip_reason()
    assert reason and "9,610" in reason and "max_weights=100" in reason and "cg or neumann" in reason
    result = exp.run()
    assert result.status == "SKIPPED" and "max_weights" in str(result.error)
