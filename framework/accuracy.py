"""The accuracy checks a run makes every ``reference.every`` hyper-steps (not timed): how far the
method's hypergradient is from the reference method's at the same point, how far w is from the
optimum the IFT assumes (the inner gradient's norm), and the training Hessian's extreme
eigenvalues (Lanczos Ritz values; a negative smallest one means every IFT method's assumption
H ≻ 0 fails there), and with ``reference.retrain`` the retraining check (``retraining_check``):
what stepping λ along a direction does to L_V once the weights have retrained, the ground truth
an IFT solve is only where the inner problem is at a strict minimum."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from hgbench.base import Batch
from hgbench.errors import ConfigError
from hgbench.ift import HessianVectorProduct
from hgbench.linalg import lanczos_extremes
from hgbench.problem import Problem


def hypergradient_error(hg: Tensor, ref: Tensor) -> dict[str, float]:
    """``hg`` against the reference hypergradient ``ref``: its norm, the cosine between them, the
    relative error ‖hg − ref‖ / ‖ref‖ and the scale-free error √(1 − cos²) = min over c of
    ‖c·hg − ref‖ / ‖ref‖ (the relative error of hg at its best scale: its direction's error alone)
    (NaN where a norm is zero)."""
    g, ref = hg.detach().double(), ref.detach().double()
    ref_norm, g_norm = torch.linalg.vector_norm(ref).item(), torch.linalg.vector_norm(g).item()
    cos = (g @ ref).item() / (g_norm * ref_norm) if g_norm * ref_norm > 0 else float("nan")
    return {
        "hg_ref_norm": ref_norm,
        "hg_cosine": cos,
        "hg_rel_err": torch.linalg.vector_norm(g - ref).item() / ref_norm if ref_norm > 0 else float("nan"),
        "hg_scale_free_err": math.sqrt(max(0.0, 1.0 - cos * cos)) if math.isfinite(cos) else float("nan"),
    }


def curvature_at(problem: Problem, w: Tensor, lam: Tensor, batch: Batch, lanczos_steps: int) -> dict[str, float]:
    """‖∂L_T/∂w‖ at (w, λ) on ``batch`` and, with ``lanczos_steps`` > 0, the extreme eigenvalues
    of the training Hessian there (``hess_eig_max``, ``hess_eig_min``)."""
    w = w.detach().requires_grad_(True)
    (gw,) = torch.autograd.grad(problem.train_loss(w, lam.detach(), batch), w, create_graph=True)
    out = {"inner_grad_norm": torch.linalg.vector_norm(gw.detach()).item()}
    if lanczos_steps:
        hvp = HessianVectorProduct(gw, w)
        out["hess_eig_max"], out["hess_eig_min"] = lanczos_extremes(lambda v: hvp(v).detach(), w.numel(), lanczos_steps, like=w.detach())
    return out


@dataclass(frozen=True)
class RetrainSettings:
    """``reference.retrain``: the horizon T (``steps``), the central difference's step ε on λ
    (``eps``) and the number k of random directions (``directions``)."""

    steps: int
    eps: float
    directions: int

    @classmethod
    def from_config(cls, node: dict[str, Any] | None) -> RetrainSettings | None:
        if node is None:
            return None
        allowed = {"steps", "eps", "directions"}
        unknown = sorted(set(node) - allowed)
        if unknown:
            raise ConfigError(f"reference.retrain.{unknown[0]}: unknown key. Allowed here: {', '.join(sorted(allowed))}")
        missing = sorted(allowed - set(node))
        if missing:
            raise ConfigError(f"reference.retrain.{missing[0]}: missing (reference=retrain sets every key)")
        steps, eps, k = node["steps"], node["eps"], node["directions"]
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ConfigError(f"reference.retrain.steps={steps!r}: must be an integer >= 1")
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
            raise ConfigError(f"reference.retrain.eps={eps!r}: must be a number > 0")
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise ConfigError(f"reference.retrain.directions={k!r}: must be an integer >= 0")
        return cls(steps, float(eps), k)

    @property
    def inner_steps_per_check(self) -> int:
        """2·(2 + k)·T: two retrainings per direction."""
        return 2 * (2 + self.directions) * self.steps


def unit(v: Tensor) -> Tensor | None:
    n = torch.linalg.vector_norm(v)
    return v / n if n > 0 and torch.isfinite(n) else None


def random_directions(k: int, avoid: list[Tensor], generator: torch.Generator) -> list[Tensor]:
    """``k`` random unit vectors orthogonal to every vector in ``avoid`` (Gram–Schmidt on Gaussian
    draws): directions along which neither hypergradient predicts a change of L_V. Fewer where
    λ has too few dimensions left."""
    n = avoid[0].numel()
    basis: list[Tensor] = []
    for v in avoid:
        for b in basis:
            v = v - (b @ v) * b
        u = unit(v)
        if u is not None and torch.linalg.vector_norm(v) > 1e-8:
            basis.append(u)
    out: list[Tensor] = []
    for _ in range(k if n > len(basis) else 0):
        v = torch.randn(n, generator=generator, dtype=torch.float64)
        for b in basis + out:
            v = v - (b @ v) * b
            v = v - (b @ v) * b  # twice is enough (Kahan)
        u = unit(v)
        if u is None:
            break
        out.append(u)
        if len(basis) + len(out) >= n:
            break
    return out


class ReplayBatches:
    """The T minibatches of a retraining, drawn once (``sampler.next()``) and replayed as often as
    asked: only the indices are kept (a full batch is one shared object)."""

    def __init__(self, sampler: Any, steps: int):
        self.split = sampler.split
        drawn = [sampler.next() for _ in range(steps)]
        full = sampler.batch_size == len(sampler.split.x)
        self.full = drawn[0] if full else None
        self.idx = [b.idx for b in drawn] if not full else []
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        if self.full is not None:
            for _ in range(self.steps):
                yield self.full
        else:
            for idx in self.idx:
                yield Batch(self.split.x[idx], self.split.y[idx], idx)


def retrained_val_loss(problem: Problem, w: Tensor, lam: Tensor, inner_optimizer: Any, inner_state: Any, batches: Any,
                       val_batch: Batch) -> float:
    """L_V(w_T(λ), λ) on ``val_batch``: w_T = ``len(batches)`` inner optimiser steps from ``w``
    (and its optimiser state) on those batches, with λ fixed."""
    lam = lam.detach()
    for b in batches:
        w = w.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(problem.train_loss(w, lam, b), w)
        with torch.no_grad():
            w, inner_state = inner_optimizer.step(w.detach(), g, inner_state)
    with torch.no_grad():
        return problem.val_loss(w, lam, val_batch).double().item()


def retraining_check(problem: Problem, w: Tensor, lam: Tensor, inner_optimizer: Any, inner_state: Any, hg: Tensor, ref: Tensor | None,
                     settings: RetrainSettings, batches: Any, val_batch: Batch, generator: torch.Generator,
                     same_noise: Callable[[], None]) -> dict[str, float]:
    """The realised directional derivative of L_V after retraining, by central differences,

        D(d) = [L_V(w_T(λ + εd)) − L_V(w_T(λ − εd))] / (2ε),

    w_T(·) = T inner steps from the current ``w`` on ``batches`` (the same T batches, and the same
    noise: ``same_noise()`` resets torch's RNG before each retraining, on both sides of every
    difference and for every direction), along d = the method's hypergradient ``hg`` normalised,
    the reference's ``ref`` normalised, and k random unit directions orthogonal to both. Metrics:

    - ``retrain_descent_method`` / ``retrain_descent_reference``: D along each (a positive value:
      a step against it lowers L_V after retraining, by about ε·D per ε);
    - ``retrain_descent_ratio``: the first over the second;
    - ``retrain_predicted_vs_realised``: ⟨hg, d⟩ / D(d) along the method's direction (= ‖hg‖/D;
      1 where the method predicts the retrained response; ``…_reference`` the same for ``ref``);
    - ``retrain_noise_floor``: RMS of D over the random directions, ``retrain_noise_max`` their
      max |D| (≈ 0 with deterministic retraining and an exact reference; otherwise what a direction
      with no predicted effect realises, to judge the two descents by);
    - ``retrain_val_loss``: L_V after retraining at λ, up to O(ε²) (the mean of the last pair:
      the reference's, else the method's);
    - ``retrain_resolution``: machine epsilon of the run's dtype · L_V / (2ε), the rounding step
      of D: values of |D| near it are rounding, not signal (use dtype=float64 or a larger ε).

    ``batches`` is iterated once per retraining: 2·(2 + k) times T inner steps in all.
    """
    lam = lam.detach()

    def val_at(lam_: Tensor) -> float:
        same_noise()
        return retrained_val_loss(problem, w, lam_, inner_optimizer, inner_state, batches, val_batch)

    eps = settings.eps
    pair: list[float] = []

    def realised(d: Tensor) -> float:
        d = d.to(lam)
        plus, minus = val_at(lam + eps * d), val_at(lam - eps * d)
        pair[:] = [plus, minus]
        return (plus - minus) / (2 * eps)

    g = hg.detach().double().reshape(-1)
    r = None if ref is None else ref.detach().double().reshape(-1)
    out: dict[str, float] = {}
    nan = float("nan")
    d_m = unit(g)
    out["retrain_descent_method"] = dm = realised(d_m) if d_m is not None else nan
    out["retrain_predicted_vs_realised"] = (g @ d_m).item() / dm if d_m is not None and dm != 0 else nan
    if r is not None:
        d_r = unit(r)
        out["retrain_descent_reference"] = dr = realised(d_r) if d_r is not None else nan
        out["retrain_descent_ratio"] = dm / dr if dr != 0 else nan
        out["retrain_predicted_vs_realised_reference"] = (r @ d_r).item() / dr if d_r is not None and dr != 0 else nan
    if pair:
        out["retrain_val_loss"] = 0.5 * (pair[0] + pair[1])
        # the smallest |D| the run's dtype resolves: one rounding step of L_V over 2ε (float32: ~3e-6·L_V at ε = 0.01)
        out["retrain_resolution"] = torch.finfo(problem.dtype).eps * abs(out["retrain_val_loss"]) / (2 * eps)
    dirs = random_directions(settings.directions, [v for v in (g, r) if v is not None], generator)
    if dirs:
        ds = torch.tensor([realised(d) for d in dirs], dtype=torch.float64)
        out["retrain_noise_floor"] = ds.square().mean().sqrt().item()
        out["retrain_noise_max"] = ds.abs().max().item()
    return out


def damping_sensitivity(hypergradient_at: Callable[[float], Tensor], dampings: Sequence[float]) -> list[dict[str, float]]:
    """How much a damped IFT reference moves with its damping δ: ``hypergradient_at(δ)`` (the
    reference solved with (C + δ·I)) at each δ in ``dampings``, against the first (the base, δ = 0
    where the curvature C is positive definite). Per δ: ``damping``, ``norm``, ``norm_ratio``
    ‖g_δ‖ / ‖g_base‖ (the magnitude's change), ``cosine`` to g_base (the direction's),
    ``rel_err`` ‖g_δ − g_base‖ / ‖g_base‖ and ``scale_free_err`` √(1 − cos²). A reference that
    moves at a damping far below the curvature's scale lives in directions held only by
    near-zero eigenvalues: its magnitude there is the damping's, not the problem's."""
    if not dampings:
        return []
    base = hypergradient_at(dampings[0]).detach().double().reshape(-1)
    base_norm = torch.linalg.vector_norm(base).item()
    out = []
    for d in dampings:
        g = base if d == dampings[0] else hypergradient_at(d).detach().double().reshape(-1)
        err = hypergradient_error(g, base)
        norm = torch.linalg.vector_norm(g).item()
        out.append({"damping": float(d), "norm": norm, "norm_ratio": norm / base_norm if base_norm > 0 else float("nan"),
                    "cosine": err["hg_cosine"], "rel_err": err["hg_rel_err"], "scale_free_err": err["hg_scale_free_err"]})
    return out
