"""``neumann``: IFT with the inverse Hessian approximated by a truncated Neumann series
(Lorraine et al. 2020, Algorithm 3): ``iterations`` = i steps (i + 1 terms) of step size ``alpha``.

``alpha``: a number; null = the inner optimiser's learning rate (the paper's choice; its base ``lr``,
not the rate its step decay has reached: α is the series' step size, and the series' result scales
with it, unlike sama and fixed_point, which model the inner step itself); ``auto`` =
``alpha_scale`` / λ_max, λ_max estimated by ``power_iterations`` power iterations on the curvature
(their vector carried over from one hyper-step to the next, so a few suffice), for users whose
hand-picked α diverges (α > 2/λ_max) or crawls (α ≪ 1/λ_max). The α used is logged every
hyper-step (``hypergrad/alpha``; with ``auto`` also ``hypergrad/eig_max``).

``warm_start``: start from the previous hyper-step's solution — the series then runs on the
residual b − H·x₀ (one more HVP) instead of on b; w moves little between hyper-steps, so the same
accuracy costs fewer iterations. ``hessian_batch_size``: Hessian-vector products on a minibatch of
that many training examples of their own (not the batch of ∂L_T/∂w): cheaper products, more
variance.

Where H has negative eigenvalues μ < 0 the series' terms along them grow as (1 − αμ)^j > 1: the
truncated sum stays finite for any i (it is i + 1 steps of gradient descent on ½vᵀHv − vᵀg) but
no longer approaches H⁻¹ (the paper's convergence needs H ≻ 0 and α < 2/λ_max). With
``curvature=ggn`` it inverts the Gauss–Newton matrix instead, which is positive semi-definite."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

from hgbench import Curvature, WarmStart, hookimpl
from hgbench.ift import ift_hypergradient
from hgbench.linalg import neumann_solve, power_iteration


@dataclass
class Neumann(WarmStart, Curvature):
    name = "neumann"
    budget: ClassVar[str] = "iterations"
    iterations: int = 5
    alpha: float | Literal["auto"] | None = None  # None: the inner optimiser's learning rate; auto: alpha_scale / λ_max
    alpha_scale: float = 1.0  # alpha=auto: α = alpha_scale / λ_max (the series converges for α < 2 / λ_max)
    power_iterations: int = 10  # alpha=auto: products spent estimating λ_max each hyper-step

    def __post_init__(self):
        super().__post_init__()
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if isinstance(self.alpha, (int, float)) and self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, 'auto' or null, got {self.alpha}")
        if not 0 < self.alpha_scale < 2:
            raise ValueError(f"alpha_scale must be in (0, 2) (the series diverges at α ≥ 2/λ_max), got {self.alpha_scale}")
        if self.power_iterations < 1:
            raise ValueError(f"power_iterations must be >= 1, got {self.power_iterations}")
        self._used: dict[str, float] = {}

    def step_size(self, problem) -> float:
        if isinstance(self.alpha, (int, float)):
            return float(self.alpha)
        lr = getattr(problem.inner_optimizer, "lr", None)
        if lr is None:
            raise ValueError("neumann.alpha is null and the inner optimiser has no 'lr'; set hypergrad.alpha (a number, or auto)")
        return float(lr)

    def compute(self, problem):
        fixed = None if self.alpha == "auto" else self.step_size(problem)

        def solve(matvec, b, x0=None):
            alpha = fixed
            if alpha is None:
                prev = self.state.get("eigvec")
                eig, vec = power_iteration(matvec, b, self.power_iterations, v0=prev if prev is not None and prev.shape == b.shape else None)
                if not eig or not math.isfinite(eig):
                    raise ValueError(f"alpha=auto: the power iteration's eigenvalue estimate is {eig}; set hypergrad.alpha")
                self.state["eigvec"] = vec.detach()
                alpha = self.alpha_scale / abs(eig)
                self._used["eig_max"] = eig
            self._used["alpha"] = alpha
            return neumann_solve(matvec, b, self.iterations, alpha, x0=x0)

        return ift_hypergradient(problem.train_loss, problem.val_loss, problem.w, problem.lam, self.warm_solve(solve),
                                 self.curvature_product(problem))

    def metrics(self):
        return dict(self._used)


@hookimpl
def register_hypergradients():
    return [Neumann]
