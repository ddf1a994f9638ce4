"""K-FAC (hgbench.kfac through curvlinops; the ``kfac`` method and ``preconditioner=kfac``): the
operator hgbench builds is curvlinops' own — checked densely against curvlinops' K-FAC and GGN on
a small net —, exact where K-FAC is (linear regression with one decay), preconditioned CG keeps
the answer, and the plugins skip cleanly, with the reason, where it cannot run."""

import sys
import types

import pytest
import torch
from torch import nn

from hgbench import build_experiment, registry

pytest.importorskip("curvlinops")

from hgbench import kfac  # noqa: E402

from test_hypergradients import at_ridge_optimum  # noqa: E402


def rel(a, b):
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)).item()


@pytest.fixture(scope="module")
def small_net():
    """digits, a 64-5-10 tanh MLP with per-weight decays spread over a decade, float64, trained a little."""
    exp = build_experiment(dataset="digits", model="mlp", hyperparam="weight_decay_per_param", overrides=[
        "dtype=float64", "model.hidden=[5]", "model.activation=tanh", "warmup=false", "dataset.train_size=60",
        "dataset.val_size=30", "dataset.test_size=10", "train_batch_size=null", "hyperparam.init_decay=1e-2"])
    g = torch.Generator().manual_seed(0)
    exp.lam.data += torch.rand(exp.problem.num_hyperparams, generator=g, dtype=torch.float64) * 2.3
    exp.train_inner(50)
    return exp


def test_kfac_is_curvlinops_own_operator_checked_densely(small_net):
    """The flat-vector operator hgbench builds (parameters in w's order, its loss scaling) against
    curvlinops' dense matrices: its GGN operator equals hgbench's Gauss–Newton product entry by
    entry, and the ``kfac`` method's v is (K + (d̄ + damping)·I)⁻¹ ∂L_V/∂w with K curvlinops' K-FAC
    materialised — so the hypergradient equals the IFT formula with that dense matrix."""
    from curvlinops import GGNLinearOperator

    exp = small_net
    tb, vb = exp.problem.full_batch("train"), exp.problem.full_batch("val")
    bl = exp.problem.bilevel(tb, vb, exp.w.detach(), exp.lam.detach())
    parts = bl.parts()
    n = exp.w.numel()
    eye = torch.eye(n, dtype=torch.float64)
    k_op = kfac.operator(parts, exp.w)
    k_dense = k_op @ eye
    ggn_dense = GGNLinearOperator(k_op._model_func, nn.CrossEntropyLoss(), k_op._params, [(tb.x, tb.y)],
                                  check_deterministic=False) @ eye
    w = exp.w.detach().requires_grad_(True)
    ours = bl.ggn(w, exp.lam.detach()).batched(eye)
    decay = exp.lam.detach().exp()
    torch.testing.assert_close(ggn_dense + torch.diag(decay), ours, rtol=1e-10, atol=1e-12)
    assert rel(k_dense, ggn_dense) > 1e-3  # K-FAC is an approximation here (two layers, cross-entropy) ...
    d_mean = kfac.penalty_diagonal_mean(parts, exp.w, exp.lam)
    assert d_mean == pytest.approx(decay.mean().item(), rel=1e-12)
    for damping in (0.0, 0.05):
        m = registry.get("hypergrad", "kfac")(damping=damping)
        got = exp.hypergradient_flat(m, tb, vb)
        solve = lambda mv, b, damping=damping: torch.linalg.solve(k_dense + (d_mean + damping) * eye, b)  # noqa: E731
        from hgbench.ift import ift_hypergradient

        want = ift_hypergradient(bl.train_loss, bl.val_loss, bl.w, bl.lam, solve)
        assert rel(got, want) < 1e-9, damping  # ... and the method applies exactly its damped inverse
        assert m.metrics()["penalty_mean"] == pytest.approx(d_mean)


def test_kfac_is_exact_on_linear_regression_with_one_decay():
    """One linear layer, squared error, one global decay: K-FAC = the Hessian, so ``kfac`` = ``exact``."""
    exp = build_experiment(dataset="synthetic_linear", model="linear", hyperparam="weight_decay", overrides=[
        "dtype=float64", "model.bias=false", "warmup=false", "dataset.num_features=6", "dataset.train_size=30",
        "dataset.val_size=20", "dataset.test_size=8"])
    exp.train_inner(50)
    tb, vb = exp.problem.full_batch("train"), exp.problem.full_batch("val")
    want = exp.hypergradient_flat(registry.get("hypergrad", "exact")(), tb, vb)
    got = exp.hypergradient_flat(registry.get("hypergrad", "kfac")(), tb, vb)
    assert rel(got, want) < 1e-10


def test_kfac_preconditioned_cg_keeps_the_answer(ridge, small_net):
    """``preconditioner=kfac`` changes the speed, never the answer: closed-form ridge (per-feature
    decays, where K-FAC with the mean decay is not the Hessian) and the dense Gauss–Newton solve."""
    hyper, _ = at_ridge_optimum(ridge)
    got = ridge.hypergradient("cg_kfac", iterations=100, tol=1e-13)["log_decay"]
    torch.testing.assert_close(got, hyper, rtol=1e-9, atol=1e-13)
    assert rel(ridge.hypergradient("kfac")["log_decay"], hyper) > 1e-3  # the method alone is not exact there
    exp = small_net
    dense = exp.hypergradient("exact", curvature="ggn", damping=0.01)["log_decay"]
    got = exp.hypergradient("cg", preconditioner="kfac", curvature="ggn", damping=0.01, iterations=400, tol=1e-12)["log_decay"]
    assert rel(got, dense) < 1e-8


def test_kfac_skips_with_the_reason(monkeypatch, ridge):
    """Without curvlinops (simulated: its import fails) both plugins skip naming the extra; a
    layer K-FAC does not cover is named; so is a family without a penalty."""
    kfac_cls, cg_kfac = registry.get("hypergrad", "kfac"), registry.get("hypergrad", "cg_kfac")
    assert kfac_cls().skip(ridge.problem) is None and cg_kfac().skip(ridge.problem) is None
    with monkeypatch.context() as mp:
        mp.setitem(sys.modules, "curvlinops", None)  # import curvlinops -> ImportError
        for m in (kfac_cls(), cg_kfac()):
            reason = m.skip(ridge.problem)
            assert reason and "curvlinops-for-pytorch" in reason and "hgbench[kfac]" in reason, reason
        assert registry.get("hypergrad", "cg")().skip(ridge.problem) is None  # the others run as before
    normed = types.SimpleNamespace(supports_ggn=True, carries_state=False,
                                   module=nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2)))
    reason = kfac_cls().skip(normed)
    assert "layer '1' (LayerNorm)" in reason and "Linear and Conv2d" in reason
    assert "layer '1' (LayerNorm)" in cg_kfac().skip(normed)
    no_penalty = types.SimpleNamespace(supports_ggn=False, carries_state=False, module=nn.Linear(3, 2))
    assert "penalty" in kfac_cls().skip(no_penalty)
