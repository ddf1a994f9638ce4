"""Small pieces shared by the hyperparameter families."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def l2(w: Tensor, coef: float) -> Tensor | float:
    """½·coef·‖w‖²: a fixed weight decay that keeps the training Hessian positive definite."""
    return 0.5 * coef * (w * w).sum() if coef else 0.0


def uniform_noise(shape, like: Tensor, fixed: bool, seed: int = 0, eps: float = 1e-6) -> Tensor:
    """U(eps, 1 − eps) noise; ``fixed`` draws the same noise at every call (a deterministic
    L_T, for finite-difference checks), otherwise fresh noise from torch's global RNG."""
    gen = torch.Generator(device=like.device).manual_seed(seed) if fixed else None
    u = torch.rand(shape, generator=gen, device=like.device, dtype=like.dtype)
    return u.clamp(eps, 1 - eps)


def image_grid(images: Tensor, titles: list[str] | None = None, ncols: int | None = None):
    """A matplotlib figure showing (N, C, H, W) or (N, H, W) or (N, D) images (D a square) — a
    ``Figure`` of its own, not pyplot's: the caller's backend is never switched."""
    from matplotlib.figure import Figure

    x = images.detach().float().cpu()
    if x.dim() == 2:  # flat vectors: show square ones, else as 1-D signals
        side = math.isqrt(x.shape[1])
        x = x.reshape(-1, 1, side, side) if side * side == x.shape[1] else x.reshape(-1, 1, 1, x.shape[1])
    if x.dim() == 3:
        x = x.unsqueeze(1)
    n = len(x)
    ncols = ncols or min(n, 10)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(1.3 * ncols, 1.4 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = x[i]
        lo, hi = img.min(), img.max()
        img = (img - lo) / (hi - lo + 1e-12)
        if img.shape[0] == 3:
            ax.imshow(img.permute(1, 2, 0).numpy())
        else:
            ax.imshow(img[0].numpy(), cmap="gray", aspect="auto")
        if titles:
            ax.set_title(titles[i], fontsize=8)
    fig.tight_layout()
    return fig
