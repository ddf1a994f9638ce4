"""framework/optim.py's functional SGD and Adam against torch.optim on the same gradients."""

import pytest
import torch

from hgbench.optim import SGD, Adam


def trajectories(ours, theirs_cls, theirs_kw, steps=25):
    """Both optimisers on f(w) = Σ a·w⁴ − b·w (a non-quadratic loss, so gradients differ per step)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(6, generator=g, dtype=torch.float64) + 0.5, torch.randn(6, generator=g, dtype=torch.float64)
    loss = lambda w: (a * w**4 - b * w).sum()  # noqa: E731
    w0 = torch.randn(6, generator=g, dtype=torch.float64)
    w, state = w0.clone(), ours.init(w0)
    p = torch.nn.Parameter(w0.clone())
    opt = theirs_cls([p], **theirs_kw)
    for _ in range(steps):
        wg = w.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss(wg), wg)
        w, state = ours.step(w, grad, state)
        opt.zero_grad()
        loss(p).backward()
        opt.step()
        yield w, p.detach()


@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_sgd_matches_torch_optim_sgd(momentum, nesterov):
    ours = SGD(lr=0.01, momentum=momentum, nesterov=nesterov)
    for mine, theirs in trajectories(ours, torch.optim.SGD, {"lr": 0.01, "momentum": momentum, "nesterov": nesterov}):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-14)


def test_adam_matches_torch_optim_adam():
    """Adam with eps_root = 0 is torch's Adam exactly; the default eps_root = 1e-16 (which keeps
    it differentiable at v = 0) moves it by far less than eps."""
    for eps_root, tol in ((0.0, 1e-12), (1e-16, 1e-9)):
        ours = Adam(lr=0.01, betas=(0.9, 0.99), eps=1e-8, eps_root=eps_root)
        for mine, theirs in trajectories(ours, torch.optim.Adam, {"lr": 0.01, "betas": (0.9, 0.99), "eps": 1e-8}):
            torch.testing.assert_close(mine, theirs, rtol=tol, atol=tol)


def test_the_check_can_fail():
    """A different learning rate is caught (the comparison is not vacuous)."""
    ours = SGD(lr=0.011)
    mine, theirs = list(trajectories(ours, torch.optim.SGD, {"lr": 0.01}))[-1]
    assert not torch.allclose(mine, theirs, rtol=1e-6)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_step_decay_matches_torch_step_lr(momentum):
    """decay / decay_every is torch's StepLR(step_size=decay_every, gamma=decay) stepped once per
    optimiser step, for SGD (with and without momentum) and Adam."""
    def step_lr(cls, **kw):
        class Scheduled(cls):  # torch's optimiser and StepLR, stepped together
            def __init__(self, params, **k):
                super().__init__(params, **k)
                self.sched = torch.optim.lr_scheduler.StepLR(self, step_size=3, gamma=0.5)

            def step(self, closure=None):
                out = super().step(closure)
                self.sched.step()
                return out
        return Scheduled, kw

    for ours, (cls, kw) in ((SGD(lr=0.01, momentum=momentum, decay=0.5, decay_every=3), step_lr(torch.optim.SGD, lr=0.01, momentum=momentum)),
                            (Adam(lr=0.01, betas=(0.9, 0.99), eps_root=0.0, decay=0.5, decay_every=3), step_lr(torch.optim.Adam, lr=0.01, betas=(0.9, 0.99)))):
        for mine, theirs in trajectories(ours, cls, kw, steps=10):
            torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-14)
        assert ours.lr_at(9) == 0.01 * 0.5**3 and ours.lr_at(2) == 0.01
    mine, theirs = [(m.clone(), t.clone()) for m, t in trajectories(Adam(lr=0.01, betas=(0.9, 0.99), eps_root=0.0), cls, kw, steps=10)][-1]
    assert not torch.allclose(mine, theirs, rtol=1e-6)  # without the decay the paths part: the check can fail


@pytest.mark.parametrize("kw", [{"decay": 0.0}, {"decay": 1.5}, {"decay_every": -1}])
def test_a_bad_schedule_is_refused(kw):
    with pytest.raises(ValueError, match="inner_optimizer.decay"):
        Adam(lr=0.01, **kw)
