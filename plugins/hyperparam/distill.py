"""``distill``: dataset distillation — λ is a small synthetic training set.

    L_T(w, λ) = data_loss(f(w, X_syn), Y_syn) + ½·l2·‖w‖²      (the real training batch is unused)
    L_V(w)    = data loss on real validation data

X_syn holds ``per_class`` learned images per class (their pixels are hyperparameters), started
from real training images (``init: real``), uniform noise (``noise``) or all zeros (``zeros``, as
in the paper). With ``learn_labels: true`` each synthetic example also learns soft-label logits
(Y_syn = softmax(λ_labels)).

**Evaluated the paper's way** (``fresh_seeds > 0``): the run's own test accuracy belongs to weights
trained *alongside* the changing images, which overstates what the images teach. So on every
evaluation step (the last one included) ``fresh_seeds`` models of the run's architecture are
trained FROM SCRATCH on the learned images only — new initialisations (every submodule's
``reset_parameters()`` under seeds 1,000,000 + i), a fixed recipe: ``fresh_steps`` full-batch
plain-SGD steps of learning rate ``fresh_lr`` on L_T with the images frozen (same loss, same
``l2``) — and judged on the real test split. The same recipe is applied to two baselines of the
same size: ``per_class`` random real training images per class (a new draw per seed) and the
per-class mean training image(s). Logged (the runner prefixes ``hp/``):

    distill/fresh_test_acc, distill/fresh_test_acc_std                 learned images
    distill/random_real_fresh_test_acc, ..._std                        random real images
    distill/class_mean_fresh_test_acc, ..._std                         per-class mean images

(mean and sample std over the ``fresh_seeds`` models; the co-trained weights play no part). With
``fresh_val: true`` the same fresh models are also scored on the real VALIDATION split
(``distill/fresh_val_acc``, ``_std``): a number to choose the hyper-optimiser's settings on
without looking at the test split. The
final images are saved as the MLflow artifact ``distilled.png``: one shared colour scale for all
images (a colour bar gives it), square pixels.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from hgbench import HyperparamFamily, hookimpl
from hgbench.plugins.hyperparam._common import l2

FRESH_SEED0 = 1_000_000  # fresh models' init seeds: FRESH_SEED0 + i (far from any run's own seed)


@dataclass
class Distill(HyperparamFamily):
    name = "distill"
    per_class: int = 1
    init: Literal["real", "noise", "zeros"] = "real"
    learn_labels: bool = False
    l2: float = 1e-4
    seed: int = 0
    fresh_seeds: int = 3  # models trained from scratch on the images at each evaluation (0: off)
    fresh_steps: int = 300  # full-batch SGD steps of that recipe
    fresh_lr: float = 0.1  # its learning rate
    fresh_val: bool = False  # also score the fresh models on the validation split (for choosing settings)

    def __post_init__(self):
        if self.per_class < 1:
            raise ValueError(f"per_class must be >= 1, got {self.per_class}")
        if self.fresh_seeds < 0 or self.fresh_steps < 0:
            raise ValueError(f"fresh_seeds and fresh_steps must be >= 0, got {self.fresh_seeds}, {self.fresh_steps}")
        if self.fresh_lr <= 0:
            raise ValueError(f"fresh_lr must be > 0, got {self.fresh_lr}")
        self._ctx = None
        self._baselines: dict[str, float] | None = None

    def skip(self, problem):
        if problem.data.task != "classification":
            return "distillation needs a classification dataset (one synthetic set per class)"
        if not problem.data.train.x.is_floating_point():
            return "distillation learns continuous inputs; this dataset's inputs are tokens"
        return None

    def init_hyperparams(self, ctx):
        x, y = ctx.data.train.x, ctx.data.train.y
        classes = ctx.data.num_outputs
        g = torch.Generator().manual_seed(self.seed)
        shape = (classes * self.per_class, *ctx.data.input_shape)
        images = torch.zeros(shape, dtype=torch.float64) if self.init == "zeros" else torch.rand(shape, generator=g, dtype=torch.float64)
        if self.init == "real" and x.is_floating_point():
            for c in range(classes):
                idx = (y == c).nonzero().flatten()[: self.per_class].cpu()
                images[c * self.per_class : c * self.per_class + len(idx)] = x[idx].cpu().double()
        self._labels = torch.arange(classes, device=ctx.device).repeat_interleave(self.per_class)
        self._ctx, self._baselines = ctx, None
        lam = {"images": images}
        if self.learn_labels:
            lam["label_logits"] = 5.0 * F.one_hot(self._labels.cpu(), classes).double()
        return lam

    def synthetic_loss(self, w, images, label_logits, ctx):
        out = ctx.forward(w, images)
        if label_logits is not None:
            loss = -(F.softmax(label_logits, -1) * F.log_softmax(out, -1)).sum(-1).mean()
        else:
            loss = ctx.data_loss(out, self._labels)
        return loss + l2(w, self.l2)

    def training_loss(self, w, lam, batch, ctx):
        return self.synthetic_loss(w, lam["images"], lam.get("label_logits"), ctx)

    # --- the paper's evaluation: fresh models trained on the images only -----------------------
    def fresh_init(self, ctx, seed: int) -> torch.Tensor:
        """A new initialisation of the run's architecture (flat, like w): a copy of the model with
        every submodule's ``reset_parameters()`` run under ``seed``; the caller's RNG untouched."""
        module = copy.deepcopy(ctx.module)
        devices = [ctx.device] if ctx.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            reset = [m.reset_parameters() for m in module.modules() if hasattr(m, "reset_parameters")]
        if not reset:
            raise ValueError(f"model {type(ctx.module).__name__} has no reset_parameters(): cannot draw fresh initialisations")
        return ctx.w_spec.flatten({n: p.detach() for n, p in module.named_parameters()}).to(ctx.device, ctx.dtype)

    def fresh_weights(self, images, label_logits, ctx, seed: int) -> torch.Tensor:
        """The weights of a model trained from a fresh init (``seed``) on ``images`` alone with the
        fixed recipe (``fresh_steps`` full-batch SGD steps of ``fresh_lr`` on L_T)."""
        images = images.detach().to(ctx.device, ctx.dtype)
        label_logits = None if label_logits is None else label_logits.detach().to(ctx.device, ctx.dtype)
        w = self.fresh_init(ctx, seed)
        with torch.enable_grad():
            for _ in range(self.fresh_steps):
                w = w.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(self.synthetic_loss(w, images, label_logits, ctx), w)
                w = w.detach() - self.fresh_lr * g
        return w

    @staticmethod
    def split_accuracy(w, split, ctx) -> float:
        """Accuracy of the flat weights ``w`` on one split (chunks of 4,096)."""
        with torch.no_grad():
            correct = 0
            for i in range(0, len(split.x), 4096):
                correct += (ctx.forward(w, split.x[i : i + 4096]).argmax(-1) == split.y[i : i + 4096]).sum().item()
        return correct / max(len(split.x), 1)

    def fresh_test_acc(self, images, label_logits, ctx, seed: int) -> float:
        """Test accuracy of a model trained from a fresh init (``seed``) on ``images`` alone with
        the fixed recipe (``fresh_steps`` full-batch SGD steps of ``fresh_lr`` on L_T)."""
        test = ctx.data.test if len(ctx.data.test.x) else ctx.data.val
        return self.split_accuracy(self.fresh_weights(images, label_logits, ctx, seed), test, ctx)

    def baseline_images(self, kind: str, seed: int) -> torch.Tensor:
        """``per_class`` random real training images per class (drawn with ``seed``), or the
        per-class mean training image (repeated ``per_class`` times), laid out like λ's images."""
        ctx = self._ctx
        x, y = ctx.data.train.x, ctx.data.train.y
        g = torch.Generator().manual_seed(seed)
        out = []
        for c in range(ctx.data.num_outputs):
            xc = x[(y == c).nonzero().flatten()]
            if kind == "class_mean":
                out.append(xc.mean(0, keepdim=True).expand(self.per_class, *xc.shape[1:]))
            else:
                idx = torch.randperm(len(xc), generator=g)[: self.per_class].to(xc.device)
                out.append(xc[idx])
        return torch.cat(out)

    def fresh_metrics(self, lam) -> dict[str, float]:
        """The fresh-model evaluation of the learned images and the two baselines (module docstring)."""
        ctx = self._ctx
        if ctx is None or self.fresh_seeds == 0:
            return {}
        seeds = [FRESH_SEED0 + i for i in range(self.fresh_seeds)]

        def stats(name: str, accs: list[float]) -> dict[str, float]:
            mean = sum(accs) / len(accs)
            std = math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) if len(accs) > 1 else 0.0
            return {f"distill/{name}": mean, f"distill/{name}_std": std}

        weights = [self.fresh_weights(lam["images"], lam.get("label_logits"), ctx, s) for s in seeds]
        test = ctx.data.test if len(ctx.data.test.x) else ctx.data.val
        out = stats("fresh_test_acc", [self.split_accuracy(w, test, ctx) for w in weights])
        if self.fresh_val:
            out.update(stats("fresh_val_acc", [self.split_accuracy(w, ctx.data.val, ctx) for w in weights]))
        if self._baselines is None:  # they do not change during the run: computed once
            self._baselines = {}
            for kind in ("random_real", "class_mean"):
                accs = [self.fresh_test_acc(self.baseline_images(kind, self.seed + s), None, ctx, s) for s in seeds]
                self._baselines.update(stats(f"{kind}_fresh_test_acc", accs))
        return {**out, **self._baselines}

    def metrics(self, lam):
        return self.fresh_metrics(lam)

    def figures(self, lam):
        titles = [str(int(c)) for c in self._labels.cpu()]
        if self.learn_labels:
            titles = [f"{t}: {p:.2f}" for t, p in zip(titles, F.softmax(lam["label_logits"], -1).max(-1).values.tolist(), strict=True)]
        return {"distilled.png": shared_scale_grid(lam["images"], titles, ncols=self.per_class if self.per_class > 1 else None)}


