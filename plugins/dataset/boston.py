"""``boston``: the Boston housing regression data (Harrison & Rubinfeld 1978; 506 towns, 13
features, target MEDV = median home value in $1000s) — the data set of the paper's inverse-quality
experiment (linear regression with one decay per weight: 13 weights + 1 bias = 14 hyperparameters).

Source: the CSV bundled in PyPI ``mlxtend`` (a project dependency, pinned in pyproject.toml), file
``mlxtend/data/data/boston_housing.csv`` (506 rows: 13 feature columns, then MEDV). It is read
directly with ``numpy`` — mlxtend itself is not imported. scikit-learn dropped its copy (1.2).
Licence: mlxtend is BSD-3; the data are the StatLib / UCI copy everyone redistributes. (The data
set has a known ethical problem — feature ``B`` encodes the proportion of Black residents; it is
kept here only to reproduce the paper's experiment.)

Splits: a random permutation with ``split_seed`` into ``train_size`` / ``val_size`` /
``test_size`` rows (one of them may be null = the rest). Features are standardised with the mean
and standard deviation of the TRAINING split only (val/test use the same statistics);
``standardize_target: true`` (default) does the same for MEDV, so the MSE is in units of the
training targets' variance (``meta["target_std"]`` converts back: MSE in $1000s² = MSE ×
target_std²). float64 throughout (the run's ``dtype`` decides what the model sees).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from hgbench import ConfigError, DataSplits, Dataset, hookimpl
from hgbench.base import split_arrays
from hgbench.plugins.dataset._common import check_sizes, package_file, read_csv

INSTALL = ".venv/bin/pip install mlxtend==0.25.0"
FEATURES = ("CRIM", "ZN", "INDUS", "CHAS", "NOX", "RM", "AGE", "DIS", "RAD", "TAX", "PTRATIO", "B", "LSTAT")


def csv_path() -> Path:
    """Where the installed mlxtend keeps boston_housing.csv (found without importing mlxtend)."""
    return package_file("boston", "mlxtend", "data/data/boston_housing.csv", INSTALL)


@functools.lru_cache(maxsize=1)
def table() -> tuple[torch.Tensor, torch.Tensor]:
    """(x (506, 13), y (506,)) in float64, read once per process."""
    t = torch.from_numpy(read_csv(csv_path(), (506, 14)))
    return t[:, :13].clone(), t[:, 13].clone()


@dataclass
class Boston(Dataset):
    name = "boston"
    train_size: int | None = 300
    val_size: int | None = 100
    test_size: int | None = None  # None: the rest (106 with the defaults)
    split_seed: int = 0
    standardize_target: bool = True  # MEDV standardised with the training split's mean and std

    def __post_init__(self):
        check_sizes(self, minimum={"train_size": 2})
        given = sum(s for s in (self.train_size, self.val_size, self.test_size) if s is not None)
        if given > 506:
            raise ConfigError(f"train_size + val_size + test_size = {given} but boston has 506 rows")

    def check_available(self) -> None:
        csv_path()

    def load(self) -> DataSplits:
        x, y = table()
        train, val, test = split_arrays(x, y, (self.train_size, self.val_size, self.test_size), self.split_seed)
        mean, std = train.x.mean(0), train.x.std(0).clamp_min(1e-12)
        y_mean, y_std = (train.y.mean(), train.y.std()) if self.standardize_target else (torch.tensor(0.0), torch.tensor(1.0))
        splits = [type(s)((s.x - mean) / std, (s.y - y_mean) / y_std) for s in (train, val, test)]
        meta = {"features": list(FEATURES), "feature_mean": mean, "feature_std": std,
                "target_mean": float(y_mean), "target_std": float(y_std)}
        return DataSplits(*splits, task="regression", num_outputs=1, meta=meta)


@hookimpl
def register_datasets():
    return [Boston]
