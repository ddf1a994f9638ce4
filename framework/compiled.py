"""``compile=true``: the inner training step's L_T through ``torch.compile``, checked against eager.

Only the inner step (a first-order gradient, run k times per hyper-step) is compiled; the
hypergradient differentiates L_T twice, which compiled graphs do not support, so it stays eager.

The first call compiles, then compares the compiled gradient of L_T with the eager one on the same
batch and the same random state. Inductor is not always right: on torch 2.13 (CPU) it returns
wrong convolution-weight gradients for the ``cnn`` model (max pooling) with
``weight_decay_per_param`` while the loss itself matches (``model.pool=avg`` is fine). A gradient
that disagrees beyond ``RTOL`` (or a compile error) makes the run go on eagerly, with a warning
and the reason in ``status``/``note`` (the MLflow tag ``hgbench.compile``). A training loss that
is random by design (dropout, augmentation noise) cannot be compared: it runs compiled, marked
``unverified``.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch
from torch import Tensor

RTOL = {torch.float32: 1e-4, torch.float64: 1e-9}

InnerLossFn = Callable[..., Tensor]  # (w, λ, x, y, idx) or, for a batch with a recurrent state, (w, λ, x, y, idx, state)


def loss_gradient(fn: InnerLossFn, w: Tensor, lam: Tensor, batch: tuple) -> Tensor:
    """∂fn/∂w at (w, λ) on ``batch`` = (x, y, idx[, state])."""
    w = w.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(w, lam, *batch), w)
    return g


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(torch.finfo(b.dtype).tiny))


class InnerLoss:
    """``(w, λ, x, y, idx) ↦ L_T``: eager, or compiled once a first call has checked it.

    ``status``: ``off`` (compile=false), ``pending`` (not called yet), ``on`` (compiled, gradient
    checked), ``unverified`` (compiled; L_T is random, so it could not be checked) or
    ``fallback`` (eager after a failed check or compile error; ``note`` says why)."""

    def __init__(self, fn: InnerLossFn, compile: bool = False):
        self.eager = self.fn = fn
        self.compiled = torch.compile(fn, dynamic=False) if compile else None
        self.status, self.note = ("pending" if compile else "off"), ""
        self.rel_diff: float | None = None  # compiled vs eager gradient at the check

    def __call__(self, w: Tensor, lam: Tensor, x: Tensor, y: Tensor, idx: Tensor | None = None, state: Any = None) -> Tensor:
        """L_T on the batch (x, y, idx); a recurrent ``state`` (truncated BPTT, never compiled) is passed on as the last argument."""
        batch = (x, y, idx) if state is None else (x, y, idx, state)
        if self.status == "pending":
            self.check(w, lam, batch)
        return self.fn(w, lam, *batch)

    def check(self, w: Tensor, lam: Tensor, batch: tuple) -> None:
        """Compile, compare with eager on this batch, choose; leaves every random state as it found it."""
        cuda = w.device.type == "cuda"
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state(w.device) if cuda else None

        def grad(fn: InnerLossFn, shifted: bool = False) -> Tensor:
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state(cuda_rng, w.device)
            if shifted:  # other random numbers: a random L_T changes, a deterministic one does not
                torch.rand(1, device=w.device)
            return loss_gradient(fn, w, lam, batch)

        try:
            eager, again = grad(self.eager), grad(self.eager, shifted=True)
            try:
                compiled = grad(self.compiled)  # type: ignore[arg-type]
            except Exception as exc:  # no C++ compiler, an unsupported op, ...
                self._fallback(f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})")
                return
            tol = RTOL.get(w.dtype, 1e-4)
            self.rel_diff = err = _rel(compiled, eager)
            if _rel(again, eager) > tol:
                self.status, self.fn = "unverified", self.compiled
                self.note = "L_T is random (dropout/noise), so compiled and eager gradients cannot be compared"
            elif err <= tol:
                self.status, self.fn = "on", self.compiled
                self.note = f"compiled gradient matches eager (max relative difference {err:.1e})"
            else:
                self._fallback(f"the compiled gradient of L_T differs from eager by {err:.1e} (relative, > {tol:.0e})")
        finally:
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state(cuda_rng, w.device)

    def _fallback(self, why: str) -> None:
        self.status, self.fn, self.note = "fallback", self.eager, f"{why}: running eagerly"
        warnings.warn(f"compile=true: {self.note}", RuntimeWarning, stacklevel=3)
