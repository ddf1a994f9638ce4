"""``dropout_per_unit``: one learned dropout rate per unit, made differentiable with the
concrete (relaxed Bernoulli) distribution (Maddison et al. 2017; Gal et al. 2017).

    p_u = sigmoid(λ_u)                                   the drop rate of unit u
    z   = sigmoid((λ_u + log ε − log(1 − ε)) / t),  ε ~ U(0, 1)   a relaxed "drop" indicator
    m   = (1 − z) / (1 − p_u)                            the inverted-dropout mask, E[m] ≈ 1
    L_T(w, λ) = data_loss(f(w, x; masks m), y) + ½·l2·‖w‖²,   L_V(w) = data loss without dropout

Masks are drawn per example and unit at every dropout site of the model (``mlp``: hidden layers;
``lstm``: embedding / between layers / before the decoder; see ``plugins/model/_units.py``);
``sites`` picks a subset. ``fixed_noise`` makes ε deterministic (for checks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from framework import ConfigError, HyperparamFamily, hookimpl
from plugins.hyperparam._common import l2, uniform_noise


@dataclass
class DropoutPerUnit(HyperparamFamily):
    name = "dropout_per_unit"
    init_rate: float = 0.1
    temperature: float = 0.1
    sites: list[str] | None = None  # None: every dropout site of the model
    fixed_noise: bool = False
    l2: float = 1e-4

    def __post_init__(self):
        if not 0 < self.init_rate < 1:
            raise ValueError(f"init_rate must be in (0, 1), got {self.init_rate}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def skip(self, problem):
        if not getattr(problem.module, "dropout_sites", None):
            return f"model {problem.model.name!r} has no dropout sites; use mlp, cnn, resnet or lstm"
        return None

    def init_hyperparams(self, ctx):
        available = getattr(ctx.module, "dropout_sites", None) or {}
        if not available:
            return {}
        chosen = list(available) if self.sites is None else list(self.sites)
        unknown = sorted(set(chosen) - set(available))
        if unknown:
            raise ConfigError(f"hyperparam.sites: unknown dropout site(s) {unknown}; model sites: {sorted(available)}")
        logit = math.log(self.init_rate / (1 - self.init_rate))
        return {site: torch.full((available[site],), logit) for site in chosen}

    def masks(self, lam, batch_size, like, salt: int = 0):
        out = {}
        for i, (site, logits) in enumerate(lam.items()):
            eps = uniform_noise((batch_size, logits.numel()), like, self.fixed_noise, seed=i + salt)
            z = torch.sigmoid((logits + torch.log(eps) - torch.log1p(-eps)) / self.temperature)
            out[site] = (1 - z) / (1 - torch.sigmoid(logits))
        return out

    def training_loss(self, w, lam, batch, ctx):
        out = ctx.forward(w, batch.x, unit_masks=self.masks(lam, batch.x.shape[0], w) if lam else None)
        return ctx.data_loss(out, batch.y) + l2(w, self.l2)

    def metrics(self, lam):
        return {f"drop_rate/{site}": torch.sigmoid(v).mean().item() for site, v in lam.items()}


@hookimpl
def register_hyperparams():
    return [DropoutPerUnit]
