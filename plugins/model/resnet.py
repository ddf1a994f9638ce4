"""``resnet``: a small CIFAR-style residual network (He et al., 2016) for (C, H, W) inputs.

A 3×3 stem convolution to ``width`` channels, then one stage per entry of ``blocks`` (that many
basic blocks of two 3×3 convolutions; stage i has ``width · 2^i`` channels and, after the first,
starts with stride 2), global average pooling and a linear layer. Depth = 2·Σ blocks + 2:
``blocks=[1, 1, 1]`` is ResNet-8 (the default), ``[2, 2, 2]`` ResNet-14, ``[3, 3, 3]`` ResNet-20.
A block whose shape changes has a 1×1 projection shortcut. Any spatial size works (the pooling
is global), e.g. (1, 8, 8) digits, (1, 28, 28) MNIST, (3, 32, 32) CIFAR.

Normalisation — why not BatchNorm: hgbench differentiates L_T(w, λ) as a function, twice
(Hessian-vector products), and needs its optimum w*(λ). BatchNorm breaks that in two ways: its
running-statistics buffers are mutated by every training-mode forward, including the many
forwards inside one hypergradient (so computing a hypergradient changes the model), and with
batch statistics each example's output depends on the rest of the batch, so L_T is not a sum of
per-example losses and its value, gradient and optimum depend on how the data is batched (and
differ between train and eval mode). Both options here keep L_T a plain, deterministic function
of w, with no buffers and the same computation in train and eval mode:

- ``norm="none"`` (default): no normalisation, with Fixup initialisation (Zhang et al., 2019):
  the last convolution of every residual branch and the output layer start at zero, the first
  convolution of a branch is scaled by L^(-1/2) (L = number of blocks), and scalar biases and a
  scalar multiplier per block take the place of a normalisation's affine parameters. L_T is then
  a smooth function of every weight with an ordinary (isolated) regularised optimum — the clean
  setting for IFT hypergradients.
- ``norm="group"``: GroupNorm (Wu & He, 2018) over ``gcd(groups, channels)`` groups, per-example
  statistics (written out with elementary ops, see ``GroupNorm``, so that batched HVPs work
  through it). Caveat for the bilevel maths: a convolution followed by a normalisation is
  scale-invariant, so with L2 decay on it L_T keeps decreasing as those weights shrink, until the
  normaliser's eps stops the invariance; the exact optimum w*(λ) is a tiny, ill-conditioned one,
  which matters for methods that assume w is at (or near) it.

``activation`` is configurable (ReLU has a kink; finite-difference checks use a smooth one).

Dropout sites (per-unit masks, see ``plugins/model/_units.py``): ``features`` — the pooled
features (one per channel of the last stage) that feed the output layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from hgbench import ConfigError, Model, hookimpl
from hgbench.plugins.model._units import ACTIVATIONS, apply_mask, check_sites


class GroupNorm(nn.Module):
    """``torch.nn.GroupNorm`` (same parameters, same result) written with elementary tensor ops.

    The built-in kernel's double backward has no batching rule, so batched Hessian-vector products
    (``is_grads_batched=True``, as the ``exact`` hypergradient uses) fail through it; these ops have.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"{num_channels} channels cannot be split into {num_groups} groups")
        self.num_groups, self.eps = num_groups, eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        n, c = x.shape[:2]
        g = x.reshape(n, self.num_groups, -1)
        mean = g.mean(dim=-1, keepdim=True)
        var = (g - mean).square().mean(dim=-1, keepdim=True)
        x = ((g - mean) * torch.rsqrt(var + self.eps)).reshape(x.shape)
        shape = (1, c) + (1,) * (x.dim() - 2)
        return x * self.weight.reshape(shape) + self.bias.reshape(shape)


def _norm(kind: str, groups: int, channels: int) -> nn.Module:
    return GroupNorm(math.gcd(groups, channels), channels) if kind == "group" else nn.Identity()


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str, groups: int, act: type[nn.Module]):
        super().__init__()
        self.fixup = norm == "none"
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(norm, groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = _norm(norm, groups, cout)
        self.act = act()
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), _norm(norm, groups, cout))
        if self.fixup:
            self.bias1a, self.bias1b, self.bias2a, self.bias2b = (nn.Parameter(torch.zeros(1)) for _ in range(4))
            self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: Tensor) -> Tensor:
        if self.fixup:
            xa = x + self.bias1a
            out = self.act(self.conv1(xa) + self.bias1b)
            out = self.conv2(out + self.bias2a) * self.scale + self.bias2b
            short = x if self.shortcut is None else self.shortcut(xa)
        else:
            out = self.act(self.norm1(self.conv1(x)))
            out = self.norm2(self.conv2(out))
            short = x if self.shortcut is None else self.shortcut(x)
        return self.act(out + short)


class ResNet(nn.Module):
    def __init__(self, input_shape, num_outputs, blocks, width, norm, groups, activation):
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(f"resnet expects inputs shaped (C, H, W), got input_shape={tuple(input_shape)}")
        act = ACTIVATIONS[activation]
        self.fixup = norm == "none"
        self.stem = nn.Conv2d(input_shape[0], width, 3, padding=1, bias=False)
        self.stem_norm = _norm(norm, groups, width)
        if self.fixup:
            self.stem_bias = nn.Parameter(torch.zeros(1))
        self.act = act()
        layers, c = [], width
        for i, n in enumerate(blocks):
            cout = width * 2**i
            for j in range(n):
                layers.append(BasicBlock(c, cout, 2 if (i > 0 and j == 0) else 1, norm, groups, act))
                c = cout
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_outputs)
        self.dropout_sites = {"features": c}
        self._init(len(layers))

    def _init(self, num_blocks: int) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if self.fixup:  # Zhang et al. (2019), section 3
            for b in self.blocks:
                w = b.conv1.weight
                nn.init.normal_(w, 0.0, math.sqrt(2.0 / (w.shape[0] * math.prod(w.shape[2:]))) * num_blocks**-0.5)
                nn.init.zeros_(b.conv2.weight)
            nn.init.zeros_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor, unit_masks: dict[str, Tensor] | None = None) -> Tensor:
        masks = check_sites(unit_masks, self.dropout_sites)
        x = self.stem_norm(self.stem(x))
        if self.fixup:
            x = x + self.stem_bias
        x = self.blocks(self.act(x))
        x = apply_mask(x.mean(dim=(2, 3)), masks.get("features"), -1, "features")
        return self.fc(x)


@dataclass
class ResNetModel(Model):
    name = "resnet"
    blocks: list[int] = field(default_factory=lambda: [1, 1, 1])  # blocks per stage: ResNet-(2·Σ+2)
    width: int = 16  # channels of the first stage (doubled at each later stage)
    norm: Literal["none", "group"] = "none"  # none: no normalisation, Fixup initialisation
    groups: int = 8  # GroupNorm groups (gcd with the channel count)
    activation: Literal["relu", "tanh", "gelu", "elu"] = "relu"

    def __post_init__(self):
        if not self.blocks or any(b < 1 for b in self.blocks):
            raise ValueError(f"blocks must be a non-empty list of counts >= 1, got {self.blocks}")
        if self.width < 1 or self.groups < 1:
            raise ValueError(f"width and groups must be >= 1, got width={self.width}, groups={self.groups}")

    def build(self, input_shape, num_outputs):
        return ResNet(tuple(input_shape), num_outputs, list(self.blocks), self.width, self.norm, self.groups, self.activation)


@hookimpl
def register_models():
    return [ResNetModel]
