"""``damped_neumann``: IFT with (H + δI)⁻¹ from a truncated Neumann series.

The paper's Neumann series (hgbench's ``neumann``) approximates H⁻¹ ∂L_V/∂w and converges only
when every eigenvalue μ of the training-loss Hessian H satisfies 0 < αμ < 2. Away from a minimum
of a non-convex training loss H is indefinite: directions with μ < 0 make the series grow
geometrically, and near-flat directions (μ ≈ 0) make its terms add up without decaying. Damping
solves the better-conditioned system (H + δI) v = ∂L_V/∂w instead (as ``cg``'s ``damping`` does):
every eigenvalue moves up by δ, so directions with −δ < μ ≤ 0 now converge, and in a flat direction
(μ = 0) the terms shrink by the factor (1 − αδ) per step instead of staying constant. H + δI is the
Hessian of the training loss plus a proximal term ½δ‖w − w*‖² (the Levenberg–Marquardt fix);
δ = 0 gives ``neumann``.

    v ← v − α (H v + δ v);   p ← p + v;   return α p          (i steps, i + 1 terms)

Parameters: ``iterations`` (i), ``alpha`` (α; ``null`` = the inner optimiser's learning rate),
``damping`` (δ ≥ 0). Converges when 0 < α(μ + δ) < 2 for every eigenvalue μ of H.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from torch import Tensor

from hgbench import HypergradientMethod, hookimpl
from hgbench.ift import ift_hypergradient


def damped_neumann_solve(matvec: Callable[[Tensor], Tensor], b: Tensor, iterations: int, alpha: float, damping: float = 0.0) -> Tensor:
    """(H + δI)⁻¹ b ≈ α Σ_{j=0}^{i} (I − α(H + δI))^j b, from Hessian-vector products ``matvec``.

    One HVP per iteration, no host synchronisation; ``damping=0`` is exactly
    ``hgbench.linalg.neumann_solve``.
    """
    v = b.clone()
    p = b.clone()
    for _ in range(iterations):
        v = v - alpha * (matvec(v) + damping * v)
        p += v
    return alpha * p


@dataclass
class DampedNeumann(HypergradientMethod):
    """IFT hypergradient with a Neumann series on the damped Hessian H + δI."""

    name = "damped_neumann"
    iterations: int = 5
    alpha: float | None = None  # None: the inner optimiser's learning rate
    damping: float = 0.01

    def __post_init__(self):
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if self.alpha is not None and self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if self.damping < 0:
            raise ValueError(f"damping must be >= 0, got {self.damping}")

    def step_size(self, problem) -> float:
        if self.alpha is not None:
            return self.alpha
        lr = getattr(problem.inner_optimizer, "lr", None)
        if lr is None:
            raise ValueError("damped_neumann.alpha is null and the inner optimiser has no 'lr'; set hypergrad.alpha")
        return float(lr)

    def compute(self, problem):
        solve = partial(damped_neumann_solve, iterations=self.iterations, alpha=self.step_size(problem), damping=self.damping)
        return ift_hypergradient(problem.train_loss, problem.val_loss, problem.w, problem.lam, solve)


@hookimpl
def register_hypergradients():
    return [DampedNeumann]
