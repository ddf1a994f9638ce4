"""Section ``peers``: hgbench against other implicit-differentiation libraries, same problem.

The problem: per-weight decay on the 1M-parameter MLP (784-1024-192-10), batch 128, float32,
after 100 SGD steps; the same training and validation batch, the same weights and λ, the same
number of iterations i and Neumann step α (the inner learning rate), the same torch threads.
Each library is used the way its documentation shows:

- **TorchOpt 0.7.3** (functional API): ``torchopt.diff.implicit.custom_root`` with the optimality
  condition ``torch.func.grad(L_T, argnums=0)`` and a solver function that returns the
  (already trained) weights; then ``torch.autograd.grad(L_V(w*), λ)``. Linear solves:
  ``solve_inv(ns=True, maxiter=i, alpha=α)`` (Neumann), ``solve_cg(maxiter=i, atol=0, rtol=0)``
  and ``solve_normal_cg(maxiter=i, atol=0, rtol=0)`` (CG on the normal equations HᵀH x = Hᵀb: a
  different algorithm, two HVPs per iteration, so its answer is not the same at equal i).
- **Betty (betty-ml 0.1.1)**: an ``ImplicitProblem`` for the weights (``Config(type="neumann"|"cg")``)
  and one for λ, wired by ``Engine(dependencies={"l2u": ..., "u2l": ...})``; timed: the upper
  problem's ``backward`` (its hypergradient: ``betty.hypergradient.get_grads``).
- **hypertorch** (github.com/prolearner/hypertorch): not on PyPI (the PyPI "hypertorch" is an
  unrelated hypergraph-learning library) and GitHub is not reachable from this machine or CI,
  so it is not measured.

Agreement: the max relative difference max|a−b| / max|b| of each hypergradient from hgbench's
with the same algorithm. Target: hgbench ≥ 1.5× faster at equal accuracy.
"""

from __future__ import annotations

import copy
import importlib.metadata
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from framework.base import Batch
from benchmarks import common

ITERATIONS = (5, 20)
QUICK_ITERATIONS = (3,)


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# --- TorchOpt -------------------------------------------------------------------------------------
def torchopt_adapter(exp, tb, vb, solve_name: str, i: int, alpha: float):
    import torchopt
    from torchopt.diff.implicit import custom_root

    p = exp.problem
    w_star = exp.w.detach().clone()
    lam0 = exp.lam.detach().clone()

    def objective(w, lam, x, y):
        return p.train_loss(w, lam, Batch(x, y))

    if solve_name == "neumann":
        solve = torchopt.linear_solve.solve_inv(ns=True, maxiter=i, alpha=alpha)
    elif solve_name == "cg":
        solve = torchopt.linear_solve.solve_cg(maxiter=i, atol=0.0, rtol=0.0)
    else:
        solve = torchopt.linear_solve.solve_normal_cg(maxiter=i, atol=0.0, rtol=0.0)

    @custom_root(torch.func.grad(objective, argnums=0), argnums=1, solve=solve)
    def inner_solution(w_init, lam, x, y):
        return w_star  # the inner problem is already solved (the weights after training)

    def fn():
        lam = lam0.clone().requires_grad_(True)
        w = inner_solution(w_star, lam, tb.x, tb.y)
        return torch.autograd.grad(p.val_loss(w, lam, vb), lam)[0]

    return fn


