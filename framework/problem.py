"""A bilevel problem assembled from a dataset, a model and a hyperparameter family.

w and λ are flat leaf tensors (``hgbench.flat``); ``train_loss(w, λ, batch)`` and
``val_loss(w, λ, batch)`` are what every hypergradient method differentiates. The problem never
looks inside the family: the family alone decides where λ enters the losses.
"""

from __future__ import annotations

from collections.abc import Iterator
import dataclasses
import functools
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from hgbench.base import Batch, Bilevel, DataSplits, Dataset, GaussNewtonParts, HyperparamFamily, Model, ProblemContext, Split
from hgbench.errors import HgbenchError, SkipRun
from hgbench.flat import FlatSpec
from hgbench.ift import GaussNewtonProduct, count_gradient

__all__ = ["Problem", "ProblemContext", "Sampler"]


def _to(split: Split, task: str, device, dtype) -> Split:
    """Move a split to the device; float inputs take the run's dtype, integer inputs (tokens) stay."""
    y = split.y.to(device=device, dtype=torch.long if task == "classification" else dtype)
    x = split.x.to(device=device, dtype=dtype if split.x.is_floating_point() else torch.long)
    return Split(x, y)


class Problem:
    def __init__(self, dataset: Dataset, model: Model, family: HyperparamFamily, *, device="cpu", dtype=torch.float32, seed: int = 0):
        self.dataset, self.model, self.family = dataset, model, family
        self.inner_optimizer: Any = None  # the run's inner update rule (set by the Experiment): for plugins' skip()
        self.device, self.dtype = torch.device(device), dtype
        try:
            data = dataset.load()
        except HgbenchError:
            raise
        except Exception as exc:  # the console names the plugin and the error's type (errors.describe)
            exc.hgbench_plugin = f"dataset {dataset.name!r} load()"  # type: ignore[attr-defined]
            raise
        self.data = DataSplits(
            *(_to(s, data.task, self.device, dtype) for s in (data.train, data.val, data.test)),
            task=data.task,
            num_outputs=data.num_outputs,
            input_shape=data.input_shape,
            meta=data.meta,
            streams=data.streams,
        )
        with torch.random.fork_rng(devices=[]):  # the init is seeded; the caller's RNG is left as it was
            torch.manual_seed(seed)
            self.module = model.build(self.data.input_shape, self.data.num_outputs).to(self.device, dtype)
        params = {n: p.detach() for n, p in self.module.named_parameters()}
        self.w_spec = FlatSpec.of(params)
        self.w0 = self.w_spec.flatten(params).clone()
        for p in self.module.parameters():  # the flat vector is the only copy that matters
            p.requires_grad_(False)
        self.ctx = ProblemContext(self.forward, self.data_loss, self.module, self.w_spec, self.data, self.device, dtype)
        reason = family.skip(self)  # before λ exists: a family may be unable to even build it
        if reason:
            raise SkipRun(f"hyperparam {family.name!r}: {reason}")
        lam = {k: v.to(self.device, dtype) for k, v in family.init_hyperparams(self.ctx).items()}
        self.lam_spec = FlatSpec.of(lam)
        self.lam0 = self.lam_spec.flatten(lam).clone()

    # --- the functional model and the two losses ---------------------------------------------
    @property
    def carries_state(self) -> bool:
        """Whether the model carries a recurrent state between batches (``Model.carries_state``)."""
        return self.model.carries_state

    def forward(self, w: Tensor, x: Tensor, state: Any = None, **kwargs: Any) -> Tensor:
        """The model's outputs at flat weights ``w``; a model that carries a state starts from
        ``state`` (None: its zero state)."""
        if state is not None:
            kwargs["state"] = state
        return functional_call(self.module, self.w_spec.unflatten(w), (x,), kwargs)

    def forward_with_state(self, w: Tensor, x: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """(outputs, the state the model ends in) of a model that carries a state."""
        return functional_call(self.module, self.w_spec.unflatten(w), (x,), {"state": state, "return_state": True})

    @torch.no_grad()
    def next_state(self, w: Tensor, batch: Batch) -> Any:
        """The state a model that carries one ends ``batch`` in, at weights ``w``: its plain
        forward (no hyperparameter family, no gradients) from ``batch.state``."""
        return self.forward_with_state(w.detach(), batch.x, batch.state)[1]

    def context(self, batch: Batch) -> ProblemContext:
        """The context a family's loss gets for ``batch``: its ``forward`` starts the model from
        ``batch.state`` when the batch carries one."""
        if batch.state is None:
            return self.ctx
        return dataclasses.replace(self.ctx, forward=functools.partial(self.forward, state=batch.state))

    def data_loss(self, out: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
        """Cross-entropy (classification; outputs (..., C) for targets (...), e.g. tokens) or
        mean squared error (regression). ``reduction="none"`` gives one value per target."""
        if self.data.task == "classification":
            loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction=reduction)
            return loss.reshape(y.shape) if reduction == "none" else loss
        return F.mse_loss(out.reshape(y.shape), y, reduction=reduction)

    def train_loss(self, w: Tensor, lam: Tensor, batch: Batch) -> Tensor:
        return self.family.training_loss(w, self.lam_spec.unflatten(lam), batch, self.context(batch))

    def val_loss(self, w: Tensor, lam: Tensor, batch: Batch) -> Tensor:
        return self.family.validation_loss(w, self.lam_spec.unflatten(lam), batch, self.context(batch))

    @property
    def supports_ggn(self) -> bool:
        """Whether the family's training loss is a task loss plus a penalty (``penalty()``)."""
        return type(self.family).penalty is not HyperparamFamily.penalty

    def ggn_product(self, batch: Batch) -> Callable[[Tensor, Tensor], GaussNewtonProduct]:
        """(w, λ) ↦ the Gauss–Newton product of L_T on ``batch``: the model's outputs, the task
        loss on them, and the family's penalty."""
        def make(w: Tensor, lam: Tensor) -> GaussNewtonProduct:
            penalty = lambda w_: self.family.penalty(w_, self.lam_spec.unflatten(lam), self.context(batch))  # noqa: E731
            return GaussNewtonProduct(lambda w_: self.forward(w_, batch.x, batch.state), lambda z: self.data_loss(z, batch.y), penalty, w)
        return make

    def gauss_newton_parts(self, batch: Batch) -> GaussNewtonParts:
        """The module, ``batch`` and penalty behind ``ggn_product`` (for K-FAC, ``hgbench.kfac``)."""
        return GaussNewtonParts(self.module, self.w_spec, batch.x, batch.y, self.data.task,
                                lambda w_, lam: self.family.penalty(w_, self.lam_spec.unflatten(lam), self.context(batch)))

    def bilevel(self, train_batch: Batch, val_batch: Batch, w: Tensor, lam: Tensor, optimizer=None, state=None) -> Bilevel:
        def train_loss(w_: Tensor, l_: Tensor) -> Tensor:
            count_gradient()  # the runner's grad_calls (hgbench.ift.count_gradients)
            return self.train_loss(w_, l_, train_batch)

        def val_loss(w_: Tensor, l_: Tensor) -> Tensor:
            count_gradient()
            return self.val_loss(w_, l_, val_batch)

        return Bilevel(
            train_loss=train_loss,
            val_loss=val_loss,
            w=w,
            lam=lam,
            inner_optimizer=optimizer,
            inner_state=state,
            ggn=self.ggn_product(train_batch) if self.supports_ggn else None,
            gauss_newton_parts=self.gauss_newton_parts(train_batch) if self.supports_ggn and train_batch.state is None else None,
            sample_train=self.sample_train,
            on_train_batch=lambda b: self.bilevel(b, val_batch, w, lam, optimizer, state),
        )

    def sample_train(self, n: int) -> Batch:
        """A minibatch of ``n`` training examples drawn without replacement with torch's global
        RNG (the run's own while it works: seeded, checkpointed, replayed by accuracy checks)."""
        size = len(self.data.train.x)
        idx = torch.randperm(size)[: min(n, size)].to(self.device)
        return Batch(self.data.train.x[idx], self.data.train.y[idx], idx)

    # --- sizes and evaluation ----------------------------------------------------------------
    @property
    def num_weights(self) -> int:
        return self.w_spec.numel

    @property
    def num_hyperparams(self) -> int:
        return self.lam_spec.numel

    def full_batch(self, split: str) -> Batch:
        s = getattr(self.data, split)
        return Batch(s.x, s.y, torch.arange(len(s.x), device=self.device))

    def outputs(self, w: Tensor, split: str, batch_size: int = 4096) -> Iterator[tuple[Tensor, Tensor]]:
        """The model's outputs at weights ``w`` over a whole split, in its order: (outputs,
        targets) chunk by chunk, without gradients and with the model in eval mode (train mode
        again once the chunks are exhausted or the iteration is closed). ``batch_size`` counts
        targets per chunk, so a sequence model's logits stay bounded."""
        s = getattr(self.data, split)
        per_example = max(1, s.y[:1].numel())  # targets per example (tokens for sequences)
        step = max(1, batch_size // per_example)
        self.module.eval()
        try:
            for i in range(0, len(s.x), step):
                with torch.no_grad():
                    out = self.forward(w, s.x[i : i + step])
                yield out, s.y[i : i + step]
        finally:
            self.module.train()

    @torch.no_grad()
    def evaluate(self, w: Tensor, split: str, batch_size: int = 4096) -> dict[str, float]:
        """Mean data loss (and accuracy for classification) of weights ``w`` on a whole split,
        per target (per example, or per token for sequences), with the model in eval mode
        (``outputs``)."""
        s = getattr(self.data, split)
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.float64)
        for out, y in self.outputs(w, split, batch_size):
            total += self.data_loss(out, y, reduction="sum").double()
            if self.data.task == "classification":
                correct += (out.argmax(-1) == y).sum()
        n = max(s.y.numel(), 1)
        res = {f"{split}_loss": total.item() / n}
        if self.data.task == "classification":
            res[f"{split}_acc"] = correct.item() / n
        return res


class Sampler:
    """Endless minibatches of one split: reshuffled each epoch; ``batch_size=None`` = full batch."""

    def __init__(self, split: Split, batch_size: int | None, generator: torch.Generator):
        self.split, self.gen = split, generator
        n = len(split.x)
        self.batch_size = n if batch_size is None or batch_size >= n else batch_size
        self._full = Batch(split.x, split.y, torch.arange(n, device=split.x.device))
        self._perm, self._pos = None, n

    def next(self) -> Batch:
        """The next minibatch (independent examples: no recurrent state)."""
        n = len(self.split.x)
        if self.batch_size == n:
            return self._full
        if self._pos + self.batch_size > n:
            self._perm = torch.randperm(n, generator=self.gen).to(self.split.x.device)
            self._pos = 0
        idx = self._perm[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        return Batch(self.split.x[idx], self.split.y[idx], idx)

    def carry_state(self, w: Tensor) -> None:
        """Independent examples carry no state from one batch to the next (``hgbench.streams``'s
        ``StreamSampler`` does)."""

    def state_dict(self) -> dict:
        """Where the sampler is in its epoch (the shared generator is saved by its owner)."""
        return {"perm": None if self._perm is None else self._perm.cpu(), "pos": self._pos}

    def load_state_dict(self, state: dict) -> None:
        perm = state["perm"]
        self._perm = None if perm is None else perm.to(self.split.x.device)
        self._pos = int(state["pos"])
