"""``dropout_per_unit``: one learned dropout rate per unit, made differentiable with the
concrete (relaxed Bernoulli) distribution (Maddison et al. 2017; Gal et al. 2017).

    p_u = sigmoid(λ_u)                                   the drop rate of unit u
    z   = sigmoid((λ_u + log ε − log(1 − ε)) / t),  ε ~ U(0, 1)   a relaxed "drop" indicator
    m   = (1 − z) / (1 − p_u)                            the inverted-dropout mask, E[m] ≈ 1
    L_T(w, λ) = data_loss(f(w, x; masks m), y) + ½·l2·‖w‖²,   L_V(w) = data loss without dropout

Masks are drawn per example and unit at every dropout site of the model (``mlp``: hidden layers;
``lstm``: embedding / between layers / before the decoder; see ``plugins/model/_units.py``);
``sites`` picks a subset. ``fixed_noise`` makes ε deterministic (for checks).

The other regularisers of the paper's AWD-LSTM experiment, each off (``null``) by default and, when
set, learned from that initial value (``lstm`` only: the model's ``weight_drop_sites``,
``vocab_size`` and ``activations``, see ``plugins/model/lstm.py``):

- ``weight_drop``: DropConnect on the hidden-to-hidden weights (AWD-LSTM's WeightDrop), one rate
  per weight of every layer's ``weight_hh`` (λ ``weight_hh0``, ``weight_hh1``, …) — the paper's
  per-weight variant; the same relaxation, one mask per batch (shared by its examples and steps);
- ``word_dropout``: embedding dropout of whole words, ONE rate (λ ``word``; the paper tunes this one
  globally in its per-unit run too), a relaxed mask per vocabulary word per batch;
- ``ar`` / ``tar``: the coefficients of activation regularisation α·mean(m ⊙ h_L)² on the last
  layer's dropped outputs and temporal activation regularisation β·mean(h_L,t+1 − h_L,t)² on its
  raw outputs (AWD-LSTM; the authors' ``train.py``), each one λ with coefficient softplus(λ).

With all of them, L_T = data loss (masks at every site, DropConnect, word dropout) + AR + TAR +
½·l2·‖w‖²; L_V stays the plain data loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from hgbench import ConfigError, HyperparamFamily, hookimpl
from hgbench.plugins.hyperparam._common import l2, uniform_noise

WORD, AR, TAR, WEIGHT = "word", "ar", "tar", "weight_"  # λ names of the extra regularisers (WEIGHT: a prefix)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def inv_softplus(x: float) -> float:
    return math.log(math.expm1(x))


def is_extra(name: str) -> bool:
    """Whether λ's entry ``name`` is one of the extra regularisers, not a dropout site."""
    return name in (WORD, AR, TAR) or name.startswith(WEIGHT)


def concrete_mask(logits: Tensor, shape: tuple[int, ...], like: Tensor, temperature: float, fixed: bool, seed: int) -> Tensor:
    """The relaxed inverted-dropout mask (1 − z) / (1 − p) of drop logits broadcast to ``shape``."""
    eps = uniform_noise(shape, like, fixed, seed=seed)
    z = torch.sigmoid((logits + torch.log(eps) - torch.log1p(-eps)) / temperature)
    return (1 - z) / (1 - torch.sigmoid(logits))


