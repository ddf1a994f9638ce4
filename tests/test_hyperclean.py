"""Hyper data-cleaning as benchopt's benchmark_bilevel poses it (``experiment=hyperclean_mnist``):
the options it needs (loss_reweight's weight scale and starting logit, the linear model's zero
start, the runner's gradient count) checked against the formulas in-process, the preset against
the external setting, and the study's quick run (slow)."""

import math

import pytest
import torch
import torch.nn.functional as F

from hgbench import ConfigError, build_experiment, compose_config
from hgbench.config import build_plugin

# benchmark_bilevel's data cleaning on a tiny digits problem: mean_i sigmoid(λ_i)·CE_i + 0.2·‖W‖², λ from −2
CLEAN = ["dataset=digits", "dataset.train_size=12", "dataset.val_size=8", "model=linear", "model.bias=false", "model.init=zeros",
         "hyperparam=loss_reweight", "hyperparam.normalize=false", "hyperparam.weight_scale=1.0", "hyperparam.init_logit=-2.0",
         "hyperparam.l2=0.4", "dtype=float64", "train_batch_size=null", "val_batch_size=null", "warmup=false"]


def test_the_inner_loss_is_mean_sigmoid_weighted_cross_entropy_plus_0_2_sum_w_squared():
    exp = build_experiment(overrides=CLEAN)
    p = exp.problem
    assert torch.equal(exp.w, torch.zeros(64 * 10, dtype=torch.float64))  # W = 0, no bias
    assert torch.equal(exp.lam.detach(), torch.full((12,), -2.0, dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    w = torch.randn(640, generator=g, dtype=torch.float64) * 0.1
    lam = torch.randn(12, generator=g, dtype=torch.float64)
    batch = p.full_batch("train")
    x, y = batch.x, batch.y
    W = w.reshape(10, 64)  # nn.Linear's weight: (outputs, inputs)
    ce = F.cross_entropy(x @ W.T, y, reduction="none")
    expected = (torch.sigmoid(lam) * ce).mean() + 0.2 * (W**2).sum()
    torch.testing.assert_close(p.train_loss(w, lam, batch), expected, rtol=1e-12, atol=1e-12)
    # on a sub-batch the weights follow the examples' indices and the mean is over the batch
    sub = type(batch)(x[3:7], y[3:7], batch.idx[3:7])
    expected_sub = (torch.sigmoid(lam[3:7]) * ce[3:7]).mean() + 0.2 * (W**2).sum()
    torch.testing.assert_close(p.train_loss(w, lam, sub), expected_sub, rtol=1e-12, atol=1e-12)
    # at the start (W = 0: uniform predictions) L_T = sigmoid(−2)·log 10 and L_V = log 10
    lam0 = exp.lam.detach()
    torch.testing.assert_close(p.train_loss(exp.w, lam0, batch), torch.sigmoid(torch.tensor(-2.0, dtype=torch.float64)) * math.log(10))
    torch.testing.assert_close(p.val_loss(exp.w, lam0, p.full_batch("val")), torch.tensor(math.log(10), dtype=torch.float64))
    m = p.family.metrics({"logit_weight": lam0})
    assert m["mean_weight"] == pytest.approx(1 / (1 + math.exp(2)))


def test_loss_reweight_defaults_are_unchanged_and_bad_values_are_refused():
    fam = build_plugin("hyperparam", {"name": "loss_reweight"})
    assert (fam.weight_scale, fam.init_logit, fam.normalize, fam.l2) == (2.0, 0.0, True, 1e-4)
    assert fam.weights({"logit_weight": torch.zeros(3)}, type("B", (), {"idx": torch.arange(3)})()).tolist() == [1.0, 1.0, 1.0]
    for key, value, msg in (("weight_scale", 0.0, "weight_scale must be a finite number > 0"),
                            ("init_logit", float("inf"), "init_logit must be a finite number"),
                            ("l2", -0.1, "l2 must be a finite number >= 0")):
        with pytest.raises(ConfigError, match=msg):
            build_plugin("hyperparam", {"name": "loss_reweight", key: value})


def test_linear_zero_start_and_default_start():
    z = build_plugin("model", {"name": "linear", "init": "zeros"}).build((5,), 3)
    assert all(torch.count_nonzero(t) == 0 for t in z.parameters())
    d = build_plugin("model", {"name": "linear"}).build((5,), 3)
    assert torch.count_nonzero(d[1].weight) > 0 and d[1].bias is not None


@pytest.mark.parametrize("method,params,grads", [("identity", [], 2), ("cg", ["hypergrad.iterations=3"], 2),
                                                 ("unroll", ["hypergrad.steps=3"], 4), ("darts_fd", [], 3), ("fixed", [], 0)])
def test_grad_calls_counts_the_loss_gradients_of_each_hypergradient(method, params, grads):
    """IFT: ∂L_V/∂w and one ∂L_T/∂w (its graph reused by every product); unroll: one L_T gradient per
    step and ∂L_V; darts_fd: ∂L_V and the two gradients of its finite difference; fixed: none."""
    exp = build_experiment(overrides=[*CLEAN, f"hypergrad={method}", *params, "inner_steps=2"])
    m = exp.hyper_step(1)
    assert m["grad_calls"] == grads
    assert m["hvp_calls"] == {"cg": 3}.get(method, 0)


def test_the_preset_is_benchmark_bilevels_data_cleaning_setting():
    cfg = compose_config(["experiment=hyperclean_mnist"])
    d, h, m = cfg.dataset, cfg.hyperparam, cfg.model
    assert (d.name, d.train_size, d.val_size, d.test_size) == ("mnist", 20000, 5000, None)
    assert (d.label_noise, d.label_noise_mode, d.standardize) == (0.5, "uniform", True)
    assert (m.name, m.bias, m.init) == ("linear", False, "zeros")
    assert (h.name, h.per, h.normalize, h.weight_scale, h.init_logit) == ("loss_reweight", "example", False, 1.0, -2.0)
    assert 0.5 * h.l2 == pytest.approx(0.2)  # ½·l2·‖W‖² = 0.2·‖W‖²
    assert cfg.train_batch_size is None and cfg.val_batch_size is None
    # the preset sets no hypergrad key, so every method composes with it; the study picks each by its name
    assert set(cfg.hypergrad) <= set(compose_config(["hypergrad=cg"]).hypergrad)
    from hgbench.benchmarks import hyperclean

    for label, overrides in hyperclean.METHODS.items():
        assert overrides[0] == f"hypergrad={label}" and all(o.startswith("hypergrad.") for o in overrides[1:])
    c = compose_config(["experiment=hyperclean_mnist", *hyperclean.METHODS["unroll"]])
    assert c.hypergrad.name == "unroll" and c.dataset.label_noise_mode == "uniform"


@pytest.mark.slow
def test_the_study_runs_every_method_and_writes_its_report(tmp_path):
    from hgbench.benchmarks import hyperclean, output

    hyperclean.run(tmp_path, quick=True, device="cpu")
    rows = output.read_csv(tmp_path / "curves.csv")
    ran = {r["method"] for r in rows}
    assert ran == set(hyperclean.METHODS)
    skipped = output.read_csv(tmp_path / "skipped.csv")
    assert {r["method"] for r in skipped} == {"kfac", "cg_kfac", "exact"}
    for r in rows:
        assert r["commit"] and 0 <= r["test_acc"] <= 1 and math.isfinite(r["val_loss"])
        assert r["oracle_calls"] == r["grads"] + r["hvps"]
    last = {(r["method"], r["seed"]): r for r in rows if r["step"] == hyperclean.QUICK_STEPS}
    assert last[("fixed", 0)]["hvps"] == 0 and last[("fixed", 0)]["grads"] == hyperclean.QUICK_STEPS * hyperclean.INNER_STEPS
    assert last[("neumann", 0)]["hvps"] == 5 * hyperclean.QUICK_STEPS
    summary = output.read_csv(tmp_path / "summary.csv")
    assert {r["method"] for r in summary} == set(hyperclean.METHODS)
    text = (tmp_path / "README.md").read_text()
    assert "https://github.com/benchopt/benchmark_bilevel" in text and "QUICK SMOKE RUN" in text
    assert (tmp_path / "hyperclean.png").stat().st_size > 0
