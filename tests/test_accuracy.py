"""Hypergradient accuracy as a measured quantity: MINRES, Lanczos and the Gauss–Newton curvature
against dense float64 computations, and the per-run accuracy checks (``reference.every``)."""

import math
from itertools import pairwise

import pytest
import torch
from helpers import hgbench_in_process
from mlflow.tracking import MlflowClient

from hgbench import build_experiment
from hgbench.ift import HessianVectorProduct
from hgbench.linalg import lanczos_extremes, minres_solve

F64 = torch.float64


def indefinite(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    ev = torch.linspace(-2.0, 6.0, n, dtype=F64)
    ev[ev.abs() < 0.2] = 0.7  # nonsingular
    return q @ torch.diag(ev) @ q.T, ev, torch.randn(n, generator=g, dtype=F64)


@pytest.mark.parametrize("damping", [0.0, 0.5])
def test_minres_solves_symmetric_indefinite_systems_like_a_dense_solve(damping):
    a, _, b = indefinite()
    want = torch.linalg.solve(a + damping * torch.eye(len(b), dtype=F64), b)
    got = minres_solve(lambda v: a @ v, b, iterations=200, damping=damping)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # the residual never grows with more iterations (CG's can, on an indefinite matrix)
    res = [torch.linalg.vector_norm(a @ minres_solve(lambda v: a @ v, b, iterations=k) - b).item() for k in range(1, 30)]
    assert all(r2 <= r1 * (1 + 1e-10) for r1, r2 in pairwise(res))
    # and a tolerance stops it early, with the residual it promises
    x = minres_solve(lambda v: a @ v, b, iterations=200, tol=1e-6)
    assert torch.linalg.vector_norm(a @ x - b) <= 1e-6 * torch.linalg.vector_norm(b) * 1.01


def test_lanczos_ritz_values_bound_the_spectrum_from_inside_and_reach_it():
    a, ev, b = indefinite()
    hi, lo = lanczos_extremes(lambda v: a @ v, len(b), steps=len(b), like=b)
    assert hi == pytest.approx(ev.max().item(), rel=1e-10) and lo == pytest.approx(ev.min().item(), rel=1e-10)
    hi5, lo5 = lanczos_extremes(lambda v: a @ v, len(b), steps=8, like=b)
    assert ev.min().item() - 1e-12 <= lo5 <= hi5 <= ev.max().item() + 1e-12
    assert lo5 < 0  # already proves the matrix indefinite


def dense_ggn(exp, batch):
    """Jᵀ H_ℓ J + ∇²P built from full Jacobians and Hessians (torch.autograd.functional)."""
    p, lam = exp.problem, exp.problem.lam_spec.unflatten(exp.lam.detach())
    w = exp.w.detach()
    f = lambda w_: p.forward(w_, batch.x).reshape(-1)  # noqa: E731
    z = f(w)
    jac = torch.autograd.functional.jacobian(f, w)
    h_l = torch.autograd.functional.hessian(lambda z_: p.data_loss(z_.reshape(p.forward(w, batch.x).shape), batch.y), z)
    h_p = torch.autograd.functional.hessian(lambda w_: p.family.penalty(w_, lam, p.ctx), w)
    return jac.T @ h_l @ jac + h_p


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_the_gauss_newton_product_is_the_dense_ggn(tiny_mlp, task):
    exp = tiny_mlp if task == "regression" else build_experiment(
        dataset="digits", overrides=["model.hidden=[3]", "dtype=float64", "dataset.train_size=20", "dataset.val_size=10",
                                     "hyperparam=weight_decay_per_param", "hyperparam.init_decay=0.01"])
    batch = exp.problem.full_batch("train")
    g = dense_ggn(exp, batch)
    w = exp.w.detach().requires_grad_(True)
    prod = exp.problem.ggn_product(batch)(w, exp.lam.detach())
    cols = torch.stack([prod(e) for e in torch.eye(len(w), dtype=F64)])
    torch.testing.assert_close(cols, g, rtol=1e-10, atol=1e-12)
    assert torch.linalg.eigvalsh(0.5 * (g + g.T)).min() > 0  # PD (decay > 0), where H need not be


def test_for_a_linear_model_the_ggn_is_the_hessian_and_every_method_matches_the_ridge_closed_form(ridge):
    from test_hypergradients import at_ridge_optimum

    hyper, _ = at_ridge_optimum(ridge)
    for method, params in [("exact", {}), ("cg", {"iterations": 100, "tol": 1e-13}), ("minres", {"iterations": 100, "tol": 1e-13}),
                           ("minres", {"iterations": 100, "tol": 1e-13, "curvature": "hessian"})]:
        kw = {"curvature": "ggn", **params}
        got = ridge.hypergradient(method, **kw)["log_decay"]
        torch.testing.assert_close(got, hyper, rtol=1e-8, atol=1e-12, msg=f"{method} {kw}")


def test_methods_on_the_ggn_compute_the_ift_formula_with_the_dense_ggn(tiny_mlp):
    exp = tiny_mlp
    exp.train_inner(3)  # off the optimum, where the Hessian and the GGN differ most
    tb, vb = exp.problem.full_batch("train"), exp.problem.full_batch("val")
    g = dense_ggn(exp, tb)
    w, lam = exp.w.detach().requires_grad_(True), exp.lam.detach().requires_grad_(True)
    gv_w, gv_lam = torch.autograd.grad(exp.problem.val_loss(w, lam, vb), (w, lam), allow_unused=True)
    gv_lam = torch.zeros_like(lam) if gv_lam is None else gv_lam
    (gt_w,) = torch.autograd.grad(exp.problem.train_loss(w, lam, tb), w, create_graph=True)
    mixed = torch.stack([torch.autograd.grad(gt_w[i], lam, retain_graph=True)[0] for i in range(len(w))])  # ∂²L_T/∂w∂λ
    want = gv_lam - mixed.T @ torch.linalg.solve(g, gv_w)
    for method, params in [("exact", {}), ("cg", {"iterations": 300, "tol": 1e-13}), ("minres", {"iterations": 300, "tol": 1e-13})]:
        got = torch.cat([v.reshape(-1) for v in exp.hypergradient(method, tb, vb, curvature="ggn", **params).values()])
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-12, msg=method)


