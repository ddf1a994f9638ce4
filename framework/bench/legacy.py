"""The code paths as they were before the benchmark's speed changes, to measure before/after
side by side in one process (``cost`` section, rows ``what = before_after``).

1. ``FlatSpec.unflatten`` made one slice per named piece; in every backward pass (each gradient
   and each HVP) each slice's gradient was scattered into its own zero-filled full-length buffer
   and the buffers summed. Now one ``torch.split`` (its backward: one concatenation).
2. ``cg_solve`` updated x, r, p with separate multiply and add kernels (temporaries); now fused
   ``addcmul``.
"""

from __future__ import annotations

import contextlib
import math

import torch

from framework.flat import FlatSpec


def unflatten_slices(self, flat):
    if flat.shape != (self.numel,):
        raise ValueError(f"expected a flat tensor of shape ({self.numel},), got {tuple(flat.shape)}")
    return {n: flat[o : o + math.prod(s)].view(s) for n, s, o in zip(self.names, self.shapes, self.offsets)}


def cg_solve_unfused(matvec, b, iterations, tol=0.0, damping=0.0):
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
            ap = ap + damping * p
        step = rs / (p @ ap)
        x += step * p
        r -= step * ap
        rs_new = r @ r
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x


@contextlib.contextmanager
def before():
    """Run the old code paths inside this block."""
    import plugins.hypergrad.cg as cg_plugin

    new_unflatten, new_cg = FlatSpec.unflatten, cg_plugin.cg_solve
    FlatSpec.unflatten, cg_plugin.cg_solve = unflatten_slices, cg_solve_unfused
    try:
        yield
    finally:
        FlatSpec.unflatten, cg_plugin.cg_solve = new_unflatten, new_cg
