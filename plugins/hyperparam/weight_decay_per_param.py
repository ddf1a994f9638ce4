"""``weight_decay_per_param``: one L2 decay per weight — as many hyperparameters as weights.

    L_T(w, λ) = data_loss(train batch) + ½ · Σ_j exp(λ_j) · w_j²     L_V = data_loss(val batch)

λ_j is the log of weight j's decay. Works on any model (λ is laid out like the flat weights).
Each decay is capped at ``max_decay`` (default 10): tuned against a small validation set some
decays grow without bound (driving their weights to zero), and once lr·decay > 2 the inner SGD
step itself diverges; above the cap that decay's hypergradient is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from framework import HyperparamFamily, hookimpl


@dataclass
class WeightDecayPerParam(HyperparamFamily):
    name = "weight_decay_per_param"
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
        return {"log_decay": torch.full((ctx.w_spec.numel,), math.log(self.init_decay))}

    def training_loss(self, w, lam, batch, ctx):
        return ctx.data_loss(ctx.forward(w, batch.x), batch.y) + 0.5 * (self.decay(lam["log_decay"]) * w * w).sum()

    def metrics(self, lam):
        d = lam["log_decay"]
        return {"mean_log_decay": d.mean().item(), "std_log_decay": d.std().item() if d.numel() > 1 else 0.0}


@hookimpl
def register_hyperparams():
    return [WeightDecayPerParam]