def test_minres_computes_the_formula_where_the_hessian_is_indefinite(tiny_mlp):
    exp = tiny_mlp
    exp.lam.data -= 6.0  # tiny decays: the Hessian at these weights is indefinite
    exp.train_inner(1)
    tb = exp.problem.full_batch("train")
    w = exp.w.detach().requires_grad_(True)
    (gt_w,) = torch.autograd.grad(exp.problem.train_loss(w, exp.lam.detach(), tb), w, create_graph=True)
    hvp = HessianVectorProduct(gt_w, w)
    h = torch.stack([hvp(e) for e in torch.eye(len(w), dtype=F64)])
    assert torch.linalg.eigvalsh(0.5 * (h + h.T)).min() < 0
    exact = exp.hypergradient("exact")["log_decay"]
    got = exp.hypergradient("minres", iterations=500, tol=1e-14)["log_decay"]
    torch.testing.assert_close(got, exact, rtol=1e-6, atol=1e-10)


def test_ggn_is_refused_for_a_family_without_a_penalty():
    exp = build_experiment(overrides=["experiment=quick", "hyperparam=dropout_per_unit", "hypergrad=cg", "hypergrad.curvature=ggn",
                                      "hyper_steps=2"])
    result = exp.run()
    assert result.status == "SKIPPED" and "curvature='ggn' needs a hyperparameter family" in str(result.error)


@pytest.mark.parametrize("method,params,calls", [("cg", ["hypergrad.iterations=7"], 7), ("neumann", ["hypergrad.iterations=3"], 3),
                                                 ("minres", ["hypergrad.iterations=4"], 4), ("identity", [], 0)])
def test_hvp_calls_counts_the_curvature_products_of_each_hypergradient(method, params, calls):
    result = build_experiment(overrides=["experiment=quick", f"hypergrad={method}", *params, "hyper_steps=2"]).run()
    assert result.summary["hvp_calls"] == calls


REF = ["experiment=quick", "dtype=float64", "hyper_steps=6", "eval_every=3", "model.hidden=[8]"]


def test_accuracy_checks_measure_the_method_against_the_reference_and_change_nothing_else():
    # the method IS the reference: its error is zero
    same = build_experiment(overrides=[*REF, "hypergrad=exact", "reference=minres", "reference.method.name=exact", "~reference.method.iterations",
                                       "~reference.method.tol", "reference.every=2"]).run()
    assert same.summary["hg_rel_err"] < 1e-10 and same.summary["hg_cosine"] == pytest.approx(1.0, abs=1e-10)
    # a noisy family (dropout draws from torch's RNG inside L_T): same trajectory with and without checks
    noisy = [*REF, "hyperparam=dropout_per_unit", "hypergrad=neumann"]
    off = build_experiment(overrides=noisy).run()
    on = build_experiment(overrides=[*noisy, "reference=minres", "reference.every=2", "reference.lanczos_steps=10"]).run()
    for key in ("val_loss", "train_loss", "hypergrad_norm", "inner_loss"):
        assert on.summary[key] == off.summary[key], key
    assert 0 < on.summary["hg_rel_err"] and -1 <= on.summary["hg_cosine"] <= 1
    assert on.summary["hess_eig_min"] <= on.summary["hess_eig_max"] and on.summary["inner_grad_norm"] > 0
    if on.summary["hess_eig_min"] < 0:  # the last check's estimate; the note names the first negative one
        assert "the training Hessian is indefinite" in on.info["hessian_indefinite"]


