"""Study ``peers`` (part 3): the peers at their defaults and at their best, along a run.

hgbench's recommended solver — CG preconditioned by a Nyström sketch of rank ``RANK`` (built
once and reused: ``refresh_every`` = ``REFRESH``, its products amortised over that many
hyper-steps) and warm-started from the previous hyper-step's solution — against TorchOpt 0.7.3
twice: at its defaults (``solve_cg()``: cold, unpreconditioned, on the Hessian, its default
rtol) and at its best through its public API (``custom_root(solve=…)`` wrapping
``solve_cg(init=x_prev, M=P⁻¹, rtol=0)``: warm-started from its own previous solution, the same
Nyström preconditioner, exactly the iterations it is given, as hgbench's CG with ``tol: 0``; on the MLP the optimality condition of the network linearised at w*, so that the
matrix TorchOpt solves with is the Gauss–Newton matrix hgbench's ``curvature: ggn`` uses). The
first ratio is what a user of each library's defaults sees; the second, the overhead of the
library at the same algorithm.

Two problems: the convex one (``peers_accuracy.convex_experiment``: logistic regression on
mnist_5k, 7,850 weights, Hessian) and the digits MLP (64-32-10, 2,410 weights, batch 128,
float32, ``curvature: ggn``); each along ``steps`` hyper-steps (10 inner SGD steps, then an Adam
step on λ with the reference hypergradient: the same trajectory for every solver) with fixed
batches and with fresh minibatches per hyper-step. At every step each solver's iterations to a
relative error of 1e-2 and 1e-4 against a float64 reference (the smallest count of
``peers_accuracy.GRID``; a warm start carries the solution that reached the level at the previous
step) and its curvature-vector products (the warm start's residual and the amortised sketch
included). hgbench's best per step is its candidate with the fewest products to the level —
chosen by counts, not by a timing. At the last step the three are timed: process CPU time and
wall time, ``reps`` interleaved rounds (each candidate once per round, plus a sketch build), the
load average before and after; medians with quartiles, and the ratio per round (its median and
quartiles). A ratio is printed only when the ratio of the two medians lies within the per-round
ratios' quartiles (else the two timings disagree by more than their spread: "unresolved").

    python -m hgbench.benchmarks.peers_best [--steps 5] [--reps 7] [--out results/perf]

writes ``peers_best.csv`` (counts per step, timings at the last) and ``peers_best.md``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hgbench.benchmarks import output
from hgbench.benchmarks import peers_accuracy as pa
from hgbench.benchmarks import problems
from hgbench.benchmarks.peer_libs import hypergrad_adapter, torchopt_adapter, version
from hgbench.benchmarks.stats import spread
from hgbench.machine import load_average

RANK, REFRESH = 100, 10
STEPS = 5
SAME = "hgbench cg_nystrom warm"  # the recommended solver; TorchOpt at its best runs its algorithm
DEFAULTS, AT_BEST = "torchopt solve_cg() defaults", "torchopt solve_cg(init, M)"
HG_DEFAULTS = "hypergrad conjugate_gradient()"  # the third peer (PyPI hypergrad): cold CG, its only form
PEERS = ["torchopt", "hypergrad"]  # the peer libraries measured (``--peers``)
LEVELS = pa.LEVELS
GRID = pa.GRID
PROBLEMS = ("convex", "mlp")
CURVATURE = {"convex": "hessian", "mlp": "ggn"}


def build(problem: str, quick: bool = False):
    """The experiment at its starting point: ``convex`` (peers_accuracy's) or ``mlp`` (digits,
    64-32-10, per-weight decay 1e-3, batch 128, float32, after 500 SGD steps)."""
    if problem == "convex":
        return pa.convex_experiment("cpu", quick)
    from hgbench import build_experiment

    exp = build_experiment(dataset="digits", model="mlp", hyperparam="weight_decay_per_param", hypergrad="cg", overrides=[
        "device=cpu", "warmup=false", "seed=0", f"model.hidden=[{8 if quick else 32}]", "hyperparam.init_decay=1e-3",
        "train_batch_size=128", "val_batch_size=128"])
    exp.train_inner(50 if quick else 500)
    return exp


class Chain:
    """A warm start's carried state for one level: hgbench's method state or TorchOpt's last
    solution (``x``)."""

    def __init__(self, state: dict | None = None):
        self.state = dict(state or {})
        self.x = None


def sketch(exp, tb, vb, curvature: str, rank: int = RANK) -> tuple[dict[str, torch.Tensor], int]:
    """hgbench's Nyström sketch of the curvature at this point: (the method state holding it,
    the products it took; its time is measured as the whole call, one CG iteration included)."""
    from hgbench.ift import count_products

    m = problems.method("cg", preconditioner="nystrom", preconditioner_rank=rank, iterations=1, refresh_every=10**9,
                        curvature=curvature)
    with count_products() as n:
        exp.hypergradient_flat(m, tb, vb)
    keep = ("pc_u", "pc_eigs", "pc_n", "pc_refreshes", "pc_age")
    return {k: v for k, v in m.state.items() if k in keep}, n.value - 1  # less the call's one CG iteration


def m_inv_of(state: dict[str, torch.Tensor]) -> Callable:
    """v ↦ P⁻¹v of the sketch in ``state``, on TorchOpt's pytree (a tuple of one flat tensor)."""
    from hgbench.linalg import NystromPreconditioner

    p_inv = NystromPreconditioner(state["pc_u"], state["pc_eigs"])

    def m_inv(v):
        return tuple(p_inv(t) for t in v) if isinstance(v, (tuple, list)) else p_inv(v)

    return m_inv


