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
             x0: Tensor | None = None, M: MatVec | None = None, info: dict | None = None) -> Tensor:
    """Conjugate gradient on (H + damping·I) x = b, from x = 0 or from the guess ``x0`` (a warm
    start: the residual b − (H + damping·I) x0 costs one more Hessian-vector product).

    Runs ``iterations`` steps, or stops earlier once ‖r‖ ≤ tol·‖b‖ when ``tol > 0`` (that check
    reads one number per step from the device). Assumes H + damping·I is positive definite.

    ``M``: a preconditioner, v ↦ P⁻¹v for a symmetric positive-definite P ≈ H + damping·I
    (``NystromPreconditioner``, ``DiagonalPreconditioner``, …): preconditioned CG, the same
    solution in fewer steps when P⁻¹(H + damping·I) is better conditioned; the stopping test stays
    on the true residual ‖r‖. ``info`` (a dict), if given, receives ``iterations``: the products
    the loop used (the warm start's residual not included).
    """
    if x0 is None:
        x = torch.zeros_like(b)
        r = b.clone()
    else:
        x = x0.clone()
        r = b - matvec(x0)
        if damping:
            r = r.sub(x0, alpha=damping)
    z = r if M is None else M(r)
    p = z.clone()
    rs = r @ r
    rz = rs if M is None else r @ z
    stop = (tol * torch.linalg.vector_norm(b)).item() if tol > 0 else None
    used = 0
    for _ in range(iterations):
        if stop is not None and rs.sqrt().item() <= stop:
            break
        ap = matvec(p)
        used += 1
        if damping:
            ap = ap.add(p, alpha=damping)
        pap = p @ ap
        step = torch.where(pap != 0, rz / pap, 0.0)  # 0-dim tensors: no host sync; 0 once converged exactly
        x.addcmul_(step, p)  # fused x += step·p, r -= step·Ap, p = z + β·p: no temporaries
        r.addcmul_(step, ap, value=-1)
        del ap  # freed before the next HVP: peak memory stays that of the first iteration
        rs_new = r @ r
        if M is None:
            p.mul_(torch.where(rs != 0, rs_new / rs, 0.0)).add_(r)
            rz = rs_new
        else:
            z = M(r)
            rz_new = r @ z
            p.mul_(torch.where(rz != 0, rz_new / rz, 0.0)).add_(z)
            rz = rz_new
        rs = rs_new
    if info is not None:
        info["iterations"] = used
    return x


def products(matvec: MatVec, rows: Tensor, chunk: int | None = None) -> Tensor:
    """H vᵢ for every row vᵢ of ``rows`` (k × n), as rows: one batched backward
    (``matvec.batched``, ``is_grads_batched``) per ``chunk`` rows where the product has one, else
    one product per row. The sketch step of the Nyström solve and preconditioner and of the dense
    and diagonal builds."""
    batched = getattr(matvec, "batched", None)
    chunk = chunk or max(1, len(rows))
    out = []
    for start in range(0, len(rows), chunk):
        block = rows[start : start + chunk]
        out.append(batched(block) if batched is not None else torch.stack([matvec(e) for e in block]))
    return torch.cat(out) if out else rows.new_zeros(rows.shape)


def dense_solve(matvec: MatVec, b: Tensor, damping: float = 0.0, chunk: int = 256) -> Tensor:
    """Build H column by column from HVPs (batched when ``matvec.batched`` exists) and solve exactly."""
    n = b.numel()
    eye = torch.eye(n, dtype=b.dtype, device=b.device)
    h = products(matvec, eye, chunk)  # rows = H e_j = columns of the symmetric H
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
    ct = products(matvec, rows)  # k×n: rows are Cᵀ
    m = rho * ct[:, idx] + ct @ ct.T  # ρW + CᵀC, W = H[S, S]
    m = 0.5 * (m + m.T)  # symmetric up to rounding: made exactly so
    rhs = ct @ b
    try:
        y = torch.linalg.solve(m, rhs)
    except RuntimeError:  # singular (e.g. repeated or zero columns): least squares
        y = torch.linalg.lstsq(m, rhs.unsqueeze(1)).solution.squeeze(1)
    return (b - ct.T @ y) / rho


