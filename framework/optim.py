"""Functional, differentiable inner optimisers: ``step(w, g, state) -> (w, state)``.

The runner uses them for the inner loop (Algorithm 1) and ``unroll`` differentiates through them,
so they are written out of place. Pick one in config with Hydra's ``_target_``
(``conf/inner_optimizer/``); any class with ``lr``, ``init`` and ``step`` works.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class StepDecay:
    """The learning rate a step uses: ``lr · decay ** (t // decay_every)`` for the step that
    follows t steps taken (``state["step"]``), as ``torch.optim.lr_scheduler.StepLR(step_size=
    decay_every, gamma=decay)`` stepped once per optimiser step; ``decay_every = 0`` (the
    default): a constant rate. Piecewise constant in t, so differentiating through the steps
    (``unroll``) sees each step's rate as a constant."""

    lr: float
    decay: float
    decay_every: int

    def _check_schedule(self, lr: float, decay: float, decay_every: int) -> None:
        if lr <= 0:
            raise ValueError(f"inner_optimizer.lr must be > 0, got {lr}")
        if not 0 < decay <= 1:
            raise ValueError(f"inner_optimizer.decay must be in (0, 1], got {decay}")
        if decay_every < 0:
            raise ValueError(f"inner_optimizer.decay_every must be >= 0 inner steps (0: a constant rate), got {decay_every}")
        self.lr, self.decay, self.decay_every = lr, float(decay), int(decay_every)

    def lr_at(self, taken: int) -> float:
        """The rate of the step after ``taken`` steps."""
        return self.lr * self.decay ** (int(taken) // self.decay_every) if self.decay_every else self.lr


class SGD(StepDecay):
    """w ← w − lr·d, with heavy-ball (or Nesterov) momentum as in ``torch.optim.SGD``; ``lr``
    decays by ``decay`` every ``decay_every`` steps (``StepDecay``)."""

    def __init__(self, lr: float, momentum: float = 0.0, nesterov: bool = False, decay: float = 1.0, decay_every: int = 0):
        self._check_schedule(lr, decay, decay_every)
        if not 0 <= momentum < 1:
            raise ValueError(f"inner_optimizer.momentum must be in [0, 1), got {momentum}")
        self.momentum, self.nesterov = momentum, nesterov

    def init(self, w: Tensor) -> dict[str, Any]:
        return {"step": 0, "buf": torch.zeros_like(w)} if self.momentum else {"step": 0}

    def step(self, w: Tensor, g: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        lr = self.lr_at(state["step"])
        if not self.momentum:
            return w - lr * g, {"step": state["step"] + 1}
        buf = g if state["step"] == 0 else self.momentum * state["buf"] + g
        d = g + self.momentum * buf if self.nesterov else buf
        return w - lr * d, {"step": state["step"] + 1, "buf": buf}


class Adam(StepDecay):
    """Adam; ``eps_root`` inside the square root keeps it differentiable where v = 0; ``lr``
    decays by ``decay`` every ``decay_every`` steps (``StepDecay``)."""

    def __init__(self, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, eps_root: float = 1e-16,
                 decay: float = 1.0, decay_every: int = 0):
        self._check_schedule(lr, decay, decay_every)
        self.betas, self.eps, self.eps_root = tuple(betas), eps, eps_root

    def init(self, w: Tensor) -> dict[str, Any]:
        return {"step": 0, "m": torch.zeros_like(w), "v": torch.zeros_like(w)}

    def step(self, w: Tensor, g: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        b1, b2 = self.betas
        t = state["step"] + 1
        m = b1 * state["m"] + (1 - b1) * g
        v = b2 * state["v"] + (1 - b2) * g * g
        mhat, vhat = m / (1 - b1**t), v / (1 - b2**t)
        return w - self.lr_at(t - 1) * mhat / (torch.sqrt(vhat + self.eps_root) + self.eps), {"step": t, "m": m, "v": v}
