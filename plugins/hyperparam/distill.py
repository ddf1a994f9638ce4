"""``distill``: dataset distillation — λ is a small synthetic training set.

    L_T(w, λ) = data_loss(f(w, X_syn), Y_syn) + ½·l2·‖w‖²      (the real training batch is unused)
    L_V(w)    = data loss on real validation data

X_syn holds ``per_class`` learned images per class (their pixels are hyperparameters), started
from real training images (``init: real``) or noise. With ``learn_labels: true`` each synthetic
example also learns soft-label logits (Y_syn = softmax(λ_labels)). The final images are saved
as the MLflow artifact ``distilled.png``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from framework import HyperparamFamily, hookimpl
from plugins.hyperparam._common import image_grid, l2


@dataclass
class Distill(HyperparamFamily):
    name = "distill"
    per_class: int = 1
    init: Literal["real", "noise"] = "real"
    learn_labels: bool = False
    l2: float = 1e-4
    seed: int = 0

    def __post_init__(self):
        if self.per_class < 1:
            raise ValueError(f"per_class must be >= 1, got {self.per_class}")

    def skip(self, problem):
        if problem.data.task != "classification":
            return "distillation needs a classification dataset (one synthetic set per class)"
        if not problem.data.train.x.is_floating_point():
            return "distillation learns continuous inputs; this dataset's inputs are tokens"
        return None

    def init_hyperparams(self, ctx):
        x, y = ctx.data.train.x, ctx.data.train.y
        classes = ctx.data.num_outputs
        g = torch.Generator().manual_seed(self.seed)
        images = torch.rand((classes * self.per_class, *ctx.data.input_shape), generator=g, dtype=torch.float64)
        if self.init == "real" and x.is_floating_point():
            for c in range(classes):
                idx = (y == c).nonzero().flatten()[: self.per_class].cpu()
                images[c * self.per_class : c * self.per_class + len(idx)] = x[idx].cpu().double()
        self._labels = torch.arange(classes, device=ctx.device).repeat_interleave(self.per_class)
        lam = {"images": images}
        if self.learn_labels:
            lam["label_logits"] = 5.0 * F.one_hot(self._labels.cpu(), classes).double()
        return lam

    def training_loss(self, w, lam, batch, ctx):
        out = ctx.forward(w, lam["images"])
        if self.learn_labels:
            loss = -(F.softmax(lam["label_logits"], -1) * F.log_softmax(out, -1)).sum(-1).mean()
        else:
            loss = ctx.data_loss(out, self._labels)
        return loss + l2(w, self.l2)

    def figures(self, lam):
        titles = [str(int(c)) for c in self._labels.cpu()]
        if self.learn_labels:
            titles = [f"{t}: {p:.2f}" for t, p in zip(titles, F.softmax(lam["label_logits"], -1).max(-1).values.tolist())]
        return {"distilled.png": image_grid(lam["images"], titles, ncols=max(self.per_class, 1) if self.per_class > 1 else None)}


@hookimpl
def register_hyperparams():
    return [Distill]
