"""Each hyperparameter family: its IFT hypergradient (exact solve, float64, tiny instance)
against central finite differences of the validation loss at the re-solved inner optimum."""

import pytest
import torch
from helpers import finite_difference_hypergradient, polish

from hgbench import SkipRun, build_experiment

TINY = ["dtype=float64", "dataset=digits", "dataset.train_size=40", "dataset.val_size=30",
        "model=mlp", "model.hidden=[2]", "model.activation=tanh", "inner_optimizer.lr=0.2"]

CASES = {
    "weight_decay": ["hyperparam=weight_decay", "hyperparam.init_decay=0.01"],
    "weight_decay_per_tensor": ["hyperparam=weight_decay", "hyperparam.granularity=per_tensor", "hyperparam.init_decay=0.01"],
    "weight_decay_per_param": ["hyperparam=weight_decay_per_param", "hyperparam.init_decay=0.01"],
    "loss_reweight_example": ["hyperparam=loss_reweight", "hyperparam.l2=0.01"],
    "loss_reweight_class": ["hyperparam=loss_reweight", "hyperparam.per=class", "hyperparam.l2=0.01", "hyperparam.normalize=false"],
    "distill": ["hyperparam=distill", "hyperparam.l2=0.01"],
    "distill_labels": ["hyperparam=distill", "hyperparam.l2=0.01", "hyperparam.learn_labels=true", "hyperparam.per_class=2"],
    "augment_net": ["hyperparam=augment_net", "dataset.image=true", "hyperparam.width=2", "hyperparam.fixed_noise=true", "hyperparam.l2=0.01"],
    "dropout_per_unit": ["hyperparam=dropout_per_unit", "model.hidden=[3]", "hyperparam.fixed_noise=true", "hyperparam.l2=0.01", "hyperparam.temperature=0.5"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_ift_hypergradient_matches_finite_differences(case):
    exp = build_experiment(overrides=TINY + CASES[case])
    g = torch.Generator().manual_seed(0)
    exp.lam.data += 0.3 * torch.randn(exp.lam.shape, generator=g, dtype=exp.lam.dtype)  # off the symmetric start
    exp.train_inner(300)
    polish(exp)
    n = exp.problem.num_hyperparams
    coords = torch.randperm(n, generator=g)[:5].tolist()
    fd = finite_difference_hypergradient(exp, coords)
    assert fd.abs().max() > 1e-7, "the check has something to see"
    exact = exp.hypergradient("exact")
    flat = torch.cat([v.reshape(-1) for v in exact.values()])[coords]
    torch.testing.assert_close(flat, fd, rtol=1e-4, atol=1e-4 * fd.abs().max().item())
    # and the iterative solver agrees once converged
    cg = torch.cat([v.reshape(-1) for v in exp.hypergradient("cg", iterations=400, tol=1e-12).values()])[coords]
    torch.testing.assert_close(cg, flat, rtol=1e-4, atol=1e-5 * fd.abs().max().item())


@pytest.mark.parametrize("case,count", [
    ("weight_decay", 1),
    ("weight_decay_per_tensor", 4),  # two weight matrices, two biases
    ("weight_decay_per_param", 64 * 2 + 2 + 2 * 10 + 10),
    ("loss_reweight_example", 40),
    ("loss_reweight_class", 10),
    ("distill", 10 * 64),
    ("distill_labels", 20 * 64 + 20 * 10),
    ("dropout_per_unit", 3),
])
def test_hyperparameter_counts(case, count):
    assert build_experiment(overrides=TINY + CASES[case]).problem.num_hyperparams == count


def test_augment_net_starts_as_the_identity_and_needs_images():
    exp = build_experiment(overrides=TINY + CASES["augment_net"])
    fam, x = exp.problem.family, exp.problem.data.train.x[:4]
    lam = exp.problem.lam_spec.unflatten(exp.lam.detach())
    torch.testing.assert_close(fam.augment(lam, x), x)
    assert exp.problem.num_hyperparams == sum(p.numel() for p in fam._net.parameters())
    with pytest.raises(SkipRun, match="needs image inputs"):
        build_experiment(overrides=TINY + ["hyperparam=augment_net"])


def test_dropout_masks_have_mean_one_and_follow_the_rates():
    exp = build_experiment(overrides=TINY + ["hyperparam=dropout_per_unit", "model.hidden=[50]", "hyperparam.init_rate=0.3", "hyperparam.temperature=0.05"])
    fam = exp.problem.family
    lam = exp.problem.lam_spec.unflatten(exp.lam.detach())
    m = fam.masks(lam, 4000, exp.lam)["hidden0"]
    assert m.shape == (4000, 50)
    assert abs(m.mean().item() - 1) < 0.02
    dropped = (m < 0.1).double().mean().item()
    assert abs(dropped - 0.3) < 0.03
    with pytest.raises(SkipRun, match="no dropout sites"):
        build_experiment(overrides=[o for o in TINY if not o.startswith("model")] + ["hyperparam=dropout_per_unit", "model=linear"])


def test_distill_trains_only_on_the_synthetic_set():
    exp = build_experiment(overrides=TINY + CASES["distill"])
    p = exp.problem
    lam = exp.lam.detach()
    a, b = p.full_batch("train"), p.full_batch("val")
    torch.testing.assert_close(p.train_loss(exp.w, lam, a), p.train_loss(exp.w, lam, b))
    figs = p.family.figures(p.lam_spec.unflatten(lam))
    assert list(figs) == ["distilled.png"]


def test_loss_reweight_sees_which_labels_are_noisy():
    exp = build_experiment(overrides=TINY + ["hyperparam=loss_reweight"])
    fam = exp.problem.family
    fam._noisy = torch.zeros(40, dtype=torch.bool)
    fam._noisy[:10] = True
    lam = {"logit_weight": torch.cat([torch.full((10,), -2.0), torch.zeros(30)]).double()}
    m = fam.metrics(lam)
    assert m["mean_weight_noisy"] < 0.3 < m["mean_weight_clean"] == pytest.approx(1.0)


def test_per_weight_decay_with_a_million_hyperparameters_runs_on_the_cpu():
    exp = build_experiment(overrides=["dataset=mnist_5k", "model.hidden=[1280]", "hyper_steps=2", "inner_steps=1", "eval_every=2"])
    assert exp.problem.num_hyperparams == exp.problem.num_weights > 1_000_000
    result = exp.run()
    assert result.status == "FINISHED" and result.summary["hypergrad_norm"] > 0


def test_decays_are_capped_so_the_inner_step_stays_stable():
    exp = build_experiment(overrides=TINY + CASES["weight_decay_per_param"] + ["hyperparam.max_decay=2.0"])
    fam = exp.problem.family
    lam = torch.tensor([-20.0, 0.0, 0.69, 5.0, 50.0], dtype=torch.float64, requires_grad=True)
    d = fam.decay(lam)
    torch.testing.assert_close(d.detach(), torch.tensor([torch.exp(torch.tensor(-20.0)).item(), 1.0, 1.9937, 2.0, 2.0], dtype=torch.float64), rtol=1e-4, atol=0)
    (g,) = torch.autograd.grad(d.sum(), lam)
    assert g[3] == g[4] == 0 and g[1] == 1.0  # no push beyond the cap
    # the logged decay is the one the loss uses; the hyperparameter itself is logged beside it
    m = fam.metrics({"log_decay": lam.detach()})
    assert m["capped_share"] == pytest.approx(2 / 5)
    glob = build_experiment(overrides=TINY + ["hyperparam=weight_decay", "hyperparam.max_decay=2.0"]).problem.family
    assert glob.metrics({"log_decay": torch.tensor([5.0])}) == {"decay": 2.0, "log_decay": 5.0}


def test_weight_decay_granularities_are_one_penalty_at_three_resolutions():
    """per_tensor and per_param with every decay equal to the global one give the global loss;
    per_tensor's penalty is Σ_t d_t·‖w_t‖² over the model's named tensors."""
    exps = {g: build_experiment(overrides=TINY + ["hyperparam=weight_decay", f"hyperparam.granularity={g}"])
            for g in ("global", "per_tensor", "per_param")}
    w, batch = exps["global"].w, exps["global"].problem.full_batch("train")
    losses = {g: e.problem.train_loss(w, e.lam.detach(), batch) for g, e in exps.items()}
    torch.testing.assert_close(losses["per_tensor"], losses["global"], rtol=1e-12, atol=0)
    torch.testing.assert_close(losses["per_param"], losses["global"], rtol=1e-12, atol=0)
    e = exps["per_tensor"]
    lam = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64))
    tensors = e.problem.w_spec.unflatten(w)
    data = e.problem.data_loss(e.problem.forward(w, batch.x), batch.y)
    expected = data + 0.5 * sum(d * (t * t).sum() for d, t in zip(lam.exp(), tensors.values(), strict=True))
    torch.testing.assert_close(e.problem.train_loss(w, lam, batch), expected, rtol=1e-12, atol=0)
    assert set(e.problem.family.metrics({"log_decay": lam})) >= {f"decay/{n}" for n in tensors}
