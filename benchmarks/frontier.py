"""The accuracy–cost frontier: how close each hypergradient method gets to a trusted reference,
for how much time and memory (``hgbench-bench frontier --out results/frontier``).

Three problems, each at one fixed point (w, λ) with fixed batches, so every method answers the
same question:

- ``ridge``: linear regression with one decay per feature (float64, 30 features, full batch), at
  the exact inner optimum — convex; the reference is the closed form (a dense solve of the
  positive-definite Hessian);
- ``mlp``: digits, a 64-32-10 MLP with one decay per weight (2,410), full batch, float64, inner
  optimisation run to a small gradient — non-convex: the Hessian there is indefinite, so the
  reference is the IFT formula with the Gauss–Newton matrix, solved densely (``exact``,
  ``curvature=ggn``);
- ``cnn``: mnist_5k images, the default LeNet-like CNN (97,982 weights, one decay each), batches
  of 256, after 300 SGD steps — the reference is CG on the Gauss–Newton matrix to a relative
  residual of 1e-10 (or its iteration cap; the residual reached is in the CSV).

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
PROBLEMS = ("ridge", "mlp", "cnn")
RETRAIN_COLUMNS = ("retrain_eps", "retrain_descent_reference", "retrain_predicted_vs_realised_reference", "retrain_noise_floor",
                   "retrain_resolution", "retrain_descent_method", "retrain_predicted_vs_realised", "retrain_descent_ratio")
REFERENCE = {
    "ridge": "closed form (dense solve of the positive-definite Hessian)",
    "mlp": "IFT with the Gauss–Newton matrix, solved densely (exact, curvature=ggn)",
    "cnn": "CG on the Gauss–Newton matrix to a relative residual of 1e-10",
}


# --- the problems ---------------------------------------------------------------------------------
def build(problem: str, quick: bool, device: str = "cpu"):
    """(experiment at its fixed point, train batch, val batch) — deterministic (seeded)."""
    from hgbench import build_experiment

    base = [f"device={device}", "warmup=false", "seed=0"]
    if problem == "ridge":
        exp = build_experiment(dataset="synthetic_linear", model="linear", hyperparam="weight_decay_per_param", overrides=[
            *base, "model.bias=false", "dtype=float64", "hyperparam.init_decay=0.05", "dataset.num_features=30",
            "dataset.informative=5", "dataset.train_size=100", "dataset.val_size=100"])
        d = exp.problem.data
        h = 2 * d.train.x.T @ d.train.x / len(d.train.x) + torch.diag(exp.lam.detach().exp())
        exp.w = torch.linalg.solve(h, 2 * d.train.x.T @ d.train.y / len(d.train.x))  # the exact optimum
        return exp, exp.problem.full_batch("train"), exp.problem.full_batch("val")
    if problem == "mlp":
        exp = build_experiment(dataset="digits", model="mlp", hyperparam="weight_decay_per_param", overrides=[
            *base, "dtype=float64", f"model.hidden=[{8 if quick else 32}]", "hyperparam.init_decay=1e-3",
            "train_batch_size=null", "inner_optimizer.lr=0.5", "inner_optimizer.momentum=0.9",
            *(["dataset.train_size=100", "dataset.val_size=100"] if quick else [])])
        exp.train_inner(300 if quick else 4000)
        return exp, exp.problem.full_batch("train"), exp.problem.full_batch("val")
    if problem == "cnn":
        size = ["model.channels=[2,2]", "model.hidden=[8]", "train_batch_size=32", "val_batch_size=32"] if quick else \
            ["train_batch_size=256", "val_batch_size=256"]
        exp = build_experiment(dataset="mnist_5k", model="cnn", hyperparam="weight_decay_per_param", overrides=[
            *base, "dataset.image=true", "hyperparam.init_decay=1e-3", *size])
        exp.train_inner(20 if quick else 300)
        return exp, exp.train_sampler.next(), exp.val_sampler.next()
    raise ValueError(f"unknown frontier problem {problem!r}; one of {', '.join(PROBLEMS)}")


def reference(problem: str, exp, tb, vb, quick: bool) -> tuple[torch.Tensor, float | None]:
    """(the reference hypergradient, the relative residual of its solve where iterative)."""
    from hgbench.ift import ift_hypergradient
    from hgbench.linalg import cg_solve

    if problem == "ridge":
        return exp.hypergradient_flat(problems.method("exact"), tb, vb), None
    if problem == "mlp":
        return exp.hypergradient_flat(problems.method("exact", curvature="ggn"), tb, vb), None
    residual: list[float] = []

    def solve(matvec, b):
        x = cg_solve(matvec, b, iterations=100 if quick else 3000, tol=1e-10)
        residual.append((torch.linalg.vector_norm(matvec(x) - b) / torch.linalg.vector_norm(b)).item())
        return x

    bl = exp.problem.bilevel(tb, vb, exp.w.detach(), exp.lam.detach())
    hg = ift_hypergradient(bl.train_loss, bl.val_loss, bl.w, bl.lam, solve, bl.curvature("ggn"))
    return hg, residual[0]


def points(exp, quick: bool, batch: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """(series label, method node) for every registered hypergrad method: its budgets, its
    ``curvature=ggn`` variant where it has one and the problem allows it, and for the methods in
    ``STOCHASTIC`` the Hessian on a quarter of the ``batch`` (``hessian_batch_size``)."""
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
            budgets = QUICK_BUDGETS if quick else (only or BUDGETS)
            for b in (budgets if cls.budget else [None]):
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
    for _label, node in points(exp, spec["quick"], len(tb.x)):
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
def curvature_facts(exp, tb, steps: int) -> dict[str, float]:
    """‖∂L_T/∂w‖ and the Hessian's extreme Ritz values (Lanczos) at the problem's point."""
    from hgbench.ift import HessianVectorProduct
    from hgbench.linalg import lanczos_extremes

    w = exp.w.detach().requires_grad_(True)
    (gw,) = torch.autograd.grad(exp.problem.train_loss(w, exp.lam.detach(), tb), w, create_graph=True)
    hvp = HessianVectorProduct(gw, w)
    eig_max, eig_min = lanczos_extremes(lambda v: hvp(v).detach(), w.numel(), steps, like=w.detach())
    return {"inner_grad_norm": torch.linalg.vector_norm(gw.detach()).item(), "hess_eig_max": eig_max, "hess_eig_min": eig_min}


def retrain_point(exp, hg: torch.Tensor, settings) -> dict[str, float]:
    """The retraining check along ``hg`` alone (settings' random directions included where it
    has any), at the problem's point, its batches seeded alike for every call."""
    exp.retrain = settings
    return exp.retraining_check(hg, None, exp.process_state.snapshot(), 0)


