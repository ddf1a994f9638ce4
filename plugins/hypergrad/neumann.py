"""``neumann``: IFT with the inverse Hessian approximated by a truncated Neumann series
(Lorraine et al. 2020, Algorithm 3): ``iterations`` = i steps (i + 1 terms) of step size ``alpha``.

Where H has negative eigenvalues μ < 0 the series' terms along them grow as (1 − αμ)^j > 1: the
truncated sum stays finite for any i (it is i + 1 steps of gradient descent on ½vᵀHv − vᵀg) but
no longer approaches H⁻¹ (the paper's convergence needs H ≻ 0 and α < 2/λ_max). With
``curvature=ggn`` it inverts the Gauss–Newton matrix instead, which is positive semi-definite."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal
from functools import partial

from framework import HypergradientMethod, hookimpl
from framework.ift import ift_hypergradient
from framework.linalg import neumann_solve


@dataclass
class Neumann(HypergradientMethod):
    name = "neumann"
    budget: ClassVar[str] = "iterations"
    iterations: int = 5
    alpha: float | None = None  # None: the inner optimiser's learning rate
    curvature: Literal["hessian", "ggn"] = "hessian"  # the matrix inverted: H, or the Gauss–Newton G ⪰ 0

    def __post_init__(self):
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if self.alpha is not None and self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")

    def step_size(self, problem) -> float:
        if self.alpha is not None:
            return self.alpha
        lr = getattr(problem.inner_optimizer, "lr", None)
        if lr is None:
            raise ValueError("neumann.alpha is null and the inner optimiser has no 'lr'; set hypergrad.alpha")
        return float(lr)

    def compute(self, problem):
        solve = partial(neumann_solve, iterations=self.iterations, alpha=self.step_size(problem))
        return ift_hypergradient(problem.train_loss, problem.val_loss, problem.w, problem.lam, solve, problem.curvature(self.curvature))


@hookimpl
def register_hypergradients():
    return [Neumann]