def minres_solve(matvec: MatVec, b: Tensor, iterations: int, tol: float = 0.0, damping: float = 0.0,
                 x0: Tensor | None = None, M: MatVec | None = None, info: dict | None = None) -> Tensor:
    """MINRES (Paige & Saunders, 1975) on (H + damping·I) x = b, from x = 0 or from the guess
    ``x0`` (a warm start: the residual b − (H + damping·I) x0 costs one more Hessian-vector
    product): for symmetric H that may be indefinite, where CG can break down. Each step minimises
    ‖b − (H + damping·I)x‖ over the Krylov space, so the residual never grows. Runs ``iterations``
    steps, or stops once the residual estimate ≤ tol·‖b‖ (``tol > 0``), or when the Krylov space
    is exhausted (then x is exact). Reads a few numbers per step from the device.

    ``M``: a symmetric positive-definite preconditioner v ↦ P⁻¹v (as scipy's ``minres``): the
    same solution, the residual then minimised — and ``tol`` measured — in the P⁻¹-norm
    (‖r‖_{P⁻¹} ≤ tol·‖b‖_{P⁻¹}). ``info`` (a dict), if given, receives ``iterations``.
    """
    if info is not None:
        info["iterations"] = 0
    if x0 is None:
        x = torch.zeros_like(b)
        r = b
    else:
        x = x0.clone()
        r = b - matvec(x0)
        if damping:
            r = r.sub(x0, alpha=damping)
    stop = tol * (torch.linalg.vector_norm(b) if M is None else (b @ M(b)).clamp_min(0).sqrt()).item()
    y = r.clone() if M is None else M(r)
    beta1 = torch.linalg.vector_norm(r).item() if M is None else max((r @ y).item(), 0.0) ** 0.5
    if beta1 == 0:
        return x
    eps = torch.finfo(b.dtype).eps
    r1 = r.clone()
    r2 = r.clone()
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
        if M is None:
            oldb, beta = beta, torch.linalg.vector_norm(y).item()
        else:
            y = M(r2)
            oldb, beta = beta, max((r2 @ y).item(), 0.0) ** 0.5
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
        if info is not None:
            info["iterations"] = itn + 1
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


# --- preconditioners: v ↦ P⁻¹v for P ≈ H + μI, symmetric positive definite (the ``M`` of cg_solve and minres_solve)


