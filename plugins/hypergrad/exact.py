"""``exact``: IFT with the full Hessian built from HVPs and solved exactly (plus optional
``damping``; ``curvature`` and ``hessian_batch_size`` as in every IFT method). Refuses problems with more than ``max_weights`` weights: the n×n Hessian would not fit.

"Exact" means the IFT formula evaluated exactly, not the true hypergradient: where H is indefinite
or nearly singular (the normal case for a network away from a strict minimum) H⁻¹ amplifies the
directions of tiny or negative curvature and the result can be orders of magnitude off. Use
``damping`` or ``curvature=ggn`` for a well-posed reference, and check ``hess_eig_min``."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from hgbench import Curvature, Damping, hookimpl
from hgbench.ift import ift_hypergradient
from hgbench.linalg import dense_solve


@dataclass
class Exact(Damping, Curvature):
    name = "exact"
    max_weights: int = 5000

    def skip(self, problem):
        reason = super().skip(problem)
        if reason:
            return reason
        n = problem.num_weights
        if n > self.max_weights:
            gib = n * n * problem.dtype.itemsize / 2**30
            return (
                f"the exact Hessian of {n:,} weights is a {n:,}×{n:,} matrix ({gib:,.1f} GiB); "
                f"hypergrad.max_weights={self.max_weights:,}. Use cg or neumann, or raise hypergrad.max_weights"
            )
        return None

    def compute(self, problem):
        n = problem.w.numel()
        if n > self.max_weights:
            raise ValueError(f"exact: {n:,} weights > max_weights={self.max_weights:,}; use cg or neumann")
        solve = partial(dense_solve, damping=self.damping)
        return ift_hypergradient(problem.train_loss, problem.val_loss, problem.w, problem.lam, solve, self.curvature_product(problem))


@hookimpl
def register_hypergradients():
    return [Exact]
