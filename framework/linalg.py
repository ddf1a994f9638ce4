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


def neumann_solve(matvec: MatVec, b: Tensor, iterations: int, alpha: float, x0: Tensor | None = None) -> Tensor:
    """Truncated Neumann series, the paper's Algorithm 3 (as in the authors' code).

    H⁻¹ = α Σ_{j≥0} (I − αH)^j, truncated after ``iterations`` steps, i.e. i + 1 terms:
    v ← v − α H v; p ← p + v; return α p. Converges when 0 < α < 2 / λ_max(H) and H ≻ 0.
    From an initial guess ``x0`` (a warm start) the series runs on the residual r = b − H x0 and
    x0 + α Σ (I − αH)^j r is returned: one more Hessian-vector product.
    """
    if x0 is not None:
        return x0 + neumann_solve(matvec, b - matvec(x0), iterations, alpha)
    v = b.clone()
    p = b.clone()
    for _ in range(iterations):
        v = v - alpha * matvec(v)
        p += v
    return alpha * p


def power_iteration(matvec: MatVec, like: Tensor, steps: int, v0: Tensor | None = None, seed: int = 0) -> tuple[float, Tensor]:
    """The dominant eigenvalue of a symmetric operator by ``steps`` power iterations: (the
    Rayleigh quotient vᵀHv of the last unit vector — it approaches the eigenvalue of largest
    magnitude from inside —, that vector). Starts from ``v0`` (e.g. the previous estimate's
    vector) or a seeded random vector; ``steps`` products."""
    if v0 is None:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        v0 = torch.randn(like.numel(), generator=gen, dtype=torch.float64).to(like.device, like.dtype)
    v = v0 / torch.linalg.vector_norm(v0).clamp_min(torch.finfo(v0.dtype).tiny)
    rayleigh = torch.zeros((), dtype=like.dtype, device=like.device)
    for _ in range(max(1, steps)):
        hv = matvec(v)
        rayleigh = v @ hv
        v = hv / torch.linalg.vector_norm(hv).clamp_min(torch.finfo(hv.dtype).tiny)
    return rayleigh.item(), v


def cg_solve(matvec: MatVec, b: Tensor, iterations: int, tol: float = 0.0, damping: float = 0.0,
             x0: Tensor | None = None) -> Tensor:
    """Conjugate gradient on (H + damping·I) x = b, from x = 0 or from the guess ``x0`` (a warm
    start: the residual b − (H + damping·I) x0 costs one more Hessian-vector product).

    Runs ``iterations`` steps, or stops earlier once ‖r‖ ≤ tol·‖b‖ when ``tol > 0`` (that check
    reads one number per step from the device). Assumes H + damping·I is positive definite.
    """
    if x0 is None:
        x = torch.zeros_like(b)
        r = b.clone()
    else:
        x = x0.clone()
        r = b - matvec(x0)
        if damping:
            r = r.sub(x0, alpha=damping)
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


def nystrom_solve(matvec: MatVec, b: Tensor, rank: int, damping: float) -> Tensor:
    """(H_k + ρI)⁻¹ b (ρ = ``damping``) with H_k = C W⁺ Cᵀ the rank-``rank`` Nyström approximation of H (Hataya &
    Yamada, AISTATS 2023): C = H[:, S], the Hessian's columns at ``rank`` coordinates S drawn at
    random (torch's global RNG: seeded by the run), W = H[S, S]. One batched product for the k
    columns (k HVPs), then Woodbury's identity on a k×k system:

        (ρI + C W⁻¹ Cᵀ)⁻¹ b = (b − C (ρW + CᵀC)⁻¹ Cᵀ b) / ρ.

    With rank = n it is (H + ρI)⁻¹ b exactly. Memory: the n×k matrix C. Directions outside C's
    columns are scaled by 1/ρ, so ρ sets the answer's size there: it is a damping, not a detail.
    """
    if damping <= 0:
        raise ValueError(f"damping must be > 0, got {damping}")
    rho = damping
    n = b.numel()
    k = min(rank, n)
    if k == 0:
        return b / rho
    idx = torch.randperm(n)[:k].to(b.device)
    rows = torch.zeros(k, n, dtype=b.dtype, device=b.device)
    rows[torch.arange(k, device=b.device), idx] = 1
    batched = getattr(matvec, "batched", None)
    ct = batched(rows) if batched is not None else torch.stack([matvec(e) for e in rows])  # k×n: rows are Cᵀ
    m = rho * ct[:, idx] + ct @ ct.T  # ρW + CᵀC, W = H[S, S]
    m = 0.5 * (m + m.T)  # symmetric up to rounding: made exactly so
    rhs = ct @ b
    try:
        y = torch.linalg.solve(m, rhs)
    except RuntimeError:  # singular (e.g. repeated or zero columns): least squares
        y = torch.linalg.lstsq(m, rhs.unsqueeze(1)).solution.squeeze(1)
    return (b - ct.T @ y) / rho