def nystrom_sketch(matvec: MatVec, like: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """The randomized rank-``rank`` Nyström approximation Â = U diag(Λ) Uᵀ of a symmetric
    positive semi-definite H (Frangella, Tropp & Udell, "Randomized Nyström preconditioning",
    SIAM J. Matrix Anal. Appl. 2023, Algorithm 2.1; Tropp et al. 2017): a Gaussian test matrix Ω
    (torch's global RNG: seeded by the run), orthonormalised; Y = HΩ in one batched product
    (``products``: ``rank`` HVPs); a shift ν = √n·eps·‖Y‖ for stability; then Â_ν = Y_ν
    (ΩᵀY_ν)⁻¹ Y_νᵀ through a Cholesky factor and a thin SVD, and Λ = max(0, σ² − ν). Returns (U,
    Λ), U n × r with orthonormal columns and Λ descending, keeping only the r ≤ ``rank``
    eigenvalues above eps·Λ₁ (on a rank-deficient H the rest are zero and carry nothing).

    Where H is indefinite (the Hessian away from a minimum) ΩᵀY_ν has negative eigenvalues and has
    no Cholesky factor: its eigendecomposition with the negative part clipped is used instead, so
    the result is still a positive semi-definite low-rank matrix — a valid preconditioner, not an
    approximation of H.
    """
    n = like.numel()
    k = min(rank, n)
    if k <= 0:
        return like.new_zeros(n, 0), like.new_zeros(0)
    omega = torch.randn(n, k, dtype=torch.float64).to(like.device, like.dtype)
    omega, _ = torch.linalg.qr(omega)
    y = products(matvec, omega.T.contiguous()).T  # n × k: H Ω
    eps = torch.finfo(like.dtype).eps
    nu = (n**0.5) * eps * torch.linalg.matrix_norm(y, ord=2)
    y_nu = y + nu * omega
    core = omega.T @ y_nu
    core = 0.5 * (core + core.T)
    chol, bad = torch.linalg.cholesky_ex(core)
    if not bad:
        b = torch.linalg.solve_triangular(chol, y_nu.T, upper=False).T  # Y_ν C⁻ᵀ
    else:  # indefinite: the positive part of the core only
        d, q = torch.linalg.eigh(core)
        keep = d > eps * d.abs().max()
        b = y_nu @ (q[:, keep] / d[keep].sqrt())
    u, sigma, _ = torch.linalg.svd(b, full_matrices=False)
    lam = (sigma**2 - nu).clamp_min(0)
    keep = lam > eps * lam.max().clamp_min(torch.finfo(like.dtype).tiny)
    return u[:, keep], lam[keep]


class NystromPreconditioner:
    """P⁻¹ = (λ_r + μ) U (Λ + μI)⁻¹ Uᵀ + (I − UUᵀ) from a Nyström sketch (U, Λ) of H
    (``nystrom_sketch``) for the system (H + μI) x = b (Frangella, Tropp & Udell 2023, eq. 5.3;
    λ_r the smallest kept eigenvalue): the top of the spectrum is mapped to λ_r + μ, the rest
    left as it is, so P⁻¹(H + μI) has condition number about (λ_r + μ)/(λ_min + μ). Symmetric
    positive definite whenever λ_r + μ > 0; the identity when the sketch is empty."""

    def __init__(self, u: Tensor, eigs: Tensor, mu: float = 0.0):
        self.u, self.eigs, self.mu = u, eigs, mu
        self.scale = ((eigs[-1] + mu) / (eigs + mu)) - 1 if len(eigs) else eigs

    def __call__(self, v: Tensor) -> Tensor:
        if not len(self.eigs):
            return v
        # (λ_r+μ) U (Λ+μ)⁻¹ Uᵀ v + v − U Uᵀ v = v + U ((λ_r+μ)/(Λ+μ) − 1) Uᵀ v
        return v + self.u @ (self.scale * (self.u.T @ v))


def diagonal(matvec: MatVec, like: Tensor, probes: int, chunk: int = 256) -> tuple[Tensor, bool]:
    """H's diagonal: exactly from n unit-vector products when n ≤ ``probes`` (batched by
    ``chunk``), else Hutchinson's estimate diag(H) ≈ mean over ``probes`` Rademacher vectors z of
    z ⊙ Hz (unbiased, noisy: ``probes`` products; torch's global RNG). Returns (diagonal, exact)."""
    n = like.numel()
    if n <= probes:
        eye = torch.eye(n, dtype=like.dtype, device=like.device)
        return products(matvec, eye, chunk).diagonal().clone(), True
    z = (torch.randint(0, 2, (probes, n)) * 2 - 1).to(like.device, like.dtype)
    return (z * products(matvec, z, chunk)).mean(0), False


class DiagonalPreconditioner:
    """P⁻¹ = diag(|d| + μ)⁻¹ (Jacobi), with entries below eps·max floored there: positive
    definite even where the (estimated) diagonal has negative or zero entries."""

    def __init__(self, diag: Tensor, mu: float = 0.0):
        d = diag.abs() + mu
        floor = torch.finfo(d.dtype).eps * d.max().clamp_min(torch.finfo(d.dtype).tiny)
        self.inv = 1 / d.clamp_min(floor)

    def __call__(self, v: Tensor) -> Tensor:
        return self.inv * v
