"""``cifar10``: CIFAR-10 (Krizhevsky 2009): 60,000 32×32 colour images in 10 classes, 50,000 for
training and 10,000 for testing. Licence: none stated; free to use with attribution to
"Learning Multiple Layers of Features from Tiny Images", A. Krizhevsky, 2009.

No installable package ships CIFAR-10, and nothing is downloaded at run time: download the
"CIFAR-10 python version" ONCE yourself and extract it (it creates ``cifar-10-batches-py/``)::

    mkdir -p ~/data && curl -L https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz | tar -xz -C ~/data

then point ``root`` at that folder (default ``~/data/cifar-10-batches-py``; its parent works too,
as does torchvision's download folder): ``hgbench dataset=cifar10 dataset.root=/path/to/cifar-10-batches-py``.

The loader reads the standard python-pickle batches: ``data_batch_1`` … ``data_batch_5`` and
``test_batch``, each a pickled dict with ``b"data"`` (uint8, one 3,072-byte row per image: the
1,024 red, then green, then blue pixels, row-major) and ``b"labels"``; class names come from
``batches.meta`` (``b"label_names"``) when present. These are pickles, read with a restricted
unpickler: it builds only dicts, lists, tuples, bytes/str, numbers and numpy arrays (the globals
``numpy…multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype`` and, for protocol-5 files,
``numpy…numeric._frombuffer``) and refuses any other global — e.g. ``os.system`` or
``builtins.eval`` in a tampered file — with an ``UnsafePickleError`` naming the file and the
global, before anything from the file is called.

``train_size`` and ``val_size`` are disjoint random subsets (``split_seed``) of the 50,000
training images (one may be ``null`` = the rest), ``test_size`` a subset of the 10,000 test
images (``null`` = all). Images are float32 (3, 32, 32) in [0, 1] (``image=False``: flat 3,072,
channel-major); ``normalize=True`` standardises each channel with the CIFAR-10 training-set mean
(0.4914, 0.4822, 0.4465) and standard deviation (0.2470, 0.2435, 0.2616). ``label_noise`` flips
that fraction of the training labels (``meta["noisy_mask"]``).
"""

from __future__ import annotations

import importlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from hgbench import DataError, DataSplits, Dataset, hookimpl
from hgbench.base import Split
from hgbench.plugins.dataset._common import check_sizes, classification_splits, draw

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def resolve_root(root: str | None) -> Path:
    """The folder holding the batches: ``root`` itself, or its ``cifar-10-batches-py`` subfolder."""
    if root is None:
        raise FileNotFoundError(
            f"dataset 'cifar10': dataset.root is null. Download {URL}, extract it (e.g. "
            f"`tar -xzf cifar-10-python.tar.gz -C ~/data`, which creates ~/data/{FOLDER}) and set "
            f"dataset.root to that {FOLDER} folder"
        )
    path = Path(root).expanduser()
    if (path / FOLDER).is_dir() and not (path / TEST_FILE).is_file():
        path = path / FOLDER
    missing = [f for f in (*TRAIN_FILES, TEST_FILE) if not (path / f).is_file()]
    if missing:
        where = "does not exist" if not path.is_dir() else f"lacks {', '.join(missing)}"
        raise FileNotFoundError(
            f"dataset 'cifar10': CIFAR-10 not found: {path} (dataset.root) {where}. Nothing is downloaded "
            f"at run time: download {URL} (the python version, 163 MB), extract it with "
            f"`tar -xzf cifar-10-python.tar.gz -C <dir>` (it creates <dir>/{FOLDER} with data_batch_1..5, "
            f"test_batch, batches.meta) and point dataset.root at <dir>/{FOLDER}, e.g. "
            f"hgbench dataset=cifar10 dataset.root=~/data/{FOLDER}"
        )
    return path


# The only globals a CIFAR-10 python batch refers to: numpy array reconstruction (protocols 0-4:
# _reconstruct + ndarray + dtype; protocol 5: _frombuffer + dtype). numpy 2 moved numpy.core to
# numpy._core; either spelling in a file resolves to the object of the installed numpy. Module
# names from the file are only looked up in this table, never imported.
_NUMPY_CORE = ("numpy._core", "numpy.core")
SAFE_GLOBALS: dict[tuple[str, str], str] = {
    **{(f"{core}.multiarray", "_reconstruct"): "multiarray._reconstruct" for core in _NUMPY_CORE},
    **{(f"{core}.numeric", "_frombuffer"): "numeric._frombuffer" for core in _NUMPY_CORE},
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
}


