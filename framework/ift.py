"""Hypergradients: the implicit-function-theorem formula and truncated unrolled differentiation.

    dL_V/dλ = ∂L_V/∂λ − (∂²L_T/∂λ∂wᵀ) · [∂²L_T/∂w∂wᵀ]⁻¹ · ∂L_V/∂w      (Lorraine et al., 2020)

``ift_hypergradient`` is Algorithm 2 with the inverse-Hessian-vector product delegated to any
solver of ``hgbench.linalg``. The training gradient is built ONCE with ``create_graph=True`` and
every Hessian-vector product reuses its graph (about 1.2 plain gradients each on a CPU MLP,
instead of about 2.6 when the double-backward graph is rebuilt).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from typing import Any, Callable

import torch
from torch import Tensor

Loss = Callable[[Tensor, Tensor], Tensor]
Solve = Callable[[Callable[[Tensor], Tensor], Tensor], Tensor]


MatVec = Callable[[Tensor], Tensor]
# a curvature other than the Hessian: (w, λ) -> v ↦ C v (w requires grad; see GaussNewtonProduct)
Curvature = Callable[[Tensor, Tensor], MatVec]

class ProductCount:
    """How many curvature-vector products (Hessian-, Gauss–Newton- or finite-difference) — or, for
    ``count_gradients``, loss gradients — were computed while this counter was active."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class _Tally:
    """One kind of count: the counters active in this context (a ContextVar: scoped to a ``with``
    block and to its thread, never the whole process's). Blocks may nest; each counts what was
    computed inside it; nothing is counted outside one."""

    def __init__(self, name: str) -> None:
        self._active: ContextVar[tuple[ProductCount, ...]] = ContextVar(name, default=())

    @contextmanager
    def block(self) -> Iterator[ProductCount]:
        counter = ProductCount()
        token = self._active.set(self._active.get() + (counter,))
        try:
            yield counter
        finally:
            self._active.reset(token)

    def add(self, n: int = 1) -> None:
        for counter in self._active.get():
            counter.value += n


_PRODUCTS = _Tally("hgbench_product_counts")
_GRADIENTS = _Tally("hgbench_gradient_counts")


def count_products() -> AbstractContextManager[ProductCount]:
    """Count the curvature-vector products computed inside the block: ``with count_products() as
    n: ...`` then ``n.value`` (the runner records it per hypergradient as ``hvp_calls``)."""
    return _PRODUCTS.block()


def _count(n: int = 1) -> None:
    _PRODUCTS.add(n)


def count_gradients() -> AbstractContextManager[ProductCount]:
    """Count the evaluations of a bilevel problem's training or validation loss inside the block
    (``Problem.bilevel``'s ``train_loss`` / ``val_loss``: a method differentiates each one, so each
    is one gradient — the first-order one for a graph built with ``create_graph``). The runner
    records it per hypergradient as ``grad_calls``; a finite-difference product counts its two
    gradients here and itself once in ``count_products``."""
    return _GRADIENTS.block()


def count_gradient(n: int = 1) -> None:
    """Add ``n`` loss evaluations to every active ``count_gradients`` block (none: nothing)."""
    _GRADIENTS.add(n)


class HessianVectorProduct:
    """v ↦ (∂²L_T/∂w∂wᵀ) v, reusing the graph of one create_graph gradient ``grad_w``."""

    def __init__(self, grad_w: Tensor, w: Tensor):
        self.grad_w, self.w = grad_w, w
        self.calls = 0

    def __call__(self, v: Tensor) -> Tensor:
        self.calls += 1
        _count()
        return torch.autograd.grad(self.grad_w, self.w, v, retain_graph=True)[0]

    def batched(self, vs: Tensor) -> Tensor:
        """Rows of ``vs`` are vectors; returns their HVPs as rows (one vmapped backward)."""
        self.calls += len(vs)
        _count(len(vs))
        return torch.autograd.grad(self.grad_w, self.w, vs, retain_graph=True, is_grads_batched=True)[0]


