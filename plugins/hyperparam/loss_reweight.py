"""``loss_reweight``: one learned weight per training example (or per class).

    L_T(w, λ) = Σ_i a_i ℓ_i / Σ_i a_i  + ½·l2·‖w‖²,   a_i = s·sigmoid(λ_{k(i)}) ∈ (0, s)
    L_V(w)    = mean data loss on clean validation data

k(i) is the example's index in the training split (``per: example``) or its class (``per:
class``); s is ``weight_scale`` (2 by default: λ = 0 gives every example weight 1). With
``normalize: false`` the weighted sum is divided by the batch size instead. λ starts at
``init_logit`` (0 by default). Data cleaning as benchopt's benchmark_bilevel poses it,
mean_i sigmoid(λ_i)·ℓ_i + 0.2·‖w‖² from λ = −2, is ``weight_scale: 1``, ``normalize: false``,
``l2: 0.4``, ``init_logit: -2`` (``experiment=hyperclean_mnist``). For noisy labels (e.g. ``dataset=mnist_5k_noisy``) the run also logs
the mean weight of the corrupted and of the clean examples, which should drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import math

import torch

from hgbench import HyperparamFamily, hookimpl
from hgbench.errors import ConfigError
from hgbench.plugins.hyperparam._common import l2


@dataclass
class LossReweight(HyperparamFamily):
    name = "loss_reweight"
    per: Literal["example", "class"] = "example"
    normalize: bool = True
    l2: float = 1e-4
    weight_scale: float = 2.0  # a_i = weight_scale·sigmoid(λ_i): 2 gives weight 1 at λ = 0
    init_logit: float = 0.0  # λ's starting value (every example's weight weight_scale·sigmoid(init_logit))

    def __post_init__(self):
        if not (math.isfinite(self.weight_scale) and self.weight_scale > 0):
            raise ConfigError(f"weight_scale must be a finite number > 0, got {self.weight_scale!r}")
        if not math.isfinite(self.init_logit):
            raise ConfigError(f"init_logit must be a finite number, got {self.init_logit!r}")
        if not (math.isfinite(self.l2) and self.l2 >= 0):
            raise ConfigError(f"l2 must be a finite number >= 0, got {self.l2!r}")

    def skip(self, problem):
        if self.per == "class" and problem.data.task != "classification":
            return "per-class weights need a classification dataset; use per=example"
        return None

    def init_hyperparams(self, ctx):
        n = len(ctx.data.train.x) if self.per == "example" else ctx.data.num_outputs
        noisy = ctx.data.meta.get("noisy_mask")
        self._noisy = None if noisy is None or self.per != "example" else torch.as_tensor(noisy, dtype=torch.bool)
        return {"logit_weight": torch.full((n,), float(self.init_logit))}

    def weights(self, lam, batch):
        key = batch.idx if self.per == "example" else batch.y
        return self.weight_scale * torch.sigmoid(lam["logit_weight"][key])

    def training_loss(self, w, lam, batch, ctx):
        losses = ctx.data_loss(ctx.forward(w, batch.x), batch.y, reduction="none")
        a = self.weights(lam, batch)
        if a.dim() < losses.dim():  # per-example weights over a sequence's tokens
            a = a.reshape(a.shape + (1,) * (losses.dim() - a.dim())).expand_as(losses)
        denom = a.sum() if self.normalize else losses.numel()
        return (a * losses).sum() / denom + l2(w, self.l2)

    def metrics(self, lam):
        a = self.weight_scale * torch.sigmoid(lam["logit_weight"])
        out = {"mean_weight": a.mean().item(), "min_weight": a.min().item()}
        if self._noisy is not None and self._noisy.any() and (~self._noisy).any():
            mask = self._noisy.to(a.device)
            out["mean_weight_noisy"] = a[mask].mean().item()
            out["mean_weight_clean"] = a[~mask].mean().item()
        return out


@hookimpl
def register_hyperparams():
    return [LossReweight]
