"""``digits``: scikit-learn's bundled 8×8 handwritten digits (1,797 images, 10 classes, BSD-3).

Read from the CSV scikit-learn bundles (``sklearn/datasets/data/digits.csv.gz``, the data
``sklearn.datasets.load_digits`` returns) without importing scikit-learn, which would cost seconds
per process; no download. Pixels are scaled to [0, 1]; ``image=True`` keeps the (1, 8, 8) shape for convolutional models.
``label_noise`` flips that fraction of the training labels to another random class (val/test stay
clean); ``DataSplits.meta["noisy_mask"]`` says which.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from hgbench import DataSplits, Dataset, hookimpl
from hgbench.base import split_arrays
from hgbench.plugins.dataset._common import check_sizes, classification_splits, package_file, read_csv

INSTALL = ".venv/bin/pip install scikit-learn==1.9.1"


@functools.lru_cache(maxsize=1)
def pool() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1,797 images (pixels 0–16, float64 as scikit-learn gives them) and labels, read once per
    process; the splits are copies (indexing), so the cached tensors are never modified."""
    data = read_csv(package_file("digits", "sklearn", "datasets/data/digits.csv.gz", INSTALL), (1797, 65), np.uint8)
    return torch.from_numpy(data[:, :64].astype(np.float64)), torch.from_numpy(data[:, 64].astype(np.int64))


@dataclass
class Digits(Dataset):
    name = "digits"
    train_size: int = 500
    val_size: int = 500
    test_size: int | None = None  # None: all remaining examples (797 with the defaults)
    split_seed: int = 0
    image: bool = False
    label_noise: float = 0.0  # fraction of training labels flipped to another class

    def __post_init__(self):
        check_sizes(self)

    def load(self) -> DataSplits:
        x, y = pool()
        x = x.to(torch.float32) / 16.0
        if self.image:
            x = x.reshape(-1, 1, 8, 8)
        train, val, test = split_arrays(x, y, (self.train_size, self.val_size, self.test_size), self.split_seed)
        return classification_splits(train, val, test, num_classes=10, label_noise=self.label_noise, seed=self.split_seed)


@hookimpl
def register_datasets():
    return [Digits]
