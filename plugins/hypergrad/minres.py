"""``minres``: IFT with H⁻¹∂L_V/∂w from MINRES (``iterations`` steps, optional relative tolerance
``tol``, ``damping`` added to the diagonal, ``curvature`` hessian | ggn, ``hessian_batch_size``: HVPs
on a training minibatch of their own, ``warm_start``: from the previous hyper-step's solution). The
options are ``hgbench.KrylovMethod``'s.

MINRES solves symmetric systems that may be indefinite: each step minimises the residual over the
Krylov space, so it neither breaks down nor diverges where CG does. It computes the IFT formula
with the true (indefinite) Hessian — accurate to the formula, which is itself ill-conditioned
where H has eigenvalues near zero; combine with ``damping`` or ``curvature=ggn`` for a
well-posed hypergradient. Reads a few numbers per step from the device.
"""

from __future__ import annotations

from dataclasses import dataclass

from hgbench import KrylovMethod, hookimpl
from hgbench.linalg import minres_solve


@dataclass
class Minres(KrylovMethod):
    name = "minres"
    solver = minres_solve


@hookimpl
def register_hypergradients():
    return [Minres]
