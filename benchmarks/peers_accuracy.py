"""Study ``peers`` (part 2): time to accuracy against the peers (TorchOpt, Betty; ``peer_libs``).

For each method, the smallest iteration count on a grid whose relative error ‖g − g_ref‖/‖g_ref‖
is at most each level (``LEVELS``), and the median time of one hypergradient at that count; per
library its fastest method, and hgbench's fastest timed side by side against each peer's fastest.
Three settings: a convex problem at one point (multinomial logistic regression, reference: CG in
float64), the 1M MLP at one point (reference: CG on the Gauss–Newton matrix in float64), and
along a run of hyper-steps on the convex problem (hgbench's CG also warm-started). A level a
method does not reach on the grid is reported as not reached, never extrapolated.

Target: hgbench ≥ 2× faster than the peers at equal error (``TARGET``). Run by the ``peers``
section (``peers.run``), which shares its trained 1M MLP; CSV ``peers_accuracy.csv``, plot
``peers_accuracy.png``, the second part of the ``peers`` fragment.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hgbench.base import Batch
from hgbench.benchmarks import output, plotting, problems, timing
from hgbench.benchmarks.peer_libs import betty_adapter, torchopt_adapter, version
from hgbench.benchmarks.stats import spread

LEVELS = (1e-2, 1e-4)
GRID = (1, 2, 3, 5, 8, 13, 20, 30, 50, 80, 130, 200)
QUICK_GRID = (2, 8, 30)
MLP_GRID = (5, 13, 30, 80, 200)  # coarser on the 1M MLP: each count is a full hypergradient there
RUN_STEPS, QUICK_RUN_STEPS = 10, 2
CONVEX_DECAY = 1e-3  # per-weight decays of the convex problem: H ⪰ 1e-3·I, condition number ~3·10³
QUICK_CONVEX_DECAY = 0.1  # --quick: well conditioned, so the short grid reaches the levels
REF_TOL = 1e-12
TARGET = 2.0  # the goal: hgbench ≥ 2× faster than the peers at equal error


@dataclass
class Candidate:
    """One way to compute the hypergradient at an iteration count ``i``: ``make(i)`` returns a
    function of no arguments giving the flat hypergradient (built outside the timed call)."""

    library: str  # hgbench | torchopt | betty
    label: str
    call: str
    make: Callable[[int], Callable[[], torch.Tensor]]
    start: str = "cold"
    level: float | None = None  # a warm start's chain keeps the solution that reached this level
    advance: Callable[[int | None], None] | None = None  # after the scan: carry the state at that count


def convex_experiment(dev, quick: bool):
    """Multinomial logistic regression (the ``linear`` model, 7,850 weights) on mnist_5k with one
    decay per weight (init 1e-3), batch 128, float32, after SGD to near its optimum: convex, so
    the Hessian is positive definite and every method's limit is the same vector."""
    from hgbench import build_experiment

    exp = build_experiment(overrides=[f"device={dev}", "train_batch_size=128", "val_batch_size=128", "warmup=false",
                                      f"hyperparam.init_decay={QUICK_CONVEX_DECAY if quick else CONVEX_DECAY}"],
                           dataset="mnist_5k", hyperparam="weight_decay_per_param", hypergrad="cg", model="linear")
    exp.train_inner(50 if quick else 300)
    return exp


def reference(exp, tb, vb, curvature: str = "hessian", iterations: int = 3000) -> tuple[torch.Tensor, float]:
    """The reference hypergradient in float64: CG (on H, or on the Gauss–Newton matrix for
    ``curvature='ggn'``) to a relative residual of ``REF_TOL`` or ``iterations`` steps; returns it
    and the relative residual reached."""
    from hgbench.ift import ift_hypergradient
    from hgbench.linalg import cg_solve

    def f64(b: Batch) -> Batch:
        return Batch(b.x.double(), b.y.double() if b.y.is_floating_point() else b.y, b.idx)

    bl = exp.problem.bilevel(f64(tb), f64(vb), exp.w.detach().double(), exp.lam.detach().double())
    residual: list[float] = []

    def solve(matvec, b):
        x = cg_solve(matvec, b, iterations=iterations, tol=REF_TOL)
        residual.append((torch.linalg.vector_norm(matvec(x) - b) / torch.linalg.vector_norm(b)).item())
        return x

    return ift_hypergradient(bl.train_loss, bl.val_loss, bl.w, bl.lam, solve, bl.curvature(curvature)).detach(), residual[0]


