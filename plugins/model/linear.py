"""``linear``: a linear (affine) map from the flattened input to the outputs."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from hgbench import Model, hookimpl


@dataclass
class Linear(Model):
    name = "linear"
    bias: bool = True

    def build(self, input_shape, num_outputs):
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_outputs, bias=self.bias))


@hookimpl
def register_models():
    return [Linear]
