"""K-FAC: the Gauss–Newton matrix of L_T approximated layer by layer as Kronecker products
(Martens & Grosse 2015), through ``curvlinops-for-pytorch`` (the ``kfac`` extra:
``pip install 'hgbench[kfac]'``) rather than hand-written factors; used by the ``kfac`` method and
by ``preconditioner=kfac`` (Liao, Dangel & Yu, "Efficient Bilevel Optimization with KFAC-Based
Hypergradients", AISTATS 2026).

What is approximated: L_T = ℓ(f(w)) + P(w) (a family with ``penalty()``), its Gauss–Newton matrix
G = JᵀH_ℓJ + ∇²P. K-FAC approximates the data term JᵀH_ℓJ on the training batch
(``KFACLinearOperator``, the exact loss Hessian in the outputs — curvlinops' type-2 Fisher — and
``KFACType.EXPAND`` for convolutions); the penalty's Hessian, which is not Kronecker-factored, enters
as its mean diagonal d̄ (exact for one global decay, the mean decay otherwise), so the operator
inverted is K + (d̄ + damping)·I, through ``KFACInverseLinearOperator`` with exact damping
(eigendecompositions of the factors). ``parts`` are an ``hgbench.base.GaussNewtonParts``
(``Bilevel.parts()``). The penalty's diagonal is read as ∇²P·1 (its row sums): the
diagonal where ∇²P is diagonal, as weight decay's is.

Layers covered: ``torch.nn.Linear`` and ``torch.nn.Conv2d`` (what curvlinops' K-FAC supports). A
model with a parameter anywhere else (a norm layer, an embedding, hgbench's LSTM) is refused with
the layer named — the run is skipped, there is no fall-back — as is a model that carries a
recurrent state and a family without a penalty (no Gauss–Newton split).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn


COVERED = (nn.Linear, nn.Conv2d)
INSTALL = "pip install 'hgbench[kfac]' (curvlinops-for-pytorch 3.x)"


def missing() -> str | None:
    """Why curvlinops cannot be used here (not installed), or None."""
    try:
        import curvlinops  # noqa: F401
    except ImportError as exc:
        return f"K-FAC needs curvlinops-for-pytorch, which is not installed ({exc}); {INSTALL}"
    return None


def uncovered_layer(module: nn.Module) -> str | None:
    """The first layer with parameters of its own that K-FAC does not cover, described, or None."""
    for name, mod in module.named_modules():
        if any(True for _ in mod.parameters(recurse=False)) and not isinstance(mod, COVERED):
            return f"layer {name or '(root)'!r} ({type(mod).__name__})"
    return None


def unsupported(problem: Any) -> str | None:
    """Why K-FAC cannot run on ``problem`` (an ``hgbench.problem.Problem``), or None."""
    reason = missing()
    if reason:
        return reason
    if not problem.supports_ggn:
        return ("K-FAC (an approximation of the Gauss–Newton matrix) needs a hyperparameter family whose training loss is "
                "the task loss plus a penalty on the weights (it implements penalty(), as weight_decay does)")
    if problem.carries_state:
        return "K-FAC: the model carries a recurrent state between batches; it covers Linear and Conv2d layers only"
    layer = uncovered_layer(problem.module)
    if layer:
        return (f"K-FAC (curvlinops) covers {' and '.join(c.__name__ for c in COVERED)} layers; this model's {layer} "
                "has parameters it does not cover")
    return None


def operator(parts: Any, w: Tensor) -> Any:
    """curvlinops' ``KFACLinearOperator`` of the data term's Gauss–Newton matrix at ``w`` on the
    parts' batch (a copy of the module holding w; the parameters in w's order)."""
    from curvlinops import KFACLinearOperator
    from curvlinops.kfac import FisherType, KFACType

    layer = uncovered_layer(parts.module)
    if layer:
        raise ValueError(f"K-FAC covers Linear and Conv2d layers; this model's {layer} is not")
    module = copy.deepcopy(parts.module)
    values = parts.w_spec.unflatten(w.detach())
    named = dict(module.named_parameters())
    params = []
    for n in parts.w_spec.names:
        p = named[n]
        with torch.no_grad():
            p.copy_(values[n])
        p.requires_grad_(True)
        params.append(p)
    if parts.task == "classification":
        loss, y = nn.CrossEntropyLoss(), parts.y
    else:  # hgbench's squared error: the mean over every target entry, as MSELoss(reduction="mean")
        loss = nn.MSELoss()
        with torch.no_grad():
            out_shape = module(parts.x[:1]).shape[1:]
        y = parts.y.reshape(len(parts.y), *out_shape)
    return KFACLinearOperator(module, loss, params, [(parts.x, y)], check_deterministic=False,
                              fisher_type=FisherType.TYPE2, kfac_approx=KFACType.EXPAND, num_data=len(parts.x))


def penalty_diagonal_mean(parts: Any, w: Tensor, lam: Tensor) -> float:
    """The mean of ∇²P·1 at (w, λ): the mean diagonal of the penalty's Hessian where it is
    diagonal (weight decay: the mean decay); one Hessian-vector product of P (not counted)."""
    w_ = w.detach().requires_grad_(True)
    p = parts.penalty(w_, lam.detach())
    if not p.requires_grad:
        return 0.0
    (g,) = torch.autograd.grad(p, w_, create_graph=True)
    (hd,) = torch.autograd.grad(g, w_, torch.ones_like(w_), allow_unused=True)
    return 0.0 if hd is None else hd.mean().item()


class KFACInverse:
    """v ↦ (K + shift·I)⁻¹ v on flat vectors, K a ``KFACLinearOperator``: curvlinops'
    ``KFACInverseLinearOperator`` with exact damping. ``shift`` must be > 0 unless K is
    invertible."""

    def __init__(self, kfac: Any, shift: float):
        from curvlinops import KFACInverseLinearOperator

        self.kfac, self.shift = kfac, shift
        self.dtype, self.device = kfac.dtype, kfac.device
        self.inverse = KFACInverseLinearOperator(kfac, damping=shift, use_exact_damping=True)

    def __call__(self, v: Tensor) -> Tensor:
        return (self.inverse @ v.detach()).to(v.dtype)


def build(parts: Any, w: Tensor, lam: Tensor, damping: float) -> tuple[KFACInverse, float]:
    """(v ↦ (K + (d̄ + damping)·I)⁻¹ v at (w, λ), d̄)."""
    d_mean = penalty_diagonal_mean(parts, w, lam)
    shift = d_mean + damping
    if shift <= 0:
        raise ValueError(f"K-FAC: the penalty's mean diagonal plus damping is {shift:g}; set a damping > 0")
    return KFACInverse(operator(parts, w), shift), d_mean

