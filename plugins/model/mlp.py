"""``mlp``: a multilayer perceptron on the flattened input (``hidden`` widths, ``activation``).

Dropout sites (per-unit masks, see ``plugins/model/_units.py``): ``hidden0``, ``hidden1``, … —
the units of each hidden layer, after its activation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor, nn

from hgbench import Model, hookimpl
from hgbench.plugins.model._units import ACTIVATIONS, apply_mask, check_sites


class MLPNet(nn.Sequential):
    """``nn.Sequential(Flatten, Linear, act, …, Linear)`` whose forward also takes ``unit_masks``
    (the layers, their parameter names and initialisation are those of the plain Sequential)."""

    def __init__(self, *layers: nn.Module, hidden: list[int]):
        super().__init__(*layers)
        self.dropout_sites = {f"hidden{i}": h for i, h in enumerate(hidden)}
        # index of each hidden layer's activation in the Sequential: 0 is Flatten, then (Linear, act) pairs
        self._site_after = {2 + 2 * i: f"hidden{i}" for i in range(len(hidden))}

    def forward(self, x: Tensor, unit_masks: dict[str, Tensor] | None = None) -> Tensor:
        masks = check_sites(unit_masks, self.dropout_sites)
        for i, layer in enumerate(self):
            x = layer(x)
            site = self._site_after.get(i)
            if site in masks:
                x = apply_mask(x, masks[site], -1, site)
        return x


@dataclass
class MLP(Model):
    name = "mlp"
    hidden: list[int] = field(default_factory=lambda: [128])
    activation: Literal["relu", "tanh", "gelu", "elu"] = "relu"

    def __post_init__(self):
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden widths must be >= 1, got {self.hidden}")

    def build(self, input_shape, num_outputs):
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in self.hidden:
            layers += [nn.Linear(width, h), ACTIVATIONS[self.activation]()]
            width = h
        layers.append(nn.Linear(width, num_outputs))
        return MLPNet(*layers, hidden=list(self.hidden))


@hookimpl
def register_models():
    return [MLP]