def rel_err(g: torch.Tensor, ref: torch.Tensor) -> float:
    """‖g − ref‖ / ‖ref‖ (as the frontier study and the runs' accuracy checks)."""
    g = g.detach().double().flatten().to(ref.device)
    return float(torch.linalg.vector_norm(g - ref) / torch.linalg.vector_norm(ref))


def hgbench_candidate(exp, tb, vb, name: str, label: str | None = None, **params) -> Candidate:
    budget = "rank" if name == "nystrom" else "iterations"
    shown = ", ".join(f"{k}={v}" for k, v in params.items())

    def make(i: int):
        m = problems.method(name, **{budget: i}, **params)
        return lambda: exp.hypergradient_flat(m, tb, vb)

    return Candidate("hgbench", label or name, f"{name}({shown})" if shown else name, make)


def peer_candidates(exp, tb, vb, alpha: float, notes: dict[str, str]) -> list[Candidate]:
    """The peers as documented, defaults kept but the iteration count; plus Neumann with α = the
    inner learning rate (hgbench's default α: the defaults' α = 1 can diverge)."""
    out = []
    if version("torchopt"):
        out += [Candidate("torchopt", "solve_cg()", "solve_cg(maxiter=i) (rtol=1e-5)",
                          lambda i: torchopt_adapter(exp, tb, vb, "cg", i, None, rtol=None)),
                Candidate("torchopt", "solve_normal_cg()", "solve_normal_cg(maxiter=i) (rtol=1e-5)",
                          lambda i: torchopt_adapter(exp, tb, vb, "normal_cg", i, None, rtol=None)),
                Candidate("torchopt", "solve_inv(ns=True)", "solve_inv(ns=True, maxiter=i) (α=1)",
                          lambda i: torchopt_adapter(exp, tb, vb, "neumann", i, None)),
                Candidate("torchopt", f"solve_inv(ns=True, alpha={alpha:g})", f"solve_inv(ns=True, maxiter=i, alpha={alpha:g})",
                          lambda i: torchopt_adapter(exp, tb, vb, "neumann", i, alpha))]
    if version("betty-ml"):
        out += [Candidate("betty", "Config(type='cg')", "Config(type='cg', cg_iterations=i) (cg_alpha=1)",
                          lambda i: betty_adapter(exp, tb, vb, "cg", i, None)),
                Candidate("betty", "Config(type='neumann')", "Config(type='neumann', neumann_iterations=i) (α=1)",
                          lambda i: betty_adapter(exp, tb, vb, "neumann", i, None)),
                Candidate("betty", f"Config(type='neumann', neumann_alpha={alpha:g})",
                          f"Config(type='neumann', neumann_iterations=i, neumann_alpha={alpha:g})",
                          lambda i: betty_adapter(exp, tb, vb, "neumann", i, alpha))]
    return out