def shared_scale_grid(images: torch.Tensor, titles: list[str], ncols: int | None = None):
    """The images on ONE colour scale (shared vmin/vmax, symmetric about 0 when they take both
    signs, with a colour bar) and square pixels: what was learned, not each image stretched to its
    own range. Flat vectors of a square length are shown as squares; (N, 3, H, W) as greyscale
    channel means. A ``Figure`` of its own, not pyplot's: the caller's backend is never switched."""
    from matplotlib.figure import Figure

    x = images.detach().double().cpu()
    if x.dim() == 2:
        side = math.isqrt(x.shape[1])
        x = x.reshape(-1, side, side) if side * side == x.shape[1] else x.reshape(-1, 1, x.shape[1])
    elif x.dim() == 4:
        x = x.mean(1)
    lo, hi = x.min().item(), x.max().item()
    cmap = "gray"
    if lo < 0 < hi:  # signed pixels: diverging map centred on 0
        lo, hi, cmap = -max(-lo, hi), max(-lo, hi), "RdBu_r"
    if hi <= lo:
        hi = lo + 1.0
    n = len(x)
    ncols = ncols or min(n, 10)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(1.3 * ncols + 0.8, 1.45 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    im = None
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            im = ax.imshow(x[i].numpy(), cmap=cmap, vmin=lo, vmax=hi, aspect="equal", interpolation="nearest")
            ax.set_title(titles[i], fontsize=8)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="pixel (shared scale)")
    return fig


@hookimpl
def register_hyperparams():
    return [Distill]
