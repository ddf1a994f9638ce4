"""``cg``: IFT with H⁻¹∂L_V/∂w from conjugate gradient (``iterations`` steps, optional relative
tolerance ``tol`` and ``damping`` added to the Hessian's diagonal)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from framework import HypergradientMethod, hookimpl
from framework.ift import ift_hypergradient
from framework.linalg import cg_solve


@dataclass
class CG(HypergradientMethod):
    name = "cg"
    iterations: int = 10
    tol: float = 0.0  # stop when ‖r‖ ≤ tol·‖b‖; 0 = always run all iterations (no device sync)
    damping: float = 0.0

    def __post_init__(self):
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if self.tol < 0 or self.damping < 0:
            raise ValueError(f"tol and damping must be >= 0, got tol={self.tol}, damping={self.damping}")

    def compute(self, problem):
        solve = partial(cg_solve, iterations=self.iterations, tol=self.tol, damping=self.damping)
        return ift_hypergradient(problem.train_loss, problem.val_loss, problem.w, problem.lam, solve)


@hookimpl
def register_hypergradients():
    return [CG]