def scan(make: Callable[[int], Callable[[], torch.Tensor]], ref: torch.Tensor, grid, levels=LEVELS) -> dict[int, float]:
    """The relative error at each grid count, in order, until every level is reached."""
    errs: dict[int, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in grid:
            errs[i] = rel_err(make(i)(), ref)
            if all(any(e <= lv for e in errs.values()) for lv in levels):
                break
    return errs


def nanmin(values) -> float:
    v = [x for x in values if isinstance(x, (int, float)) and math.isfinite(x)]
    return min(v) if v else float("nan")


def needed(errs: dict[int, float], level: float) -> int | None:
    return next((i for i, e in errs.items() if e <= level), None)


def median_time(fn: Callable[[], Any], reps: int, dev, quick: bool) -> dict[str, float]:
    """Seconds per call: a warm-up, then ``reps`` timings (median and quartiles)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        n = timing.calls_for(timing.timed(fn, dev), timing.timing_target(quick))
        return spread(timing.timed(fn, dev, n) for _ in range(reps))


def side_by_side(peer_fn, hg_fn, reps: int, dev, quick: bool) -> dict[str, float]:
    """hgbench's speed-up over the peer (peer time ÷ hgbench time), timed side by side."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = timing.compare(peer_fn, hg_fn, reps, dev, timing.timing_target(quick))
    return {"median": 1 / r["ratio"]["median"], "q1": 1 / r["ratio"]["q3"], "q3": 1 / r["ratio"]["q1"]}


def time_to_accuracy(problem: str, reference_name: str, cands: list[Candidate], ref: torch.Tensor, grid, reps: int,
                     dev, quick: bool, notes: dict[str, str], setting: str = "one point", step: int | str = "") -> list[dict[str, Any]]:
    """Per candidate and level: the smallest grid count reaching it and that call's median time;
    then per level the best of each library and hgbench's best's speed-up over each peer's best."""
    rows, fns, advances = [], {}, []
    for c in cands:
        levels = LEVELS if c.level is None else (c.level,)
        try:
            errs = scan(c.make, ref, grid, levels)
        except Exception as exc:  # noqa: BLE001 - reported, the others still run
            notes[f"{problem}: {c.library} {c.label}"] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
            print(f"  peers accuracy {problem} {c.library} {c.label}: FAILED {type(exc).__name__}: {exc}", flush=True)
            continue
        for level in levels:
            i = needed(errs, level)
            t = None
            if i is not None:
                fns[(c.label, level)] = fn = c.make(i)
                t = median_time(fn, reps, dev, quick)
            rows.append({"problem": problem, "reference": reference_name, "setting": setting, "step": step, "row": "method",
                         "level": level, "library": c.library, "method": c.label, "call": c.call, "start": c.start,
                         "iterations": i if i is not None else "", "reached": i is not None, "grid_max": max(grid),
                         "min_rel_err": nanmin(errs.values()),
                         "rel_err": errs[i] if i is not None else "", "time_ms": 1e3 * t["median"] if t else "",
                         "time_ms_q1": 1e3 * t["q1"] if t else "", "time_ms_q3": 1e3 * t["q3"] if t else ""})
        best = nanmin(errs.values())
        print(f"  peers accuracy {problem:7s} {c.library:8s} {c.label:42s} "
              + "  ".join(f"{lv:.0e}: " + (f"i={r['iterations']:<4} {r['time_ms']:8.1f} ms" if r["reached"] else f"not reached (best {best:.1e})")
                          for lv, r in zip(levels, rows[-len(levels):], strict=True)), flush=True)
        if c.advance is not None:
            advances.append((c.advance, needed(errs, c.level) if c.level is not None else None))
    rows += best_rows(rows, fns, reps, dev, quick)
    for advance, i in advances:  # a warm start's chain moves on once this step is timed
        advance(i)
    return rows


def best_rows(rows, fns, reps: int, dev, quick: bool) -> list[dict[str, Any]]:
    """Per level and library: its fastest method reaching the level; hgbench's best timed side by
    side against each peer library's best (speed-up = peer ÷ hgbench)."""
    out = []
    for level in LEVELS:
        at = [r for r in rows if r["level"] == level and r["row"] == "method"]
        libs = list(dict.fromkeys(r["library"] for r in at))
        best = {}
        for lib in libs:
            reached = [r for r in at if r["library"] == lib and r["reached"]]
            best[lib] = min(reached, key=lambda r: r["time_ms"]) if reached else None
        hg = best.get("hgbench")
        for lib in libs:
            b = best[lib]
            row = {**at[0], "row": "best", "library": lib, "method": b["method"] if b else "", "call": b["call"] if b else "",
                   "start": b["start"] if b else "", "iterations": b["iterations"] if b else "", "reached": b is not None,
                   "min_rel_err": nanmin(r["min_rel_err"] for r in at if r["library"] == lib),
                   "rel_err": b["rel_err"] if b else "", "time_ms": b["time_ms"] if b else "",
                   "time_ms_q1": b["time_ms_q1"] if b else "", "time_ms_q3": b["time_ms_q3"] if b else "",
                   "speedup_median": "", "speedup_q1": "", "speedup_q3": ""}
            if lib != "hgbench" and b and hg:
                s = side_by_side(fns[(b["method"], level)], fns[(hg["method"], level)], reps, dev, quick)
                row.update(speedup_median=s["median"], speedup_q1=s["q1"], speedup_q3=s["q3"])
            out.append(row)
    return out


def warm_candidate(exp, tb, vb, name: str, level: float, chain: dict[str, Any], grid, **params) -> Candidate:
    """hgbench's ``name`` with ``warm_start: true``, started from ``chain['state']``: the state
    its run left at the previous hyper-step (the solution that reached ``level`` there, or the
    grid's largest count's when none did)."""
    shown = ", ".join(f"{k}={v}" for k, v in params.items())

    def make(i: int):
        m = problems.method(name, iterations=i, warm_start=True, **params)

        def fn():
            m.load_state_dict(chain.get("state", {}))
            return exp.hypergradient_flat(m, tb, vb)

        fn.method = m  # type: ignore[attr-defined]
        return fn

    def advance(i: int | None) -> None:
        fn = make(i if i is not None else max(grid))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn()
        chain["state"] = dict(fn.method.state)  # type: ignore[attr-defined]

    label = f"{name}{' (' + shown + ')' if shown else ''} warm"
    return Candidate("hgbench", label, f"{name}({shown + ', ' if shown else ''}warm_start=true)", make, start="warm",
                     level=level, advance=advance)


def convex_candidates(exp, tb, vb, alpha: float, quick: bool, notes: dict[str, str]) -> list[Candidate]:
    if quick:
        return [hgbench_candidate(exp, tb, vb, "cg"), *peer_candidates(exp, tb, vb, alpha, notes)[:1]]
    return [hgbench_candidate(exp, tb, vb, "cg"), hgbench_candidate(exp, tb, vb, "minres"),
            hgbench_candidate(exp, tb, vb, "neumann", "neumann (α = lr)"),
            hgbench_candidate(exp, tb, vb, "neumann", "neumann (alpha=auto)", alpha="auto"),
            hgbench_candidate(exp, tb, vb, "nystrom", "nystrom (rank = i)"),
            *peer_candidates(exp, tb, vb, alpha, notes)]


def mlp_candidates(exp, tb, vb, alpha: float, quick: bool, notes: dict[str, str]) -> list[Candidate]:
    if quick:
        return [hgbench_candidate(exp, tb, vb, "cg", "cg (ggn)", curvature="ggn"), *peer_candidates(exp, tb, vb, alpha, notes)[:1]]
    return [hgbench_candidate(exp, tb, vb, "cg"),
            hgbench_candidate(exp, tb, vb, "cg", "cg (ggn)", curvature="ggn"),
            hgbench_candidate(exp, tb, vb, "minres", "minres (ggn)", curvature="ggn"),
            hgbench_candidate(exp, tb, vb, "neumann", "neumann (ggn, alpha=auto)", curvature="ggn", alpha="auto"),
            *peer_candidates(exp, tb, vb, alpha, notes)]


def along_run(exp, steps: int, grid, reps: int, dev, quick: bool, notes: dict[str, str], fixed: bool = False,
              keep: set[str] | None = None) -> list[dict[str, Any]]:
    """``steps`` hyper-steps of Algorithm 1 on the convex problem (10 inner SGD steps, then an
    outer Adam step on λ with the reference hypergradient, so every method sees the same
    trajectory and fresh batches each step); at each step every method's time to each level:
    hgbench cold and warm-started (its chain carrying the solution that reached the level at
    the previous step), the peers cold (neither offers a warm start through its documented API).
    ``fixed``: the same two batches at every step (as a full-batch run: only w and λ move);
    ``keep``: the cold methods to run (those that reached a level at one point)."""
    alpha = float(exp.inner_optimizer.lr)
    chains = {lv: {} for lv in LEVELS}
    setting = "run fixed" if fixed else "run"
    rows = []
    batches = problems.fixed_batches(exp)
    for k in range(steps):
        if k:
            exp.train_inner(10)
        tb, vb = batches if fixed else problems.fixed_batches(exp)
        ref, _ = reference(exp, tb, vb)
        cands = convex_candidates(exp, tb, vb, alpha, quick, notes)
        cands = [c for c in cands if not c.label.startswith("nystrom")]  # one-shot: no warm start to compare
        cands = cands[:1] if quick else [c for c in cands if keep is None or c.label in keep]
        cands += [warm_candidate(exp, tb, vb, "cg", lv, chains[lv], grid) for lv in LEVELS]
        print(f"  peers accuracy: {setting} step {k + 1}/{steps}", flush=True)
        rows += time_to_accuracy("convex", "CG in float64 to a relative residual of 1e-12", cands, ref.double(), grid, reps,
                                 dev, quick, notes, setting=setting, step=k + 1)
        exp.outer_optimizer.zero_grad(set_to_none=True)
        exp.lam.grad = ref.to(exp.lam.dtype)
        exp.outer_optimizer.step()
    return rows + run_summary(rows, steps, setting + " median")


def run_summary(rows, steps: int, setting: str) -> list[dict[str, Any]]:
    """Medians over the run's steps: per method and level, the iterations and time to reach it
    (over the steps where it did) and in how many steps it did; per library its best's time and
    hgbench's best's side-by-side speed-up over it."""
    out = []
    keys = list(dict.fromkeys((r["row"], r["level"], r["library"], r["method"] if r["row"] == "method" else "") for r in rows))
    for kind, level, lib, meth in keys:
        rs = [r for r in rows if r["row"] == kind and r["level"] == level and r["library"] == lib and (kind == "best" or r["method"] == meth)]
        ok = [r for r in rs if r["reached"]]

        def med(col, ok=ok):
            v = [r[col] for r in ok if r[col] != ""]
            return statistics.median(v) if v else ""

        methods = sorted({r["method"] for r in ok})
        out.append({**rs[0], "setting": setting, "step": f"{len(ok)}/{steps} steps reached",
                    "method": meth if kind == "method" else " / ".join(methods), "reached": bool(ok),
                    "iterations": med("iterations"), "rel_err": med("rel_err"), "min_rel_err": nanmin(r["min_rel_err"] for r in rs),
                    "time_ms": med("time_ms"), "time_ms_q1": med("time_ms_q1"), "time_ms_q3": med("time_ms_q3"),
                    **({"speedup_median": med("speedup_median"), "speedup_q1": med("speedup_q1"), "speedup_q3": med("speedup_q3")}
                       if kind == "best" else {})})
    return out


def measure(exp_mlp, tb_mlp, vb_mlp, dev, quick: bool, reps: int, notes: dict[str, str]) -> list[dict[str, Any]]:
    """Time to a relative error of 1e-2 and 1e-4: (a) the convex problem at one point, (b) the 1M
    MLP against the Gauss–Newton reference, (c) along a run of hyper-steps on the convex problem."""
    grid = QUICK_GRID if quick else GRID
    rows = []
    exp = convex_experiment(dev, quick)
    alpha = float(exp.inner_optimizer.lr)
    tb, vb = problems.fixed_batches(exp)
    ref, res = reference(exp, tb, vb)
    notes["convex reference"] = f"float64 CG on H, relative residual {res:.1e}"
    print(f"  peers accuracy: convex reference residual {res:.1e}", flush=True)
    rows += time_to_accuracy("convex", "CG in float64 to a relative residual of 1e-12", convex_candidates(exp, tb, vb, alpha, quick, notes),
                             ref, grid, reps, dev, quick, notes)
    if not quick:  # the smoke run: the convex problem only
        ref, res = reference(exp_mlp, tb_mlp, vb_mlp, "ggn", iterations=1000)
        notes["mlp reference"] = f"float64 CG on the Gauss–Newton matrix, 1000 iterations, relative residual {res:.1e}"
        print(f"  peers accuracy: mlp reference residual {res:.1e}", flush=True)
        rows += time_to_accuracy("mlp", "ggn_cg: CG on the Gauss–Newton matrix, float64", mlp_candidates(exp_mlp, tb_mlp, vb_mlp, alpha, quick, notes),
                                 ref, MLP_GRID, reps, dev, quick, notes)
    keep = {r["method"] for r in rows if r["problem"] == "convex" and r["row"] == "method" and r["reached"]}
    steps = QUICK_RUN_STEPS if quick else RUN_STEPS
    for fixed in ((True,) if quick else (False, True)):
        rows += along_run(exp, steps, grid, 1 if quick else 3, dev, quick, notes, fixed=fixed, keep=keep)
    return rows


PEER_NAMES = {"torchopt": "TorchOpt", "betty": "Betty"}
SETTINGS = (("convex", "one point"), ("mlp", "one point"), ("convex", "run median"), ("convex", "run fixed median"))
SETTING_TITLE = {("convex", "one point"): "convex, one hypergradient", ("mlp", "one point"): "1M MLP, one hypergradient",
                 ("convex", "run median"): "convex, along a run, fresh batches (median over steps)",
                 ("convex", "run fixed median"): "convex, along a run, fixed batches (median over steps)"}


def _best(rows, problem, setting, level, lib):
    return next((r for r in rows if r["row"] == "best" and r["problem"] == problem and r["setting"] == setting
                 and r["level"] == level and r["library"] == lib), None)


def _cell(r, grid_max) -> str:
    if r is None:
        return "—"
    if not r["reached"]:
        return f"not reached within {grid_max} iterations (best error {r['min_rel_err']:.1e})"
    return f"`{r['method']}` i={_num(r['iterations'])}: {r['time_ms']:.1f} ms"


def _num(v) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def accuracy_verdict(hg, peer) -> tuple[str, bool | None]:
    """(the speed-up as text, met?) — None when it cannot be measured."""
    if peer is None or hg is None:
        return "—", None
    if not hg["reached"]:
        if peer["reached"]:
            return "hgbench does not reach it", False
        return f"neither reaches it (best errors: hgbench {hg['min_rel_err']:.0e}, peer {peer['min_rel_err']:.0e})", None
    if not peer["reached"]:
        return "peer does not reach it (no ratio)", None
    s = peer.get("speedup_median", "")
    if s == "":
        return "—", None
    q = f" ({peer['speedup_q1']:.2f}–{peer['speedup_q3']:.2f})" if peer.get("speedup_q1", "") != "" else ""
    return f"{s:.2f}×{q}", s >= TARGET


def fragment(rows, quick: bool, grid) -> str:
    libs = [lib for lib in ("torchopt", "betty") if any(r["library"] == lib for r in rows)]
    gmax = max(grid)
    head = ["problem", "level", "hgbench best", *[f"{PEER_NAMES[lb]} best" for lb in libs],
            *[f"speed-up vs {PEER_NAMES[lb]} (IQR)" for lb in libs]]
    table = []
    for problem, setting in SETTINGS:
        for level in LEVELS:
            hg = _best(rows, problem, setting, level, "hgbench")
            if hg is None:
                continue
            peers = [_best(rows, problem, setting, level, lb) for lb in libs]
            table.append([SETTING_TITLE[(problem, setting)], f"{level:.0e}", _cell(hg, gmax), *[_cell(p, gmax) for p in peers],
                          *[accuracy_verdict(hg, p)[0] for p in peers]])
    detail = []
    for problem in ("convex", "mlp"):
        for meth in dict.fromkeys(r["method"] for r in rows if r["row"] == "method" and r["problem"] == problem and r["setting"] == "one point"):
            rs = {r["level"]: r for r in rows if r["row"] == "method" and r["problem"] == problem and r["setting"] == "one point" and r["method"] == meth}
            any_r = next(iter(rs.values()))
            detail.append([problem, any_r["library"], f"`{any_r['call']}`",
                           *[(f"{_num(rs[lv]['iterations'])} / {rs[lv]['time_ms']:.1f}" if rs[lv]["reached"] else "not reached") for lv in LEVELS],
                           f"{any_r['min_rel_err']:.1e}"])
    run_rows = []
    for r in rows:
        if r["setting"] in ("run median", "run fixed median") and r["row"] == "method":
            run_rows.append(["fixed" if "fixed" in r["setting"] else "fresh", r["library"], f"`{r['call']}`", r["start"], f"{r['level']:.0e}", r["step"],
                             _num(r["iterations"]) if r["reached"] else "—", f"{r['time_ms']:.1f}" if r["reached"] else "—"])
    lines = ["### Time to accuracy against the peers", "",
             f"Reproduce: `{output.command('peers', quick)}` (CSV: `peers_accuracy.csv`, plot: `peers_accuracy.png`). "
             "For each method, the smallest iteration count on the grid "
             f"{', '.join(str(g) for g in grid)} (on the 1M MLP {', '.join(str(g) for g in (grid if quick else MLP_GRID))}) whose relative error ‖g − g_ref‖/‖g_ref‖ is at most the level, and the median "
             "time of one hypergradient at that count (warm-up not counted); per library its fastest method, and hgbench's "
             "fastest timed side by side against each peer's fastest (speed-up = peer time ÷ hgbench time, median and IQR). "
             "Peers as documented, only the iteration count varied: TorchOpt `solve_cg()` / `solve_normal_cg()` (default "
             "rtol=1e-5), `solve_inv(ns=True)` (default α = 1), Betty `Config(type='cg')` (cg_alpha = 1) and "
             "`Config(type='neumann')` (α = 1); and Neumann with α = the inner learning rate (hgbench's default α, which "
             "the defaults' α = 1 is not). A level a method does not reach on the grid is reported as not reached, never "
             "extrapolated.", "",
             "- **convex**: multinomial logistic regression (the `linear` model, 7,850 weights, one decay each, initial "
             f"decay {QUICK_CONVEX_DECAY if quick else CONVEX_DECAY:g}) on mnist_5k, batch 128, float32, after "
             f"{50 if quick else 300} SGD steps. H is positive definite, so "
             "every method converges to the same vector; reference: CG in float64 to a relative residual of 1e-12.",
             "- **1M MLP** (not in --quick): the problem of the table above (784-1024-192-10, per-weight decay, after 100 SGD steps). "
             "Reference: the runs' `ggn_cg` (CG on the Gauss–Newton matrix), in float64. H is indefinite there: "
             "the peers' solvers (on H) approach the Hessian IFT formula, a different vector, so their error "
             "against the Gauss–Newton reference stops falling at that difference.",
             f"- **along a run**: {QUICK_RUN_STEPS if quick else RUN_STEPS} hyper-steps of Algorithm 1 on the convex problem (10 inner SGD steps, then an "
             "Adam step on λ with the reference hypergradient — the same trajectory for every method), twice: with fresh "
             "batches each step (as hgbench's runs draw them), and with the same two batches every step (as a full-batch "
             "run: only w and λ move). The methods that reached a level at one point, at every step their time to each "
             "level; hgbench's CG also warm-started (`warm_start: true`, "
             "carrying the solution that reached the level at the previous step), the peers cold: neither offers a warm "
             "start through its documented implicit-differentiation API (TorchOpt's `solve_cg(init=…)` is fixed when the "
             "solver is built and `custom_root` does not hand back the solution; Betty has none).", "",
             output.md_table(head, table), "",
             "Per method, one hypergradient (iterations / ms to reach the level; best error on the grid):", "",
             output.md_table(["problem", "library", "call", f"to {LEVELS[0]:.0e}: i / ms", f"to {LEVELS[1]:.0e}: i / ms",
                              f"best error (i ≤ {gmax})"], detail), ""]
    if run_rows:
        lines += ["Along the run (medians over the steps where the level was reached):", "",
                  output.md_table(["batches", "library", "call", "start", "level", "reached", "iterations", "ms"], run_rows), ""]
    lines += verdict_lines(rows, gmax)
    return "\n".join(lines) + "\n"


def _comparisons(rows):
    """(problem, setting, level, peer library, hgbench's best row, the peer's best row) for every
    setting and level where both were measured."""
    for problem, setting in SETTINGS:
        for level in LEVELS:
            hg = _best(rows, problem, setting, level, "hgbench")
            for lib in ("torchopt", "betty"):
                peer = _best(rows, problem, setting, level, lib)
                if hg is not None and peer is not None:
                    yield problem, setting, level, lib, hg, peer


def verdict_lines(rows, grid_max: int) -> list[str]:
    """The issue's goal (≥ 2× faster than the peers at equal error), judged from the data."""
    met, missed, only_hg, neither, ratios = [], [], [], {}, []
    for problem, setting, level, lib, hg, peer in _comparisons(rows):
        where = f"{SETTING_TITLE[(problem, setting)]}, {level:.0e}"
        text, ok = accuracy_verdict(hg, peer)
        if ok is not None and peer.get("speedup_median", "") != "":
            ratios.append(peer["speedup_median"])
        if ok is True:
            met.append(f"{where} vs {PEER_NAMES[lib]} {text}")
        elif ok is False:
            missed.append(f"{where} vs {PEER_NAMES[lib]} {text}")
        elif hg["reached"]:
            only_hg.append(f"{where}: hgbench `{hg['method']}` {hg['time_ms']:.0f} ms, {PEER_NAMES[lib]} best error "
                           f"{peer['min_rel_err']:.1e} within {grid_max} iterations")
        else:
            neither.setdefault(where, [f"hgbench {hg['min_rel_err']:.1e}"]).append(f"{PEER_NAMES[lib]} {peer['min_rel_err']:.1e}")
    span = f" (hgbench's best {min(ratios):.2f}–{max(ratios):.2f}× faster than the peer's best)" if ratios else ""
    out = [f"**Verdict on ≥ {TARGET:g}× at equal error.** Where both reach the level: met in {len(met)} of "
           f"{len(met) + len(missed)} comparisons{span}."]
    out += [f"- met: {x}" for x in met] + [f"- missed: {x}" for x in missed]
    if only_hg:
        out += ["- only hgbench reaches the level (no ratio: the peer's error stays above it on the grid, not extrapolated):"]
        out += [f"  - {x}" for x in only_hg]
    if neither:
        out += [f"- no library reaches the level within {grid_max} iterations (best errors on the grid):"]
        out += [f"  - {k}: {', '.join(v)}" for k, v in neither.items()]
    betty_cg = [r for r in rows if r["row"] == "method" and r["setting"] == "one point" and r["call"].startswith("Config(type='cg'")]
    if betty_cg:
        best_errs = ", ".join(f"{r['problem']} {r['min_rel_err']:.1e}" for r in betty_cg if r["level"] == LEVELS[0])
        out += ["", "Why Betty reaches neither level: its `cg` (betty/hypergradient/cg.py in 0.1.1) builds the next search "
                "direction from the previous residual (p ← r_old + βp, not r_new + βp), so it is not conjugate gradient "
                f"(best error {best_errs}); "
                "its `neumann`, like every Neumann series here, crawls on these condition numbers (with its default α = 1 "
                "it diverges where λ_max > 2). TorchOpt's `solve_cg` is the same algorithm as hgbench's `cg` and needs the "
                "same iteration counts: the speed-ups over it are per-iteration overhead (TorchOpt's pytree arithmetic "
                "and its first product A·x₀ with x₀ = 0) and, along a fixed-batch run, hgbench's warm start."]
    warm = []
    for setting, what in (("run median", "fresh batches"), ("run fixed median", "fixed batches")):
        for level in LEVELS:
            it = {r["start"]: r["iterations"] for r in rows if r["setting"] == setting and r["row"] == "method"
                  and r["library"] == "hgbench" and r["level"] == level and r["call"].startswith("cg") and r["reached"]}
            if "cold" in it and "warm" in it:
                warm.append(f"{what}, {level:.0e}: {_num(it['cold'])} cold → {_num(it['warm'])} warm")
    if warm:
        out += ["", "Warm starts (hgbench `cg`, median iterations to the level over the run's steps): " + "; ".join(warm)
                + ". With fresh batches each step ∂L_V/∂w changes with the batch and the previous solution is no better a "
                "start than zero; with fixed batches only w and λ move, and the warm start saves iterations."]
    return out + [""]




def headline(rows) -> list[list]:
    out = []
    for problem, setting, level, lib, hg, peer in _comparisons(rows):
        text, ok = accuracy_verdict(hg, peer)
        out.append(["peers", f"time to {level:.0e}, {SETTING_TITLE[(problem, setting)]}: hgbench vs {PEER_NAMES[lib]}",
                    text, f"≥ {TARGET:g}× at equal error", output.verdict(ok) if ok is not None else "n/a"])
    return out


def plot(rows, path: Path, grid) -> None:
    libs = [lib for lib in ("hgbench", "torchopt", "betty") if any(r["library"] == lib for r in rows)]
    settings = [st for st in SETTINGS if any(r["problem"] == st[0] and r["setting"] == st[1] for r in rows)]
    fig, axes = plotting.subplots(1, len(settings), figsize=(4.6 * len(settings), 4.4), squeeze=False)
    width = 0.8 / len(libs)
    for ax, (problem, setting) in zip(axes[0], settings, strict=True):
        top = 1.0
        for k, lib in enumerate(libs):
            for j, level in enumerate(LEVELS):
                b = _best(rows, problem, setting, level, lib)
                x = j + (k - (len(libs) - 1) / 2) * width
                if b is not None and b["reached"]:
                    ax.bar(x, b["time_ms"], width, color=f"C{k}", label=lib if j == 0 else None)
                    ax.text(x, b["time_ms"], f"{b['time_ms']:.0f}\ni={_num(b['iterations'])}", ha="center", va="bottom", fontsize=6)
                    top = max(top, b["time_ms"])
                elif b is not None:
                    ax.bar(x, 0, width, color=f"C{k}", label=lib if j == 0 else None)
                    ax.text(x, 1.0, f"not\nreached\n(i≤{max(grid)};\nbest\n{b['min_rel_err']:.0e})", ha="center", va="bottom",
                            fontsize=6, color=f"C{k}")
        with warnings.catch_warnings():  # a panel where nothing reached a level has no positive bar
            warnings.simplefilter("ignore", UserWarning)
            ax.set_yscale("log")
        ax.set_ylim(0.5, top * 6)
        ax.set_xticks(range(len(LEVELS)))
        ax.set_xticklabels([f"rel. error ≤ {lv:.0e}" for lv in LEVELS])
        ax.set_ylabel("ms per hypergradient (median), log scale")
        ax.set_title(SETTING_TITLE[(problem, setting)].replace(", along", ",\nalong"), fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
