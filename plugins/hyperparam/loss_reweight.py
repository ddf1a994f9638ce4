"""``loss_reweight``: one learned weight per training example (or per class).

    L_T(w, λ) = Σ_i a_i ℓ_i / Σ_i a_i  + ½·l2·‖w‖²,   a_i = 2·sigmoid(λ_{k(i)}) ∈ (0, 2)
    L_V(w)    = mean data loss on clean validation data

k(i) is the example's index in the training split (``per: example``) or its class (``per:
class``); λ = 0 gives every example weight 1. With ``normalize: false`` the weighted sum is divided
by the batch size instead. For noisy labels (e.g. ``dataset=mnist_5k_noisy``) the run also logs
the mean weight of the corrupted and of the clean examples, which should drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from hgbench import HyperparamFamily, hookimpl
from hgbench.plugins.hyperparam._common import l2


@dataclass
class LossReweight(HyperparamFamily):
    name = "loss_reweight"
    per: Literal["example", "class"] = "example"
    normalize: bool = True
    l2: float = 1e-4

    def skip(self, problem):
        if self.per == "class" and problem.data.task != "classification":
            return "per-class weights need a classification dataset; use per=example"
        return None

    def init_hyperparams(self, ctx):
        n = len(ctx.data.train.x) if self.per == "example" else ctx.data.num_outputs
        noisy = ctx.data.meta.get("noisy_mask")
        self._noisy = None if noisy is None or self.per != "example" else torch.as_tensor(noisy, dtype=torch.bool)
        return {"logit_weight": torch.zeros(n)}

    def weights(self, lam, batch):
        key = batch.idx if self.per == "example" else batch.y
        return 2 * torch.sigmoid(lam["logit_weight"][key])

    def training_loss(self, w, lam, batch, ctx):
        losses = ctx.data_loss(ctx.forward(w, batch.x), batch.y, reduction="none")
        a = self.weights(lam, batch)
        if a.dim() < losses.dim():  # per-example weights over a sequence's tokens
            a = a.reshape(a.shape + (1,) * (losses.dim() - a.dim())).expand_as(losses)
        denom = a.sum() if self.normalize else losses.numel()
        return (a * losses).sum() / denom + l2(w, self.l2)

    def metrics(self, lam):
        a = 2 * torch.sigmoid(lam["logit_weight"])
        out = {"mean_weight": a.mean().item(), "min_weight": a.min().item()}
        if self._noisy is not None and self._noisy.any() and (~self._noisy).any():
            mask = self._noisy.to(a.device)
            out["mean_weight_noisy"] = a[mask].mean().item()
            out["mean_weight_clean"] = a[~mask].mean().item()
        return out


@hookimpl
def register_hyperparams():
    return [LossReweight]