def candidates(exp, tb, vb, curvature: str, sk: dict, chains: dict[str, dict[float, Chain]], quick: bool = False) -> dict[str, dict]:
    """name -> {library, call, start, make(i, level) -> fn, extra products per call}. ``sk``: the
    shared sketch state; ``chains[name][level]``: the warm starts."""
    def cold(i: int, level: float):
        m = problems.method("cg", iterations=i, curvature=curvature)
        return lambda: exp.hypergradient_flat(m, tb, vb)

    def to(best: bool):
        def make(i: int, level: float):
            chain = chains.get(key_to_best, {}).get(level) if best else None
            kw: dict[str, Any] = {}
            if best:
                kw = {"M": m_inv_of(sk), "init": chain.x if chain is not None else None, "keep": {},
                      "curvature": curvature}
            # at its best: exactly i iterations as hgbench's (rtol=0); at its defaults: its rtol=1e-5 stop
            fn = torchopt_adapter(exp, tb, vb, "cg", i, None, rtol=0.0 if best else None, **kw)
            fn.keep = kw.get("keep")  # type: ignore[attr-defined]
            return fn
        return make

    key, key_to_best = "hgbench cg_nystrom warm", "torchopt solve_cg(init, M)"
    out = {
        "hgbench cg": {"library": "hgbench", "call": f"cg(curvature={curvature})", "start": "cold", "sketch": False,
                       "make": cold},
        "hgbench cg warm": {"library": "hgbench", "call": f"cg(curvature={curvature}, warm_start=true)", "start": "warm",
                            "sketch": False, "make": None},
        key: {"library": "hgbench", "call": f"cg_nystrom(rank={RANK}, refresh_every={REFRESH}, curvature={curvature}, warm_start=true)",
              "start": "warm", "sketch": True, "make": None},
    }
    # each warm candidate's make must read its own chain
    for name, params, with_sk in (("hgbench cg warm", {}, False),
                                  (key, {"preconditioner": "nystrom", "preconditioner_rank": RANK}, True)):
        def make(i: int, level: float, name=name, params=params, with_sk=with_sk):
            m = problems.method("cg", iterations=i, curvature=curvature, warm_start=True, refresh_every=10**9, **params)
            chain = chains[name][level]

            def fn():
                m.load_state_dict(dict(chain.state))
                return exp.hypergradient_flat(m, tb, vb)

            fn.method = m  # type: ignore[attr-defined]
            return fn
        out[name]["make"] = make
    if version("hypergrad") and "hypergrad" in PEERS:
        out[HG_DEFAULTS] = {"library": "hypergrad", "call": "conjugate_gradient(num_iters=i, lr=1) (cold, Hessian)",
                            "start": "cold", "sketch": False, "make": lambda i, level: hypergrad_adapter(exp, tb, vb, i)}
    if version("torchopt") and "torchopt" in PEERS:
        out["torchopt solve_cg() defaults"] = {"library": "torchopt", "call": "solve_cg(maxiter=i) (rtol=1e-5, Hessian)",
                                              "start": "cold", "sketch": False, "make": to(False)}
        out[key_to_best] = {"library": "torchopt", "call": "custom_root(solve=solve_cg(maxiter=i, rtol=0, init=x_prev, M=same P⁻¹))"
                            + (" on the linearised network (Gauss-Newton)" if curvature == "ggn" else ""),
                            "start": "warm", "sketch": True, "make": to(True)}
    return out


