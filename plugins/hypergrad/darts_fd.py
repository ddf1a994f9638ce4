"""``darts_fd``: DARTS' first-order-only hypergradient (Liu et al., ICLR 2019; Betty's
``darts``): the mixed term (∂²L_T/∂λ∂wᵀ) v by central finite differences of ∂L_T/∂λ at
w ± ε̂·v (ε̂ = ``epsilon`` / ‖v‖) — two plain gradients, no second-order autograd.

v ≈ H⁻¹ ∂L_V/∂w from ``inverse``: ``identity`` (v = ``scale``·∂L_V/∂w: as ε → 0 it is the
``identity`` method's hypergradient) or ``neumann`` (``iterations`` steps of size ``alpha``, null =
the inner learning rate, with finite-difference Hessian-vector products — two gradients each).
Error O(ε²) on top of the inverse's; in float32 too small an ε drowns in rounding (ε = 0.01 as in
DARTS)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hgbench import HypergradientMethod, hookimpl
from hgbench.ift import FiniteDifferenceHVP, finite_difference_mixed, val_gradients
from hgbench.linalg import neumann_solve


@dataclass
class DartsFD(HypergradientMethod):
    name = "darts_fd"
    epsilon: float = 0.01  # finite-difference radius (relative to ‖v‖)
    inverse: Literal["identity", "neumann"] = "identity"
    scale: float = 1.0  # inverse=identity: H⁻¹ ≈ scale·I
    iterations: int = 5  # inverse=neumann
    alpha: float | None = None  # inverse=neumann: step size; None = the inner optimiser's learning rate

    def __post_init__(self):
        if self.epsilon <= 0:
            raise ValueError(f"epsilon must be > 0, got {self.epsilon}")
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if self.alpha is not None and self.alpha <= 0:
            raise ValueError(f"alpha must be > 0 or null, got {self.alpha}")

    def compute(self, problem):
        gv_w, gv_lam = val_gradients(problem.val_loss, problem.w.detach().requires_grad_(True),
                                     problem.lam.detach().requires_grad_(True))
        if self.inverse == "identity":
            v = self.scale * gv_w
        else:
            alpha = self.alpha if self.alpha is not None else getattr(problem.inner_optimizer, "lr", None)
            if alpha is None:
                raise ValueError("darts_fd.alpha is null and the inner optimiser has no 'lr'; set hypergrad.alpha")
            hvp = FiniteDifferenceHVP(problem.train_loss, problem.w, problem.lam, self.epsilon)
            v = neumann_solve(hvp, gv_w.detach(), self.iterations, float(alpha))
        return gv_lam - finite_difference_mixed(problem.train_loss, problem.w, problem.lam, v, self.epsilon)


@hookimpl
def register_hypergradients():
    return [DartsFD]
