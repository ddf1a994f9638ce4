"""``mlp``: a multilayer perceptron on the flattened input (``hidden`` widths, ``activation``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

from framework import Model, hookimpl

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "elu": nn.ELU}


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
        return nn.Sequential(*layers)


@hookimpl
def register_models():
    return [MLP]
