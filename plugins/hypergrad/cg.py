"""``cg``: IFT with H⁻¹∂L_V/∂w from conjugate gradient (``iterations`` steps, optional relative
tolerance ``tol`` and ``damping`` added to the Hessian's diagonal). ``warm_start``: start from the
previous hyper-step's solution (residual b − H·x₀; one more HVP), which w's small moves between
hyper-steps make a good guess. ``hessian_batch_size``: HVPs on a training minibatch of their own.
``preconditioner``: preconditioned CG (``jacobi``, ``nystrom``, ``kfac``; ``preconditioner_rank``,
``refresh_every``, ``preconditioner_shift``) — the same solution in fewer iterations where the
preconditioner captures the curvature's top. The options are ``hgbench.KrylovMethod``'s.

``cg_nystrom``, ``cg_jacobi`` and ``cg_kfac`` are ``cg`` with that preconditioner preset, registered as
methods of their own (not aliases) so that every list of methods — ``hgbench-bench frontier``, a
sweep over ``hypergrad=`` — measures them beside plain ``cg``.

CG assumes H + damping·I ≻ 0. Where H has negative eigenvalues its step sizes rs/(pᵀHp) can be
negative or blow up (pᵀHp ≈ 0): the result is then not H⁻¹b in any useful sense. Remedies:
``damping`` large enough to shift the spectrum, ``curvature=ggn`` (the Gauss–Newton matrix,
positive semi-definite), or the ``minres`` method (symmetric indefinite systems)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hgbench import KrylovMethod, hookimpl
from hgbench.linalg import cg_solve


@dataclass
class CG(KrylovMethod):
    name = "cg"
    solver = cg_solve


@dataclass
class CGNystrom(CG):
    """``cg`` with ``preconditioner=nystrom`` preset."""

    name = "cg_nystrom"
    preconditioner: Literal["none", "jacobi", "nystrom", "kfac"] = "nystrom"  # P ≈ curvature + damping: none | jacobi | nystrom | kfac


@dataclass
class CGJacobi(CG):
    """``cg`` with ``preconditioner=jacobi`` preset (a baseline)."""

    name = "cg_jacobi"
    preconditioner: Literal["none", "jacobi", "nystrom", "kfac"] = "jacobi"  # P ≈ curvature + damping: none | jacobi | nystrom | kfac


@dataclass
class CGKfac(CG):
    """``cg`` with ``preconditioner=kfac`` preset (needs curvlinops: the ``kfac`` extra)."""

    name = "cg_kfac"
    preconditioner: Literal["none", "jacobi", "nystrom", "kfac"] = "kfac"  # P ≈ curvature + damping: none | jacobi | nystrom | kfac


@hookimpl
def register_hypergradients():
    return [CG, CGNystrom, CGJacobi, CGKfac]
