"""``digits``: scikit-learn's bundled 8×8 handwritten digits (1,797 images, 10 classes, BSD-3).

Loaded with ``sklearn.datasets.load_digits`` from the installed package (no download). Pixels are
scaled to [0, 1]; ``image=True`` keeps the (1, 8, 8) shape for convolutional models.
``label_noise`` flips that fraction of the training labels to another random class (val/test stay
clean); ``DataSplits.meta["noisy_mask"]`` says which.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hgbench import DataSplits, Dataset, hookimpl
from hgbench.base import split_arrays
from hgbench.plugins.dataset._common import check_sizes, classification_splits


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
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        x = torch.as_tensor(x, dtype=torch.float32) / 16.0
        if self.image:
            x = x.reshape(-1, 1, 8, 8)
        y = torch.as_tensor(y, dtype=torch.long)
        train, val, test = split_arrays(x, y, (self.train_size, self.val_size, self.test_size), self.split_seed)
        return classification_splits(train, val, test, num_classes=10, label_noise=self.label_noise, seed=self.split_seed)


@hookimpl
def register_datasets():
    return [Digits]
