"""``fashion_mnist``: Zalando's Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): 70,000 28×28 greyscale
images of clothing in 10 balanced classes (60,000 train / 10,000 test). Licence: MIT (Zalando SE).

Source: the Debian/Ubuntu package ``dataset-fashion-mnist``, which installs the four original
``*-idx?-ubyte.gz`` files in ``/usr/share/datasets/fashion-mnist/``::

    sudo apt-get install -y dataset-fashion-mnist

Elsewhere, put the same four files (from https://github.com/zalandoresearch/fashion-mnist, folder
``data/fashion``; gzipped or not) in any folder and set ``root`` to it. Nothing is downloaded.

``train_size`` and ``val_size`` are disjoint random subsets (``split_seed``) of the 60,000
training images (one of them may be ``null`` = the rest), ``test_size`` a subset of the official
10,000 test images (``null`` = all). Pixels are float32 in [0, 1]; ``image=True`` gives (1, 28, 28).
``label_noise`` flips that fraction of the training labels (``meta["noisy_mask"]``).
"""

from __future__ import annotations

import functools
import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hgbench import DataError, DataSplits, Dataset, hookimpl
from hgbench.base import Split
from hgbench.plugins.dataset._common import check_sizes, classification_splits, draw

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
APT = "sudo apt-get install -y dataset-fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def read_idx(path: Path, magic: int, offset: int) -> np.ndarray:
    """The uint8 payload of an IDX file (gzipped or not), after checking its magic number."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(f"{path} is not an IDX file with magic number {magic} (found {found})")
    return np.frombuffer(data, np.uint8, offset=offset)


@functools.lru_cache(maxsize=2)
def read_part(root: Path, part: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 28, 28) and int64 labels (N,) of the 'train' or 'test' part (cached per
    process: subsets are copies, so the cached tensors are never modified)."""
    images, labels = (_find(root, stem) for stem in FILES[part])
    x = read_idx(images, 2051, 16).reshape(-1, 28, 28)
    y = read_idx(labels, 2049, 8).astype(np.int64)
    if len(x) != len(y):
        raise DataError(f"Fashion-MNIST {part} files in {root} disagree: {len(x)} images, {len(y)} labels")
    return torch.from_numpy(x.copy()), torch.from_numpy(y)


def check_files(root: Path) -> None:
    missing = [stem + ".gz" for stems in FILES.values() for stem in stems if _find(root, stem) is None]
    if missing:
        how = (
            f"install the Debian package with: {APT}"
            if str(root) == DEFAULT_ROOT
            else f"put them there (from https://github.com/zalandoresearch/fashion-mnist, data/fashion), "
            f"or install the Debian package with: {APT} and set dataset.root={DEFAULT_ROOT}"
        )
        raise FileNotFoundError(
            f"dataset 'fashion_mnist': missing {', '.join(missing)} in {root} (set by dataset.root); {how}"
        )


@dataclass
class FashionMnist(Dataset):
    name = "fashion_mnist"
    train_size: int | None = 50000  # from the 60,000 training images, disjoint from val
    val_size: int | None = 10000  # from the 60,000 training images
    test_size: int | None = 10000  # from the 10,000 test images; null = all
    split_seed: int = 0
    image: bool = False  # True: (1, 28, 28) for convolutional models
    label_noise: float = 0.0  # fraction of training labels flipped to another class
    root: str = DEFAULT_ROOT  # folder with the four *-idx?-ubyte(.gz) files

    def __post_init__(self):
        check_sizes(self)

    def check_available(self) -> None:
        check_files(Path(self.root).expanduser())

    def load(self) -> DataSplits:
        root = Path(self.root).expanduser()
        check_files(root)
        g = torch.Generator().manual_seed(self.split_seed)
        x, y = read_part(root, "train")
        train, val = draw(x, y, {"train_size": self.train_size, "val_size": self.val_size}, g, "Fashion-MNIST's training set")
        x, y = read_part(root, "test")
        (test,) = draw(x, y, {"test_size": self.test_size}, g, "Fashion-MNIST's test set")
        shape = (-1, 1, 28, 28) if self.image else (-1, 784)
        train, val, test = (Split(s.x.reshape(shape).float().div_(255.0), s.y) for s in (train, val, test))
        return classification_splits(
            train, val, test, num_classes=10, label_noise=self.label_noise, seed=self.split_seed,
            meta={"classes": list(CLASSES)},
        )


@hookimpl
def register_datasets():
    return [FashionMnist]