def _safe_global(what: str) -> Any:
    if "." not in what:
        return getattr(np, what)
    module, name = what.split(".")
    for core in _NUMPY_CORE:  # numpy >= 2: numpy._core (numpy.core warns); numpy 1.x: numpy.core
        try:
            return getattr(importlib.import_module(f"{core}.{module}"), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {what}")


class UnsafePickleError(pickle.UnpicklingError, DataError):
    """A pickle refers to a global outside ``SAFE_GLOBALS`` (it is never called)."""


class RestrictedUnpickler(pickle.Unpickler):
    """Builds plain containers, bytes/str, numbers and numpy arrays; refuses every other global
    with an ``UnsafePickleError`` naming the file (``path``) and the global. ``what`` names the
    expected content and ``hint`` says what to do, in that error."""

    def __init__(self, file: BinaryIO, path: str | Path, what: str, hint: str = "", **kwargs: Any):
        super().__init__(file, **kwargs)
        self.path, self.what, self.hint = path, what, hint

    def find_class(self, module: str, name: str) -> Any:
        target = SAFE_GLOBALS.get((module, name))
        if target is None:
            raise UnsafePickleError(
                f"{self.path}: refused to load the global '{module}.{name}' from this pickle (it was not "
                f"called): {self.what} holds only dicts, lists, bytes/str, numbers and numpy arrays, so "
                f"this file is not one, or it was tampered with{'; ' + self.hint if self.hint else ''}"
            )
        return _safe_global(target)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.path}: refused a persistent id in this pickle; {self.what} has none")


def restricted_load(file: BinaryIO, path: str | Path, what: str, hint: str = "", encoding: str = "bytes") -> Any:
    """Unpickle the open binary ``file`` with ``RestrictedUnpickler``; a refused global raises
    ``UnsafePickleError``, a damaged file ``ValueError``, both naming ``path``."""
    try:
        return RestrictedUnpickler(file, path, what, hint, encoding=encoding).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise DataError(f"{path} is not a readable pickle of {what}: {type(exc).__name__}: {exc}") from exc


def load_pickle(path: Path) -> Any:
    """One CIFAR-10 pickle (a batch or ``batches.meta``), through ``restricted_load``."""
    with open(path, "rb") as f:
        return restricted_load(f, path, "a CIFAR-10 python batch",
                               f"point dataset.root at the folder extracted from {URL}")


def _get(d: dict[Any, Any], key: str) -> Any:
    return d[key.encode()] if key.encode() in d else d[key]


def read_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 3, 32, 32) and int64 labels (N,) of one pickled batch."""
    d = load_pickle(path)
    try:
        data = np.asarray(_get(d, "data"), dtype=np.uint8)
        labels = np.asarray(_get(d, "labels"), dtype=np.int64)
    except (KeyError, TypeError) as exc:
        raise DataError(f"{path} is not a CIFAR-10 python batch (a dict with b'data' and b'labels')") from exc
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DataError(f"{path}: expected data (N, 3072) and N labels, got {data.shape} and {labels.shape}")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def read_classes(path: Path) -> list[str]:
    meta = path / META_FILE
    if not meta.is_file():
        return list(CLASSES)
    d = load_pickle(meta)
    try:
        names = _get(d, "label_names")
    except (KeyError, TypeError) as exc:
        raise DataError(f"{meta} is not a CIFAR-10 batches.meta (a dict with b'label_names')") from exc
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


@dataclass
class Cifar10(Dataset):
    name = "cifar10"
    root: str | None = "~/data/cifar-10-batches-py"  # the extracted cifar-10-python.tar.gz (or its parent)
    train_size: int | None = 45000  # from the 50,000 training images, disjoint from val
    val_size: int | None = 5000  # from the 50,000 training images
    test_size: int | None = 10000  # from the 10,000 test images; null = all
    split_seed: int = 0
    image: bool = True  # False: flat 3,072 inputs (channel-major) for MLPs
    normalize: bool = False  # standardise each channel with CIFAR-10's training mean and std
    label_noise: float = 0.0  # fraction of training labels flipped to another class

    def __post_init__(self):
        check_sizes(self)

    def check_available(self) -> None:
        resolve_root(self.root)

    def load(self) -> DataSplits:
        path = resolve_root(self.root)
        parts = [read_batch(path / f) for f in TRAIN_FILES]
        x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        g = torch.Generator().manual_seed(self.split_seed)
        train, val = draw(x, y, {"train_size": self.train_size, "val_size": self.val_size}, g, f"CIFAR-10's {len(x):,}-image training set")
        x, y = read_batch(path / TEST_FILE)
        (test,) = draw(x, y, {"test_size": self.test_size}, g, f"CIFAR-10's {len(x):,}-image test set")
        classes = read_classes(path)

        def convert(s: Split) -> Split:
            x = s.x.float().div_(255.0)
            if self.normalize:
                x = (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
            return Split(x if self.image else x.reshape(len(x), -1), s.y)

        return classification_splits(
            *(convert(s) for s in (train, val, test)), num_classes=10, label_noise=self.label_noise,
            seed=self.split_seed, meta={"classes": classes},
        )


@hookimpl
def register_datasets():
    return [Cifar10]
