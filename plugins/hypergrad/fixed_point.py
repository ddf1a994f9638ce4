"""``fixed_point``: AID-FP (Grazzi et al., ICML 2020; hypertorch's ``fixed_point``): the fixed-point
iteration on the inner optimiser's own update map Φ(w, λ) = step(w, ∂L_T/∂w, state), its state held
fixed — v ← (∂Φ/∂w)ᵀ v + ∂L_V/∂w, then dL_V/dλ ≈ ∂L_V/∂λ + (∂Φ/∂λ)ᵀ v.

Cost: ``iterations`` vector–Jacobian products of Φ (one HVP each, plus the optimiser's arithmetic);
memory: one graph of Φ. How it relates to ``neumann`` (which iterates I − αH with a chosen α):

- plain SGD with learning rate α, and heavy-ball momentum (the buffer is state): ∂Φ/∂w = I − αH,
  so it *is* Neumann with the same iterations and α = the learning rate;
- Nesterov momentum μ: ∂Φ/∂w = I − α(1 + μ)H — Neumann with step α(1 + μ);
- Adam: ∂Φ/∂w = I − αDH with D = ∂(Adam's update)/∂g (the second moment's dependence on g
  included): a preconditioned, non-symmetric series. When it converges the limit is the same IFT
  hypergradient (D cancels), but truncated it differs from Neumann, and it converges only where
  ρ(I − αDH) < 1 — with Adam's large steps in flat directions, often not.

``warm_start``: start from the previous hyper-step's v (every update then costs a product:
iterations + 1). hypertorch's K = iterations + 1 (its first update, from v = 0, is free here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from hgbench import WarmStart, hookimpl
from hgbench.ift import fixed_point_hypergradient


@dataclass
class FixedPoint(WarmStart):
    name = "fixed_point"
    budget: ClassVar[str] = "iterations"
    iterations: int = 5

    def __post_init__(self):
        super().__post_init__()
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")

    def compute(self, problem):
        if problem.inner_optimizer is None:
            raise ValueError("fixed_point needs the inner optimiser's update rule (Bilevel.inner_optimizer)")
        v0 = self.state.get("v") if self.warm_start else None
        if v0 is not None and v0.shape != problem.w.shape:
            v0 = None
        hg, v = fixed_point_hypergradient(problem.train_loss, problem.val_loss, problem.w, problem.lam,
                                          problem.inner_optimizer, problem.inner_state, self.iterations,
                                          None if v0 is None else v0.to(problem.w.device, problem.w.dtype))
        if self.warm_start:
            self.state["v"] = v
        return hg


@hookimpl
def register_hypergradients():
    return [FixedPoint]
