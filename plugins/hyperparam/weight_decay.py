"""``weight_decay``: L2 penalties with learned decays, λ = their logs (so decays stay positive),
at one of three granularities:

- ``global`` (default): one decay for every weight — 1 hyperparameter;
- ``per_tensor``: one decay per weight tensor (per layer's weight and bias) — the paper's
  per-layer decay;
- ``per_param``: one decay per weight — as many hyperparameters as weights (λ laid out like the
  flat weights; the paper's "millions of hyperparameters").

    L_T(w, λ) = data_loss(train batch) + ½ · Σ_j exp(λ_{g(j)}) · w_j²     L_V = data_loss(val batch)

where g(j) is weight j's group (all one, its tensor, or itself). Works on any model; biases are
decayed too. ``hyperparam=weight_decay_per_param`` is an alias for ``granularity=per_param``.

Each decay is capped at ``max_decay`` (default 10): tuned against a small validation set, decays
can grow without bound (driving their weights to zero), and once lr·decay > 2 the inner SGD step
itself diverges; above the cap that decay's hypergradient is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from hgbench import HyperparamFamily, hookimpl


@dataclass
class WeightDecay(HyperparamFamily):
    name = "weight_decay"
    aliases: ClassVar[dict[str, dict]] = {"weight_decay_per_param": {"granularity": "per_param"}}
    granularity: Literal["global", "per_tensor", "per_param"] = "global"  # one decay for all / per tensor / per weight
    init_decay: float = 1e-4
    max_decay: float | None = 10.0  # decays are capped here (None: no cap); see the module docstring

    def __post_init__(self):
        if self.init_decay <= 0:
            raise ValueError(f"init_decay must be > 0, got {self.init_decay}")
        if self.max_decay is not None and self.max_decay < self.init_decay:
            raise ValueError(f"max_decay must be >= init_decay, got {self.max_decay} < {self.init_decay}")
        self._tensor_sizes: list[int] = []
        self._tensor_names: tuple[str, ...] = ()

    def decay(self, log_decay):
        d = log_decay.exp()
        return d if self.max_decay is None else d.clamp(max=self.max_decay)

    def init_hyperparams(self, ctx):
        spec = ctx.w_spec
        n = {"global": 1, "per_tensor": len(spec.names), "per_param": spec.numel}[self.granularity]
        self._tensor_names = spec.names
        self._tensor_sizes = [math.prod(s) for s in spec.shapes]
        return {"log_decay": torch.full((n,), math.log(self.init_decay))}

    def training_loss(self, w, lam, batch, ctx):
        return ctx.data_loss(ctx.forward(w, batch.x), batch.y) + self.penalty(w, lam, ctx)

    def penalty(self, w, lam, ctx):
        """½ Σ_j d_{g(j)} w_j² (the task loss plus this is L_T: ``curvature=ggn`` is available)."""
        d = self.decay(lam["log_decay"])
        if self.granularity == "global":
            return 0.5 * d.squeeze() * (w * w).sum()
        if self.granularity == "per_tensor":  # Σ_t d_t ‖w_t‖², one split of w (as FlatSpec.unflatten)
            sq = torch.stack([(p * p).sum() for p in torch.split(w, self._tensor_sizes)])
            return 0.5 * (d * sq).sum()
        return 0.5 * (d * w * w).sum()

    def metrics(self, lam):
        """``decay`` (and ``decay/<tensor>``) is the decay the loss uses — capped at ``max_decay`` —;
        ``log_decay`` / ``mean_log_decay`` are the hyperparameters themselves, which may lie above the cap."""
        d = lam["log_decay"]
        if self.granularity == "global":
            return {"decay": self.decay(d).item(), "log_decay": d.item()}
        out = {"mean_log_decay": d.mean().item(), "std_log_decay": d.std().item() if d.numel() > 1 else 0.0}
        if self.max_decay is not None:
            out["capped_share"] = (d >= math.log(self.max_decay)).double().mean().item()
        if self.granularity == "per_tensor":
            out.update({f"decay/{name}": v for name, v in zip(self._tensor_names, self.decay(d).tolist(), strict=True)})
        return out


@hookimpl
def register_hyperparams():
    return [WeightDecay]
