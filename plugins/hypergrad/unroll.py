"""``unroll``: truncated reverse-mode differentiation through ``steps`` inner optimiser updates
from the current weights (on the same training batch). Memory grows linearly with ``steps``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from hgbench import HypergradientMethod, hookimpl
from hgbench.ift import unrolled_hypergradient


@dataclass
class Unroll(HypergradientMethod):
    name = "unroll"
    budget: ClassVar[str] = "steps"
    steps: int = 5

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")

    def compute(self, problem):
        if problem.inner_optimizer is None:
            raise ValueError("unroll needs the inner optimiser's update rule (Bilevel.inner_optimizer)")
        return unrolled_hypergradient(
            problem.train_loss, problem.val_loss, problem.w, problem.lam,
            problem.inner_optimizer, problem.inner_state, self.steps,
        )


@hookimpl
def register_hypergradients():
    return [Unroll]
