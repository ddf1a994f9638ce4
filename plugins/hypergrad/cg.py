"""``cg``: IFT with H⁻¹∂L_V/∂w from conjugate gradient (``iterations`` steps, optional relative
tolerance ``tol`` and ``damping`` added to the Hessian's diagonal). ``warm_start``: start from the
previous hyper-step's solution (residual b − H·x₀; one more HVP), which w's small moves between
hyper-steps make a good guess. ``hessian_batch_size``: HVPs on a training minibatch of their own.

CG assumes H + damping·I ≻ 0. Where H has negative eigenvalues its step sizes rs/(pᵀHp) can be
negative or blow up (pᵀHp ≈ 0): the result is then not H⁻¹b in any useful sense. Remedies:
``damping`` large enough to shift the spectrum, ``curvature=ggn`` (the Gauss–Newton matrix,
positive semi-definite), or the ``minres`` method (symmetric indefinite systems)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal
from functools import partial

from hgbench import HypergradientMethod, hookimpl
from hgbench.ift import ift_hypergradient
from hgbench.linalg import cg_solve


@dataclass
class CG(HypergradientMethod):
    name = "cg"
    budget: ClassVar[str] = "iterations"
    iterations: int = 10
    tol: float = 0.0  # stop when ‖r‖ ≤ tol·‖b‖; 0 = always run all iterations (no device sync)
    damping: float = 0.0
    curvature: Literal["hessian", "ggn"] = "hessian"  # the matrix inverted: H, or the Gauss–Newton G ⪰ 0
    warm_start: bool = False  # start from the previous hyper-step's solution (the residual costs one more HVP)
    hessian_batch_size: int | None = None  # HVPs on their own training minibatch of this size; None: the hypergradient's batch

    def __post_init__(self):
        super().__post_init__()
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if self.tol < 0 or self.damping < 0:
            raise ValueError(f"tol and damping must be >= 0, got tol={self.tol}, damping={self.damping}")

    def compute(self, problem):
        solve = partial(cg_solve, iterations=self.iterations, tol=self.tol, damping=self.damping)
        curvature = problem.curvature(self.curvature, self.hessian_batch_size)
        return ift_hypergradient(problem.train_loss, problem.val_loss, problem.w, problem.lam, self.warm_solve(solve), curvature)


@hookimpl
def register_hypergradients():
    return [CG]
