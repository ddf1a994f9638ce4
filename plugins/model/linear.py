"""``linear``: a linear (affine) map from the flattened input to the outputs.

``bias: false`` drops the offset (W x only); ``init: zeros`` starts every weight at 0 instead of
torch's default uniform draw (multinomial logistic regression from W = 0, as benchopt's
benchmark_bilevel starts its data-cleaning problem)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from torch import nn

from hgbench import Model, hookimpl


@dataclass
class Linear(Model):
    name = "linear"
    bias: bool = True
    init: Literal["default", "zeros"] = "default"  # default: torch's nn.Linear draw (seeded); zeros: every weight 0

    def build(self, input_shape, num_outputs):
        layer = nn.Linear(math.prod(input_shape), num_outputs, bias=self.bias)
        if self.init == "zeros":
            nn.init.zeros_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        return nn.Sequential(nn.Flatten(), layer)


@hookimpl
def register_models():
    return [Linear]
