"""``neumann``: IFT with the inverse Hessian approximated by a truncated Neumann series
(Lorraine et al. 2020, Algorithm 3): ``iterations`` = i steps (i + 1 terms) of step size ``alpha``."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from framework import HypergradientMethod, hookimpl
from framework.ift import ift_hypergradient
from framework.linalg import neumann_solve


@dataclass
class Neumann(HypergradientMethod):
    name = "neumann"
    iterations: int = 5
    alpha: float | None = None  # None: the inner optimiser's learning rate

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
        return ift_hypergradient(problem.train_loss, problem.val_loss, problem.w, problem.lam, solve)


@hookimpl
def register_hypergradients():
    return [Neumann]
