"""``cnn``: a LeNet-like convolutional network, (conv → activation → pool) × len(``channels``),
then fully connected layers of widths ``hidden``, then a linear output layer.

Input (C, H, W) of any size: convolutions pad to keep the spatial size ("same" padding for odd
``kernel_size``), each pool halves it (floor), and the flatten size is inferred at build time
(e.g. (1, 8, 8) digits, (1, 28, 28) MNIST, (3, 32, 32) CIFAR). The defaults are LeNet-5's widths
with one hidden fc layer: conv(6)-pool-conv(16)-pool-fc(120)-fc(out).

``activation`` and ``pool`` (``max`` | ``avg``) are configurable: ReLU and max-pooling have kinks,
so smooth checks (finite differences of hypergradients) use e.g. ``tanh`` and ``avg``.

Dropout sites (per-unit masks, see ``plugins/model/_units.py``): ``conv0``, ``conv1``, … — one
unit per channel of each conv stage (after activation and pooling; a mask of shape (C,) or
(batch, C) is broadcast over height and width) — and ``hidden0``, ``hidden1``, … — the units of
each hidden fc layer, after its activation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from hgbench import ConfigError, Model, hookimpl
from hgbench.plugins.model._units import ACTIVATIONS, apply_mask, check_sites


class ConvNet(nn.Module):
    def __init__(self, input_shape, num_outputs, channels, hidden, kernel_size, activation, pool):
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(f"cnn expects inputs shaped (C, H, W), got input_shape={tuple(input_shape)}")
        act = ACTIVATIONS[activation]
        pool_cls = nn.MaxPool2d if pool == "max" else nn.AvgPool2d
        self.convs = nn.ModuleList()
        c = input_shape[0]
        for ch in channels:
            self.convs.append(nn.Conv2d(c, ch, kernel_size, padding=kernel_size // 2))
            c = ch
        self.act = act()
        self.pool = pool_cls(2)
        with torch.no_grad():  # infer the flatten size from one dummy example
            try:
                flat = self._features(torch.zeros(1, *input_shape), {}).shape[1]
            except RuntimeError as exc:
                raise ConfigError(
                    f"cnn: input_shape={tuple(input_shape)} is too small for {len(channels)} conv-pool "
                    f"stages (each pool halves the height and width): {exc}"
                ) from exc
        self.fcs = nn.ModuleList()
        width = flat
        for h in hidden:
            self.fcs.append(nn.Linear(width, h))
            width = h
        self.out = nn.Linear(width, num_outputs)
        self.dropout_sites = {f"conv{i}": ch for i, ch in enumerate(channels)}
        self.dropout_sites.update({f"hidden{i}": h for i, h in enumerate(hidden)})

    def _features(self, x: Tensor, masks: dict[str, Tensor]) -> Tensor:
        for i, conv in enumerate(self.convs):
            x = self.pool(self.act(conv(x)))
            x = apply_mask(x, masks.get(f"conv{i}"), 1, f"conv{i}")
        return x.flatten(1)

    def forward(self, x: Tensor, unit_masks: dict[str, Tensor] | None = None) -> Tensor:
        masks = check_sites(unit_masks, self.dropout_sites)
        x = self._features(x, masks)
        for i, fc in enumerate(self.fcs):
            x = apply_mask(self.act(fc(x)), masks.get(f"hidden{i}"), -1, f"hidden{i}")
        return self.out(x)


@dataclass
class CNN(Model):
    name = "cnn"
    channels: list[int] = field(default_factory=lambda: [6, 16])
    hidden: list[int] = field(default_factory=lambda: [120])
    kernel_size: int = 5
    activation: Literal["relu", "tanh", "gelu", "elu"] = "relu"
    pool: Literal["max", "avg"] = "max"

    def __post_init__(self):
        if any(c < 1 for c in self.channels) or any(h < 1 for h in self.hidden):
            raise ValueError(f"channels and hidden widths must be >= 1, got {self.channels}, {self.hidden}")
        if self.kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {self.kernel_size}")

    def build(self, input_shape, num_outputs):
        return ConvNet(tuple(input_shape), num_outputs, list(self.channels), list(self.hidden),
                       self.kernel_size, self.activation, self.pool)


@hookimpl
def register_models():
    return [CNN]