def measure(problem: str, quick: bool, device: torch.device, reps: int, retrain=None) -> list[dict[str, Any]]:
    """Every point of one problem; with ``retrain`` (``hgbench.accuracy.RetrainSettings``) the
    retraining check at each point too."""
    import dataclasses

    from hgbench.ift import count_products

    exp, tb, vb = build(problem, quick, str(device))
    ref, residual = reference(problem, exp, tb, vb, quick)
    ref = ref.double()
    facts = {"problem": problem, "num_weights": exp.problem.num_weights, "num_hyperparams": exp.problem.num_hyperparams,
             "reference": REFERENCE[problem], "reference_residual": residual, "ref_norm": torch.linalg.vector_norm(ref).item(),
             **curvature_facts(exp, tb, 20 if quick else 100)}
    if retrain is not None:  # along the reference, and k random directions orthogonal to it: once per problem
        base = retrain_point(exp, ref, retrain)
        facts.update({"retrain_steps": retrain.steps, "retrain_eps": retrain.eps, "retrain_directions": retrain.directions,
                      "retrain_descent_reference": base["retrain_descent_method"],
                      "retrain_predicted_vs_realised_reference": base["retrain_predicted_vs_realised"],
                      "retrain_noise_floor": base.get("retrain_noise_floor", float("nan")),
                      "retrain_resolution": base["retrain_resolution"]})
        along_method = dataclasses.replace(retrain, directions=0)

    def plain_gradient():
        w_ = exp.w.detach().requires_grad_(True)
        return torch.autograd.grad(exp.problem.train_loss(w_, exp.lam.detach(), tb), w_)

    memory: dict[str, float] = {}
    if not quick:  # a fresh process per problem; --quick measures in this process (a smoke run)
        res = worker.run_worker("frontier:worker_memory", {"problem": problem, "quick": quick, "device": str(device)},
                                timeout=3600, exact_rss=True)
        memory = res.get("peak_mb", {}) if res["status"] == "ok" else {}
    rows = []
    for label, node in points(exp, quick, len(tb.x)):
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


