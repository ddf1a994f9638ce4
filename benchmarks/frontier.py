"""The accuracy–cost frontier: how close each hypergradient method gets to a trusted reference,
for how much time and memory (``hgbench-bench frontier --out results/frontier``).

Three problems, each at one fixed point (w, λ) with fixed batches, so every method answers the
same question:

- ``ridge``: linear regression with one decay per feature (float64, 30 features, full batch), at
  the exact inner optimum — convex; the reference is the closed form (a dense solve of the
  positive-definite Hessian);
- ``mlp``: digits, a 64-32-10 tanh MLP with one decay per weight (2,410), full batch, float64, 4000
  SGD steps then L-BFGS to ‖∂L_T/∂w‖ ≤ ``POLISH_TOL`` — a stationary point (tanh: a smooth loss;
  with ReLU's kinks the gradient stalls near 1e-3, ``mlp_relu``); where its Hessian is positive
  definite there (its dense spectrum is recorded) the reference is the IFT formula with the exact
  Hessian, solved densely (``exact``): the derivative of the best response;
- ``mlp_relu`` (not in the default list): the same with ReLU after the SGD steps alone, not
  stationary, its Hessian indefinite; the reference the Gauss–Newton IFT solved densely;
- ``cnn``: mnist_5k images, the default LeNet-like CNN (97,982 weights, one decay each), batches
  of 256, after 300 SGD steps — not stationary (its gradient there is larger than at the start);
  the reference is CG on the Gauss–Newton matrix to a relative residual of 1e-10 or
  ``CNN_REF_ITERATIONS`` (the residual reached is in the CSV): a proxy, and methods are ranked by
  the retraining check.

Per point, ‖∂L_T/∂w‖ there and at the start (the initial weights, same batch): a point is called
stationary where the first is below ``STATIONARY_RATIO`` of the second. The reference's
sensitivity to a damping δ (``DAMPINGS``: the same solve with C + δ·I; magnitude, cosine, and with
the retraining check the realised descent along it) goes to ``frontier_damping.csv``.

Every registered hypergrad method is measured — at budgets {0, 1, 2, 5, 10, 20, 50} of the
parameter it declares as its cost (``HypergradientMethod.budget``: Neumann's and CG's
iterations, unroll's steps, Nyström's rank), once if it declares none, and also with
``curvature=ggn`` where it has that option — so a method registered later is picked up without
edits; ``cg`` and ``neumann`` also with the Hessian on its own quarter of the batch
(``hessian_batch_size``) at budgets {2, 10, 50}, ``DRAWS`` draws each (median error, min–max). Per point: relative
error ‖g − g_ref‖/‖g_ref‖ and cosine to the reference; time as a ratio to one plain gradient of
L_T on the same batch (median of side-by-side repetitions); peak memory (growth of the peak RSS
in a fresh process per problem with glibc's mmap threshold fixed, so freed tensors leave RSS; on
CUDA ``max_memory_allocated``); the number of curvature-vector products.

With ``--retrain-steps T`` (``run(retrain=RetrainSettings(...))``), each point also gets the
retraining check (``hgbench.accuracy.retraining_check``; README, "The retraining check"): the
realised directional derivative of L_V after T more inner steps from the point's w along each
method's hypergradient (``retrain_descent_method``, its ratio to the reference's and
predicted/realised), and once per problem along the reference's direction and k random directions
orthogonal to it (``retrain_descent_reference``, ``retrain_noise_floor``); the same T batches for
every method of a problem. Costs 2·T inner steps per point and 2·(1 + k)·T per problem.

``budgets`` and ``series`` (``--budgets``, ``--series PROBLEM:LABELS``) restrict the points, and
``--retrain-steps`` takes a horizon per problem (``ridge=1000,mlp=500,cnn=100``).

Then warm starts along a run (``along_a_run``): the ``mlp`` problem followed for ``RUN_STEPS``
hyper-steps, each method cold and with ``warm_start=true`` at every step against the exact
Gauss–Newton reference there; and the ordering Grazzi et al. prove for contractive problems (CG ≤
fixed point ≤ unrolling in error at equal iterations), read off the rows budget by budget.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from hgbench.benchmarks import output, plotting, problems, timing, worker
from hgbench.machine import resolve_device

BUDGETS = (0, 1, 2, 5, 10, 20, 50)
QUICK_BUDGETS = (0, 2)
# curvature on its own minibatch (hessian_batch_size = ¼ of the batch): these methods, these
# budgets, DRAWS independent draws each (the error's spread is the variance it adds)
STOCHASTIC = ("cg", "neumann")
STOCHASTIC_BUDGETS = (2, 10, 50)
DRAWS = 5
PROBLEMS = ("ridge", "mlp", "cnn")  # also: mlp_relu (the ReLU MLP after SGD alone: not stationary)
RETRAIN_COLUMNS = ("retrain_eps", "retrain_descent_reference", "retrain_predicted_vs_realised_reference", "retrain_noise_floor",
                   "retrain_resolution", "retrain_descent_method", "retrain_predicted_vs_realised", "retrain_descent_ratio")
# CG iterations of the cnn reference (it stops earlier at a relative residual of 1e-10)
CNN_REF_ITERATIONS = 300
REFERENCE = {
    "ridge": "closed form (dense solve of the positive-definite Hessian)",
    "mlp": "IFT with the exact Hessian, solved densely (exact): at a stationary point with H ≻ 0 the derivative of the best response",
    "mlp_relu": "IFT with the Gauss–Newton matrix, solved densely (exact, curvature=ggn)",
    "cnn": f"CG on the Gauss–Newton matrix to a relative residual of 1e-10 or {CNN_REF_ITERATIONS} iterations",
}


# --- the problems ---------------------------------------------------------------------------------
# a point is stationary when ‖∂L_T/∂w‖ there is below this fraction of its value at the start
# (the initial weights, on the same batch): the IFT's assumption ∂L_T/∂w = 0, to that precision
STATIONARY_RATIO = 1e-4
# the MLP point is polished by L-BFGS (full batch, float64) after its SGD steps, to this gradient norm
POLISH_TOL = 1e-6
POLISH_MAX_ITER = 3000
# the dampings of the reference's sensitivity (the first is the reference itself)
DAMPINGS = {"ridge": (0.0, 1e-5, 1e-4, 1e-3, 1e-2), "mlp": (0.0, 1e-5, 1e-4, 1e-3, 1e-2), "mlp_relu": (0.0, 1e-5, 1e-4, 1e-3, 1e-2),
            "cnn": (0.0, 1e-3, 1e-2)}


def _grad_norm(exp, w: torch.Tensor, batch) -> float:
    w = w.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(exp.problem.train_loss(w, exp.lam.detach(), batch), w)
    return torch.linalg.vector_norm(g).item()


def polish(exp, batch, tol: float, max_iter: int) -> int:
    """L-BFGS (strong Wolfe line search) on L_T(·, λ) over ``batch`` from the current w until
    ‖∂L_T/∂w‖ ≤ ``tol`` or ``max_iter`` iterations; w is replaced and the inner optimiser's state
    reset (no momentum left from the way there: retraining from a stationary point stays put).
    Returns the iterations run."""
    w = exp.w.detach().clone().requires_grad_(True)
    lam = exp.lam.detach()
    # LBFGS stops on max |g_i| ≤ tolerance_grad: tol/√n there bounds ‖g‖ by tol
    opt = torch.optim.LBFGS([w], lr=1, max_iter=max_iter, tolerance_grad=tol / math.sqrt(w.numel()), tolerance_change=0.0,
                            history_size=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = exp.problem.train_loss(w, lam, batch)
        loss.backward()
        return loss

    opt.step(closure)
    exp.w = w.detach()
    exp.inner_state = exp.inner_optimizer.init(exp.w)
    return int(opt.state[opt._params[0]].get("n_iter", 0))


def build(problem: str, quick: bool, device: str = "cpu"):
    """(experiment at its fixed point, train batch, val batch) — deterministic (seeded). The
    experiment carries ``frontier_point``: ‖∂L_T/∂w‖ at the start (the initial weights, on the
    same train batch) and how the point was reached."""
    from hgbench import build_experiment

    base = [f"device={device}", "warmup=false", "seed=0"]
    if problem == "ridge":
        exp = build_experiment(dataset="synthetic_linear", model="linear", hyperparam="weight_decay_per_param", overrides=[
            *base, "model.bias=false", "dtype=float64", "hyperparam.init_decay=0.05", "dataset.num_features=30",
            "dataset.informative=5", "dataset.train_size=100", "dataset.val_size=100"])
        d = exp.problem.data
        tb, vb = exp.problem.full_batch("train"), exp.problem.full_batch("val")
        start = _grad_norm(exp, exp.w, tb)
        h = 2 * d.train.x.T @ d.train.x / len(d.train.x) + torch.diag(exp.lam.detach().exp())
        exp.w = torch.linalg.solve(h, 2 * d.train.x.T @ d.train.y / len(d.train.x))  # the exact optimum
        exp.frontier_point = {"inner_grad_norm_start": start, "inner_training": "the exact optimum (a dense solve)"}
        return exp, tb, vb
    if problem in ("mlp", "mlp_relu"):
        relu = problem == "mlp_relu"
        exp = build_experiment(dataset="digits", model="mlp", hyperparam="weight_decay_per_param", overrides=[
            *base, "dtype=float64", f"model.hidden=[{8 if quick else 32}]", "hyperparam.init_decay=1e-3",
            "train_batch_size=null", "inner_optimizer.lr=0.5", "inner_optimizer.momentum=0.9",
            *([] if relu else ["model.activation=tanh"]),
            *(["dataset.train_size=100", "dataset.val_size=100"] if quick else [])])
        tb, vb = exp.problem.full_batch("train"), exp.problem.full_batch("val")
        start = _grad_norm(exp, exp.w, tb)
        steps = 300 if quick else 4000
        exp.train_inner(steps)
        how = f"{steps} full-batch SGD steps (lr 0.5, momentum 0.9)"
        if not relu:  # tanh: a smooth loss, so L-BFGS can drive its gradient to ~0 (ReLU's kinks stop it near 1e-3)
            its = polish(exp, tb, POLISH_TOL, 300 if quick else POLISH_MAX_ITER)
            how += f", then {its} L-BFGS iterations (full batch, to ‖∂L_T/∂w‖ ≤ {POLISH_TOL:g})"
        exp.frontier_point = {"inner_grad_norm_start": start, "inner_training": how}
        return exp, tb, vb
    if problem == "cnn":
        size = ["model.channels=[2,2]", "model.hidden=[8]", "train_batch_size=32", "val_batch_size=32"] if quick else \
            ["train_batch_size=256", "val_batch_size=256"]
        exp = build_experiment(dataset="mnist_5k", model="cnn", hyperparam="weight_decay_per_param", overrides=[
            *base, "dataset.image=true", "hyperparam.init_decay=1e-3", *size])
        w0 = exp.w.detach().clone()
        steps = 20 if quick else 300
        exp.train_inner(steps)
        tb, vb = exp.train_sampler.next(), exp.val_sampler.next()
        exp.frontier_point = {"inner_grad_norm_start": _grad_norm(exp, w0, tb),
                              "inner_training": f"{steps} SGD steps on minibatches of {len(tb.x)}"}
        return exp, tb, vb
    raise ValueError(f"unknown frontier problem {problem!r}; one of {', '.join(PROBLEMS)}")


def reference(problem: str, exp, tb, vb, quick: bool, damping: float = 0.0) -> tuple[torch.Tensor, float | None]:
    """(the reference hypergradient, the relative residual of its solve where iterative), with
    ``damping`` added to its curvature's diagonal (0: the reference itself)."""
    from hgbench.ift import ift_hypergradient
    from hgbench.linalg import cg_solve

    if problem in ("ridge", "mlp"):
        return exp.hypergradient_flat(problems.method("exact", damping=damping), tb, vb), None
    if problem == "mlp_relu":
        return exp.hypergradient_flat(problems.method("exact", curvature="ggn", damping=damping), tb, vb), None
    residual: list[float] = []

    def solve(matvec, b):
        x = cg_solve(matvec, b, iterations=100 if quick else CNN_REF_ITERATIONS, tol=1e-10, damping=damping)
        residual.append((torch.linalg.vector_norm(matvec(x) + damping * x - b) / torch.linalg.vector_norm(b)).item())
        return x

    bl = exp.problem.bilevel(tb, vb, exp.w.detach(), exp.lam.detach())
    hg = ift_hypergradient(bl.train_loss, bl.val_loss, bl.w, bl.lam, solve, bl.curvature("ggn"))
    return hg, residual[0]


