"""``mnist1d``: MNIST-1D (Greydanus & Kobak 2020/2024), a procedurally generated 1-D analogue of
MNIST: 5,000 signals of length 40 in 10 classes, 4,000 for training and 1,000 for testing.
Licence: Apache-2.0.

Source: PyPI ``mnist1d==0.0.2.post1``. The canonical dataset is GENERATED offline, exactly as the
authors build it, with ``make_dataset(get_dataset_args())`` (seed 42; about 1 s, cached per
process). ``mnist1d.get_dataset()`` is never called: it downloads a pickle. The generator seeds
Python's and NumPy's global random state; this plugin restores both afterwards.

``train_size`` and ``val_size`` are disjoint random subsets (``split_seed``) of the 4,000
training signals (one may be ``null`` = the rest), ``test_size`` a subset of the 1,000 test
signals (``null`` = all). Inputs are float32, standardised by the generator (zero mean, unit
standard deviation over the dataset); shape (40,), or (1, 40) with ``channel_dim=True`` for 1-D
convolutions. ``label_noise`` flips that fraction of the training labels (``meta["noisy_mask"]``).
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

import numpy as np
import torch

from hgbench import DataSplits, Dataset, hookimpl
from hgbench.base import Split
from hgbench.plugins.dataset._common import check_sizes, classification_splits, draw

INSTALL = ".venv/bin/pip install mnist1d==0.0.2.post1"


@functools.lru_cache(maxsize=1)
def generate() -> dict[str, torch.Tensor]:
    """The canonical MNIST-1D arrays as tensors: x (4000, 40), y, x_test (1000, 40), y_test."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(f"dataset 'mnist1d' needs the PyPI package mnist1d; install it with: {INSTALL}") from exc
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {
        "x": torch.as_tensor(data["x"], dtype=torch.float32),
        "y": torch.as_tensor(data["y"], dtype=torch.long),
        "x_test": torch.as_tensor(data["x_test"], dtype=torch.float32),
        "y_test": torch.as_tensor(data["y_test"], dtype=torch.long),
    }


@dataclass
class Mnist1d(Dataset):
    name = "mnist1d"
    train_size: int | None = 3000  # from the 4,000 training signals, disjoint from val
    val_size: int | None = 1000  # from the 4,000 training signals
    test_size: int | None = 1000  # from the 1,000 test signals; null = all
    split_seed: int = 0
    channel_dim: bool = False  # True: inputs (1, 40) for 1-D convolutional models
    label_noise: float = 0.0  # fraction of training labels flipped to another class

    def __post_init__(self):
        check_sizes(self)

    def check_available(self) -> None:
        from importlib.util import find_spec

        if find_spec("mnist1d") is None:
            raise ModuleNotFoundError(f"dataset 'mnist1d' needs the PyPI package mnist1d; install it with: {INSTALL}")

    def load(self) -> DataSplits:
        d = generate()
        g = torch.Generator().manual_seed(self.split_seed)
        train, val = draw(d["x"], d["y"], {"train_size": self.train_size, "val_size": self.val_size}, g, "MNIST-1D's 4,000 training signals")
        (test,) = draw(d["x_test"], d["y_test"], {"test_size": self.test_size}, g, "MNIST-1D's 1,000 test signals")
        if self.channel_dim:
            train, val, test = (Split(s.x.unsqueeze(1), s.y) for s in (train, val, test))
        return classification_splits(train, val, test, num_classes=10, label_noise=self.label_noise, seed=self.split_seed)


@hookimpl
def register_datasets():
    return [Mnist1d]
