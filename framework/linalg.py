"""Approximate solves of H x = b given only Hessian-vector products ``matvec(v) = H v``.

Each solver is a pure function ``(matvec, b, **settings) -> x`` on flat tensors. None of them
reads a value back to the host unless asked to (``cg`` with ``tol > 0``), so they run without
device synchronisation on a GPU.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

MatVec = Callable[[Tensor], Tensor]


def identity_solve(matvec: MatVec, b: Tensor, scale: float = 1.0) -> Tensor:
    """H⁻¹ ≈ scale · I (no Hessian-vector product at all)."""
    return b * scale


def neumann_solve(matvec: MatVec, b: Tensor, iterations: int, alpha: float) -> Tensor:
    """Truncated Neumann series, the paper's Algorithm 3 (as in the authors' code).

    H⁻¹ = α Σ_{j≥0} (I − αH)^j, truncated after ``iterations`` steps, i.e. i + 1 terms:
    v ← v − α H v; p ← p + v; return α p. Converges when 0 < α < 2 / λ_max(H) and H ≻ 0.
    """
    v = b.clone()
    p = b.clone()
    for _ in range(iterations):
        v = v - alpha * matvec(v)
        p += v
    return alpha * p


def cg_solve(matvec: MatVec, b: Tensor, iterations: int, tol: float = 0.0, damping: float = 0.0) -> Tensor:
    """Conjugate gradient on (H + damping·I) x = b, from x = 0.

    Runs ``iterations`` steps, or stops earlier once ‖r‖ ≤ tol·‖b‖ when ``tol > 0`` (that check
    reads one number per step from the device). Assumes H + damping·I is positive definite.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = r @ r
    stop = (tol * torch.linalg.vector_norm(b)).item() if tol > 0 else None
    for _ in range(iterations):
        if stop is not None and rs.sqrt().item() <= stop:
            break
        ap = matvec(p)
        if damping:
            ap = ap.add(p, alpha=damping)
        step = rs / (p @ ap)  # 0-dim tensors: no host sync
        x.addcmul_(step, p)  # fused x += step·p, r -= step·Ap, p = r + β·p: no temporaries
        r.addcmul_(step, ap, value=-1)
        del ap  # freed before the next HVP: peak memory stays that of the first iteration
        rs_new = r @ r
        p.mul_(rs_new / rs).add_(r)
        rs = rs_new
    return x


def dense_solve(matvec: MatVec, b: Tensor, damping: float = 0.0, chunk: int = 256) -> Tensor:
    """Build H column by column from HVPs (batched when ``matvec.batched`` exists) and solve exactly."""
    n = b.numel()
    eye = torch.eye(n, dtype=b.dtype, device=b.device)
    batched = getattr(matvec, "batched", None)
    cols = []
    for start in range(0, n, chunk):
        block = eye[start : start + chunk]
        if batched is not None:
            cols.append(batched(block))
        else:
            cols.append(torch.stack([matvec(e) for e in block]))
    h = torch.cat(cols)  # rows = H e_j = columns of the symmetric H
    h = 0.5 * (h + h.T)
    if damping:
        h.diagonal().add_(damping)
    return torch.linalg.solve(h, b)
