"""``nystrom``: IFT with the inverse of a rank-``rank`` Nyström approximation of the Hessian
(Hataya & Yamada, "Nyström method for accurate and scalable implicit differentiation", AISTATS
2023): ``rank`` Hessian columns at coordinates drawn at random (seeded by the run), then
Woodbury's identity solves (H_k + ρI) v = ∂L_V/∂w through a rank×rank system.

Cost: ``rank`` HVPs in one batched backward (no sequential iterations), memory: n × rank numbers.
Exact when rank = n — it is then (H + ρI)⁻¹ — and ρ (``damping``, > 0 here) acts as a damping: directions the
sampled columns miss are scaled by 1/ρ. The default ρ = 1 keeps those at the ``identity`` method's
scale (a bounded error at any rank); a small ρ is accurate only once the columns span H's range —
on the frontier's ridge (30 weights, H of full rank) ρ = 0.01 gives relative errors
of 20–90 below full rank and 0.014 at it, ρ = 1 gives 0.2–0.6 throughout. On an indefinite H the
small matrix ρW + CᵀC can be singular; a least-squares solve is used then (the answer has no
guarantee there: prefer ``curvature=ggn``)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import ClassVar

from hgbench import Curvature, Damping, hookimpl
from hgbench.ift import ift_hypergradient
from hgbench.linalg import nystrom_solve


@dataclass
class Nystrom(Damping, Curvature):
    name = "nystrom"
    budget: ClassVar[str] = "rank"
    rank: int = 10  # Hessian columns sampled (HVPs)
    damping: float = 1.0  # ρ > 0 of the Woodbury solve: missed directions are scaled by 1/ρ

    def __post_init__(self):
        super().__post_init__()
        if self.rank < 0:
            raise ValueError(f"rank must be >= 0, got {self.rank}")
        if self.damping <= 0:
            raise ValueError(f"damping must be > 0 (nystrom scales the directions its columns miss by 1/damping), got {self.damping}")

    def compute(self, problem):
        solve = partial(nystrom_solve, rank=self.rank, damping=self.damping)
        return ift_hypergradient(problem.train_loss, problem.val_loss, problem.w, problem.lam, solve, self.curvature_product(problem))


@hookimpl
def register_hypergradients():
    return [Nystrom]
