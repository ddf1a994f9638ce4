"""``weight_decay``: one global L2 penalty, λ = log of the decay (so the decay stays positive).

    L_T(w, λ) = data_loss(train batch) + ½ · exp(λ) · ‖w‖²        L_V = data_loss(val batch)

Every weight, biases included, is decayed. The decay is capped at ``max_decay`` (default 10):
tuned against a small validation set, decays can grow without bound (driving weights to zero),
and once lr·decay > 2 the inner SGD step itself diverges; above the cap the hypergradient is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from framework import HyperparamFamily, hookimpl


@dataclass
class WeightDecay(HyperparamFamily):
    name = "weight_decay"
    init_decay: float = 1e-4
    max_decay: float | None = 10.0  # decays are capped here (None: no cap); see the module docstring

    def __post_init__(self):
        if self.init_decay <= 0:
            raise ValueError(f"init_decay must be > 0, got {self.init_decay}")
        if self.max_decay is not None and self.max_decay < self.init_decay:
            raise ValueError(f"max_decay must be >= init_decay, got {self.max_decay} < {self.init_decay}")

    def decay(self, log_decay):
        d = log_decay.exp()
        return d if self.max_decay is None else d.clamp(max=self.max_decay)

    def init_hyperparams(self, ctx):
        return {"log_decay": torch.full((1,), math.log(self.init_decay))}

    def training_loss(self, w, lam, batch, ctx):
        return ctx.data_loss(ctx.forward(w, batch.x), batch.y) + 0.5 * self.decay(lam["log_decay"]).squeeze() * (w * w).sum()

    def metrics(self, lam):
        return {"decay": lam["log_decay"].exp().item()}


@hookimpl
def register_hyperparams():
    return [WeightDecay]