def points(exp, quick: bool, batch: int = 0, budgets: tuple[int, ...] | None = None,
           series: tuple[str, ...] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(series label, method node) for every registered hypergrad method: its budgets, its
    ``curvature=ggn`` variant where it has one and the problem allows it, and for the methods in
    ``STOCHASTIC`` the Hessian on a quarter of the ``batch`` (``hessian_batch_size``). ``budgets``
    (instead of ``BUDGETS``; the stochastic variants keep those of ``STOCHASTIC_BUDGETS`` in it)
    and ``series`` (the labels kept) restrict them; ``quick`` uses ``QUICK_BUDGETS``."""
    from hgbench import Curvature, registry

    out = []
    for name in registry.available("hypergrad"):
        entry = registry.entry("hypergrad", name)
        if entry.preset:  # an alias: the same method under another name
            continue
        cls = entry.cls
        variants = [({}, "", None)]
        if issubclass(cls, Curvature) and exp.problem.supports_ggn:
            variants.append(({"curvature": "ggn"}, " (ggn)", None))
        if issubclass(cls, Curvature) and name in STOCHASTIC and batch > 4:
            variants.append(({"hessian_batch_size": batch // 4}, " (H on ¼ batch)", STOCHASTIC_BUDGETS))
        for extra, suffix, only in variants:
            if series is not None and name + suffix not in series:
                continue
            chosen = budgets or BUDGETS
            these = QUICK_BUDGETS if quick else ([b for b in only if b in chosen] if only else chosen)
            for b in (these if cls.budget else [None]):
                node = {"name": name, **extra, **({cls.budget: b} if cls.budget else {})}
                out.append((name + suffix, node))
    return out


def _build_method(node: dict[str, Any]):
    """The method, or the reason it cannot be built (e.g. unroll with 0 steps)."""
    from hgbench.config import build_plugin
    from hgbench.errors import HgbenchError

    try:
        return build_plugin("hypergrad", dict(node)), None
    except HgbenchError as exc:
        return None, str(exc)


# --- memory, in a fresh process per problem --------------------------------------------------------
def worker_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """``hgbench.benchmarks.worker`` entry: the peak memory of each point of one problem, in this fresh
    process (the parent started it with glibc's mmap threshold fixed: RSS follows live tensors)."""
    from hgbench.memory import PeakMemory

    exp, tb, vb = build(spec["problem"], spec["quick"], spec["device"])
    out = {}
    series = spec.get("series")
    for _label, node in points(exp, spec["quick"], len(tb.x), spec.get("budgets"), None if series is None else tuple(series)):
        method, why = _build_method(node)
        if method is None or method.skip(exp.problem):
            continue
        mem = PeakMemory(exp.device)
        mem.start()
        exp.hypergradient_flat(method, tb, vb)
        out[_key(node)] = mem.peak_mb()
    return {"peak_mb": out}


def _key(node: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(node.items()))


# --- the measurements -----------------------------------------------------------------------------
DENSE_SPECTRUM_MAX = 5000  # the Hessian's full spectrum where it has at most this many weights (dense eigvalsh)
SMALL_EIG = 1e-3  # eigenvalues |λ| below this are counted as near zero


def curvature_facts(exp, tb, steps: int) -> dict[str, float]:
    """‖∂L_T/∂w‖ and the Hessian's extreme Ritz values (Lanczos) at the problem's point; where it
    has at most ``DENSE_SPECTRUM_MAX`` weights, from its dense eigenvalues instead, with the count
    of negative ones (``hess_neg_count``) and of those with |λ| < ``SMALL_EIG`` (``hess_small_count``)."""
    from hgbench.ift import HessianVectorProduct
    from hgbench.linalg import lanczos_extremes, products

    w = exp.w.detach().requires_grad_(True)
    (gw,) = torch.autograd.grad(exp.problem.train_loss(w, exp.lam.detach(), tb), w, create_graph=True)
    hvp = HessianVectorProduct(gw, w)
    out = {"inner_grad_norm": torch.linalg.vector_norm(gw.detach()).item()}
    if w.numel() <= DENSE_SPECTRUM_MAX:
        h = products(hvp, torch.eye(w.numel(), dtype=w.dtype, device=w.device)).detach().double()
        eig = torch.linalg.eigvalsh(0.5 * (h + h.T))
        out.update({"hess_eig_max": eig[-1].item(), "hess_eig_min": eig[0].item(), "hess_neg_count": int((eig < 0).sum()),
                    "hess_small_count": int((eig.abs() < SMALL_EIG).sum()), "hess_spectrum": "dense"})
    else:
        eig_max, eig_min = lanczos_extremes(lambda v: hvp(v).detach(), w.numel(), steps, like=w.detach())
        out.update({"hess_eig_max": eig_max, "hess_eig_min": eig_min, "hess_spectrum": f"Lanczos, {steps} steps"})
    return out


def retrain_point(exp, hg: torch.Tensor, settings) -> dict[str, float]:
    """The retraining check along ``hg`` alone (settings' random directions included where it
    has any), at the problem's point, its batches seeded alike for every call."""
    exp.retrain = settings
    return exp.retraining_check(hg, None, exp.process_state.snapshot(), 0)


def settings_for(retrain, problem: str):
    """``retrain`` is one ``RetrainSettings`` for every problem, a dict problem → settings (a
    problem not in it: no check), or None."""
    return retrain.get(problem) if isinstance(retrain, dict) else retrain


def damping_rows(problem: str, exp, tb, vb, quick: bool, ref: torch.Tensor, retrain) -> list[dict[str, Any]]:
    """The reference's sensitivity to its damping (``hgbench.accuracy.damping_sensitivity``) at
    ``DAMPINGS[problem]``, and with ``retrain`` the retraining check along each damped reference."""
    import dataclasses

    from hgbench.accuracy import damping_sensitivity

    residuals: dict[float, float | None] = {}

    def at(d: float) -> torch.Tensor:
        if d == 0.0:
            return ref
        hg, residuals[d] = reference(problem, exp, tb, vb, quick, damping=d)
        return hg.double()

    dampings = DAMPINGS.get(problem, (0.0,))
    rows = [{"problem": problem, **r, "reference_residual": residuals.get(r["damping"])} for r in damping_sensitivity(at, dampings)]
    if retrain is not None:
        along = dataclasses.replace(retrain, directions=0)
        for r, d in zip(rows, dampings, strict=True):
            g = ref if d == 0.0 else at(d)
            r["retrain_descent"] = retrain_point(exp, g, along)["retrain_descent_method"]
    for r in rows:
        print(f"  frontier {problem:5s} damping {r['damping']:7.0e}: norm ×{r['norm_ratio']:.3f} cos {r['cosine']:.4f} "
              f"rel_err {r['rel_err']:.3g}" + (f" retrain {r['retrain_descent']:.3g}" if "retrain_descent" in r else ""), flush=True)
    return rows


def measure(problem: str, quick: bool, device: torch.device, reps: int, retrain=None, budgets: tuple[int, ...] | None = None,
            series: tuple[str, ...] | None = None, damping: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every point of one problem; with ``retrain`` (``hgbench.accuracy.RetrainSettings``, or a
    dict problem → settings) the retraining check at each point too. ``budgets`` and ``series``
    restrict the points (None: all); ``damping``, a list, receives the reference's damping
    sensitivity (``damping_rows``)."""
    import dataclasses

    from hgbench.ift import count_products

    retrain = settings_for(retrain, problem)
    exp, tb, vb = build(problem, quick, str(device))
    ref, residual = reference(problem, exp, tb, vb, quick)
    ref = ref.double()
    facts = {"problem": problem, "num_weights": exp.problem.num_weights, "num_hyperparams": exp.problem.num_hyperparams,
             "reference": REFERENCE[problem], "reference_residual": residual, "ref_norm": torch.linalg.vector_norm(ref).item(),
             **exp.frontier_point, **curvature_facts(exp, tb, 20 if quick else 100)}
    facts["stationary"] = facts["inner_grad_norm"] <= STATIONARY_RATIO * facts["inner_grad_norm_start"]
    if retrain is not None:  # along the reference, and k random directions orthogonal to it: once per problem
        base = retrain_point(exp, ref, retrain)
        facts.update({"retrain_steps": retrain.steps, "retrain_eps": retrain.eps, "retrain_directions": retrain.directions,
                      "retrain_descent_reference": base["retrain_descent_method"],
                      "retrain_predicted_vs_realised_reference": base["retrain_predicted_vs_realised"],
                      "retrain_noise_floor": base.get("retrain_noise_floor", float("nan")),
                      "retrain_noise_max": base.get("retrain_noise_max", float("nan")),
                      "retrain_resolution": base["retrain_resolution"]})
        along_method = dataclasses.replace(retrain, directions=0)
    if damping is not None:
        damping += damping_rows(problem, exp, tb, vb, quick, ref, retrain)

    def plain_gradient():
        w_ = exp.w.detach().requires_grad_(True)
        return torch.autograd.grad(exp.problem.train_loss(w_, exp.lam.detach(), tb), w_)

    memory: dict[str, float] = {}
    if not quick:  # a fresh process per problem; --quick measures in this process (a smoke run)
        res = worker.run_worker("frontier:worker_memory", {"problem": problem, "quick": quick, "device": str(device),
                                                           "budgets": budgets, "series": series},
                                timeout=3600, exact_rss=True)
        memory = res.get("peak_mb", {}) if res["status"] == "ok" else {}
    rows = []
    for label, node in points(exp, quick, len(tb.x), budgets, series):
        method, why = _build_method(node)
        budget_param = next((k for k in node if k not in ("name", "curvature", "hessian_batch_size")), "")
        row = {**facts, "series": label, "method": node["name"], "curvature": node.get("curvature", "hessian"),
               "budget_param": budget_param, "budget": node.get(budget_param, ""), "status": "ok", "note": ""}
        why = why or (method.skip(exp.problem) if method is not None else None)
        if why:
            rows.append({**row, "status": "skipped", "note": why[:200]})
            continue
        exp.seed_rng(1000 + len(rows))  # a method's random draws (columns, minibatches) do not depend on earlier timings
        with count_products() as calls:
            hg = exp.hypergradient_flat(method, tb, vb).double()
        row["hvp_calls"] = calls.value
        g_norm, r_norm = torch.linalg.vector_norm(hg).item(), facts["ref_norm"]
        row["rel_err"] = torch.linalg.vector_norm(hg - ref).item() / r_norm
        row["cosine"] = (hg @ ref).item() / (g_norm * r_norm) if g_norm > 0 else float("nan")
        row["scale_free_err"] = math.sqrt(max(0.0, 1 - row["cosine"] ** 2)) if g_norm > 0 else float("nan")
        if retrain is not None:
            check = retrain_point(exp, hg, along_method)
            dm, dr = check["retrain_descent_method"], facts["retrain_descent_reference"]
            row.update({"retrain_descent_method": dm, "retrain_predicted_vs_realised": check["retrain_predicted_vs_realised"],
                        "retrain_descent_ratio": dm / dr if dr else float("nan")})
        if "hessian_batch_size" in node:  # a fresh minibatch per draw: the error's spread is the variance added
            row["hessian_batch_size"] = node["hessian_batch_size"]
            errs = [row["rel_err"]] + [torch.linalg.vector_norm(exp.hypergradient_flat(method, tb, vb).double() - ref).item() / r_norm
                                       for _ in range(1 if quick else DRAWS - 1)]
            row["rel_err"] = float(torch.tensor(errs).median())
            row["rel_err_min"], row["rel_err_max"], row["draws"] = min(errs), max(errs), len(errs)
        t = timing.compare(plain_gradient, lambda m=method: exp.hypergradient_flat(m, tb, vb), reps, device,
                           timing.timing_target(quick))
        row.update(output.ratio_cols("time_grads", t["ratio"]))
        row["time_ms"] = 1e3 * t["fn_s"]["median"]
        if quick:
            from hgbench.memory import PeakMemory

            mem = PeakMemory(device)
            mem.start()
            exp.hypergradient_flat(method, tb, vb)
            row["peak_mb"], row["note"] = mem.peak_mb(), "memory measured in-process (--quick)"
        else:
            row["peak_mb"] = memory.get(_key(node), float("nan"))
        rows.append(row)
        print(f"  frontier {problem:5s} {label:16s} {budget_param}={row['budget']!s:3s} rel_err {row['rel_err']:9.3g} "
              f"cos {row['cosine']:7.3f}  {row['time_grads_median']:7.2f} gradients  {row['peak_mb']:7.1f} MB", flush=True)
    return rows


# --- warm starts along a run -----------------------------------------------------------------------
RUN_STEPS = 10
RUN_INNER_STEPS = 20
RUN_BUDGETS = (1, 2, 5, 10, 20)
RUN_METHODS = (("cg", {"curvature": "ggn"}, "cg (ggn)"), ("neumann", {"curvature": "ggn"}, "neumann (ggn)"),
               ("fixed_point", {}, "fixed_point"))


def along_a_run(quick: bool, device: torch.device) -> list[dict[str, Any]]:
    """Warm starts where they pay: the ``mlp`` problem followed for ``RUN_STEPS`` hyper-steps
    (the reference's hypergradient drives λ, ``RUN_INNER_STEPS`` SGD steps between), and at every
    hyper-step each method, cold and ``warm_start=true`` (its own previous solution), at each
    budget, against the reference there (exact solve on the Gauss–Newton matrix)."""
    from hgbench.ift import count_products

    exp, tb, vb = build("mlp", quick, str(device))
    ref_method = problems.method("exact", curvature="ggn")
    budgets = QUICK_BUDGETS[1:] if quick else RUN_BUDGETS
    variants = {(label, warm, b): problems.method(name, **extra, iterations=b, warm_start=warm)
                for name, extra, label in RUN_METHODS for warm in (False, True) for b in budgets}
    rows = []
    for step in range(2 if quick else RUN_STEPS):
        ref = exp.hypergradient_flat(ref_method, tb, vb).double()
        r_norm = torch.linalg.vector_norm(ref).item()
        for (label, warm, b), m in variants.items():
            with count_products() as calls:
                hg = exp.hypergradient_flat(m, tb, vb).double()
            rows.append({"problem": "mlp", "step": step, "series": label, "warm_start": warm, "budget": b,
                         "hvp_calls": calls.value, "rel_err": torch.linalg.vector_norm(hg - ref).item() / r_norm})
        exp.outer_optimizer.zero_grad(set_to_none=True)
        exp.lam.grad = ref.to(exp.lam.dtype)
        exp.outer_optimizer.step()
        exp.train_inner(RUN_INNER_STEPS)
    print(f"  frontier along a run: {len(rows)} hypergradients over {step + 1} hyper-steps", flush=True)
    return rows


def run_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (series, warm, budget): median error and HVPs over the hyper-steps after the first (at
    the first a warm start has nothing to start from)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if r["step"] > 0:
            groups.setdefault((r["series"], r["warm_start"], r["budget"]), []).append(r)
    out = []
    for (series, warm, b), rs in groups.items():
        out.append({"series": series, "warm_start": warm, "budget": b,
                    "rel_err": float(torch.tensor([r["rel_err"] for r in rs]).median()),
                    "hvp_calls": float(torch.tensor([float(r["hvp_calls"]) for r in rs]).median())})
    return out


def plot_run(rows: list[dict[str, Any]], out: Path) -> Path:
    fig, ax = plotting.subplots(figsize=(7, 4.6))
    summary = run_summary(rows)
    cmap = plotting.cmap("tab10")
    for i, (_, _, label) in enumerate(RUN_METHODS):
        for warm in (False, True):
            pts = sorted((r for r in summary if r["series"] == label and r["warm_start"] == warm), key=lambda r: r["hvp_calls"])
            if pts:
                ax.plot([r["hvp_calls"] for r in pts], [r["rel_err"] for r in pts], marker="o", ms=4, color=cmap(i),
                        ls="--" if warm else "-", label=f"{label}{' warm' if warm else ''}")
    ax.set(xscale="log", yscale="log", xlabel="curvature-vector products per hyper-step (median)",
           ylabel="relative error to the reference (median over hyper-steps)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("warm starts along a run (mlp, reference: exact on the Gauss–Newton matrix)\nsolid: cold; dashed: warm_start=true",
                 fontsize=9)
    fig.tight_layout()
    path = out / "frontier_warm.png"
    fig.savefig(path, dpi=130)
    return path


def run_reading(rows: list[dict[str, Any]]) -> list[str]:
    summary = run_summary(rows)
    steps = max(r["step"] for r in rows) + 1 if rows else 0
    table = []
    for _, _, label in RUN_METHODS:
        for b in sorted({r["budget"] for r in summary}):
            cold = next((r for r in summary if r["series"] == label and not r["warm_start"] and r["budget"] == b), None)
            warm = next((r for r in summary if r["series"] == label and r["warm_start"] and r["budget"] == b), None)
            if cold and warm:
                table.append([label, b, f"{cold['hvp_calls']:.0f}", f"{cold['rel_err']:.2g}", f"{warm['hvp_calls']:.0f}",
                              f"{warm['rel_err']:.2g}"])
    lines = ["## Warm starts along a run", "",
             f"The `mlp` problem followed for {steps} hyper-steps (λ moved by the reference's hypergradient, {RUN_INNER_STEPS} "
             "SGD steps between); at each, every method cold and with `warm_start=true` (the previous hyper-step's solution as "
             "its initial guess: one more product). Medians over the hyper-steps after the first. CSV: `frontier_run.csv`.", "",
             "![warm starts](frontier_warm.png)", "",
             output.md_table(["method", "iterations", "cold: products", "cold: rel. error", "warm: products", "warm: rel. error"], table), ""]
    verdicts = []
    for _, _, label in RUN_METHODS:
        mine = [r for r in summary if r["series"] == label]
        if not mine:
            continue
        top = max(r["budget"] for r in mine)
        cold = next(r for r in mine if not r["warm_start"] and r["budget"] == top)
        warm = next(r for r in mine if r["warm_start"] and r["budget"] == top)
        ratios = sorted(c["rel_err"] / w["rel_err"] for c in mine for w in mine
                        if not c["warm_start"] and w["warm_start"] and c["budget"] == w["budget"] and w["rel_err"] > 0)
        reach = [r for r in mine if r["warm_start"] and r["rel_err"] <= cold["rel_err"]]
        first = min(reach, key=lambda r: r["hvp_calls"]) if reach else None
        verdicts.append(
            f"- **{label}**: at {top} iterations cold {cold['rel_err']:.2g} ({cold['hvp_calls']:.0f} products), warm "
            f"{warm['rel_err']:.2g} ({warm['hvp_calls']:.0f}); cold's error ÷ warm's at equal iterations: "
            f"{ratios[len(ratios) // 2]:.2f} (median over {len(ratios)} budgets, {ratios[0]:.2f}–{ratios[-1]:.2f}); "
            + (f"warm reaches cold's best ({cold['rel_err']:.2g}) with {first['hvp_calls']:.0f} products instead of "
               f"{cold['hvp_calls']:.0f}." if first else f"warm never reaches cold's best ({cold['rel_err']:.2g})."))
    return lines + verdicts + [""]


def grazzi_reading(rows: list[dict[str, Any]]) -> list[str]:
    """Grazzi et al. (ICML 2020) prove, on a contractive problem, AID-CG ahead of AID-FP ahead of
    ITD at equal iterations: here ``cg`` ≤ ``fixed_point`` ≤ ``unroll`` in error, budget by budget."""
    out = []
    for problem in dict.fromkeys(r["problem"] for r in rows):
        def err(series: str, b: Any, problem: str = problem) -> float | None:
            r = next((r for r in rows if r["problem"] == problem and r["series"] == series and r["budget"] == b
                      and r["status"] == "ok"), None)
            return r["rel_err"] if r is not None and math.isfinite(r["rel_err"]) else None

        held, total, broke = 0, 0, []
        for b in BUDGETS:
            e = [err(s, b) for s in ("cg", "fixed_point", "unroll")]
            if None in e:
                continue
            total += 1
            if e[0] <= e[1] * (1 + 1e-9) and e[1] <= e[2] * (1 + 1e-9):
                held += 1
            else:
                broke.append(f"{b} (cg {e[0]:.2g}, fixed_point {e[1]:.2g}, unroll {e[2]:.2g})")
        if total:
            out.append(f"- **{problem}**: cg ≤ fixed_point ≤ unroll held at {held} of {total} budgets"
                       + (f"; not at {'; '.join(broke)}" if broke else "") + ".")
    return out


# --- output ---------------------------------------------------------------------------------------
def plot(rows: list[dict[str, Any]], problem: str, out: Path) -> Path:
    # drawn: every answer except a zero one (fixed) and the reference's own (error exactly 0)
    ok = [r for r in rows if r["problem"] == problem and r["status"] == "ok" and math.isfinite(r["rel_err"])
          and math.isfinite(r["cosine"]) and r["rel_err"] > 0]
    fig, axes = plotting.subplots(1, 2, figsize=(12, 5.2))
    series = sorted({r["series"] for r in ok})
    cmap = plotting.cmap("tab20")
    for i, s in enumerate(series):
        pts = sorted((r for r in ok if r["series"] == s), key=lambda r: (r["budget"] if r["budget"] != "" else 0))
        for ax, x in zip(axes, ("time_grads_median", "peak_mb"), strict=True):
            xs = [max(r[x], 1e-2) for r in pts]
            ys = [r["rel_err"] for r in pts]
            ax.plot(xs, ys, marker="o" if len(pts) > 1 else "s", ms=4, lw=1.2, color=cmap(i % 20),
                    ls="--" if "(ggn)" in s else ":" if "batch" in s else "-", label=s)
            spread = [(x, r["rel_err_min"], r["rel_err_max"]) for x, r in zip(xs, pts, strict=True) if isinstance(r.get("rel_err_min"), float)
                      and math.isfinite(r["rel_err_min"])]
            if spread:  # the draws of a stochastic curvature: min–max of the error
                ax.vlines([a for a, _, _ in spread], [b for _, b, _ in spread], [c for _, _, c in spread], color=cmap(i % 20), lw=2.5, alpha=0.5)
            if len(pts) > 1:
                ax.annotate(str(pts[-1]["budget"]), (xs[-1], ys[-1]), fontsize=6, xytext=(3, 0), textcoords="offset points")
    first = next((r for r in rows if r["problem"] == problem), {})
    for ax, xl in zip(axes, ("time (plain gradients of L_T)", "peak memory (MB, RSS growth)"), strict=True):
        ax.set(xscale="log", yscale="log", xlabel=xl, ylabel="relative error ‖g − g_ref‖ / ‖g_ref‖")
        ax.axhline(1.0, color="k", lw=0.6, ls=":")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(f"{problem}: {first.get('num_weights', '?'):,} weights · reference: {first.get('reference', '?')}\n"
                 f"(budget = iterations / steps / rank, the last point of each line labelled; dashed: curvature=ggn;\n"
                 f"dotted with bars: Hessian on its own ¼ batch, min–max of {DRAWS} draws; not drawn: fixed, and the reference's own "
                 f"method)", fontsize=9)
    fig.tight_layout()
    path = out / f"frontier_{problem}.png"
    fig.savefig(path, dpi=130)
    return path


def best_at(rows: list[dict[str, Any]], problem: str, max_grads: float) -> dict[str, Any] | None:
    """The lowest relative error within a time budget (a zero hypergradient, ``fixed``, is no answer)."""
    ok = [r for r in rows if r["problem"] == problem and r["status"] == "ok" and r["time_grads_median"] <= max_grads
          and math.isfinite(r["rel_err"]) and math.isfinite(r["cosine"])]
    return min(ok, key=lambda r: r["rel_err"]) if ok else None


def _label(r: dict[str, Any]) -> str:
    return r["series"] + (f" ({r['budget_param']}={r['budget']})" if r["budget_param"] else "")


def _retrained(rows: list[dict[str, Any]], problem: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["problem"] == problem and r["status"] == "ok" and r.get("retrain_descent_method") not in (None, "")
            and math.isfinite(r["retrain_descent_method"])]


def retrain_reading(rows: list[dict[str, Any]], problem: str) -> list[str]:
    """The retraining check's table for one problem (runs with ``--retrain-steps``), beside the
    accuracy against the reference (relative error, cosine, scale-free error), else nothing."""
    ok = _retrained(rows, problem)
    if not ok:
        return []
    f = ok[0]
    table = [[_label(r), f"{r['rel_err']:.2g}", f"{r['cosine']:.3f}", f"{r['scale_free_err']:.2g}",
              f"{r['retrain_descent_method']:.3g}", f"{r['retrain_descent_ratio']:.3g}", f"{r['retrain_predicted_vs_realised']:.3g}",
              f"{r['time_grads_median']:.1f}"] for r in sorted(ok, key=lambda r: -r["retrain_descent_method"])]
    return [f"Every point, by realised descent after retraining (T = {int(f['retrain_steps'])} inner steps from this w, "
            f"ε = {f['retrain_eps']:g}; along the reference's direction {f['retrain_descent_reference']:.3g} realised where the "
            f"reference predicts {f['ref_norm']:.3g}; noise floor {f['retrain_noise_floor']:.2g} RMS, "
            f"{f.get('retrain_noise_max', float('nan')):.2g} max over {int(f['retrain_directions'])} random directions orthogonal "
            f"to it; rounding step {f['retrain_resolution']:.1g}):", "",
            output.md_table(["method", "rel. error", "cosine", "scale-free error", "realised descent", "÷ reference's",
                             "predicted / realised", "time (gradients)"], table), ""]


BUCKETS = (1, 3, 10, 30, 100, 300)


def best_direction_at(rows: list[dict[str, Any]], problem: str, max_grads: float) -> list[dict[str, Any]]:
    """The points within a time budget with a retraining check, best realised descent first (one
    per series: its best)."""
    ok = [r for r in _retrained(rows, problem) if r["time_grads_median"] <= max_grads]
    best: dict[str, dict[str, Any]] = {}
    for r in sorted(ok, key=lambda r: -r["retrain_descent_method"]):
        best.setdefault(r["series"], r)
    return list(best.values())


def budget_reading(rows: list[dict[str, Any]], problem: str) -> list[str]:
    """Per time budget, the method whose direction lowers L_V most after retraining, in a table
    and in words: ahead of the next method only by more than the noise floor."""
    ok = _retrained(rows, problem)
    if not ok:
        return []
    f = ok[0]
    floor, noise_max = f["retrain_noise_floor"], f.get("retrain_noise_max", float("nan"))
    table, words, seen = [], [], None
    for budget in BUCKETS:
        ranked = best_direction_at(rows, problem, budget)
        if not ranked:
            continue
        b = ranked[0]
        table.append([f"≤ {budget}", _label(b), f"{b['retrain_descent_method']:.3g}", f"{b['retrain_descent_ratio']:.2f}",
                      f"{b['retrain_descent_method'] / floor:.2g}" if floor > 0 else "—", f"{b['cosine']:.3f}",
                      f"{b['scale_free_err']:.2g}", f"{b['rel_err']:.2g}", f"{b['time_grads_median']:.1f}"])
        if seen == _label(b):
            continue
        seen = _label(b)
        runner = ranked[1] if len(ranked) > 1 else None
        text = (f"- With **{budget} gradients** or fewer, **{_label(b)}** gives the direction that lowers the validation loss "
                f"most after retraining: {b['retrain_descent_method']:.3g} per unit step, "
                f"{b['retrain_descent_ratio']:.2f}× the reference's direction")
        if not b["retrain_descent_method"] > noise_max:
            text += f"; that is not above what a random direction realises (up to {noise_max:.2g}): not resolved"
        elif runner is not None and b["retrain_descent_method"] - runner["retrain_descent_method"] <= floor:
            text += (f"; {_label(runner)} ({runner['retrain_descent_method']:.3g}) is within the noise floor ({floor:.2g}) of it: "
                     f"a tie")
        elif runner is not None:
            text += f"; the next, {_label(runner)}, realises {runner['retrain_descent_method']:.3g}"
        words.append(text + f" (cost {b['time_grads_median']:.1f} gradients; cosine to the reference {b['cosine']:.3f}).")
    return [f"**Which direction lowers the validation loss most, per budget.** D = the realised dL_V/dλ along a method's "
            f"unit direction after T = {int(f['retrain_steps'])} retraining steps: the validation loss falls by about ε·D for a "
            f"step ε against it, whatever the hypergradient's length. Noise floor: {floor:.2g} RMS ({noise_max:.2g} max) over "
            f"{int(f['retrain_directions'])} random directions; the same T batches for every direction (with minibatches, one "
            f"draw of them). A negative D: a step against that direction raises the validation loss.", "",
            output.md_table(["budget (gradients)", "best direction", "realised descent D", "÷ reference's", "÷ noise floor",
                             "cosine", "scale-free error", "rel. error", "time (gradients)"], table), "", *words, ""]


def damping_reading(damping: list[dict[str, Any]], problem: str) -> list[str]:
    mine = [r for r in damping if r["problem"] == problem]
    if len(mine) < 2:
        return []
    has_retrain = any(isinstance(r.get("retrain_descent"), float) and math.isfinite(r["retrain_descent"]) for r in mine)
    table = [[f"{r['damping']:g}", f"{r['norm_ratio']:.3f}", f"{r['cosine']:.4f}", f"{r['rel_err']:.3g}",
              "—" if r.get("reference_residual") in (None, "") or not math.isfinite(r["reference_residual"])
              else f"{r['reference_residual']:.1e}",
              *([f"{r['retrain_descent']:.3g}"] if has_retrain else [])] for r in mine]
    worst = max(mine[1:], key=lambda r: abs(r["norm_ratio"] - 1))
    return ["The reference's sensitivity to a damping δ added to its curvature (the same solve with C + δ·I; "
            "`frontier_damping.csv`): its magnitude ‖g_δ‖/‖g_0‖ and direction (cosine to g_0)"
            + (", and the realised descent along it after retraining" if has_retrain else "") + ":", "",
            output.md_table(["δ", "‖g_δ‖ / ‖g_0‖", "cosine to g_0", "rel. change", "solve's residual",
                             *(["realised descent"] if has_retrain else [])], table), "",
            f"At δ = {worst['damping']:g} its magnitude moves by {100 * abs(worst['norm_ratio'] - 1):.0f} % and its direction by a "
            f"cosine of {worst['cosine']:.3f}.", ""]


def point_reading(f: dict[str, Any]) -> str:
    """The point in words: how it was reached, how stationary, the Hessian's spectrum, and what
    that makes of the reference."""
    start, now = f.get("inner_grad_norm_start"), f["inner_grad_norm"]
    stationary = f.get("stationary") in (True, "True")
    txt = f"The point: {f.get('inner_training', '?')}. There ‖∂L_T/∂w‖ = {now:.2g}"
    if isinstance(start, float) and math.isfinite(start):
        txt += f", against {start:.2g} at the start (the initial weights, same batch): ×{now / start:.1g}"
    neg, small = f.get("hess_neg_count"), f.get("hess_small_count")
    spectrum = f.get("hess_spectrum") or "Lanczos"
    txt += (f". The Hessian's extreme eigenvalues ({spectrum}): {f['hess_eig_max']:.3g} and {f['hess_eig_min']:.3g}"
            + (f"; {int(neg)} negative, {int(small)} with |λ| < {SMALL_EIG:g}" if isinstance(neg, (int, float)) and neg == neg else "")
            + ". ")
    if stationary and f["hess_eig_min"] > 0:
        txt += ("**Stationary, H ≻ 0**: the IFT's premises hold, and the reference is the derivative of the best response "
                "w*(λ) — the target every IFT method aims at.")
    elif stationary:
        txt += ("**Stationary, but H is indefinite** (a saddle): the IFT formula is defined, yet its solution is not the "
                "derivative of a minimiser; the retraining check is the ground truth.")
    else:
        txt += (f"**Not a stationary point** (‖∂L_T/∂w‖ is not below {STATIONARY_RATIO:g} of its start): the IFT's premise "
                "∂L_T/∂w = 0 fails, so the reference is not the target here — errors against it measure closeness to one "
                "well-posed proxy. Methods are ranked by the retraining check instead.")
    return txt


def neumann_reading(rows: list[dict[str, Any]]) -> list[str]:
    """Neumann at its largest budget, per problem: its ℓ2 error beside its direction's, and what
    its direction realises after retraining (the paper's own argument is by direction)."""
    out = []
    for problem in dict.fromkeys(r["problem"] for r in rows):
        ns = [r for r in rows if r["problem"] == problem and r["series"] == "neumann" and r["status"] == "ok"
              and isinstance(r["budget"], int)]
        if not ns:
            continue
        r = max(ns, key=lambda r: r["budget"])
        retrain = (f"; after retraining its direction realises {r['retrain_descent_ratio']:.2f}× the reference's descent"
                   if isinstance(r.get("retrain_descent_ratio"), float) and math.isfinite(r["retrain_descent_ratio"]) else "")
        out.append(f"- **{problem}**, neumann ({r['budget_param']}={r['budget']}): relative error {r['rel_err']:.2g}, cosine "
                   f"{r['cosine']:.3f}, scale-free error √(1 − cos²) = {r['scale_free_err']:.2g}{retrain}.")
    if not out:
        return []
    return ["Neumann's relative error stays large where the reference lives in directions of small curvature: i terms with "
            "step α reach only the part of H⁻¹ that i + 1 SGD steps of size α reach (the paper's theorem: it is the response "
            "of a short retraining). Lorraine et al. say this themselves — in their inverse-quality experiment Neumann has "
            "the *larger* ℓ2 error and often the higher cosine, and they argue by direction. So read Neumann by its cosine, "
            "its scale-free error (the relative error at its best scale) and the retraining check, not by its relative error:",
            "", *out, ""]


def reading(rows: list[dict[str, Any]], quick: bool, damping: list[dict[str, Any]] | None = None, notes: str | None = None) -> str:
    """The README: ``notes`` (the output folder's hand-written ``notes.md``, where it has one) after
    the introduction, then each problem, Grazzi's ordering and the reading."""
    damping = damping or []
    parts = ["# Hypergradient accuracy for its cost", "",
             "Generated by `hgbench-bench frontier --out results/frontier` (`benchmarks/frontier.py`, whose docstring "
             "says exactly what is measured; the command with its options is in the repository's README). Each problem is "
             "one fixed point (w, λ) with fixed batches; every registered method is asked for the hypergradient there and "
             "compared with the reference — by relative error ‖g − g_ref‖/‖g_ref‖, cosine, and scale-free error √(1 − cos²) "
             "(the relative error at the best scale: the direction's error alone) — and, with `--retrain-steps`, by the "
             "retraining check: the realised derivative of the validation loss along its direction once the weights have "
             "retrained, the ground truth a user of the hypergradient needs. Time is in plain gradients of L_T on the same "
             "batch (median of side-by-side repetitions); memory is the growth of the peak RSS in a fresh process per "
             "problem. CSV: `frontier.csv` (every point), `frontier_damping.csv` (the reference's damping sensitivity); "
             "plots: `frontier_<problem>.png` (relative error against time and against memory, log–log).", ""]
    if quick:
        parts += ["> **QUICK SMOKE RUN** (`--quick`): tiny problems, two budgets, one repetition, memory in-process — these "
                  "numbers only show that the code runs.", ""]
    if notes:
        parts += [notes.rstrip(), ""]
    for problem in dict.fromkeys(r["problem"] for r in rows):
        f = next(r for r in rows if r["problem"] == problem)
        stationary = f.get("stationary") in (True, "True")
        res = f"; reached relative residual {f['reference_residual']:.1e}" if f.get("reference_residual") not in (None, "") else ""
        parts += [f"## {problem} ({f['num_weights']:,} weights, {f['num_hyperparams']:,} hyperparameters)", "",
                  f"Reference: {f['reference']}{res}.", "", point_reading(f), "",
                  f"![{problem}](frontier_{problem}.png)", ""]
        parts += budget_reading(rows, problem)
        table = []
        for budget in BUCKETS:
            b = best_at(rows, problem, budget)
            if b is not None:
                ratio = b.get("retrain_descent_ratio")
                table.append([f"≤ {budget}", _label(b), f"{b['rel_err']:.2g}", f"{b['cosine']:.3f}", f"{b['scale_free_err']:.2g}",
                              f"{ratio:.2f}" if isinstance(ratio, float) and math.isfinite(ratio) else "—",
                              f"{b['time_grads_median']:.1f}", f"{b['peak_mb']:.1f}"])
        parts += [("Closest to the reference within a time budget:" if stationary else
                   "Closest to the reference within a time budget (**a proxy here**, the point is not stationary):"), "",
                  output.md_table(["budget (gradients)", "method", "rel. error", "cosine", "scale-free error",
                                   "descent ÷ reference's", "time (gradients)", "peak MB"], table), ""]
        parts += damping_reading(damping, problem)
        parts += retrain_reading(rows, problem)
        skipped = [r for r in rows if r["problem"] == problem and r["status"] == "skipped"]
        if skipped:
            parts += ["Not run here: " + "; ".join(sorted({f"{r['series']} ({r['note'].split(';')[0][:110]})" for r in skipped})), ""]
    parts += ["## The ordering of Grazzi et al. (ICML 2020)", "",
              "On a contractive problem they prove AID with CG ahead of AID with fixed-point iterations (`fixed_point`) ahead "
              "of iterative differentiation (`unroll`) at equal iterations. Relative error, budget by budget (iterations = "
              "steps), on the Hessian: " + ("" if rows else "—"), "", *grazzi_reading(rows),
              "", "The theorem needs a contraction (H ≻ 0 and SGD's map I − αH a contraction at the point): where the "
              "problem's point is not stationary or H is indefinite (see each problem's point above) the ordering is "
              "reported, not expected.", ""]
    parts += ["## Reading", ""]
    parts += neumann_reading(rows)
    for problem in dict.fromkeys(r["problem"] for r in rows):
        last = {}
        for r in rows:
            if r["problem"] == problem and r["status"] == "ok" and r["budget_param"]:
                if r["series"] not in last or r["budget"] > last[r["series"]]["budget"]:
                    last[r["series"]] = r
        h = [f"{s} {r['rel_err']:.2g}" for s, r in sorted(last.items()) if "(ggn)" not in s]
        g = [f"{s} {r['rel_err']:.2g}" for s, r in sorted(last.items()) if "(ggn)" in s]
        exact = {r["series"]: r for r in rows if r["problem"] == problem and r["method"] == "exact" and r["status"] == "ok"}
        ex = "; exact: " + ", ".join(f"{s} {r['rel_err']:.2g}" for s, r in sorted(exact.items())) if exact else ""
        parts.append(f"- **{problem}**, relative error at the largest budget — on H: {', '.join(h) or '—'}; "
                     f"on the Gauss–Newton matrix: {', '.join(g) or '—'}{ex}.")
    for problem in dict.fromkeys(r["problem"] for r in rows):
        for r in rows:
            if r["problem"] != problem or "batch" not in r["series"] or r["status"] != "ok" or r["budget"] != max(STOCHASTIC_BUDGETS):
                continue
            base = next((b for b in rows if b["problem"] == problem and b["series"] == r["method"] and b["budget"] == r["budget"]
                         and b["status"] == "ok"), None)
            if base is not None:
                parts.append(f"- **{problem}**, {r['series']} at {r['budget_param']}={r['budget']}: median error "
                             f"{r['rel_err']:.2g} (min–max {r['rel_err_min']:.2g}–{r['rel_err_max']:.2g} over {r['draws']} draws) "
                             f"against {base['rel_err']:.2g} with the batch's own Hessian, in {r['time_grads_median']:.1f} "
                             f"gradients instead of {base['time_grads_median']:.1f}.")
    parts += ["",
              "- A Hessian from another minibatch (`hessian_batch_size`) is another matrix: solving it harder converges to "
              "its inverse, not the batch's, so its error can grow with the budget while each product is cheaper.",
              "- The reference decides what \"accurate\" means. At a stationary point with H ≻ 0 every IFT solver of H "
              "converges to the same vector, the derivative of the best response, and the choice is speed: CG and MINRES in "
              "about as many iterations as H has distinct eigenvalues, Neumann geometrically at a rate set by α·λ_min(H). "
              "Solvers of the Gauss–Newton matrix (`(ggn)` rows) converge to another vector. Where the point is not "
              "stationary or H is indefinite, the reference is a proxy and the retraining check decides.",
              "- `identity` and `neumann` with 0 iterations cost about one gradient and give ∂L_V/∂w's direction scaled; "
              "`unroll` pays a gradient per step and its memory grows with its steps (right-hand plot); `exact` is out of "
              "reach past a few thousand weights.",
              "- Before trusting any IFT hypergradient on a network, check how stationary w is (`inner_grad_norm`) and "
              "`hess_eig_min` (recorded per run with `reference.every`), or run the retraining check (`reference=retrain`).", ""]
    return "\n".join(parts)


def _notes(out: Path) -> str | None:
    """``<out>/notes.md``: a hand-written reading of the committed numbers, kept across re-runs."""
    path = out / "notes.md"
    return path.read_text() if path.exists() else None


def rewrite(out: Path) -> None:
    """Plots and README again from ``<out>/frontier.csv`` (after a change to how they are drawn)."""
    rows = output.read_csv(out / "frontier.csv")
    for r in rows:  # "nan" and blanks come back as text
        for k in ("rel_err", "cosine", "time_grads_median", "peak_mb", "reference_residual", "hess_eig_min", "hess_eig_max",
                  "inner_grad_norm", "inner_grad_norm_start", "ref_norm", "scale_free_err", "hess_neg_count", "hess_small_count",
                  "retrain_noise_max", *RETRAIN_COLUMNS):
            if isinstance(r.get(k), str):
                r[k] = float(r[k]) if r[k] else (None if k == "reference_residual" else float("nan"))
    for r in rows:
        if isinstance(r.get("budget"), str) and r["budget"].isdigit():
            r["budget"] = int(r["budget"])
    damping = output.read_csv(out / "frontier_damping.csv") if (out / "frontier_damping.csv").exists() else []
    for r in damping:
        for k in ("damping", "norm", "norm_ratio", "cosine", "rel_err", "scale_free_err", "reference_residual", "retrain_descent"):
            if isinstance(r.get(k), str):
                r[k] = float(r[k]) if r[k] else float("nan")
    for problem in dict.fromkeys(r["problem"] for r in rows):
        plot(rows, problem, out)
    text = reading(rows, quick=False, damping=damping, notes=_notes(out))
    if (out / "frontier_run.csv").exists():
        run_rows = output.read_csv(out / "frontier_run.csv")
        plot_run(run_rows, out)
        text += "\n" + "\n".join(run_reading(run_rows))
    (out / "README.md").write_text(text)


def run(out: Path, quick: bool = False, device: str = "auto", reps: int | None = None,
        problems: tuple[str, ...] = PROBLEMS, retrain=None, budgets: tuple[int, ...] | None = None,
        series: dict[str, tuple[str, ...]] | None = None, along: bool = True) -> list[dict[str, Any]]:
    """``retrain``: ``hgbench.accuracy.RetrainSettings`` for the retraining check at every point
    (``hgbench-bench frontier --retrain-steps T``), a dict problem → settings, or None (off).
    ``budgets``: instead of ``BUDGETS``; ``series``: problem → the series labels measured there
    (a problem not in it: all); ``along``: the warm starts along a run (with ``mlp``)."""
    dev = resolve_device(device)
    reps = reps or (1 if quick else 5)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    damping: list[dict[str, Any]] = []
    for problem in problems:
        rows += measure(problem, quick, dev, reps, retrain, budgets, (series or {}).get(problem), damping)
    output.write_csv(out, "frontier", rows, dev)
    output.write_csv(out, "frontier_damping", damping, dev)
    for problem in problems:
        plot(rows, problem, out)
    run_rows = along_a_run(quick, dev) if along and "mlp" in problems else []
    if run_rows:
        output.write_csv(out, "frontier_run", run_rows, dev)
        plot_run(run_rows, out)
    (out / "README.md").write_text(reading(rows, quick, damping, _notes(out)) + ("\n" + "\n".join(run_reading(run_rows)) if run_rows else ""))
    return rows