@dataclass
class DropoutPerUnit(HyperparamFamily):
    name = "dropout_per_unit"
    per_unit: ClassVar[bool] = True  # one rate per unit (and per weight for weight_drop); dropout_rates: one per site
    init_rate: float = 0.1
    temperature: float = 0.1
    sites: list[str] | None = None  # None: every dropout site of the model
    fixed_noise: bool = False
    l2: float = 1e-4
    weight_drop: float | None = None  # lstm: learn DropConnect rates on weight_hh, started at this rate (null: none)
    word_dropout: float | None = None  # lstm: learn embedding dropout of whole words, started at this rate (null: none)
    ar: float | None = None  # lstm: learn the AR coefficient, started here (null: no AR)
    tar: float | None = None  # lstm: learn the TAR coefficient, started here (null: no TAR)

    def __post_init__(self):
        if not 0 < self.init_rate < 1:
            raise ValueError(f"init_rate must be in (0, 1), got {self.init_rate}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        for k in ("weight_drop", "word_dropout"):
            v = getattr(self, k)
            if v is not None and not 0 < v < 1:
                raise ValueError(f"{k} must be null or in (0, 1), got {v}")
        for k in ("ar", "tar"):
            v = getattr(self, k)
            if v is not None and not v > 0:
                raise ValueError(f"{k} must be null or > 0 (a softplus-parametrised coefficient), got {v}")

    def skip(self, problem):
        if not getattr(problem.module, "dropout_sites", None):
            return f"model {problem.model.name!r} has no dropout sites; use mlp, cnn, resnet or lstm"
        return None

    def init_hyperparams(self, ctx):
        module = ctx.module
        available = getattr(module, "dropout_sites", None) or {}
        if not available:
            return {}
        chosen = list(available) if self.sites is None else list(self.sites)
        unknown = sorted(set(chosen) - set(available))
        if unknown:
            raise ConfigError(f"hyperparam.sites: unknown dropout site(s) {unknown}; model sites: {sorted(available)}")
        lam = {site: torch.full((available[site] if self.per_unit else 1,), logit(self.init_rate)) for site in chosen}
        lam.update(self.extra_hyperparams(module))
        return lam

    def extra_hyperparams(self, module) -> dict[str, Tensor]:
        """λ's entries for weight_drop, word_dropout, ar and tar (those that are set)."""
        lam: dict[str, Tensor] = {}
        model = type(module).__name__

        def need(attr: str, option: str) -> Any:
            if getattr(module, attr, None) is None:
                raise ConfigError(f"hyperparam.{option}={getattr(self, option)}: the model ({model}) has no {attr}; "
                                  f"{option} needs model=lstm (or set hyperparam.{option}=null)")
            return getattr(module, attr)

        if self.weight_drop is not None:
            sites = need("weight_drop_sites", "weight_drop")
            if self.per_unit:
                lam.update({WEIGHT + s: torch.full(shape, logit(self.weight_drop)) for s, shape in sites.items()})
            else:
                lam[WEIGHT + "hh"] = torch.full((1,), logit(self.weight_drop))
        if self.word_dropout is not None:
            need("vocab_size", "word_dropout")
            lam[WORD] = torch.full((1,), logit(self.word_dropout))
        for k in (AR, TAR):
            if getattr(self, k) is not None:
                need("records_activations", k)
                lam[k] = torch.full((1,), inv_softplus(getattr(self, k)))
        return lam

    def masks(self, lam, batch_size, like, salt: int = 0, units: dict[str, int] | None = None):
        """The relaxed masks of the dropout sites in ``lam``, (batch_size, units) each; ``units``:
        the sites' widths (needed when a site has one shared rate)."""
        out = {}
        for i, (site, logits) in enumerate((k, v) for k, v in lam.items() if not is_extra(k)):
            n = logits.numel() if units is None else units[site]
            out[site] = concrete_mask(logits, (batch_size, n), like, self.temperature, self.fixed_noise, seed=i + salt)
        return out

    def regulariser_kwargs(self, lam, like, module, salt: int = 0) -> dict[str, Any]:
        """The lstm's forward keywords for DropConnect and word dropout (one draw per batch)."""
        kwargs: dict[str, Any] = {}
        weights = {k[len(WEIGHT):]: v for k, v in lam.items() if k.startswith(WEIGHT)}
        if weights:
            sites = module.weight_drop_sites
            kwargs["weight_masks"] = {
                s: concrete_mask(weights[s] if s in weights else weights["hh"], sites[s], like, self.temperature, self.fixed_noise,
                                 seed=1000 + j + salt)
                for j, s in enumerate(sites)}
        if WORD in lam:
            kwargs["word_mask"] = concrete_mask(lam[WORD], (module.vocab_size,), like, self.temperature, self.fixed_noise,
                                                seed=2000 + salt)
        return kwargs

    def training_loss(self, w, lam, batch, ctx):
        if not lam:
            return ctx.data_loss(ctx.forward(w, batch.x), batch.y) + l2(w, self.l2)
        units = None if self.per_unit else dict(ctx.module.dropout_sites)
        kwargs = self.regulariser_kwargs(lam, w, ctx.module)
        acts: dict[str, Tensor] | None = {} if (AR in lam or TAR in lam) else None
        if acts is not None:
            kwargs["activations"] = acts
        out = ctx.forward(w, batch.x, unit_masks=self.masks(lam, batch.x.shape[0], w, units=units), **kwargs)
        loss = ctx.data_loss(out, batch.y) + l2(w, self.l2)
        if AR in lam:
            loss = loss + F.softplus(lam[AR]).sum() * acts["output"].pow(2).mean()
        if TAR in lam:
            raw = acts["output_raw"]
            loss = loss + F.softplus(lam[TAR]).sum() * (raw[:, 1:] - raw[:, :-1]).pow(2).mean()
        return loss

    def metrics(self, lam):
        out = {}
        for k, v in lam.items():
            if k in (AR, TAR):
                out[k] = F.softplus(v).sum().item()
            else:
                out[f"drop_rate/{k}"] = torch.sigmoid(v).mean().item()
                if self.per_unit and is_extra(k) and v.numel() > 1:
                    out[f"drop_rate_std/{k}"] = torch.sigmoid(v).std().item()
        return out


@hookimpl
def register_hyperparams():
    return [DropoutPerUnit]
