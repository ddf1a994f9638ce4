"""The retraining check (``reference=retrain``, ``hgbench.accuracy.retraining_check``): the
realised directional derivative of L_V after T more inner steps, by central differences, against
the ridge closed form where retraining converges; its noise floor; and its record in MLflow."""

import math

import pytest
import torch
from helpers import hgbench_in_process
from mlflow.tracking import MlflowClient
from test_hypergradients import ridge_closed_form

from hgbench import build_experiment
from hgbench.accuracy import RetrainSettings, random_directions

F64 = torch.float64


def ridge_curvature(exp):
    """The smallest and largest eigenvalues of ridge's training Hessian at λ (constant in w)."""
    _, _, _, h = ridge_closed_form(exp, exp.lam.detach())
    ev = torch.linalg.eigvalsh(h)
    return ev.min().item(), ev.max().item()


def third_derivative_bound(exp, d, eps):
    """|f'''| of f(t) = L_V*(λ + t·d), closed form, by a finite difference at a coarser step:
    the central difference's error is ε²/6 · |f'''|."""
    lam = exp.lam.detach()
    f = lambda t: ridge_closed_form(exp, lam + t * d)[1].item()  # noqa: E731
    h = 20 * eps
    return abs(f(2 * h) - 2 * f(h) + 2 * f(-h) - f(-2 * h)) / (2 * h**3)


def check(exp, settings, hg, ref, step=1):
    exp.retrain = settings
    rng = exp.process_state.snapshot()
    return exp.retraining_check(hg, ref, rng, step)


def test_with_converged_retraining_the_realised_derivative_is_the_ridge_closed_form(ridge):
    lam = ridge.lam.detach()
    _, _, exact, _ = ridge_closed_form(ridge, lam)
    mu, big = ridge_curvature(ridge)
    ridge.inner_optimizer.lr = 1.0 / big  # full-batch GD (40 examples, batch 128) at a safe step
    steps = math.ceil(math.log(1e-15) / math.log(1 - mu / big))  # contraction to 1e-15 of the start's distance
    hg = ridge.hypergradient("neumann", iterations=2)["log_decay"]  # at w0, far from the optimum: some other direction
    assert torch.nn.functional.cosine_similarity(hg, exact, dim=0) < 0.99
    eps = 1e-3
    out = check(ridge, RetrainSettings(steps, eps, 3), hg, exact)
    for name, g in (("method", hg), ("reference", exact)):
        d = g / g.norm()
        want = (exact @ d).item()
        tol = 2 * eps**2 / 6 * third_derivative_bound(ridge, d, eps) + 1e-10
        assert abs(out[f"retrain_descent_{name}"] - want) <= tol, (name, out[f"retrain_descent_{name}"], want, tol)
    assert out["retrain_descent_ratio"] == pytest.approx(((exact @ hg) / hg.norm() / exact.norm()).item(), rel=1e-5)
    assert out["retrain_predicted_vs_realised_reference"] == pytest.approx(1.0, rel=1e-5)  # the closed form predicts retraining
    assert out["retrain_predicted_vs_realised"] == pytest.approx((hg.norm() ** 2 / (exact @ hg)).item(), rel=1e-5)
    # deterministic retraining and an exact reference: directions orthogonal to it realise nothing
    assert out["retrain_noise_floor"] < 1e-7 * exact.norm().item() and out["retrain_noise_max"] >= out["retrain_noise_floor"]
    assert out["retrain_val_loss"] == pytest.approx(ridge_closed_form(ridge, lam)[1].item(), rel=1e-6)
    assert out["retrain_resolution"] == pytest.approx(torch.finfo(F64).eps * out["retrain_val_loss"] / (2 * eps))
    # a short horizon is not converged: the check measures retraining, not the closed form
    short = check(ridge, RetrainSettings(3, eps, 0), hg, exact)
    assert abs(short["retrain_descent_reference"] - exact.norm().item()) > 1e-3 * exact.norm().item()
    assert "retrain_noise_floor" not in short  # k = 0: no random directions


