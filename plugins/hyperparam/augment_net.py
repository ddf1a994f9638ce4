"""``augment_net``: a learned data-augmentation network; λ = its weights.

    x̃ = A(x, z; λ) = x + r,  r = U(x, z; λ)  (``residual=linear``)  or  x + tanh(r)  (``residual=tanh``)
    L_T(w, λ) = data_loss(f(w, x̃), y) + ½·l2·‖w‖²        (the model sees only augmented training data)
    L_V(w)    = data loss on clean validation data

U is a small U-Net whose last layer is zero-initialised, so x̃ = x at the start (the augmenter
begins as the identity — no augmentation — and λ fixed there trains on clean images):

- ``arch=tiny`` (default): conv → (avg-pool → conv) → nearest upsample ⊕ skip → conv → 3×3 conv
  out, tanh activations; ``width`` = w channels (3,129 weights for w = 8 on 1-channel input with
  one noise channel).
- ``arch=unet``: the paper's augmenter (Lorraine et al. 2020, Sec. 5.3; the authors'
  ``models/unet.py`` with ``depth=2, wf=3, padding=True, up_mode='upconv'``): two 3×3 conv + ReLU
  with w channels, 2×2 max-pool, two 3×3 conv + ReLU with 2w, a 2×2 stride-2 transposed conv back
  to w ⊕ the skip, two 3×3 conv + ReLU with w, a 1×1 conv to the C image channels. With w = 8
  and one noise channel: 6,659 weights on 3-channel (CIFAR) input — the paper's count — and
  6,497 on 1-channel (MNIST) input. Odd heights/widths are handled (the transposed conv is sized
  to the skip); the authors' zero-initialise nothing (their augmenter starts random), ours starts
  as the identity.

z is ``noise_channels`` extra input channels, fresh at each call (``fixed_noise`` makes them the
same at every call, for checks), so A can learn stochastic augmentations: ``noise=uniform`` draws
U(0, 1) per pixel; ``noise=normal_per_image`` one N(0, 1) value per image and channel, the same at
every pixel (what the authors' code feeds its U-Net). The paper's augmenter is
``arch=unet residual=tanh noise=normal_per_image`` (``experiment=paper_augment_mnist`` /
``paper_augment_cifar10``). Needs image inputs (C, H, W), e.g. ``dataset.image=true``.
Hyperparameter count = the augmentation net's weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from hgbench import ConfigError, HyperparamFamily, hookimpl
from hgbench.plugins.hyperparam._common import image_grid, l2, uniform_noise


class TinyUNet(nn.Module):
    """conv → (pool → conv) → upsample ⊕ skip → conv → conv; returns the residual r."""

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
        return self.out(h3)


class PaperUNet(nn.Module):
    """The paper's augmenter: a depth-2 U-Net (the authors' ``UNet(depth=2, wf=3, padding=True,
    up_mode='upconv')`` with ``width`` = 2**wf), its 1×1 output layer zero-initialised; returns
    the residual r (the family adds it to x, through tanh or not)."""

    def __init__(self, channels: int, noise_channels: int, width: int):
        super().__init__()
        self.down1 = nn.Sequential(nn.Conv2d(channels + noise_channels, width, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.down2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU())
        self.up = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.up_block = nn.Sequential(nn.Conv2d(2 * width, width, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.last = nn.Conv2d(width, channels, 1)
        nn.init.zeros_(self.last.weight)
        nn.init.zeros_(self.last.bias)

    def forward(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        h0 = x if noise is None else torch.cat([x, noise], 1)
        h1 = self.down1(h0)
        h2 = self.down2(F.max_pool2d(h1, 2))
        up = self.up(h2, output_size=h1.shape[-2:])  # odd sizes: the transposed conv grows to the skip's size
        return self.last(self.up_block(torch.cat([up, h1], 1)))


def normal_per_image(shape, like: Tensor, fixed: bool, seed: int = 0) -> Tensor:
    """One N(0, 1) value per image and channel, broadcast over height and width (``shape`` =
    (N, C, H, W)); ``fixed`` draws the same values at every call."""
    gen = torch.Generator(device=like.device).manual_seed(seed) if fixed else None
    z = torch.randn((*shape[:2], 1, 1), generator=gen, device=like.device, dtype=like.dtype)
    return z.expand(*shape)


@dataclass
class AugmentNet(HyperparamFamily):
    name = "augment_net"
    width: int = 8
    noise_channels: int = 1
    fixed_noise: bool = False
    l2: float = 1e-4
    seed: int = 0
    arch: Literal["tiny", "unet"] = "tiny"  # unet: the paper's depth-2 U-Net (6,659 weights on CIFAR with width=8)
    residual: Literal["linear", "tanh"] = "linear"  # x̃ = x + r, or x + tanh(r) (the paper's)
    noise: Literal["uniform", "normal_per_image"] = "uniform"  # per-pixel U(0,1), or one N(0,1) per image (the paper's)

    def __post_init__(self):
        if self.width < 1 or self.noise_channels < 0:
            raise ValueError(f"width must be >= 1 and noise_channels >= 0, got width={self.width}, "
                             f"noise_channels={self.noise_channels}")

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
            net = TinyUNet if self.arch == "tiny" else PaperUNet
            self._net = net(shape[0], self.noise_channels, self.width).to(ctx.device, ctx.dtype)
        for p in self._net.parameters():
            p.requires_grad_(False)
        self._sample = ctx.data.train.x[:8]
        return {k: v.detach().cpu() for k, v in self._net.named_parameters()}

    def augment(self, lam, x):
        noise = None
        if self.noise_channels:
            draw = uniform_noise if self.noise == "uniform" else normal_per_image
            noise = draw((x.shape[0], self.noise_channels, *x.shape[2:]), x, self.fixed_noise, self.seed)
        r = functional_call(self._net, lam, (x, noise))
        return x + (r if self.residual == "linear" else torch.tanh(r))

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
