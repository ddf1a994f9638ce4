"""Per-example test correctness, kept compactly in a CSV cell: which test examples a run's weights
classify correctly, packed 8 to a byte and base64-encoded behind a ``b64:`` prefix (so that
``output.read_csv`` keeps it a string). The studies that compare accuracies on one shared test set
save it per run, so that ``stats.paired_bootstrap`` can pair the two sides example by example."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import torch

PREFIX = "b64:"


def pack(correct: Any) -> str:
    """A 0/1 (or bool) vector as ``b64:<packed bits>``."""
    bits = np.asarray(correct, dtype=bool).ravel()
    return PREFIX + base64.b64encode(np.packbits(bits).tobytes()).decode("ascii")


def unpack(text: str, n: int) -> np.ndarray:
    """The first ``n`` bits of a ``pack``ed vector, as uint8 0/1."""
    text = str(text)
    if not text.startswith(PREFIX):
        raise ValueError(f"not a packed correctness vector: {text[:20]!r}")
    raw = np.frombuffer(base64.b64decode(text[len(PREFIX):]), dtype=np.uint8)
    bits = np.unpackbits(raw)[:n]
    if bits.size != n:
        raise ValueError(f"a packed vector of {bits.size} bits, {n} expected")
    return bits


@torch.no_grad()
def correct_on(problem, w: torch.Tensor, split: str = "test", batch_size: int = 4096) -> torch.Tensor:
    """Per example of ``split``: whether weights ``w`` classify it correctly (the model in eval
    mode, as ``Problem.evaluate``; its mean is that split's accuracy)."""
    s = getattr(problem.data, split)
    out = []
    problem.module.eval()
    try:
        for i in range(0, len(s.x), batch_size):
            out.append((problem.forward(w.detach(), s.x[i : i + batch_size]).argmax(-1) == s.y[i : i + batch_size]).cpu())
    finally:
        problem.module.train()
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)
