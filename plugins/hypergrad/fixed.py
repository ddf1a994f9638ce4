"""``fixed``: no hypergradient — λ keeps its initial value (returns zeros, costs nothing).

The "untuned" baseline, and what each trial of a black-box tuner (``sweep=optuna_weight_decay``)
runs: the tuner picks λ, the run trains with it fixed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hgbench import HypergradientMethod, hookimpl


@dataclass
class Fixed(HypergradientMethod):
    name = "fixed"

    def compute(self, problem):
        return torch.zeros_like(problem.lam)


@hookimpl
def register_hypergradients():
    return [Fixed]
