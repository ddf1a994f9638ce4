"""The process-wide state a run needs — torch's global RNG (dropout and augmentation noise, a
method's random draws take from it) and, with ``deterministic=true``, deterministic algorithms —
owned by one run while it works (``RunProcessState.owned``) and put back afterwards, so runs
sharing a worker process never see each other's."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import Tensor


def _seeded(seed: int, device: torch.device) -> dict[str, Tensor]:
    rng = {"cpu": torch.Generator().manual_seed(int(seed)).get_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.Generator(device).manual_seed(int(seed)).get_state()
    return rng


class RunProcessState:
    """One run's own torch RNG (CPU, and CUDA on a GPU) as it left it, and its ``deterministic`` setting."""

    def __init__(self, seed: int, device: torch.device, deterministic: bool):
        self.device, self.deterministic = device, bool(deterministic)
        self._rng = _seeded(seed, device)
        self._owning = 0  # nesting depth of owned()

    @contextlib.contextmanager
    def owned(self) -> Iterator[None]:
        """Swap in this run's RNG and determinism and put the caller's back after (nests)."""
        if self._owning:
            self._owning += 1
            try:
                yield
            finally:
                self._owning -= 1
            return
        outer = self.snapshot()
        outer_det = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
        set_env = self.deterministic and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        self.restore(self._rng)
        if self.deterministic:
            if set_env:
                os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
            torch.use_deterministic_algorithms(True)
        self._owning = 1
        try:
            yield
        finally:
            self._owning = 0
            self._rng = self.snapshot()
            self.restore(outer)
            torch.use_deterministic_algorithms(outer_det[0], warn_only=outer_det[1])
            if set_env:
                os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)

    @property
    def working(self) -> bool:
        return bool(self._owning)

    def rng(self) -> dict[str, Tensor]:
        """This run's RNG state ("cpu", and "cuda" on a GPU), live if it is working now."""
        return self.snapshot() if self._owning else dict(self._rng)

    def set_rng(self, rng: dict[str, Tensor]) -> None:
        """Set this run's RNG state (a checkpoint's); live if it is working now."""
        self._rng.update({k: v for k, v in rng.items() if k in self._rng})
        if self._owning:
            self.restore(self._rng)

    def seed(self, seed: int) -> None:
        if self._owning:
            raise RuntimeError("seed_rng while the experiment is working")
        self._rng = _seeded(seed, self.device)

    def snapshot(self) -> dict[str, Tensor]:
        """torch's global RNG state now."""
        snap = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            snap["cuda"] = torch.cuda.get_rng_state(self.device)
        return snap

    def restore(self, snap: dict[str, Tensor]) -> None:
        """Set torch's global RNG state to ``snap``."""
        torch.set_rng_state(snap["cpu"])
        if "cuda" in snap:
            torch.cuda.set_rng_state(snap["cuda"], self.device)
