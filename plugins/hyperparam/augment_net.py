"""``augment_net``: a learned data-augmentation network; λ = its weights.

    x̃ = A(x, z; λ) = x + U(x, z; λ)      a tiny U-Net U, its last layer zero-initialised (x̃ = x at start)
    L_T(w, λ) = data_loss(f(w, x̃), y) + ½·l2·‖w‖²        (the model sees only augmented training data)
    L_V(w)    = data loss on clean validation data

z is ``noise_channels`` channels of uniform noise per image (fresh at each call; ``fixed_noise``
makes it deterministic for checks), so A can learn stochastic augmentations. Needs image inputs
(C, H, W), e.g. ``dataset.image=true``. Hyperparameter count = the augmentation net's weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from framework import ConfigError, HyperparamFamily, hookimpl
from plugins.hyperparam._common import image_grid, l2, uniform_noise


class TinyUNet(nn.Module):
    """conv → (pool → conv) → upsample ⊕ skip → conv → conv, residual output."""

    def __init__(self, channels: int, noise_channels: int, width: int):
        super().__init__()
        self.enc1 = nn.Conv2d(channels + noise_channels, width, 3, padding=1)
        self.enc2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.dec1 = nn.Conv2d(3 * width, width, 3, padding=1)
        self.out = nn.Conv2d(width, channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        h0 = x if noise is None else torch.cat([x, noise], 1)
        h1 = torch.tanh(self.enc1(h0))
        h2 = torch.tanh(self.enc2(F.avg_pool2d(h1, 2, ceil_mode=True)))
        up = F.interpolate(h2, size=h1.shape[-2:], mode="nearest")
        h3 = torch.tanh(self.dec1(torch.cat([up, h1], 1)))
        return x + self.out(h3)


@dataclass
class AugmentNet(HyperparamFamily):
    name = "augment_net"
    width: int = 8
    noise_channels: int = 1
    fixed_noise: bool = False
    l2: float = 1e-4
    seed: int = 0

    def skip(self, problem):
        shape = problem.data.input_shape
        if len(shape) != 3 or min(shape[1:]) < 2 or not problem.data.train.x.is_floating_point():
            return f"augment_net needs image inputs (C, H, W), got {tuple(shape)}; set dataset.image=true"
        return None

    def init_hyperparams(self, ctx):
        shape = ctx.data.input_shape
        if len(shape) != 3:
            raise ConfigError(f"augment_net needs image inputs (C, H, W), got {tuple(shape)}; set dataset.image=true")
        with torch.random.fork_rng(devices=[]):  # a seeded init that leaves the global RNG alone
            torch.manual_seed(self.seed)
            self._net = TinyUNet(shape[0], self.noise_channels, self.width).to(ctx.device, ctx.dtype)
        for p in self._net.parameters():
            p.requires_grad_(False)
        self._sample = ctx.data.train.x[:8]
        return {k: v.detach().cpu() for k, v in self._net.named_parameters()}

    def augment(self, lam, x):
        noise = None
        if self.noise_channels:
            noise = uniform_noise((x.shape[0], self.noise_channels, *x.shape[2:]), x, self.fixed_noise, self.seed)
        return functional_call(self._net, lam, (x, noise))

    def training_loss(self, w, lam, batch, ctx):
        return ctx.data_loss(ctx.forward(w, self.augment(lam, batch.x)), batch.y) + l2(w, self.l2)

    def figures(self, lam):
        with torch.no_grad():
            aug = self.augment(lam, self._sample)
        n = len(self._sample)
        return {"augmentations.png": image_grid(torch.cat([self._sample, aug]), ["clean"] * n + ["augmented"] * n, ncols=n)}


@hookimpl
def register_hyperparams():
    return [AugmentNet]
