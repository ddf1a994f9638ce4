"""``minres``: IFT with H⁻¹∂L_V/∂w from MINRES (``iterations`` steps, optional relative tolerance
``tol``, ``damping`` added to the diagonal, ``curvature`` hessian | ggn, ``hessian_batch_size``: HVPs
on a training minibatch of their own).

MINRES solves symmetric systems that may be indefinite: each step minimises the residual over the
Krylov space, so it neither breaks down nor diverges where CG does. It computes the IFT formula
with the true (indefinite) Hessian — accurate to the formula, which is itself ill-conditioned
where H has eigenvalues near zero; combine with ``damping`` or ``curvature=ggn`` for a
well-posed hypergradient. Reads a few numbers per step from the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import ClassVar, Literal

from hgbench import HypergradientMethod, hookimpl
from hgbench.ift import ift_hypergradient
from hgbench.linalg import minres_solve


@dataclass
class Minres(HypergradientMethod):
    name = "minres"
    budget: ClassVar[str] = "iterations"
    iterations: int = 10
    tol: float = 0.0  # stop when the residual estimate ≤ tol·‖b‖; 0 = run all iterations
    damping: float = 0.0
    curvature: Literal["hessian", "ggn"] = "hessian"
    hessian_batch_size: int | None = None  # HVPs on their own training minibatch of this size; None: the hypergradient's batch

    def __post_init__(self):
        super().__post_init__()
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if self.tol < 0 or self.damping < 0:
            raise ValueError(f"tol and damping must be >= 0, got tol={self.tol}, damping={self.damping}")

    def compute(self, problem):
        solve = partial(minres_solve, iterations=self.iterations, tol=self.tol, damping=self.damping)
        curvature = problem.curvature(self.curvature, self.hessian_batch_size)
        return ift_hypergradient(problem.train_loss, problem.val_loss, problem.w, problem.lam, solve, curvature)


@hookimpl
def register_hypergradients():
    return [Minres]