def minres_solve(matvec: MatVec, b: Tensor, iterations: int, tol: float = 0.0, damping: float = 0.0,
                 x0: Tensor | None = None) -> Tensor:
    """MINRES (Paige & Saunders, 1975) on (H + damping·I) x = b, from x = 0 or from the guess
    ``x0`` (a warm start: the residual b − (H + damping·I) x0 costs one more Hessian-vector
    product): for symmetric H that may be indefinite, where CG can break down. Each step minimises
    ‖b − (H + damping·I)x‖ over the Krylov space, so the residual never grows. Runs ``iterations``
    steps, or stops once the residual estimate ≤ tol·‖b‖ (``tol > 0``), or when the Krylov space
    is exhausted (then x is exact). Reads a few numbers per step from the device.
    """
    if x0 is None:
        x = torch.zeros_like(b)
        r = b
    else:
        x = x0.clone()
        r = b - matvec(x0)
        if damping:
            r = r.sub(x0, alpha=damping)
    stop = tol * torch.linalg.vector_norm(b).item()
    beta1 = torch.linalg.vector_norm(r).item()
    if beta1 == 0:
        return x
    eps = torch.finfo(b.dtype).eps
    r1 = r.clone()
    r2 = r.clone()
    y = r.clone()
    w = torch.zeros_like(b)
    w2 = torch.zeros_like(b)
    oldb, beta, dbar, epsln, phibar, cs, sn = 0.0, beta1, 0.0, 0.0, beta1, -1.0, 0.0
    for itn in range(iterations):
        v = y / beta
        y = matvec(v)
        if damping:
            y = y.add(v, alpha=damping)
        if itn >= 1:
            y = y - (beta / oldb) * r1
        alfa = (v @ y).item()
        y = y - (alfa / beta) * r2
        r1, r2 = r2, y
        oldb, beta = beta, torch.linalg.vector_norm(y).item()
        # the previous plane rotation, then a new one that zeroes beta
        oldeps = epsln
        delta = cs * dbar + sn * alfa
        gbar = sn * dbar - cs * alfa
        epsln = sn * beta
        dbar = -cs * beta
        gamma = max((gbar * gbar + beta * beta) ** 0.5, eps)
        cs, sn = gbar / gamma, beta / gamma
        phi, phibar = cs * phibar, sn * phibar
        w1, w2 = w2, w
        w = (v - oldeps * w1 - delta * w2) / gamma
        x = x + phi * w
        if beta <= eps * beta1 or (tol > 0 and abs(phibar) <= stop):
            break  # the Krylov space is exhausted (x exact), or the residual is small enough
    return x


def lanczos_extremes(matvec: MatVec, n: int, steps: int, like: Tensor, seed: int = 0) -> tuple[float, float]:
    """The largest and smallest Ritz values of a symmetric operator after ``steps`` Lanczos steps
    (full reorthogonalisation) from a seeded random start: estimates of H's extreme eigenvalues
    that converge from the inside — λ_min ≤ ritz_min ≤ ritz_max ≤ λ_max — so a negative
    ``ritz_min`` proves that H is indefinite. Exact after n steps. Memory: ``steps`` vectors.
    """
    steps = max(1, min(steps, n))
    gen = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(n, generator=gen, dtype=torch.float64).to(like.device, like.dtype)
    q = q / torch.linalg.vector_norm(q)
    basis = [q]
    alphas: list[float] = []
    betas: list[float] = []
    for j in range(steps):
        z = matvec(basis[j])
        alphas.append((basis[j] @ z).item())
        q_mat = torch.stack(basis)
        z = z - q_mat.T @ (q_mat @ z)  # full reorthogonalisation (twice is enough)
        z = z - q_mat.T @ (q_mat @ z)
        b = torch.linalg.vector_norm(z).item()
        if j == steps - 1 or b <= 1e-12 * max(1.0, abs(alphas[-1])):
            break
        betas.append(b)
        basis.append(z / b)
    k = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if k > 1:
        off = torch.tensor(betas[: k - 1], dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    ritz = torch.linalg.eigvalsh(t)
    return ritz[-1].item(), ritz[0].item()
