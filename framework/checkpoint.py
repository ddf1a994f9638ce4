"""What a run's checkpoint holds: everything needed to continue an ``Experiment`` exactly where it
is — weights, λ, both optimisers' states, the samplers (with a truncated-BPTT stream's recurrent
state, whatever its structure), the RNGs, the metrics so far and the method's own state (a warm
start's last solution). Tensors are saved on the CPU, so ``torch.load(..., weights_only=True)``
reads a checkpoint back (the recorder ``plugins/recorder/checkpoint.py`` writes it)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def experiment_state(exp: Any) -> dict[str, Any]:
    """``exp``'s state (a ``hgbench.runner.Experiment``)."""
    cpu = lambda v: v.detach().cpu() if isinstance(v, Tensor) else v  # noqa: E731
    rng = exp.process_state.rng()
    state = {
        "step": exp.step,
        "w": cpu(exp.w),
        "lam": cpu(exp.lam),
        "inner_state": {k: cpu(v) for k, v in exp.inner_state.items()},
        "outer_optimizer": exp.outer_optimizer.state_dict(),
        "generator": exp.generator.get_state(),
        "train_sampler": exp.train_sampler.state_dict(),
        "val_sampler": exp.val_sampler.state_dict(),
        "torch_rng": rng["cpu"],
        "history": dict(exp.history),
        "method_state": {k: cpu(v) for k, v in exp.method.state_dict().items()},
    }
    if "cuda" in rng:
        state["cuda_rng"] = rng["cuda"]
    return state


def restore_experiment(exp: Any, state: dict[str, Any]) -> None:
    """Put ``state`` (from ``experiment_state``) back into ``exp``, on its device."""
    dev = lambda v: v.to(exp.device) if isinstance(v, Tensor) else v  # noqa: E731
    exp.step = int(state["step"])
    exp.w = dev(state["w"]).to(exp.problem.dtype)
    with torch.no_grad():
        exp.lam.copy_(dev(state["lam"]))
    exp.inner_state = {k: dev(v) for k, v in state["inner_state"].items()}
    exp.outer_optimizer.load_state_dict(state["outer_optimizer"])
    exp.generator.set_state(state["generator"])
    exp.train_sampler.load_state_dict(state["train_sampler"])
    exp.val_sampler.load_state_dict(state["val_sampler"])
    exp.process_state.set_rng({"cpu": state["torch_rng"], **({"cuda": state["cuda_rng"]} if "cuda_rng" in state else {})})
    exp.history = dict(state["history"])
    exp.method.load_state_dict({k: dev(v) for k, v in state.get("method_state", {}).items()})
