"""The peers — other implicit-differentiation libraries — each used the way its documentation
shows, on an hgbench experiment's problem (its trained weights, λ and batches), as a function of
no arguments returning the flat hypergradient (built outside the timed call). Both ``peers``
studies time them: at equal iterations (``peers``) and to equal accuracy (``peers_accuracy``).

- **TorchOpt 0.7.3** (functional API): ``torchopt.diff.implicit.custom_root`` with the optimality
  condition ``torch.func.grad(L_T, argnums=0)`` and a solver function that returns the
  (already trained) weights; then ``torch.autograd.grad(L_V(w*), λ)``. Linear solves:
  ``solve_inv(ns=True, maxiter=i, alpha=α)`` (Neumann), ``solve_cg(maxiter=i, atol=0, rtol=0)``
  and ``solve_normal_cg(maxiter=i, atol=0, rtol=0)`` (CG on the normal equations HᵀH x = Hᵀb: a
  different algorithm, two HVPs per iteration, so its answer is not the same at equal i).
- **Betty (betty-ml 0.1.1)**: an ``ImplicitProblem`` for the weights (``Config(type="neumann"|"cg")``)
  and one for λ, wired by ``Engine(dependencies={"l2u": ..., "u2l": ...})``; timed: the upper
  problem's ``backward`` (its hypergradient: ``betty.hypergradient.get_grads``).
- **hypergrad 0.0.1** (PyPI ``hypergrad``, Hataya & Yamada): ``hypergrad.approx_hypergrad.
  conjugate_gradient(inner_obj, outer_obj, (w,), (λ,), num_iters=i, lr=1)`` — cold, on the
  Hessian (forward-over-reverse products), a fixed number of iterations; no warm start, no
  preconditioner, no tolerance (its ``nystrom`` is a one-shot rank-k solve with damping ρ). Its
  loop builds the next direction from the previous residual (``_ps = foreach(rs, ps, …)``, p ←
  r_old + βp, as Betty's ``cg``): the same first step as CG, not conjugate gradient after it.
- **hypertorch** (github.com/prolearner/hypertorch): not on PyPI (the PyPI "hypertorch" is an
  unrelated hypergraph-learning library) and GitHub is not reachable from this machine or CI,
  so it is not measured.
"""

from __future__ import annotations

import copy
import importlib.metadata
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from hgbench.base import Batch


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def torchopt_adapter(exp, tb, vb, solve_name: str, i: int, alpha: float | None, rtol: float | None = 0.0,
                     init=None, M=None, keep: dict | None = None, curvature: str = "hessian"):
    """``alpha=None``: TorchOpt's default Neumann step (1); ``rtol=None``: its default CG
    tolerance (1e-5, with atol=0); the equal-iteration table uses rtol=0 (all i iterations).
    ``init``, ``M`` (``cg`` only): TorchOpt's own ``solve_cg(init=…, M=…)`` — a warm start and a
    preconditioner v ↦ P⁻¹v, TorchOpt given what hgbench's ``cg`` has. ``keep``: a dict that
    receives the linear solve's solution as ``keep["x"]`` after each call (through
    ``custom_root(solve=…)``, a user solve wrapping TorchOpt's: the next hyper-step's ``init``).
    ``curvature="ggn"``: the optimality condition of the network linearised at w*
    (z(w) ≈ z* + J(w − w*), the penalty kept), whose Jacobian is the Gauss–Newton matrix plus the
    penalty's Hessian and whose mixed term is the penalty's — the system hgbench's
    ``curvature: ggn`` solves, posed through TorchOpt's public API."""
    import torchopt
    from torchopt.diff.implicit import custom_root

    p = exp.problem
    w_star = exp.w.detach().clone()
    lam0 = exp.lam.detach().clone()

    def objective(w, lam, x, y):
        return p.train_loss(w, lam, Batch(x, y))

    if curvature == "ggn":
        parts = p.gauss_newton_parts(tb)
        z_star = p.forward(w_star, tb.x).detach()

        def objective(w, lam, x, y):  # noqa: F811 - the linearised network's training loss
            _, dz = torch.func.jvp(lambda w_: p.forward(w_, x), (w_star,), (w - w_star,))
            return p.data_loss(z_star + dz, y) + parts.penalty(w, lam)
    elif curvature != "hessian":
        raise ValueError(f"curvature must be 'hessian' or 'ggn', got {curvature!r}")

    tol = {} if rtol is None else {"atol": 0.0, "rtol": rtol}
    if solve_name == "neumann":
        solve = torchopt.linear_solve.solve_inv(ns=True, maxiter=i, **({} if alpha is None else {"alpha": alpha}))
    elif solve_name == "cg":
        extra = {k: v for k, v in (("init", init), ("M", M)) if v is not None}
        solve = torchopt.linear_solve.solve_cg(maxiter=i, **tol, **extra)
    else:
        solve = torchopt.linear_solve.solve_normal_cg(maxiter=i, **tol)
    if keep is not None:
        base = solve

        def solve(matvec, b, **kw):  # noqa: F811 - custom_root(solve=…): TorchOpt's solve, its answer kept
            x = base(matvec, b, **kw)
            keep["x"] = x
            return x

    @custom_root(torch.func.grad(objective, argnums=0), argnums=1, solve=solve)
    def inner_solution(w_init, lam, x, y):
        return w_star  # the inner problem is already solved (the weights after training)

    def fn():
        lam = lam0.clone().requires_grad_(True)
        w = inner_solution(w_star, lam, tb.x, tb.y)
        return torch.autograd.grad(p.val_loss(w, lam, vb), lam)[0]

    return fn