class GaussNewtonProduct:
    """v ↦ (Jᵀ H_ℓ J + ∇²_w P) v: the generalised Gauss–Newton matrix of a training loss
    L_T(w) = ℓ(f(w)) + P(w) — the network's outputs z = f(w), a loss ℓ(z) convex in z
    (cross-entropy, squared error) and a penalty P (e.g. weight decay). It is the Hessian with the
    network linearised (the term Σ ∂ℓ/∂z · ∇²f dropped), positive semi-definite when ℓ is convex
    and P's Hessian is, so CG, Neumann and exact solves are well posed where H is indefinite.

    Jv comes from the double-backward trick (Jᵀu is linear in u), H_ℓ Jv from the loss's graph in
    z, Jᵀ(·) from one more backward: about three backward passes per product, graphs built once.
    """

    def __init__(self, outputs: Callable[[Tensor], Tensor], output_loss: Callable[[Tensor], Tensor],
                 penalty: Callable[[Tensor], Tensor] | None, w: Tensor):
        self.w, self.calls = w, 0
        self.z = outputs(w)
        self.u = torch.zeros_like(self.z, requires_grad=True)
        (self.jt_u,) = torch.autograd.grad(self.z, w, self.u, create_graph=True)  # Jᵀu
        self.z_leaf = self.z.detach().requires_grad_(True)
        (self.g_z,) = torch.autograd.grad(output_loss(self.z_leaf), self.z_leaf, create_graph=True)
        self.g_p = None
        if penalty is not None:
            p = penalty(w)
            if p.requires_grad:
                (self.g_p,) = torch.autograd.grad(p, w, create_graph=True)

    def __call__(self, v: Tensor) -> Tensor:
        self.calls += 1
        _count()
        (jv,) = torch.autograd.grad(self.jt_u, self.u, v, retain_graph=True)
        (hjv,) = torch.autograd.grad(self.g_z, self.z_leaf, jv, retain_graph=True)
        (out,) = torch.autograd.grad(self.z, self.w, hjv, retain_graph=True)
        if self.g_p is not None:
            (hp,) = torch.autograd.grad(self.g_p, self.w, v, retain_graph=True, allow_unused=True)
            if hp is not None:
                out = out + hp
        return out

    def batched(self, vs: Tensor) -> Tensor:
        """Rows of ``vs`` are vectors; returns their products as rows (vmapped backwards)."""
        self.calls += len(vs)
        _count(len(vs))
        kw = {"retain_graph": True, "is_grads_batched": True}
        (jv,) = torch.autograd.grad(self.jt_u, self.u, vs, **kw)
        (hjv,) = torch.autograd.grad(self.g_z, self.z_leaf, jv, **kw)
        (out,) = torch.autograd.grad(self.z, self.w, hjv, **kw)
        if self.g_p is not None:
            (hp,) = torch.autograd.grad(self.g_p, self.w, vs, allow_unused=True, **kw)
            if hp is not None:
                out = out + hp
        return out


