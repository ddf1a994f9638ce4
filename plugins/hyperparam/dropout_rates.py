"""``dropout_rates``: a few GLOBAL learned dropout rates — one per dropout site of the model —
with the same concrete relaxation as ``dropout_per_unit`` (which documents the formulas), plus,
for the ``lstm``, the other regularisers of the paper's AWD-LSTM experiment as single values.

The paper's "7 hyperparameters" (Lorraine et al. 2020, Table 3; the authors' ``rnn/train.py``,
``--tune`` and ``rnn/model_basic.py``) and their names here, for ``model=lstm`` with 2 layers:

| authors' flag | what it is | λ here |
|---|---|---|
| ``dropouti`` | variational dropout on the embedded tokens fed to layer 1 | ``embedding`` |
| ``dropouth`` | variational dropout between the LSTM layers | ``hidden0`` |
| ``dropouto`` | variational dropout on the last layer's outputs, before the decoder | ``output`` |
| ``dropoute`` | embedding dropout of whole words | ``word`` (``word_dropout``) |
| ``wdrop`` | DropConnect on the hidden-to-hidden weights, one rate for every layer | ``weight_hh`` (``weight_drop``) |
| ``alpha`` | activation regularisation (AR) coefficient, softplus-parametrised | ``ar`` |
| ``beta`` | temporal activation regularisation (TAR) coefficient | ``tar`` |

Each rate p = sigmoid(λ); each variational mask is drawn per example and unit and shared over the
time steps; DropConnect and word dropout draw one mask per batch. With more than 2 layers each
``hidden<i>`` site has a rate of its own (the authors share one ``dropouth``). On an ``mlp``, ``cnn``
or ``resnet`` only the dropout sites exist (one rate each); the extras need ``model=lstm``.
L_V is the plain data loss without any of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from hgbench import hookimpl
from hgbench.plugins.hyperparam.dropout_per_unit import DropoutPerUnit


@dataclass
class DropoutRates(DropoutPerUnit):
    """One learned rate per dropout site (and one each for weight_drop, word_dropout, ar, tar)."""

    name = "dropout_rates"
    per_unit: ClassVar[bool] = False


@hookimpl
def register_hyperparams():
    return [DropoutRates]
