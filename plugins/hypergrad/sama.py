"""``sama``: SAMA-style first-order hypergradient (Choe et al., "Making Scalable Meta Learning
Practical", NeurIPS 2023; Betty's ``sama``): the inverse Hessian replaced by the inner optimiser's
own diagonal update Jacobian D = ∂u/∂g ("algorithmic adaptation"), the mixed term by central finite
differences (``epsilon`` / ‖v‖, as ``darts_fd``):

    dL_V/dλ ≈ ∂L_V/∂λ − (∂²L_T/∂λ∂wᵀ) · D · ∂L_V/∂w.

Well defined for hgbench's ``SGD`` — D = lr·I (heavy-ball momentum too), lr·(1 + μ)·I (Nesterov):
there it is ``darts_fd`` with scale = lr — and ``Adam``: D = lr·(1 − β₁)/(1 − β₁ᵗ) / (√v̂ₜ + ε)
with the next step's second moment v̂ₜ (this batch's gradient folded in) held fixed, which is what
makes it cheap. Any other inner optimiser: skipped, with the reason. Cost: two gradients of L_T
(the finite difference) and one more with Adam (its second moment); no second-order autograd."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hgbench import HypergradientMethod, hookimpl
from hgbench.ift import finite_difference_mixed, val_gradients
from hgbench.optim import SGD, Adam


@dataclass
class Sama(HypergradientMethod):
    name = "sama"
    epsilon: float = 0.01  # finite-difference radius (relative to ‖v‖)

    def __post_init__(self):
        if self.epsilon <= 0:
            raise ValueError(f"epsilon must be > 0, got {self.epsilon}")

    def skip(self, problem):
        opt = getattr(problem, "inner_optimizer", None)
        if opt is not None and not isinstance(opt, (SGD, Adam)):
            return (f"sama needs the inner optimiser's update Jacobian, defined here for hgbench.optim.SGD and Adam; "
                    f"this run's is {type(opt).__name__} (use darts_fd or identity)")
        return None

    def diagonal(self, problem, w: torch.Tensor, lam: torch.Tensor) -> torch.Tensor | float:
        opt = problem.inner_optimizer
        if not isinstance(opt, (SGD, Adam)):
            raise ValueError(self.skip(problem) or "sama needs the inner optimiser (Bilevel.inner_optimizer)")
        state = problem.inner_state or opt.init(w)  # the rate of the step the inner loop takes next
        if isinstance(opt, SGD):
            lr = opt.lr_at(int(state["step"]))
            return lr * (1 + opt.momentum) if opt.nesterov else lr
        b1, b2 = opt.betas  # Adam
        t = int(state["step"]) + 1
        wg = w.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(problem.train_loss(wg, lam.detach()), wg)
        vhat = (b2 * state["v"] + (1 - b2) * g * g) / (1 - b2**t)
        return opt.lr_at(t - 1) * (1 - b1) / (1 - b1**t) / (torch.sqrt(vhat + opt.eps_root) + opt.eps)

    def compute(self, problem):
        gv_w, gv_lam = val_gradients(problem.val_loss, problem.w.detach().requires_grad_(True),
                                     problem.lam.detach().requires_grad_(True))
        v = self.diagonal(problem, problem.w, problem.lam) * gv_w
        return gv_lam - finite_difference_mixed(problem.train_loss, problem.w, problem.lam, v, self.epsilon)


@hookimpl
def register_hypergradients():
    return [Sama]
