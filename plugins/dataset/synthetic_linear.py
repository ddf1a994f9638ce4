"""``synthetic_linear``: a linear-regression problem y = X·w_true + noise, for closed-form checks.

Only the first ``informative`` features carry signal, so per-feature decay has something to learn.
Features are standard normal; everything is generated from ``split_seed`` (no files needed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hgbench import DataSplits, Dataset, hookimpl
from hgbench.base import split_arrays


@dataclass
class SyntheticLinear(Dataset):
    name = "synthetic_linear"
    num_features: int = 20
    informative: int = 5
    noise: float = 0.5
    train_size: int = 100
    val_size: int = 100
    test_size: int = 100
    split_seed: int = 0

    def __post_init__(self):
        if not 0 <= self.informative <= self.num_features:
            raise ValueError(f"informative must be in [0, num_features={self.num_features}], got {self.informative}")
        for k in ("num_features", "train_size", "val_size"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")

    def load(self) -> DataSplits:
        g = torch.Generator().manual_seed(self.split_seed)
        n = self.train_size + self.val_size + self.test_size
        x = torch.randn(n, self.num_features, generator=g, dtype=torch.float64)
        w_true = torch.zeros(self.num_features, dtype=torch.float64)
        w_true[: self.informative] = torch.randn(self.informative, generator=g, dtype=torch.float64)
        y = x @ w_true + self.noise * torch.randn(n, generator=g, dtype=torch.float64)
        train, val, test = split_arrays(x, y, (self.train_size, self.val_size, self.test_size), self.split_seed)
        return DataSplits(train, val, test, task="regression", num_outputs=1)


@hookimpl
def register_datasets():
    return [SyntheticLinear]
