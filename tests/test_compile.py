"""``compile=true``: the compiled inner step is checked against eager before it is trusted."""

import pytest
import torch
from mlflow.tracking import MlflowClient

from hgbench import build_experiment
from hgbench.compiled import InnerLoss


def quadratic(w, lam, x, y, idx=None):
    return ((x @ w - y) ** 2).mean() + 0.5 * (lam.exp() * w * w).sum()


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(5, dtype=torch.float64, generator=g), torch.zeros(5, dtype=torch.float64), \
        torch.randn(32, 5, dtype=torch.float64, generator=g), torch.randn(32, dtype=torch.float64, generator=g)


def test_a_wrong_compiled_gradient_falls_back_to_eager(data):
    w, lam, x, y = data
    loss = InnerLoss(quadratic, compile=True)
    loss.compiled = lambda w, lam, x, y, idx: 2 * quadratic(w, lam, x, y, idx)  # a miscompiled graph
    with pytest.warns(RuntimeWarning, match="differs from eager by 1.0e\\+00.*running eagerly"):
        value = loss(w, lam, x, y)
    assert loss.status == "fallback" and loss.fn is quadratic
    assert value == quadratic(w, lam, x, y)


def test_a_compile_error_falls_back_to_eager(data):
    def broken(*args):
        raise RuntimeError("no C++ compiler found\nmore details")

    loss = InnerLoss(quadratic, compile=True)
    loss.compiled = broken
    with pytest.warns(RuntimeWarning, match="torch.compile failed \\(RuntimeError: no C\\+\\+ compiler found\\)"):
        loss(*data)
    assert loss.status == "fallback"


def test_a_random_loss_is_compiled_but_marked_unverified(data):
    def noisy(w, lam, x, y, idx=None):
        # continuous noise: a 0/1 mask over these 5 weights is the same after the check's extra draw
        # for about 1 global random state in 30, and which one a test meets depends on the tests before it
        return quadratic(w * torch.rand_like(w), lam, x, y)

    loss = InnerLoss(noisy, compile=True)
    loss.compiled = noisy  # stands in for the compiled graph
    rng = torch.get_rng_state()
    loss(*data)
    assert loss.status == "unverified" and "random" in loss.note
    # the check leaves the random state as it found it: the call itself drew the only numbers
    torch.set_rng_state(rng)
    torch.rand(5, dtype=torch.float64)
    after_one_call = torch.get_rng_state()
    torch.set_rng_state(rng)
    loss(*data)
    assert torch.equal(torch.get_rng_state(), after_one_call)


def test_off_by_default_and_never_checked(data):
    loss = InnerLoss(quadratic)
    assert loss.status == "off" and loss.compiled is None
    assert loss(*data) == quadratic(*data)


@pytest.mark.slow
def test_compiled_run_matches_eager_and_is_recorded(tmp_path, copy_store):
    """A real torch.compile of the MLP inner step: checked, then the same trajectory as eager."""
    uri = f"sqlite:///{copy_store(tmp_path / 'store.db')}"
    ov = ["dataset=digits", "model.hidden=[32]", "hyper_steps=4", "eval_every=2", "dtype=float64",
          f"mlflow.tracking_uri={uri}"]
    eager = build_experiment(overrides=ov)
    compiled = build_experiment(record=True, overrides=ov + ["compile=true"])
    assert eager.run().status == "FINISHED"
    result = compiled.run()
    assert result.status == "FINISHED" and compiled.inner_loss.status == "on", compiled.inner_loss.note
    torch.testing.assert_close(compiled.w, eager.w, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(compiled.lam, eager.lam, rtol=1e-9, atol=1e-12)
    tags = MlflowClient(uri).get_run(result.info["mlflow_run_id"]).data.tags
    assert tags["hgbench.compile"] == "on" and "matches eager" in tags["hgbench.compile_note"]