def iterations_to(make: Callable[[int, float], Callable], level: float, ref: torch.Tensor) -> tuple[int | None, float]:
    best = float("inf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in GRID:
            e = pa.rel_err(make(i, level)(), ref)
            best = min(best, e)
            if e <= level:
                return i, e
    return None, best


def _clock(fn) -> tuple[float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c0, time.perf_counter() - t0


def along_run(problem: str, fixed: bool, steps: int, reps: int, quick: bool = False) -> list[dict[str, Any]]:
    """Counts at every step, timings at the last (see the module's docstring)."""
    from hgbench.ift import count_products

    curvature = CURVATURE[problem]
    exp = build(problem, quick)
    batches = problems.fixed_batches(exp)
    rows: list[dict[str, Any]] = []
    sk: dict = {}
    sk_products = 0
    chains: dict[str, dict[float, Chain]] = {}
    what = "fixed" if fixed else "fresh"
    for k in range(steps):
        if k:
            exp.train_inner(10)
        tb, vb = batches if fixed else problems.fixed_batches(exp)
        ref, _ = pa.reference(exp, tb, vb, curvature)
        if k == 0:
            sk, sk_products = sketch(exp, tb, vb, curvature)
            chains = {n: {lv: Chain(sk if "nystrom" in n else None) for lv in LEVELS}
                      for n in ("hgbench cg warm", "hgbench cg_nystrom warm", "torchopt solve_cg(init, M)")}
        cands = candidates(exp, tb, vb, curvature, sk, chains, quick)
        needed: dict[tuple[str, float], int] = {}
        for name, c in cands.items():
            for level in LEVELS:
                i, err = iterations_to(c["make"], level, ref)
                fn = c["make"](i if i is not None else max(GRID), level)
                with count_products() as n, warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fn()  # the call at that count: its products (hgbench's counter; TorchOpt's are i + 1 or i)
                hvps = n.value if c["library"] == "hgbench" else (i or max(GRID)) + 1
                amort = sk_products / REFRESH if c["sketch"] else 0.0
                if i is not None:
                    needed[(name, level)] = i
                rows.append({"problem": problem, "curvature": curvature, "batches": what, "step": k + 1, "level": level,
                             "row": "count", "candidate": name, "library": c["library"], "call": c["call"], "start": c["start"],
                             "iterations": i if i is not None else "", "reached": i is not None, "rel_err": err,
                             "products": hvps + amort if i is not None else "", "sketch_products": sk_products if c["sketch"] else 0})
                if c["start"] == "warm":  # carry the solution at that count to the next step
                    ch = chains[name][level]
                    if c["library"] == "hgbench":
                        ch.state = dict(fn.method.state)
                    else:
                        ch.x = tuple(t.detach().clone() for t in fn.keep["x"])
        # hgbench's best at this step: fewest products to the level (counts, not a timing)
        for level in LEVELS:
            hg = [r for r in rows if r["step"] == k + 1 and r["level"] == level and r["library"] == "hgbench"
                  and r["reached"] and r["row"] == "count"]
            if hg:
                b = min(hg, key=lambda r: r["products"])
                rows.append({**b, "row": "best", "candidate": b["candidate"]})
        print(f"  peers_best {problem} {what} step {k + 1}/{steps}: " + "; ".join(
            f"{r['candidate']} {r['level']:.0e} i={r['iterations'] if r['reached'] else '—'} ({r['products'] if r['reached'] else '—'})"
            for r in rows if r["step"] == k + 1 and r["row"] == "count"), flush=True)
        if k == steps - 1:
            rows += timings(problem, what, k + 1, cands, needed, rows, exp, tb, vb, curvature, reps)
        exp.outer_optimizer.zero_grad(set_to_none=True)
        exp.lam.grad = ref.to(exp.lam.dtype)
        exp.outer_optimizer.step()
    return rows


def timings(problem, what, step, cands, needed, rows, exp, tb, vb, curvature, reps) -> list[dict[str, Any]]:
    """At the last step and each level: hgbench's best, TorchOpt at defaults and at its best,
    ``reps`` interleaved rounds of CPU and wall time; a sketch build once per round."""
    out = []
    for level in LEVELS:
        best = next((r for r in rows if r["step"] == step and r["level"] == level and r["row"] == "best"), None)
        if best is None:
            continue
        names = list(dict.fromkeys([best["candidate"], SAME, *[n for n in (DEFAULTS, AT_BEST, HG_DEFAULTS) if n in cands]]))
        fns = {n: cands[n]["make"](needed[(n, level)], level) for n in names if (n, level) in needed}
        build = lambda: sketch(exp, tb, vb, curvature)  # noqa: E731
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for fn in fns.values():
                fn()  # warm-up
            load0 = load_average()
            t: dict[str, list[tuple[float, float]]] = {n: [] for n in [*fns, "sketch"]}
            for r in range(reps):
                order = list(fns) if r % 2 == 0 else list(reversed(list(fns)))
                for n in order:
                    t[n].append(_clock(fns[n]))
                t["sketch"].append(_clock(build))
            load1 = load_average()
        hg_name = best["candidate"]
        sk_share = [(c / REFRESH, w / REFRESH) for c, w in t["sketch"]]

        def total(n, t=t, sk_share=sk_share):  # per round: the call plus the amortised sketch where it uses one
            use = cands[n]["sketch"]
            return [(c + (s[0] if use else 0), w + (s[1] if use else 0)) for (c, w), s in zip(t[n], sk_share, strict=True)]

        # TorchOpt at its defaults against hgbench's best; TorchOpt at its best against the same algorithm
        against = {DEFAULTS: hg_name, AT_BEST: SAME, HG_DEFAULTS: hg_name}
        for n in fns:
            tt = total(n)
            ref_name = against.get(n)
            hg_t = total(ref_name) if ref_name in fns else None
            row = {"problem": problem, "curvature": curvature, "batches": what, "step": step, "level": level, "row": "time",
                   "candidate": n, "library": cands[n]["library"], "call": cands[n]["call"], "start": cands[n]["start"],
                   "iterations": needed[(n, level)], "reached": True, "reps": reps, "load_before": round(load0, 2),
                   "load_after": round(load1, 2), "hgbench_best": n == hg_name, "against": ref_name or "",
                   "sketch_cpu_ms_amortised": 1e3 * statistics.median(s[0] for s in sk_share) if cands[n]["sketch"] else 0.0}
            for j, kind in ((0, "cpu"), (1, "wall")):
                s = spread(x[j] for x in tt)
                row.update({f"{kind}_ms": 1e3 * s["median"], f"{kind}_ms_q1": 1e3 * s["q1"], f"{kind}_ms_q3": 1e3 * s["q3"],
                            f"{kind}_ms_min": 1e3 * s["min"], f"{kind}_ms_max": 1e3 * s["max"]})
                if hg_t is not None:
                    ratios = spread(a[j] / b[j] for a, b in zip(tt, hg_t, strict=True))  # peer ÷ hgbench, per round
                    of_medians = statistics.median(a[j] for a in tt) / statistics.median(b[j] for b in hg_t)
                    ok = ratios["q1"] <= of_medians <= ratios["q3"]
                    row.update({f"{kind}_speedup": ratios["median"] if ok else "", f"{kind}_speedup_q1": ratios["q1"],
                                f"{kind}_speedup_q3": ratios["q3"], f"{kind}_speedup_of_medians": of_medians,
                                f"{kind}_resolved": ok})
            out.append(row)
            print(f"  peers_best {problem} {what} {level:.0e} {n:32s} i={needed[(n, level)]:<4} CPU {row['cpu_ms']:.1f} ms "
                  f"[{row['cpu_ms_q1']:.1f}–{row['cpu_ms_q3']:.1f}] wall {row['wall_ms']:.1f} ms "
                  + (f"hgbench {row['cpu_speedup'] if row['cpu_speedup'] != '' else 'unresolved'} "
                     f"({row['cpu_speedup_q1']:.2f}–{row['cpu_speedup_q3']:.2f}) × faster in CPU" if "cpu_speedup_q1" in row else "")
                  + f" (load {load0:.1f}->{load1:.1f})", flush=True)
    return out


def measure(steps: int = 5, reps: int = 7, quick: bool = False) -> list[dict[str, Any]]:
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for problem in PROBLEMS[:1] if quick else PROBLEMS:
            for fixed in (True, False):
                rows += along_run(problem, fixed, steps, reps, quick)
    return rows


def _r(x, fmt=".2f") -> str:
    return "—" if x == "" or x is None else format(x, fmt)


def fragment(rows: list[dict[str, Any]], steps: int) -> str:
    tab = []
    for r in rows:
        if r["row"] != "time":
            continue
        tab.append([f"{r['problem']} ({r['curvature']}), {r['batches']}", f"{r['level']:.0e}",
                    f"`{r['candidate']}`" + (" (hgbench's best)" if r.get("hgbench_best") is True else ""), r["iterations"],
                    f"{r['cpu_ms']:.1f} [{r['cpu_ms_q1']:.1f}–{r['cpu_ms_q3']:.1f}]", f"{r['wall_ms']:.1f} [{r['wall_ms_q1']:.1f}–{r['wall_ms_q3']:.1f}]",
                    (f"{_r(r.get('cpu_speedup', ''))} ({_r(r['cpu_speedup_q1'])}–{_r(r['cpu_speedup_q3'])})"
                     if "cpu_speedup_q1" in r and r.get("cpu_speedup_q1", "") != "" else ""),
                    f"`{r['against']}`" if r.get("against") else "",
                    f"{r['load_before']}–{r['load_after']}"])
    counts = []
    for key in dict.fromkeys((r["problem"], r["batches"], r["candidate"], r["level"]) for r in rows if r["row"] == "count"):
        rs = [r for r in rows if r["row"] == "count" and (r["problem"], r["batches"], r["candidate"], r["level"]) == key]
        later = [r for r in rs if r["step"] > 1 and r["reached"]]
        first = rs[0]
        counts.append([f"{key[0]}, {key[1]}", f"{key[3]:.0e}", f"`{key[2]}`",
                       first["iterations"] if first["reached"] else f"— (best {first['rel_err']:.1e})",
                       f"{statistics.median(r['iterations'] for r in later):g}" if later else "—",
                       f"{statistics.median(r['products'] for r in later):g}" if later else "—",
                       f"{len(later)}/{len(rs) - 1}"])
    return "\n".join([
        "### At their defaults and at their best (`python -m hgbench.benchmarks.peers_best`)", "",
        f"Iterations to the level (grid {', '.join(map(str, GRID))}) at step 1 and the median over steps 2–{steps} "
        f"(products: the warm start's residual and the sketch amortised over {REFRESH} hyper-steps included):", "",
        output.md_table(["problem, batches", "level", "solver", "step 1", "later steps: iterations", "products", "reached"], counts), "",
        f"At step {steps} (CPU and wall ms per hypergradient, median [q1–q3], sketch share included; speed-up = "
        "the peer ÷ the hgbench solver named in `against` (TorchOpt at its defaults against hgbench's best, TorchOpt "
        "at its best against the same algorithm), per interleaved round, median (q1–q3); — where the ratio of the medians falls "
        "outside the rounds' quartiles):", "",
        output.md_table(["problem, batches", "level", "solver", "i", "CPU ms", "wall ms", "hgbench CPU speed-up", "against", "load"], tab), ""])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--out", default="results/perf")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--peers", default=",".join(PEERS), help="peer libraries to measure: torchopt,hypergrad")
    p.add_argument("--section", default="peers_best", help="the CSV / markdown file name")
    a = p.parse_args(argv)
    PEERS[:] = a.peers.split(",")
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, load average {load_average():.2f}", flush=True)
    rows = measure(a.steps, a.reps, a.quick)
    out = Path(a.out)
    output.write_csv(out, a.section, rows)
    (out / f"{a.section}.md").write_text(fragment(rows, a.steps))


if __name__ == "__main__":
    main()