def retrain_reading(rows: list[dict[str, Any]], problem: str) -> list[str]:
    """The retraining check's table for one problem (runs with ``--retrain-steps``), else nothing."""
    ok = [r for r in rows if r["problem"] == problem and r["status"] == "ok" and r.get("retrain_descent_method") not in (None, "")
          and math.isfinite(r["retrain_descent_method"])]
    if not ok:
        return []
    f = ok[0]
    table = [[r["series"] + (f" ({r['budget_param']}={r['budget']})" if r["budget_param"] else ""), f"{r['scale_free_err']:.2g}",
              f"{r['retrain_descent_method']:.3g}", f"{r['retrain_descent_ratio']:.3g}", f"{r['retrain_predicted_vs_realised']:.3g}",
              f"{r['time_grads_median']:.1f}"] for r in sorted(ok, key=lambda r: -r["retrain_descent_method"])]
    return [f"Retraining check (T = {int(f['retrain_steps'])} inner steps from this w, ε = {f['retrain_eps']:g}): along the "
            f"reference's direction dL_V/dλ after retraining is {f['retrain_descent_reference']:.3g} (the reference predicts "
            f"{f['ref_norm']:.3g}); noise floor {f['retrain_noise_floor']:.2g} (RMS over {int(f['retrain_directions'])} random "
            f"directions orthogonal to it), rounding step {f['retrain_resolution']:.1g}. Methods by realised descent:", "",
            output.md_table(["method", "scale-free error", "realised descent", "÷ reference's", "predicted / realised",
                             "time (gradients)"], table), ""]


def reading(rows: list[dict[str, Any]], quick: bool) -> str:
    parts = ["# Hypergradient accuracy for its cost", "",
             "Generated by `hgbench-bench frontier --out results/frontier` (`benchmarks/frontier.py`, whose docstring "
             "says exactly what is measured). Each problem is one fixed point (w, λ) with fixed batches; every registered "
             "method is asked for the hypergradient there and compared with the reference. Time is in plain gradients of "
             "L_T on the same batch (median of side-by-side repetitions); memory is the growth of the peak RSS in a fresh "
             "process per problem. CSV: `frontier.csv`; plots: `frontier_<problem>.png` (relative error against time and "
             "against memory, log–log).", ""]
    if quick:
        parts += ["> **QUICK SMOKE RUN** (`--quick`): tiny problems, two budgets, one repetition, memory in-process — these "
                  "numbers only show that the code runs.", ""]
    for problem in dict.fromkeys(r["problem"] for r in rows):
        f = next(r for r in rows if r["problem"] == problem)
        res = f"; reached relative residual {f['reference_residual']:.1e}" if f.get("reference_residual") not in (None, "") else ""
        parts += [f"## {problem} ({f['num_weights']:,} weights, {f['num_hyperparams']:,} hyperparameters)", "",
                  f"Reference: {f['reference']}{res}. At this point ‖∂L_T/∂w‖ = {f['inner_grad_norm']:.2g}; the Hessian's "
                  f"extreme eigenvalue estimates (Lanczos) are {f['hess_eig_max']:.3g} and {f['hess_eig_min']:.3g}"
                  + (" — **indefinite**: no method that inverts H has its assumption (H ≻ 0) here." if f["hess_eig_min"] < 0
                     else " (positive definite)."), "",
                  f"![{problem}](frontier_{problem}.png)", ""]
        table = []
        for budget in (1, 3, 10, 30, 100, 300):
            b = best_at(rows, problem, budget)
            if b is not None:
                table.append([f"≤ {budget}", b["series"] + (f" ({b['budget_param']}={b['budget']})" if b["budget_param"] else ""),
                              f"{b['rel_err']:.2g}", f"{b['cosine']:.3f}", f"{b['time_grads_median']:.1f}", f"{b['peak_mb']:.1f}"])
        parts += ["Most accurate method within a time budget:", "",
                  output.md_table(["budget (gradients)", "method", "rel. error", "cosine", "time (gradients)", "peak MB"], table), ""]
        parts += retrain_reading(rows, problem)
        skipped = [r for r in rows if r["problem"] == problem and r["status"] == "skipped"]
        if skipped:
            parts += ["Not run here: " + "; ".join(sorted({f"{r['series']} ({r['note'].split(';')[0][:110]})" for r in skipped})), ""]
    parts += ["## The ordering of Grazzi et al. (ICML 2020)", "",
              "On a contractive problem they prove AID with CG ahead of AID with fixed-point iterations (`fixed_point`) ahead "
              "of iterative differentiation (`unroll`) at equal iterations. Relative error, budget by budget (iterations = "
              "steps), on the Hessian: " + ("" if rows else "—"), "", *grazzi_reading(rows),
              "", "Only ridge is contractive here (H ≻ 0, SGD's map I − αH a contraction); on the networks H is "
              "indefinite and the reference is on the Gauss–Newton matrix, so the theorem does not apply there and the "
              "ordering is reported, not expected.", ""]
    parts += ["## Reading", ""]
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
              "its inverse, not the batch's, so its error can grow with the budget (ridge, above) while each product is "
              "cheaper; on the networks, where every solve of H is far from the reference anyway, cg's error changes little, "
              "while Neumann — its step set for the whole batch's curvature — can diverge on a quarter batch (see the "
              "min–max).",
              "- The reference decides what \"accurate\" means. Where H ≻ 0 (ridge) every IFT solver converges to the same "
              "closed form and the choice is speed: CG and MINRES in about as many iterations as H has distinct "
              "eigenvalues, Neumann geometrically at a rate set by α·λ_min(H). Where H is indefinite (the networks here), "
              "solvers of H itself approach the exact-Hessian IFT formula, a different vector from the Gauss–Newton "
              "reference, and their error need not fall with budget — compare each method with its `(ggn)` row.",
              "- `identity` and `neumann` with 0 iterations cost about one gradient and give ∂L_V/∂w's direction scaled; "
              "`unroll` pays a gradient per step and its memory grows with its steps (right-hand plot); `exact` is out of "
              "reach past a few thousand weights.",
              "- For a budget, take the most accurate method from the problem's table; before trusting any IFT hypergradient "
              "on a network, check `hess_eig_min` (recorded per run with `reference.every`).", ""]
    return "\n".join(parts)