def betty_adapter(exp, tb, vb, solve_name: str, i: int, alpha: float | None):
    """``alpha=None``: Betty's default Neumann step (``neumann_alpha`` = 1)."""
    import logging

    from betty.configs import Config, EngineConfig
    from betty.engine import Engine
    from betty.logging.logger_base import get_logger
    from betty.problems import ImplicitProblem

    get_logger().setLevel(logging.WARNING)  # Betty prints its problem graph at INFO on every Engine

    p = exp.problem
    module = copy.deepcopy(p.module)
    pieces = p.w_spec.unflatten(exp.w.detach().clone())
    for name, prm in module.named_parameters():
        prm.data = pieces[name].clone()
        prm.requires_grad_(True)

    class Decays(nn.Module):  # λ: one log-decay per weight, shaped like each parameter
        def __init__(self):
            super().__init__()
            self.log_decay = nn.ParameterList([nn.Parameter(t.clone()) for t in p.w_spec.unflatten(exp.lam.detach()).values()])

    class Inner(ImplicitProblem):
        def training_step(self, batch):
            x, y = batch
            decay = sum((d.exp() * w * w).sum() for d, w in zip(self.outer.module.log_decay, self.module.parameters(), strict=True))
            return F.cross_entropy(self.module(x), y) + 0.5 * decay

    class Outer(ImplicitProblem):
        def training_step(self, batch):
            x, y = batch
            return F.cross_entropy(self.inner(x), y)

    if solve_name == "neumann":
        inner_cfg = Config(type="neumann", neumann_iterations=i, **({} if alpha is None else {"neumann_alpha": alpha}))
    else:
        inner_cfg = Config(type="cg", cg_iterations=i, cg_alpha=1.0)
    dev = str(exp.device)
    decays = Decays().to(exp.device)
    inner = Inner(name="inner", module=module, optimizer=torch.optim.SGD(module.parameters(), lr=alpha or 0.1),
                  train_data_loader=[(tb.x, tb.y)], config=inner_cfg, device=dev)
    outer = Outer(name="outer", module=decays, optimizer=torch.optim.Adam(decays.parameters(), lr=1e-3),
                  train_data_loader=[(vb.x, vb.y)], config=Config(retain_graph=True), device=dev)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Engine(config=EngineConfig(train_iters=1), problems=[outer, inner],
               dependencies={"l2u": {inner: [outer]}, "u2l": {outer: [inner]}})
    inner.cur_batch = (tb.x, tb.y)

    def fn():
        outer.zero_grad()
        loss = outer.training_step_exec((vb.x, vb.y))
        outer.backward(loss=loss, params=outer.trainable_parameters(), paths=outer._paths,
                       create_graph=not outer._first_order, retain_graph=outer._retain_graph,
                       allow_unused=outer._allow_unused)
        return torch.cat([d.grad.reshape(-1) for d in decays.log_decay])

    return fn


def hypergrad_adapter(exp, tb, vb, i: int, lr: float = 1.0):
    """hypergrad's ``conjugate_gradient`` with ``num_iters=i`` (``lr=1``: plain CG): the flat
    hypergradient direct term minus the implicit one, as hgbench's."""
    from hypergrad.approx_hypergrad import conjugate_gradient

    p = exp.problem
    w, lam = (exp.w.detach().clone(),), (exp.lam.detach().clone(),)

    def inner(ws, ls):
        return p.train_loss(ws[0], ls[0], tb)

    def outer(ws, ls):
        return p.val_loss(ws[0], ls[0], vb)

    def fn():
        return conjugate_gradient(inner, outer, w, lam, i, lr)[0]

    return fn

