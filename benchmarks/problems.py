"""The problems the performance sections measure, built through the real code path
(``hgbench.build_experiment``), the hypergradient methods they time, and how far one
hypergradient is from another."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

# the 1M-parameter MLP of the cost section (784-1024-192-10 = 1,002,570 weights) and its quick twin
MLP_1M = "[1024,192]"
MLP_QUICK = "[32]"
CNN_QUICK = ["model.channels=[2,4]", "model.hidden=[16]"]


def experiment(model: str, device: torch.device | str, quick: bool, *, hypergrad: str = "neumann",
               extra: Sequence[str] = ()):
    """An ``Experiment`` (the real code path) for the benchmark's problems: per-weight decay on
    mnist_5k with the 1M-parameter MLP (``mlp``), the LeNet CNN on 1×28×28 images (``cnn``) or
    any MLP (``mlp:[h1,h2]``); batches of 128; ``quick`` shrinks the networks."""
    from hgbench import build_experiment

    ov = [f"device={device}", "train_batch_size=128", "val_batch_size=128", "warmup=false"]
    if model == "mlp":
        groups = {"model": "mlp"}
        ov.append(f"model.hidden={MLP_QUICK if quick else MLP_1M}")
    elif model.startswith("mlp:"):
        groups = {"model": "mlp"}
        ov.append(f"model.hidden={model[4:]}")
    elif model == "cnn":
        groups = {"model": "cnn"}
        ov += ["dataset.image=true", *(CNN_QUICK if quick else [])]
    else:
        raise ValueError(f"unknown benchmark model {model!r}: mlp, mlp:[h1,h2,...] or cnn")
    return build_experiment(overrides=[*ov, *extra], dataset="mnist_5k", hyperparam="weight_decay_per_param",
                            hypergrad=hypergrad, **groups)


def method(name: str, **params: Any):
    """The hypergradient method ``name`` with ``params``, checked and built as a run builds it."""
    from hgbench.config import build_plugin

    return build_plugin("hypergrad", {"name": name, **params})


def fixed_batches(exp):
    """One training and one validation minibatch (fixed, so every timing sees the same work)."""
    return exp.train_sampler.next(), exp.val_sampler.next()


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b|: the largest deviation relative to the reference's scale."""
    a, b = a.detach().double().flatten(), b.detach().double().flatten().to(a.device)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
