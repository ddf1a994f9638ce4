"""Truncated BPTT: a split laid out as parallel token streams, walked window by window, every
window starting from the recurrent state the previous window of its streams ended in.

Two declarations switch it on, and nothing else is looked at: the dataset's layout
(``DataSplits.streams`` = B: example k·B + b is window k of stream b) and the model's
``Model.carries_state`` (its forward takes the state a batch starts from, ``state=``, and with
``return_state=True`` also returns the state it ends in). Then ``stream_count(problem)`` is B,
and the runner draws its batches from ``StreamSampler``s instead of shuffled minibatches.

The state is an explicit field of the batch, ``Batch.state`` (None = the model's zero state),
owned by the runner: the losses only read it, so it is a constant of L_T(w, λ; batch) and every
hypergradient method sees a plain function of w and λ. Once a window has been used, the runner
asks its sampler to carry it (``StreamSampler.carry_state(w)``): the window's final state is
computed ONCE, by the model's plain forward without gradients, at the weights the window was used
at (an inner step's weights; for the hyper-step's windows the weights after the inner steps) —
the same for every method, whatever weights a method evaluated the model at. The state is
detached, so gradients stop at the window boundary; after the last window the walk starts again
at window 0 from zero states (an epoch).

A state is any nesting of tuples, lists and dicts of tensors (the ``lstm``'s is one (h, c) pair
per layer); checkpoints save and restore it as it is (``map_state``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from omegaconf import DictConfig
from torch import Tensor

from hgbench.base import Batch, Split
from hgbench.errors import ConfigError
from hgbench.problem import Problem, Sampler


def map_state(fn: Callable[[Tensor], Tensor], state: Any) -> Any:
    """``fn`` applied to every tensor of a state (tuples, lists and dicts of tensors, any nesting;
    None stays None); raises TypeError naming anything else."""
    if state is None or isinstance(state, Tensor):
        return None if state is None else fn(state)
    if isinstance(state, (tuple, list)):
        return type(state)(map_state(fn, s) for s in state)
    if isinstance(state, dict):
        return {k: map_state(fn, v) for k, v in state.items()}
    raise TypeError(f"a recurrent state holds tensors in tuples, lists and dicts, not {type(state).__name__}")


def stream_count(problem: Problem) -> int:
    """B when the dataset is laid out as B streams and the model carries its state; else 0."""
    return int(problem.data.streams or 0) if problem.carries_state else 0


def samplers(problem: Problem, cfg: DictConfig, generator: torch.Generator) -> tuple[Sampler | StreamSampler, Sampler | StreamSampler]:
    """The run's train and val samplers: the windows of every stream in order for truncated BPTT
    (``stream_count`` > 0; the config checked for it), else shuffled minibatches drawn with ``generator``."""
    streams = stream_count(problem)
    if not streams:
        return (Sampler(problem.data.train, cfg.train_batch_size, generator), Sampler(problem.data.val, cfg.val_batch_size, generator))
    check_stream_config(cfg, streams)
    return StreamSampler(problem.data.train, streams, problem.next_state), StreamSampler(problem.data.val, streams, problem.next_state)


class StreamSampler:
    """Window k of every stream as one batch (rows [kB, (k+1)B)), k = 0, 1, … in order, each
    starting from the state ``carry_state`` computed for window k − 1 (None at an epoch's
    start). A window must be carried before the next is drawn: a forgotten carry would restart
    the streams from a stale state, so it raises instead."""

    def __init__(self, split: Split, streams: int, next_state: Callable[[Tensor, Batch], Any]):
        self.split, self.streams, self.next_state = split, streams, next_state
        self.windows = len(split.x) // streams
        self._k, self._state = 0, None  # the next window, and the state it starts from
        self._drawn: Batch | None = None  # the window drawn and not carried yet

    def next(self) -> Batch:
        if self._drawn is not None:
            raise RuntimeError(f"window {self._k - 1} was drawn and not carried: call carry_state(w) before drawing the next")
        if self._k >= self.windows:  # epoch boundary: the streams start over, from zero states
            self._k, self._state = 0, None
        lo, hi = self._k * self.streams, (self._k + 1) * self.streams
        self._drawn = Batch(self.split.x[lo:hi], self.split.y[lo:hi], torch.arange(lo, hi, device=self.split.x.device), self._state)
        self._k += 1
        return self._drawn

    def carry_state(self, w: Tensor) -> None:
        """The window last drawn was used at weights ``w``: the next starts from the state it ends in there."""
        if self._drawn is None:
            raise RuntimeError("carry_state: no window was drawn since the last carry")
        self._state = map_state(Tensor.detach, self.next_state(w, self._drawn))
        self._drawn = None

    def state_dict(self) -> dict:
        return {"k": self._k, "state": map_state(lambda t: t.detach().cpu(), self._state)}

    def load_state_dict(self, state: dict) -> None:
        self._k, self._drawn = int(state["k"]), None
        self._state = map_state(lambda t: t.to(self.split.x.device), state["state"])


def check_stream_config(cfg: DictConfig, streams: int) -> None:
    """In truncated-BPTT mode a batch is one window of every stream."""
    for key in ("train_batch_size", "val_batch_size"):
        if cfg[key] is not None and cfg[key] != streams:
            raise ConfigError(f"{key}={cfg[key]}: the dataset is laid out as {streams} streams for truncated BPTT, "
                              f"so a batch is one window of each stream; set {key}=null (or {streams})")
    if cfg.compile:
        raise ConfigError("compile=true cannot carry the recurrent state between batches (truncated BPTT); set compile=false")


@torch.no_grad()
def evaluate_streams(problem: Problem, w: Tensor, split: str, streams: int) -> dict[str, float]:
    """Mean loss (and accuracy) per token of a split laid out as parallel streams, every window
    starting from the state the previous window of its stream ended in (zeros at the start)."""
    s = getattr(problem.data, split)
    windows = len(s.x) // streams
    total = torch.zeros((), device=problem.device, dtype=torch.float64)
    correct = torch.zeros((), device=problem.device, dtype=torch.float64)
    state = None
    problem.module.eval()
    try:
        for k in range(windows):
            x, y = s.x[k * streams:(k + 1) * streams], s.y[k * streams:(k + 1) * streams]
            out, state = problem.forward_with_state(w, x, state)
            total += problem.data_loss(out, y, reduction="sum").double()
            correct += (out.argmax(-1) == y).sum()
    finally:
        problem.module.train()
    n = max(windows * streams * (s.y[:1].numel()), 1)
    return {f"{split}_loss": total.item() / n, f"{split}_acc": correct.item() / n}
