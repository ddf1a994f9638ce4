"""The methods beyond the paper, each against the ground truth its theory names (float64):
fixed_point (AID-FP) on the inner optimiser's map, Nyström, DARTS' finite differences, SAMA,
warm starts, Neumann's automatic step size and curvature on its own minibatch."""

import pytest
import torch

from hgbench.optim import SGD, Adam
from test_hypergradients import at_ridge_optimum


def rel(a, b):
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)).item()


@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False)])
def test_fixed_point_on_sgd_is_neumann_with_the_learning_rate(ridge, momentum, nesterov):
    at_ridge_optimum(ridge)
    ridge.inner_optimizer = SGD(lr=0.05, momentum=momentum, nesterov=nesterov)
    ridge.inner_state = {"step": 3, "buf": torch.ones_like(ridge.w)} if momentum else {"step": 3}
    for i in (0, 1, 7):
        fp = ridge.hypergradient("fixed_point", iterations=i)["log_decay"]
        ne = ridge.hypergradient("neumann", iterations=i, alpha=0.05)["log_decay"]
        torch.testing.assert_close(fp, ne, rtol=1e-12, atol=1e-15)


def test_fixed_point_on_nesterov_is_neumann_with_step_lr_times_one_plus_mu(ridge):
    at_ridge_optimum(ridge)
    ridge.inner_optimizer = SGD(lr=0.05, momentum=0.5, nesterov=True)
    ridge.inner_state = {"step": 3, "buf": torch.zeros_like(ridge.w)}
    fp = ridge.hypergradient("fixed_point", iterations=4)["log_decay"]
    torch.testing.assert_close(fp, ridge.hypergradient("neumann", iterations=4, alpha=0.075)["log_decay"], rtol=1e-12, atol=1e-15)
    assert rel(fp, ridge.hypergradient("neumann", iterations=4, alpha=0.05)["log_decay"]) > 1e-3


def test_fixed_point_on_adam_differs_from_neumann_truncated_but_converges_to_the_closed_form(ridge):
    hyper, _ = at_ridge_optimum(ridge)
    ridge.inner_optimizer = Adam(lr=1.0)
    ridge.inner_state = {"step": 50, "m": torch.zeros_like(ridge.w), "v": torch.linspace(0.02, 0.2, ridge.problem.num_weights, dtype=torch.float64)}
    short = ridge.hypergradient("fixed_point", iterations=3)["log_decay"]
    assert rel(short, ridge.hypergradient("neumann", iterations=3, alpha=1.0)["log_decay"]) > 1e-2  # preconditioned
    assert rel(ridge.hypergradient("fixed_point", iterations=1000)["log_decay"], hyper) < 1e-8  # D cancels in the limit


def test_nystrom_with_full_rank_is_the_damped_exact_solve_and_converges_to_the_closed_form(ridge):
    hyper, _ = at_ridge_optimum(ridge)
    n = ridge.problem.num_weights
    torch.testing.assert_close(ridge.hypergradient("nystrom", rank=n, damping=0.3)["log_decay"],
                               ridge.hypergradient("exact", damping=0.3)["log_decay"], rtol=1e-10, atol=1e-14)
    assert rel(ridge.hypergradient("nystrom", rank=n, damping=1e-7)["log_decay"], hyper) < 1e-5
    low = ridge.hypergradient("nystrom", rank=3, damping=0.3)["log_decay"]  # random columns: finite, and not exact
    assert torch.isfinite(low).all() and rel(low, hyper) > 1e-3


def test_darts_finite_differences_equal_identity_where_the_mixed_term_is_linear_in_w(ridge):
    at_ridge_optimum(ridge)
    ident = ridge.hypergradient("identity", scale=0.3)["log_decay"]
    # ∂L_T/∂λ = ½e^λ w² is quadratic in w: its central difference is exact (up to rounding) at any ε
    for eps in (1.0, 1e-2):
        assert rel(ridge.hypergradient("darts_fd", scale=0.3, epsilon=eps)["log_decay"], ident) < 1e-10