@pytest.mark.slow
def test_accuracy_metrics_are_recorded_at_their_steps_through_the_cli(tmp_path, mlflow_db):
    out = hgbench_in_process(tmp_path, *REF, "reference=exact_damped", "reference.every=2", "mlflow.experiment=acc")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "accuracy at the last check vs the reference (exact)" in out.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("acc").experiment_id])
    for key in ("hg_cosine", "hg_rel_err", "hg_ref_norm", "inner_grad_norm", "hess_eig_max", "hess_eig_min", "reference_time_s"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [2, 4, 6], key
    assert [m.step for m in client.get_metric_history(run.info.run_id, "hvp_calls")] == list(range(1, 7))
    if run.data.metrics["hess_eig_min"] < 0:
        assert "indefinite" in run.data.tags["hgbench.hessian_indefinite"]


@pytest.mark.parametrize("args,line", [
    (["reference=minre"], "reference=minre: reference has no option 'minre' — did you mean minres?"),
    (["reference.every=2", "reference.method.name=neuman"], "reference.method: unknown hypergrad 'neuman'"),
    (["reference.every=-1"], "reference.every=-1: must be >= 0"),
])
def test_bad_reference_settings_are_one_line(tmp_path, args, line):
    out = hgbench_in_process(tmp_path, "experiment=quick", *args)
    assert out.returncode == 2 and out.stderr.startswith(f"hgbench: error: {line}"), out.stderr


# --- the accuracy–cost frontier (hgbench-bench frontier) --------------------------------------------

def test_the_frontier_measures_every_registered_method_against_the_ridge_closed_form(tmp_path, monkeypatch):
    import csv

    from hgbench.benchmarks import frontier

    monkeypatch.setattr(frontier, "QUICK_BUDGETS", (1, 2))
    rows = frontier.run(tmp_path, quick=True, problems=("ridge",))
    got = {(r["series"], r["budget"]): r for r in rows}
    assert got[("exact", "")]["rel_err"] < 1e-10 and got[("cg", 2)]["rel_err"] < got[("cg", 1)]["rel_err"] < 1
    # the paper's theorem at the exact optimum: Neumann with i terms = unrolling i + 1 SGD steps (α = lr)
    assert got[("neumann", 1)]["rel_err"] == pytest.approx(got[("unroll", 2)]["rel_err"], rel=1e-9)
    assert got[("unroll", 1)]["hvp_calls"] == 0 and got[("cg", 2)]["hvp_calls"] == 2 and got[("minres (ggn)", 2)]["hvp_calls"] == 2
    with open(tmp_path / "frontier.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert {"problem", "series", "budget", "rel_err", "cosine", "time_grads_median", "peak_mb", "hvp_calls", "reference"} <= set(table[0])
    assert all(float(r["time_grads_median"]) > 0 for r in table if r["status"] == "ok")
    assert (tmp_path / "frontier_ridge.png").stat().st_size > 10_000
    readme = (tmp_path / "README.md").read_text()
    assert "## ridge (30 weights, 30 hyperparameters)" in readme and "closed form" in readme and "QUICK SMOKE RUN" in readme


def test_the_frontier_adds_the_retraining_check_per_method(tmp_path, monkeypatch):
    from hgbench.accuracy import RetrainSettings
    from hgbench.benchmarks import frontier

    nodes = [("exact", {"name": "exact"}), ("identity", {"name": "identity"}), ("neumann", {"name": "neumann", "iterations": 2})]
    monkeypatch.setattr(frontier, "points", lambda exp, quick, batch=0, *filters: nodes)
    rows = frontier.run(tmp_path, quick=True, problems=("ridge",), retrain=RetrainSettings(30, 1e-3, 2))
    got = {r["series"]: r for r in rows}
    # the reference's direction again: the same retraining, the same number
    assert got["exact"]["retrain_descent_ratio"] == 1.0 and got["exact"]["scale_free_err"] < 1e-7
    for r in rows:
        assert r["retrain_descent_method"] > 0 and r["retrain_steps"] == 30 and r["retrain_noise_floor"] >= 0
        assert r["scale_free_err"] == pytest.approx((1 - r["cosine"] ** 2) ** 0.5, abs=1e-7)
    readme = (tmp_path / "README.md").read_text()
    assert "Every point, by realised descent after retraining (T = 30 inner steps" in readme
    assert "Which direction lowers the validation loss most, per budget" in readme and "Stationary, H ≻ 0" in readme
    damping = frontier.output.read_csv(tmp_path / "frontier_damping.csv")
    assert len(damping) == len(frontier.DAMPINGS["ridge"]) and float(damping[0]["norm_ratio"]) == 1.0
    # ridge's smallest eigenvalue is 0.54: a damping of 0.01 moves its reference by about 2 %, and along it as much descent
    assert 0.95 < float(damping[-1]["norm_ratio"]) < 1 and float(damping[-1]["cosine"]) > 0.999
    assert float(damping[-1]["retrain_descent"]) == pytest.approx(float(damping[0]["retrain_descent"]), rel=1e-3)


def test_a_method_registered_later_joins_the_frontier_at_its_declared_budgets():
    from dataclasses import dataclass
    from typing import ClassVar

    from hgbench.benchmarks import frontier
    from hgbench import HypergradientMethod, hookimpl, registry

    @dataclass
    class Sketch(HypergradientMethod):
        name = "sketch_test"
        budget: ClassVar[str] = "rank"
        rank: int = 4

        def compute(self, problem):
            return problem.lam * 0

    class Plugin:
        @hookimpl
        def register_hypergradients(self):
            return [Sketch]

    registry.register(Plugin(), name="sketch_test")
    try:
        exp, _, _ = frontier.build("ridge", quick=True)
        nodes = [node for label, node in frontier.points(exp, quick=False) if label == "sketch_test"]
    finally:
        registry.unregister("sketch_test")
    assert nodes == [{"name": "sketch_test", "rank": b} for b in frontier.BUDGETS]


def test_damping_sensitivity_matches_the_closed_form_on_a_diagonal_quadratic():
    """g(δ) = (A + δI)⁻¹ b with A = diag(a): each component b_i / (a_i + δ), so the norm ratio and
    the cosine to g(0) are known exactly; a damping far below A's eigenvalues moves nothing."""
    from hgbench.accuracy import damping_sensitivity

    a = torch.tensor([1.0, 1e-2, 1e-4], dtype=torch.float64)
    b = torch.tensor([1.0, 1.0, 1e-2], dtype=torch.float64)
    calls = []

    def at(d):
        calls.append(d)
        return b / (a + d)

    rows = damping_sensitivity(at, [0.0, 1e-4, 1.0])
    assert calls == [0.0, 1e-4, 1.0]  # the base once
    g0 = b / a
    for r, d in zip(rows, (0.0, 1e-4, 1.0), strict=True):
        g = b / (a + d)
        assert r["damping"] == d
        assert r["norm_ratio"] == pytest.approx((g.norm() / g0.norm()).item(), rel=1e-12)
        assert r["cosine"] == pytest.approx((g @ g0 / (g.norm() * g0.norm())).item(), rel=1e-12)
        assert r["rel_err"] == pytest.approx(((g - g0).norm() / g0.norm()).item(), rel=1e-12)
    # δ = 1e-4 halves the component held by the eigenvalue 1e-4 (100 → 50): the norm drops, the direction turns
    assert rows[0]["norm_ratio"] == 1.0 and rows[0]["rel_err"] == 0.0
    assert rows[1]["norm_ratio"] == pytest.approx(math.sqrt(1 / 1.0001**2 + 1 / 0.0101**2 + 50**2) / math.sqrt(1 + 100**2 + 100**2),
                                                  rel=1e-12)
    assert rows[1]["cosine"] < 0.96 and rows[2]["norm_ratio"] < 0.02
    assert damping_sensitivity(at, []) == []


def test_polish_drives_the_inner_gradient_below_its_tolerance_and_resets_the_momentum():
    from hgbench.benchmarks import frontier

    exp, tb, _ = frontier.build("ridge", quick=True)
    exp.w = exp.w + 0.3 * torch.randn(exp.w.shape, generator=torch.Generator().manual_seed(0), dtype=exp.w.dtype)
    exp.inner_state = {k: (v + 1 if torch.is_tensor(v) else v) for k, v in exp.inner_state.items()}
    assert frontier._grad_norm(exp, exp.w, tb) > 1e-2
    its = frontier.polish(exp, tb, 1e-7, 200)
    assert 0 < its <= 200 and frontier._grad_norm(exp, exp.w, tb) <= 1e-7
    fresh = exp.inner_optimizer.init(exp.w)
    assert all(torch.equal(v, fresh[k]) for k, v in exp.inner_state.items() if torch.is_tensor(v))


def _point(**kw):
    base = {"inner_training": "x", "inner_grad_norm": 1e-8, "inner_grad_norm_start": 0.3, "hess_eig_max": 1.0,
            "hess_eig_min": 1e-3, "hess_neg_count": 0, "hess_small_count": 0, "hess_spectrum": "dense", "stationary": True}
    return {**base, **kw}


def test_the_reading_states_whether_the_point_is_stationary():
    from hgbench.benchmarks import frontier

    assert "**Stationary, H ≻ 0**" in frontier.point_reading(_point())
    assert "Stationary, but H is indefinite" in frontier.point_reading(_point(hess_eig_min=-1e-3, hess_neg_count=3))
    text = frontier.point_reading(_point(inner_grad_norm=0.39, inner_grad_norm_start=0.13, stationary=False))
    assert "**Not a stationary point**" in text and "not the target" in text and "×3" in text
    assert "## In plain words\n\nhand-written" in frontier.reading([], quick=False, notes="## In plain words\n\nhand-written\n")


def _retrained_row(series, descent, time, budget=""):
    return {"problem": "p", "status": "ok", "series": series, "budget_param": "iterations" if budget != "" else "", "budget": budget,
            "retrain_descent_method": descent, "retrain_descent_ratio": descent / 1.0, "retrain_descent_reference": 1.0,
            "retrain_noise_floor": 0.1, "retrain_noise_max": 0.15, "retrain_steps": 50, "retrain_directions": 4,
            "cosine": 0.9, "scale_free_err": 0.44, "rel_err": 0.5, "time_grads_median": time}


def test_the_budget_reading_names_the_best_direction_and_calls_a_tie_within_the_noise_floor():
    from hgbench.benchmarks import frontier

    rows = [_retrained_row("identity", 0.5, 2.0), _retrained_row("neumann", 0.95, 8.0, 2), _retrained_row("neumann", 1.2, 40.0, 10),
            _retrained_row("cg", 1.0, 9.0, 2), _retrained_row("random-ish", 0.1, 1.0)]
    assert [r["series"] for r in frontier.best_direction_at(rows, "p", 10)] == ["cg", "neumann", "identity", "random-ish"]
    text = "\n".join(frontier.budget_reading(rows, "p"))
    assert "With **3 gradients** or fewer, **identity**" in text and "the next, random-ish, realises 0.1" in text
    assert "**cg (iterations=2)**" in text and "neumann (iterations=2) (0.95) is within the noise floor (0.1) of it: a tie" in text
    assert "With **100 gradients** or fewer, **neumann (iterations=10)**" in text
    low = [_retrained_row("identity", 0.12, 2.0), _retrained_row("cg", 0.01, 2.0, 2)]
    assert "not resolved" in "\n".join(frontier.budget_reading(low, "p"))


def test_the_frontier_options_on_the_command_line():
    import argparse

    from hgbench.benchmarks.cli import frontier_options

    def ns(**kw):
        base = {"retrain_steps": "0", "retrain_eps": 0.01, "retrain_directions": 4, "problems": None, "budgets": None, "series": [],
                "no_warm_starts": False}
        return argparse.Namespace(**{**base, **kw})

    got = frontier_options(ns(retrain_steps="ridge=1000,cnn=100", problems="ridge,cnn", budgets="0,2,50",
                              series=["cnn:identity,cg (ggn)"], no_warm_starts=True))
    assert got["retrain"]["ridge"].steps == 1000 and got["retrain"]["cnn"].steps == 100 and "mlp" not in got["retrain"]
    assert got["problems"] == ("ridge", "cnn") and got["budgets"] == (0, 2, 50) and got["series"] == {"cnn": ("identity", "cg (ggn)")}
    assert got["along"] is False
    assert frontier_options(ns(retrain_steps="200"))["retrain"].steps == 200 and frontier_options(ns()) == {}
    for bad, line in ((ns(retrain_steps="cnn=0"), "--retrain-steps cnn=0"), (ns(budgets="a"), "--budgets a"),
                      (ns(series=["cnn"]), "--series cnn")):
        with pytest.raises(ValueError, match=line):
            frontier_options(bad)