def rewrite(out: Path) -> None:
    """Plots and README again from ``<out>/frontier.csv`` (after a change to how they are drawn)."""
    rows = output.read_csv(out / "frontier.csv")
    for r in rows:  # "nan" and blanks come back as text
        for k in ("rel_err", "cosine", "time_grads_median", "peak_mb", "reference_residual", "hess_eig_min", "hess_eig_max",
                  "inner_grad_norm", "ref_norm", "scale_free_err", *RETRAIN_COLUMNS):
            if isinstance(r.get(k), str):
                r[k] = float(r[k]) if r[k] else (None if k == "reference_residual" else float("nan"))
    for problem in dict.fromkeys(r["problem"] for r in rows):
        plot(rows, problem, out)
    text = reading(rows, quick=False)
    if (out / "frontier_run.csv").exists():
        run_rows = output.read_csv(out / "frontier_run.csv")
        plot_run(run_rows, out)
        text += "\n" + "\n".join(run_reading(run_rows))
    (out / "README.md").write_text(text)


def run(out: Path, quick: bool = False, device: str = "auto", reps: int | None = None,
        problems: tuple[str, ...] = PROBLEMS, retrain=None) -> list[dict[str, Any]]:
    """``retrain``: ``hgbench.accuracy.RetrainSettings`` for the retraining check at every point
    (``hgbench-bench frontier --retrain-steps T``), or None (off)."""
    dev = resolve_device(device)
    reps = reps or (1 if quick else 5)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for problem in problems:
        rows += measure(problem, quick, dev, reps, retrain)
    output.write_csv(out, "frontier", rows, dev)
    for problem in problems:
        plot(rows, problem, out)
    run_rows = along_a_run(quick, dev) if "mlp" in problems else []
    if run_rows:
        output.write_csv(out, "frontier_run", run_rows, dev)
        plot_run(run_rows, out)
    (out / "README.md").write_text(reading(rows, quick) + ("\n" + "\n".join(run_reading(run_rows)) if run_rows else ""))
    return rows