def test_darts_finite_differences_converge_like_epsilon_squared(tiny_mlp):
    """With the Neumann inverse every Hessian-vector product is a finite difference too (of the
    tanh network's gradient, not quadratic): the error against the autograd Neumann falls ×100 per
    decade of ε."""
    ne = tiny_mlp.hypergradient("neumann", iterations=4, alpha=0.1)["log_decay"]
    errs = [rel(tiny_mlp.hypergradient("darts_fd", inverse="neumann", iterations=4, alpha=0.1, epsilon=e)["log_decay"], ne)
            for e in (1e-1, 1e-2, 1e-3)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-5, errs
    assert errs[0] / errs[1] > 30 and errs[1] / errs[2] > 30, errs


def test_sama_on_sgd_is_darts_with_the_learning_rate_and_adapts_to_adam(ridge):
    at_ridge_optimum(ridge)
    ridge.inner_optimizer = SGD(lr=0.05)
    torch.testing.assert_close(ridge.hypergradient("sama")["log_decay"],
                               ridge.hypergradient("darts_fd", scale=0.05)["log_decay"], rtol=1e-10, atol=1e-14)
    ridge.inner_optimizer = Adam(lr=0.01)
    v = torch.linspace(0.01, 1.0, ridge.problem.num_weights, dtype=torch.float64)
    ridge.inner_state = {"step": 100, "m": torch.zeros_like(ridge.w), "v": v}
    d = 0.01 * 0.1 / (1 - 0.9**101) / (torch.sqrt(0.999 * v / (1 - 0.999**101)) + 1e-8)  # ∂L_T/∂w = 0 at the optimum
    bl = ridge.problem.bilevel(ridge.problem.full_batch("train"), ridge.problem.full_batch("val"), ridge.w, ridge.lam.detach())
    from hgbench.ift import ift_hypergradient

    want = ift_hypergradient(bl.train_loss, bl.val_loss, bl.w, bl.lam, lambda mv, b: d * b)
    torch.testing.assert_close(ridge.hypergradient("sama")["log_decay"], want, rtol=1e-8, atol=1e-14)


def test_fixed_point_and_sama_use_the_rate_of_the_step_the_inner_loop_takes_next_neumann_the_base_rate(ridge):
    """With a decaying rate (decay 0.5 every 2 steps) after 5 steps the next step's rate is
    0.05 · 0.5² = 0.0125: fixed_point is Neumann with that step size, SAMA is DARTS with it."""
    at_ridge_optimum(ridge)
    ridge.inner_optimizer = SGD(lr=0.05, decay=0.5, decay_every=2)
    ridge.inner_state = {"step": 5}
    torch.testing.assert_close(ridge.hypergradient("fixed_point", iterations=3)["log_decay"],
                               ridge.hypergradient("neumann", iterations=3, alpha=0.0125)["log_decay"], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(ridge.hypergradient("sama")["log_decay"],
                               ridge.hypergradient("darts_fd", scale=0.0125)["log_decay"], rtol=1e-10, atol=1e-14)
    assert rel(ridge.hypergradient("sama")["log_decay"], ridge.hypergradient("darts_fd", scale=0.05)["log_decay"]) > 1e-3
    # neumann's alpha=null is the base rate, not the decayed one (its documented choice)
    torch.testing.assert_close(ridge.hypergradient("neumann", iterations=3)["log_decay"],
                               ridge.hypergradient("neumann", iterations=3, alpha=0.05)["log_decay"], rtol=1e-12, atol=1e-15)
    assert rel(ridge.hypergradient("neumann", iterations=3)["log_decay"],
               ridge.hypergradient("neumann", iterations=3, alpha=0.0125)["log_decay"]) > 1e-3


def test_sama_skips_an_inner_optimiser_it_has_no_update_jacobian_for(ridge):
    from hgbench.config import build_plugin

    class Other:
        lr = 0.1

    ridge.problem.inner_optimizer = Other()
    why = build_plugin("hypergrad", {"name": "sama"}).skip(ridge.problem)
    assert why and "SGD and Adam" in why and "Other" in why


@pytest.mark.parametrize("method,params", [("cg", {"iterations": 3}), ("neumann", {"iterations": 3, "alpha": 0.1}),
                                           ("fixed_point", {"iterations": 3})])
def test_a_warm_start_continues_from_the_last_solution_and_costs_one_more_product(ridge, method, params):
    from hgbench.config import build_plugin
    from hgbench.ift import count_products

    hyper, _ = at_ridge_optimum(ridge)
    ridge.inner_optimizer = SGD(lr=0.1)
    cold = build_plugin("hypergrad", {"name": method, **params})
    warm = build_plugin("hypergrad", {"name": method, **params, "warm_start": True})
    errs, calls = [], []
    for _ in range(4):  # the same point again and again: each warm solve continues the last one
        with count_products() as n:
            errs.append(rel(ridge.hypergradient(warm)["log_decay"], hyper))
        calls.append(n.value)
    with count_products() as n:
        cold_err = rel(ridge.hypergradient(cold)["log_decay"], hyper)
    assert n.value == 3 and calls == [3, 4, 4, 4], calls
    assert errs[0] == pytest.approx(cold_err, rel=1e-12)
    assert errs[1] < errs[0] and errs[3] < errs[2] < errs[1], errs
    assert warm.state and not cold.state


def test_a_warm_start_survives_a_checkpoint_and_the_warm_up_leaves_it_alone():
    from hgbench import build_experiment

    groups = {"dataset": "synthetic_linear", "model": "linear", "hyperparam": "weight_decay_per_param", "hypergrad": "cg"}
    common = ["hypergrad.warm_start=true", "hypergrad.iterations=2", "inner_steps=2", "dtype=float64"]
    whole = build_experiment(overrides=[*common, "hyper_steps=6"], **groups)
    whole.run()
    half = build_experiment(overrides=[*common, "hyper_steps=3"], **groups)
    half.run()
    state = half.state_dict()
    assert "x0" in state["method_state"]
    rest = build_experiment(overrides=[*common, "hyper_steps=6"], **groups)
    rest.load_state_dict(state)
    rest.run()
    torch.testing.assert_close(rest.lam, whole.lam, rtol=0, atol=0)
    cold = build_experiment(overrides=[*common[1:], "hyper_steps=6"], **groups)
    cold.run()
    assert not torch.equal(cold.lam, whole.lam)  # the warm start changed the answers: the test can fail


def test_neumann_alpha_auto_uses_the_largest_eigenvalue_and_logs_it(ridge):
    from hgbench.config import build_plugin

    hyper, h = at_ridge_optimum(ridge)
    eig = torch.linalg.eigvalsh(h).max().item()
    m = build_plugin("hypergrad", {"name": "neumann", "alpha": "auto", "iterations": 300, "power_iterations": 50})
    got = ridge.hypergradient(m)["log_decay"]
    assert m.metrics()["alpha"] == pytest.approx(1 / eig, rel=1e-3) and m.metrics()["eig_max"] == pytest.approx(eig, rel=1e-3)
    assert rel(got, hyper) < 1e-4
    bad = ridge.hypergradient("neumann", alpha=3.0 / eig, iterations=60)["log_decay"]  # a hand-picked α past 2/λ_max
    assert not torch.isfinite(bad).all() or rel(bad, hyper) > 1e3


def test_hessian_batch_size_uses_a_minibatch_of_its_own(ridge):
    hyper, _ = at_ridge_optimum(ridge)
    n = len(ridge.problem.data.train.x)
    full = ridge.hypergradient("cg", iterations=50, hessian_batch_size=n)["log_decay"]
    torch.testing.assert_close(full, hyper, rtol=1e-8, atol=1e-12)  # the whole split: the same Hessian
    torch.manual_seed(0)
    draws = torch.stack([ridge.hypergradient("cg", iterations=50, hessian_batch_size=8)["log_decay"] for _ in range(3)])
    assert torch.isfinite(draws).all() and (draws[0] - draws[1]).abs().max() > 0  # another batch each time: variance


@pytest.mark.filterwarnings("ignore:hgbench. plugin")
def test_a_plugins_own_failure_is_shown_with_its_name_and_the_errors_type(tmp_path):
    from dataclasses import dataclass
    from types import SimpleNamespace

    from hgbench import Dataset, HypergradientMethod, hookimpl, registry
    from helpers import hgbench_in_process

    @dataclass
    class Boom(HypergradientMethod):
        name = "boom_method"

        def compute(self, problem):
            raise RuntimeError("boom in compute")

    @dataclass
    class BadData(Dataset):
        name = "boom_data"

        def load(self):
            raise OSError("cannot read boom.csv")

    holder = SimpleNamespace(register_hypergradients=hookimpl(lambda: [Boom]), register_datasets=hookimpl(lambda: [BadData]))
    registry.register(holder, name="boom_plugins")
    try:
        base = ["mlflow.enabled=false", "hyper_steps=1", "inner_steps=1", "dataset=synthetic_linear", "model=linear",
                "hyperparam=weight_decay", "progress=false"]
        r = hgbench_in_process(tmp_path, *base, "hypergrad=boom_method")
        assert r.returncode == 1 and "reason: hypergrad 'boom_method' compute() raised RuntimeError: boom in compute" in r.stdout
        r = hgbench_in_process(tmp_path, *base[:3], "dataset=boom_data", *base[4:], "hypergrad=identity")
        assert "dataset 'boom_data' load() raised OSError: cannot read boom.csv" in r.stdout + r.stderr, r.stdout + r.stderr
    finally:
        registry.unregister("boom_plugins")


def test_the_alpha_a_run_used_is_recorded_every_hyper_step():
    from hgbench import build_experiment

    exp = build_experiment(dataset="synthetic_linear", model="linear", hyperparam="weight_decay_per_param", hypergrad="neumann",
                           overrides=["hypergrad.alpha=auto", "hypergrad.power_iterations=3", "dtype=float64", "inner_steps=2"])
    m1, m2 = exp.hyper_step(1), exp.hyper_step(2)
    assert m1["hypergrad/alpha"] > 0 and m1["hypergrad/alpha"] == pytest.approx(1 / m1["hypergrad/eig_max"])
    assert m1["hvp_calls"] == 3 + 5  # the power iterations are counted with the series' products
    assert "eigvec" in exp.state_dict()["method_state"] and m2["hypergrad/alpha"] > 0


def test_the_product_counter_counts_only_inside_its_block_and_nests():
    from hgbench.ift import HessianVectorProduct, count_products

    w = torch.randn(3, requires_grad=True)
    (g,) = torch.autograd.grad((w ** 4).sum(), w, create_graph=True)
    hvp = HessianVectorProduct(g, w)
    hvp(torch.ones(3))  # outside any block: nobody counts it, and nothing accumulates
    with count_products() as outer:
        hvp(torch.ones(3))
        with count_products() as inner:
            hvp.batched(torch.eye(3))
        hvp(torch.ones(3))
    hvp(torch.ones(3))
    assert (inner.value, outer.value, hvp.calls) == (3, 5, 7)
    with count_products() as fresh:
        pass
    assert fresh.value == 0  # a new block starts from zero, whatever ran before