def test_the_noise_floor_is_zero_full_batch_and_not_with_minibatches(ridge):
    lam = ridge.lam.detach()
    _, _, exact, _ = ridge_closed_form(ridge, lam)
    hg = ridge.hypergradient("identity")["log_decay"]
    mu, big = ridge_curvature(ridge)
    eps = 1e-3
    ridge.inner_optimizer.lr = 1.0 / big
    full = check(ridge, RetrainSettings(math.ceil(math.log(1e-12) / math.log(1 - mu / big)), eps, 2), hg, exact)
    settings = RetrainSettings(40, eps, 2)  # 5 epochs of batches of 5
    mini = build_experiment(dataset="synthetic_linear", model="linear", hyperparam="weight_decay_per_param",
                            overrides=["model.bias=false", "dtype=float64", "dataset.num_features=8", "dataset.train_size=40",
                                       "dataset.val_size=30", "train_batch_size=5"])
    mini.lam.data, mini.inner_optimizer.lr = lam.clone(), 1.0 / big
    noisy = check(mini, settings, hg, exact)
    # full batch: D along a direction orthogonal to the exact hypergradient is the central
    # difference's O(ε²) error alone; minibatches: the retrained weights depend on their order
    floor = eps**2 * exact.norm().item()
    assert full["retrain_noise_floor"] < floor
    assert noisy["retrain_noise_floor"] > 100 * floor
    # the same batches on both sides and at every call: the check is reproducible, not noise itself
    assert check(mini, settings, hg, exact) == noisy
    # other batches (another hyper-step's seed): another realisation
    assert check(mini, settings, hg, exact, step=2)["retrain_noise_floor"] != noisy["retrain_noise_floor"]


def test_random_directions_are_unit_and_orthogonal_to_the_hypergradients():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, dtype=F64, generator=g), torch.randn(6, dtype=F64, generator=g)
    dirs = random_directions(3, [a, b], g)
    m = torch.stack(dirs)
    torch.testing.assert_close(m @ m.T, torch.eye(3, dtype=F64), atol=1e-12, rtol=0)
    assert (m @ a).abs().max() < 1e-12 and (m @ b).abs().max() < 1e-12
    assert len(random_directions(5, [a, b], g)) == 4  # only 6 − 2 dimensions are left
    assert random_directions(3, [a, a], g) and random_directions(3, [a[:2], b[:2]], g) == []


RETRAIN = ["experiment=quick", "dtype=float64", "hyper_steps=4", "eval_every=2", "model.hidden=[8]", "hypergrad=neumann",
           "reference=retrain", "reference.every=2", "reference.retrain.steps=5", "reference.retrain.directions=2", "reference.lanczos_steps=0"]


def test_the_check_changes_nothing_in_the_run():
    noisy = ["hyperparam=dropout_per_unit", "reference.method.name=minres", "~reference.method.curvature"]
    off = build_experiment(overrides=[*RETRAIN, *noisy, "reference.every=0"]).run()
    on = build_experiment(overrides=[*RETRAIN, *noisy]).run()
    for key in ("val_loss", "train_loss", "hypergrad_norm", "inner_loss"):
        assert on.summary[key] == off.summary[key], key
    assert "retrain_descent_method" not in off.summary and math.isfinite(on.summary["retrain_descent_method"])
    assert on.summary["retrain_noise_floor"] > 0  # dropout and minibatches: noise


@pytest.mark.slow
def test_retraining_metrics_are_recorded_at_the_checks(tmp_path, mlflow_db):
    out = hgbench_in_process(tmp_path, *RETRAIN, "mlflow.experiment=retrain")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "retraining check at the last check: dL_V/dλ realised along the method" in out.stdout
    client = MlflowClient(f"sqlite:///{mlflow_db}")
    (run,) = client.search_runs([client.get_experiment_by_name("retrain").experiment_id])
    for key in ("retrain_descent_method", "retrain_descent_reference", "retrain_descent_ratio", "retrain_predicted_vs_realised",
                "retrain_noise_floor", "hg_scale_free_err", "hg_cosine"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [2, 4], key
    m = run.data.metrics
    assert m["hg_scale_free_err"] == pytest.approx(math.sqrt(1 - m["hg_cosine"] ** 2))


@pytest.mark.parametrize("args,line", [
    (["reference.retrain.steps=0"], "reference.retrain.steps=0: must be an integer >= 1"),
    (["reference.retrain.eps=-0.1"], "reference.retrain.eps=-0.1: must be a number > 0"),
    (["+reference.retrain.horizon=3"], "reference.retrain.horizon: unknown key"),
])
def test_bad_retrain_settings_are_one_line(tmp_path, args, line):
    out = hgbench_in_process(tmp_path, "experiment=quick", "reference=retrain", *args)
    assert out.returncode == 2 and out.stderr.startswith(f"hgbench: error: {line}"), out.stderr
