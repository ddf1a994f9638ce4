"""``identity``: IFT with the inverse Hessian replaced by ``scale``·I (Luketina et al. 2016;
i = 0 in the paper). With ``scale`` = α it equals ``neumann`` with 0 iterations."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from hgbench import HypergradientMethod, hookimpl
from hgbench.ift import ift_hypergradient
from hgbench.linalg import identity_solve


@dataclass
class Identity(HypergradientMethod):
    name = "identity"
    scale: float = 1.0

    def compute(self, problem):
        solve = partial(identity_solve, scale=self.scale)
        return ift_hypergradient(problem.train_loss, problem.val_loss, problem.w, problem.lam, solve)


@hookimpl
def register_hypergradients():
    return [Identity]