def _or_zeros(g: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if g is None else g


def val_gradients(val_loss: Loss, w: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    """(∂L_V/∂w, ∂L_V/∂λ) at (w, λ) — zeros where L_V does not depend on one of them. ``w`` and
    ``lam`` must require grad (leaves the caller may reuse for L_T)."""
    gv_w, gv_lam = torch.autograd.grad(val_loss(w, lam), (w, lam), allow_unused=True)
    return _or_zeros(gv_w, w), _or_zeros(gv_lam, lam)


def ift_hypergradient(train_loss: Loss, val_loss: Loss, w: Tensor, lam: Tensor, solve: Solve,
                      curvature: Curvature | None = None) -> Tensor:
    """Algorithm 2: ∂L_V/∂λ − (∂²L_T/∂λ∂w) v, with v = solve(H·, ∂L_V/∂w) ≈ H⁻¹ ∂L_V/∂w.
    ``curvature`` replaces H in the solve (e.g. the Gauss–Newton matrix); the mixed term stays
    the exact ∂²L_T/∂λ∂w."""
    w = w.detach().requires_grad_(True)
    lam = lam.detach().requires_grad_(True)
    gv_w, gv_lam = val_gradients(val_loss, w, lam)
    (gt_w,) = torch.autograd.grad(train_loss(w, lam), w, create_graph=True)
    matvec = HessianVectorProduct(gt_w, w) if curvature is None else curvature(w, lam.detach())
    v = solve(matvec, gv_w)
    # the mixed term v3 = grad(∂L_T/∂w, λ, grad_outputs=v) (corrected Algorithm 2)
    (mixed,) = torch.autograd.grad(gt_w, lam, v.detach(), allow_unused=True)
    return gv_lam - _or_zeros(mixed, lam)


def _detached_state(optimizer: Any, state: dict[str, Any] | None, w: Tensor) -> dict[str, Any]:
    return {k: (v.detach() if isinstance(v, Tensor) else v) for k, v in (state or optimizer.init(w)).items()}


def fixed_point_hypergradient(
    train_loss: Loss,
    val_loss: Loss,
    w: Tensor,
    lam: Tensor,
    optimizer: Any,
    state: dict[str, Any] | None,
    iterations: int,
    v0: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """AID-FP (Grazzi et al., ICML 2020; hypertorch's ``fixed_point``) on the inner optimiser's own
    update map Φ(w, λ) = step(w, ∂L_T/∂w(w, λ), state), the state held fixed:

        v ← (∂Φ/∂w)ᵀ v + ∂L_V/∂w,     dL_V/dλ ≈ ∂L_V/∂λ + (∂Φ/∂λ)ᵀ v.

    From v = 0 the first update is ∂L_V/∂w itself (no product), then ``iterations`` vector–Jacobian
    products of Φ (each one Hessian-vector product and the optimiser's arithmetic) — so for plain
    SGD with learning rate α, where ∂Φ/∂w = I − αH and ∂Φ/∂λ = −α ∂²L_T/∂w∂λ, it is exactly
    Neumann with ``iterations`` steps of size α. hypertorch's K counts the free first update too:
    K = iterations + 1. From a guess ``v0`` (a warm start) every update costs a product:
    iterations + 1 of them. Returns (hypergradient, the last v).
    """
    w = w.detach().requires_grad_(True)
    lam = lam.detach().requires_grad_(True)
    gv_w, gv_lam = val_gradients(val_loss, w, lam)
    (g,) = torch.autograd.grad(train_loss(w, lam), w, create_graph=True)
    w_next, _ = optimizer.step(w, g, _detached_state(optimizer, state, w))

    def vjp(v: Tensor) -> Tensor:
        _count()
        return torch.autograd.grad(w_next, w, v, retain_graph=True)[0]

    v = gv_w.clone() if v0 is None else vjp(v0) + gv_w
    for _ in range(iterations):
        v = vjp(v) + gv_w
    (mixed,) = torch.autograd.grad(w_next, lam, v, allow_unused=True)
    return gv_lam + _or_zeros(mixed, lam), v.detach()


class FiniteDifferenceHVP:
    """v ↦ (∇_w L_T(w + εv̂) − ∇_w L_T(w − εv̂)) / 2ε · ‖v‖ with v̂ = v/‖v‖: a Hessian-vector
    product from two plain gradients (no second-order autograd), error O(ε²)."""

    def __init__(self, train_loss: Loss, w: Tensor, lam: Tensor, epsilon: float):
        self.loss, self.w, self.lam, self.eps = train_loss, w.detach(), lam.detach(), epsilon
        self.calls = 0

    def _grad(self, w: Tensor) -> Tensor:
        w = w.requires_grad_(True)
        return torch.autograd.grad(self.loss(w, self.lam), w)[0]

    def __call__(self, v: Tensor) -> Tensor:
        self.calls += 1
        _count()
        norm = torch.linalg.vector_norm(v)
        if norm == 0:
            return torch.zeros_like(v)
        r = self.eps / norm
        return (self._grad(self.w + r * v) - self._grad(self.w - r * v)) / (2 * r)


def finite_difference_mixed(train_loss: Loss, w: Tensor, lam: Tensor, v: Tensor, epsilon: float) -> Tensor:
    """(∂²L_T/∂λ∂wᵀ) v by central differences of ∂L_T/∂λ along v (DARTS, Liu et al. 2019): the
    step is ε/‖v‖, two first-order gradients, error O(ε²)."""
    w, v = w.detach(), v.detach()
    norm = torch.linalg.vector_norm(v)
    if norm == 0:
        return torch.zeros_like(lam)
    r = epsilon / norm

    def grad_lam(w_: Tensor) -> Tensor:
        lam_ = lam.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(train_loss(w_, lam_), lam_, allow_unused=True)
        return _or_zeros(g, lam_)

    return (grad_lam(w + r * v) - grad_lam(w - r * v)) / (2 * r)


def unrolled_hypergradient(
    train_loss: Loss,
    val_loss: Loss,
    w: Tensor,
    lam: Tensor,
    optimizer: Any,
    state: dict[str, Any] | None,
    steps: int,
) -> Tensor:
    """d L_V(w_K(λ), λ) / dλ through K = ``steps`` inner updates from the current (w, state).

    Truncated reverse-mode differentiation: w_0 and the optimiser state are treated as constants;
    memory grows linearly with ``steps`` (every step's graph is kept for the backward pass).
    """
    lam = lam.detach().requires_grad_(True)
    wt = w.detach().requires_grad_(True)
    st = _detached_state(optimizer, state, w)
    for _ in range(steps):
        (g,) = torch.autograd.grad(train_loss(wt, lam), wt, create_graph=True)
        wt, st = optimizer.step(wt, g, st)
    (out,) = torch.autograd.grad(val_loss(wt, lam), lam, allow_unused=True)
    return _or_zeros(out, lam)
