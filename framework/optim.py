"""Functional, differentiable inner optimisers: ``step(w, g, state) -> (w, state)``.

The runner uses them for the inner loop (Algorithm 1) and ``unroll`` differentiates through them,
so they are written out of place. Pick one in config with Hydra's ``_target_``
(``conf/inner_optimizer/``); any class with ``lr``, ``init`` and ``step`` works.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class SGD:
    """w ← w − lr·d, with heavy-ball (or Nesterov) momentum as in ``torch.optim.SGD``."""

    def __init__(self, lr: float, momentum: float = 0.0, nesterov: bool = False):
        if lr <= 0:
            raise ValueError(f"inner_optimizer.lr must be > 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"inner_optimizer.momentum must be in [0, 1), got {momentum}")
        self.lr, self.momentum, self.nesterov = lr, momentum, nesterov

    def init(self, w: Tensor) -> dict[str, Any]:
        return {"step": 0, "buf": torch.zeros_like(w)} if self.momentum else {"step": 0}

    def step(self, w: Tensor, g: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        if not self.momentum:
            return w - self.lr * g, {"step": state["step"] + 1}
        buf = g if state["step"] == 0 else self.momentum * state["buf"] + g
        d = g + self.momentum * buf if self.nesterov else buf
        return w - self.lr * d, {"step": state["step"] + 1, "buf": buf}


class Adam:
    """Adam; ``eps_root`` inside the square root keeps it differentiable where v = 0."""

    def __init__(self, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, eps_root: float = 1e-16):
        if lr <= 0:
            raise ValueError(f"inner_optimizer.lr must be > 0, got {lr}")
        self.lr, self.betas, self.eps, self.eps_root = lr, tuple(betas), eps, eps_root

    def init(self, w: Tensor) -> dict[str, Any]:
        return {"step": 0, "m": torch.zeros_like(w), "v": torch.zeros_like(w)}

    def step(self, w: Tensor, g: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        b1, b2 = self.betas
        t = state["step"] + 1
        m = b1 * state["m"] + (1 - b1) * g
        v = b2 * state["v"] + (1 - b2) * g * g
        mhat, vhat = m / (1 - b1**t), v / (1 - b2**t)
        return w - self.lr * mhat / (torch.sqrt(vhat + self.eps_root) + self.eps), {"step": t, "m": m, "v": v}