# --- Betty ----------------------------------------------------------------------------------------
def betty_adapter(exp, tb, vb, solve_name: str, i: int, alpha: float):
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
            decay = sum((d.exp() * w * w).sum() for d, w in zip(self.outer.module.log_decay, self.module.parameters()))
            return F.cross_entropy(self.module(x), y) + 0.5 * decay

    class Outer(ImplicitProblem):
        def training_step(self, batch):
            x, y = batch
            return F.cross_entropy(self.inner(x), y)

    if solve_name == "neumann":
        inner_cfg = Config(type="neumann", neumann_iterations=i, neumann_alpha=alpha)
    else:
        inner_cfg = Config(type="cg", cg_iterations=i, cg_alpha=1.0)
    dev = str(exp.device)
    decays = Decays().to(exp.device)
    inner = Inner(name="inner", module=module, optimizer=torch.optim.SGD(module.parameters(), lr=alpha),
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


# --- the section ----------------------------------------------------------------------------------
def run(out: Path, quick: bool = False, device: str = "auto", reps: int | None = None) -> list[dict]:
    dev = common.resolve_device(device)
    reps = reps or (2 if quick else 5)
    exp = common.experiment("mlp", dev, quick)
    exp.train_inner(20 if quick else 100)
    tb, vb = common.fixed_batches(exp)
    alpha = float(exp.inner_optimizer.lr)
    peers = []
    notes: dict[str, str] = {}
    if version("torchopt"):
        peers += [("torchopt", "neumann", "solve_inv(ns=True)"), ("torchopt", "cg", "solve_cg"), ("torchopt", "cg", "solve_normal_cg")]
    else:
        notes["torchopt"] = "not installed (pip install -e '.[bench]')"
    if version("betty-ml"):
        peers += [("betty", "neumann", "Config(type='neumann')"), ("betty", "cg", "Config(type='cg')")]
    else:
        notes["betty"] = "not installed (pip install -e '.[bench]')"
    rows = []
    for i in (QUICK_ITERATIONS if quick else ITERATIONS):
        ours = {m: (lambda m=m: exp.hypergradient_flat(common.method(m, iterations=i), tb, vb)) for m in ("neumann", "cg")}
        ref = {m: f() for m, f in ours.items()}
        for lib, meth, how in peers:
            try:
                if lib == "torchopt":
                    fn = torchopt_adapter(exp, tb, vb, {"solve_inv(ns=True)": "neumann", "solve_cg": "cg", "solve_normal_cg": "normal_cg"}[how], i, alpha)
                else:
                    fn = betty_adapter(exp, tb, vb, meth, i, alpha)
                with warnings.catch_warnings():  # TorchOpt 0.7.3 calls the deprecated functorch.vjp
                    warnings.simplefilter("ignore", FutureWarning)
                    diff = common.rel_diff(fn(), ref[meth])
                    r = common.compare(fn, ours[meth], reps, dev, common.timing_target(quick))  # ratio = hgbench / peer
            except Exception as exc:  # noqa: BLE001 - reported, the other peers still run
                notes[f"{lib} {how}"] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
                print(f"  peers {lib} {how}: FAILED {type(exc).__name__}: {exc}", flush=True)
                continue
            speedup = 1.0 / r["ratio"]["median"]
            same_algorithm = how != "solve_normal_cg"
            agree = diff <= 1e-3
            rows.append({"section": "peers", "model": "mlp", "num_hyperparams": exp.problem.num_hyperparams, "batch": len(tb.x),
                         "iterations": i, "alpha": alpha if meth == "neumann" else "", "method": meth, "peer": lib,
                         "peer_version": version("torchopt" if lib == "torchopt" else "betty-ml"), "peer_call": how,
                         "hgbench_ms": 1e3 * r["fn_s"]["median"], "peer_ms": 1e3 * r["ref_s"]["median"],
                         "speedup_median": speedup, "speedup_q1": 1.0 / r["ratio"]["q3"], "speedup_q3": 1.0 / r["ratio"]["q1"],
                         "max_rel_diff": diff, "same_algorithm": same_algorithm, "agree_1e-3": agree,
                         "target_met": bool(speedup >= 1.5 and agree) if same_algorithm else "",
                         "reps": reps})
            print(f"  peers i={i:<3d} {meth:8s} {lib:9s} {how:24s} hgbench {1e3 * r['fn_s']['median']:8.1f} ms, "
                  f"peer {1e3 * r['ref_s']['median']:8.1f} ms: hgbench {speedup:.2f}× faster; max rel diff {diff:.1e}", flush=True)
    common.write_csv(out, "peers", rows, dev)
    if rows:
        plot(rows, out / "peers.png")
    common.write_fragment(out, "peers", fragment(rows, quick, notes), headline(rows), dev, quick=quick)
    return rows


def plot(rows, path: Path) -> None:
    plt = common.pyplot()
    iters = sorted({r["iterations"] for r in rows})
    fig, axes = plt.subplots(1, len(iters), figsize=(6.5 * len(iters), 4.4), squeeze=False)
    for ax, i in zip(axes[0], iters):
        rs = [r for r in rows if r["iterations"] == i]
        labels = [f"{r['peer']}\n{r['peer_call']}" for r in rs]
        x = range(len(rs))
        ax.bar([k - 0.2 for k in x], [r["hgbench_ms"] for r in rs], 0.4, label="hgbench (same method)")
        ax.bar([k + 0.2 for k in x], [r["peer_ms"] for r in rs], 0.4, label="peer")
        for k, r in zip(x, rs):
            ok = "" if r["agree_1e-3"] else "\n≠ answer"
            ax.text(k, max(r["hgbench_ms"], r["peer_ms"]), f"{r['speedup_median']:.2f}×{ok}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(list(x))
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_ylabel("ms per hypergradient (median)")
        ax.set_title(f"i = {i}: hgbench vs peers (label: hgbench speed-up; ≠: answers differ > 1e-3)", fontsize=9)
        ax.set_ylim(0, max(max(r["hgbench_ms"], r["peer_ms"]) for r in rs) * 1.25)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fragment(rows, quick: bool, notes: dict[str, str]) -> str:
    table = []
    for r in rows:
        tgt = common.verdict(r["target_met"]) if r["target_met"] != "" else "n/a (different algorithm)"
        table.append([r["iterations"], r["method"], f"{r['peer']} {r['peer_version']}", f"`{r['peer_call']}`",
                      f"{r['hgbench_ms']:.1f}", f"{r['peer_ms']:.1f}",
                      f"{r['speedup_median']:.2f} ({r['speedup_q1']:.2f}–{r['speedup_q3']:.2f})", f"{r['max_rel_diff']:.1e}", tgt])
    n = rows[0]["num_hyperparams"] if rows else 0
    lines = ["## 5. peers — hgbench vs TorchOpt and Betty on the same problem", "",
             f"Reproduce: `pip install -e '.[bench]'` then `{common.command('peers', quick)}` (CSV: `peers.csv`, plot: "
             f"`peers.png`). Per-weight decay, MLP with {n:,} weights = hyperparameters, batch 128, same batches, weights, "
             "λ, i and α; each library warmed up and timed side by side with hgbench's same method (speed-up = peer time ÷ "
             "hgbench time, median and IQR); agreement = max|peer − hgbench| / max|hgbench|.", "",
             common.md_table(["i", "method", "peer", "peer call", "hgbench ms", "peer ms", "hgbench speed-up (IQR)",
                              "max rel. diff", "≥ 1.5× at equal accuracy"], table), ""]
    for k, v in notes.items():
        lines.append(f"- {k}: {v}")
    return "\n".join(lines) + "\n"


def headline(rows) -> list[list]:
    return [["peers", f"i={r['iterations']} {r['method']}: hgbench vs {r['peer']} `{r['peer_call']}`",
             f"{r['speedup_median']:.2f}× faster (max rel. diff {r['max_rel_diff']:.0e})",
             "≥ 1.5× at equal accuracy", common.verdict(r["target_met"]) if r["target_met"] != "" else "n/a (other algorithm)"]
            for r in rows]
