"""Iterations to a relative error of 1e-2 and 1e-4, plain against preconditioned CG, on the peers
study's convex problem (multinomial logistic regression on mnist_5k, 7,850 weights, one decay per
weight at 1e-3, float32, batch 128; reference: float64 CG to a relative residual of 1e-12) — and
along a run of hyper-steps, where the Nyström sketch is reused and rebuilt every ``refresh_every``:

    python -m hgbench.benchmarks.preconditioning [--steps 20] [--reps 7] [--only point|run|mlp|torchopt]

Prints one line per solver: the iterations each level needs (of ``peers_accuracy.GRID``) and the
products they cost with the sketch; then, along the run (``tol`` = 1e-4 on the residual, the
runner's own ``hvp_calls`` and ``hypergrad/iterations``), the median iterations and products per
hyper-step after the first. Counts, not timings: they do not depend on the machine's load.
Then the frontier's digits MLP: the error of ``kfac`` and of each CG variant (Gauss–Newton) at a
few iteration counts. Then (with TorchOpt installed, the ``bench`` extra) CPU and wall time against TorchOpt's
``solve_cg`` at its defaults and given the same Nyström preconditioner (``solve_cg(M=…)``),
interleaved repetitions, the load recorded.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from hgbench.machine import load_average

VARIANTS = (("cg", {}), ("cg jacobi (Hutchinson, 100 probes)", {"preconditioner": "jacobi"}),
            ("cg nystrom rank 50", {"preconditioner": "nystrom", "preconditioner_rank": 50}),
            ("cg nystrom rank 100", {"preconditioner": "nystrom", "preconditioner_rank": 100}),
            ("cg nystrom rank 200", {"preconditioner": "nystrom", "preconditioner_rank": 200}))


def at_one_point() -> None:
    from hgbench.benchmarks import peers_accuracy as pa
    from hgbench.benchmarks import problems
    from hgbench.ift import count_products

    exp = pa.convex_experiment("cpu", False)
    tb, vb = exp.train_sampler.next(), exp.val_sampler.next()
    ref, res = pa.reference(exp, tb, vb)
    print(f"convex problem at one point (reference residual {res:.1e}); iterations (products) to each level")
    for label, params in VARIANTS:
        errs: dict[int, tuple[float, int]] = {}
        for i in pa.GRID:
            torch.manual_seed(0)
            with count_products() as n:
                hg = exp.hypergradient_flat(problems.method("cg", iterations=i, **params), tb, vb)
            errs[i] = (pa.rel_err(hg, ref), n.value)
            if errs[i][0] <= pa.LEVELS[-1]:
                break
        cells = []
        for lv in pa.LEVELS:
            hit = next(((i, n) for i, (e, n) in errs.items() if e <= lv), None)
            cells.append(f"{lv:g}: {hit[0]} ({hit[1]})" if hit else f"{lv:g}: > {max(errs)}")
        print(f"  {label:36s} " + "   ".join(cells), flush=True)


def along_a_run(steps: int) -> None:
    from hgbench.benchmarks import peers_accuracy as pa
    from hgbench.config import build_plugin

    print(f"along a run ({steps} hyper-steps, fixed batches, tol=1e-4): median per hyper-step after the first")
    for label, params in VARIANTS[:1] + VARIANTS[3:4]:
        for warm in (False, True):
            exp = pa.convex_experiment("cpu", False)
            exp.method = build_plugin("hypergrad", {"name": "cg", "iterations": 1000, "tol": 1e-4, "warm_start": warm,
                                                    "refresh_every": 10, **params})
            tb, vb = exp.train_sampler.next(), exp.val_sampler.next()
            exp.train_sampler.next = lambda tb=tb: tb  # fixed batches: the same system, w moving
            exp.val_sampler.next = lambda vb=vb: vb
            torch.manual_seed(0)
            out = [exp.hyper_step(s) for s in range(steps)][1:]
            its = statistics.median(o["hypergrad/iterations"] for o in out)
            hvps = statistics.median(o["hvp_calls"] for o in out)
            mean = sum(o["hvp_calls"] for o in out) / len(out)
            refreshes = out[-1].get("hypergrad/preconditioner_refreshes", 0)
            print(f"  {label:22s} {'warm' if warm else 'cold'}: iterations {its:.0f}, products median {hvps:.0f} / mean "
                  f"{mean:.1f} (sketch rebuilt {refreshes:.0f}× in {steps} steps)", flush=True)


def on_the_mlp() -> None:
    """The frontier's ``mlp_relu`` problem (digits, 64-32-10 MLP, one decay per weight, float64, at
    4000 SGD steps: the Hessian indefinite) against its reference (the dense Gauss–Newton solve):
    the error of ``kfac`` and of each CG variant on the Gauss–Newton matrix at a few iteration
    counts (products in brackets)."""
    from hgbench.benchmarks import frontier, problems
    from hgbench.ift import count_products

    exp, tb, vb = frontier.build("mlp_relu", quick=False)  # the frontier's mlp before it was polished to a stationary point
    ref, _ = frontier.reference("mlp_relu", exp, tb, vb, quick=False)

    def err(method) -> tuple[float, int]:
        torch.manual_seed(0)
        with count_products() as n:
            hg = exp.hypergradient_flat(method, tb, vb).double()
        return (torch.linalg.vector_norm(hg - ref) / torch.linalg.vector_norm(ref)).item(), n.value

    print("the frontier's digits MLP (2,410 weights), against the dense Gauss–Newton solve: relative error (products)")
    for name, kw in (("identity", {}), ("kfac", {}), ("kfac", {"damping": 0.01})):
        e, n = err(problems.method(name, **kw))
        print(f"  {name} {kw or ''}: {e:.2g} ({n})")
    for name, kw in (("cg", {}), ("cg_jacobi", {}), ("cg_nystrom", {}), ("cg_kfac", {}), ("cg_kfac", {"preconditioner_shift": 0.1})):
        cells = []
        for it in (5, 10, 20, 50, 100):
            e, n = err(problems.method(name, curvature="ggn", iterations=it, **kw))
            cells.append(f"{it}: {e:.2g} ({n})")
        print(f"  {name} (ggn) {kw or ''}: " + "   ".join(cells), flush=True)


def _clock(fn) -> tuple[float, float]:
    """(process CPU seconds, wall seconds) of one call."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c0, time.perf_counter() - t0


def _med(xs: list[float]) -> str:
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return f"{1e3 * statistics.median(xs):7.1f} ms [{1e3 * q[0]:.1f}–{1e3 * q[2]:.1f}]"


def against_torchopt(reps: int) -> None:
    """hgbench's CG with the Nyström preconditioner (rank 100; its sketch amortised over
    ``refresh_every`` = 10 hyper-steps) against TorchOpt's ``solve_cg`` at its defaults and given
    the same preconditioner (``solve_cg(M=…)``), at the iteration count each needs for 1e-2 and
    1e-4 on the convex problem at one point: CPU and wall time, ``reps`` interleaved repetitions
    (median [quartiles]), the load average before and after."""
    from hgbench.benchmarks import peers_accuracy as pa
    from hgbench.benchmarks import problems
    from hgbench.benchmarks.peer_libs import torchopt_adapter, version
    from hgbench.linalg import NystromPreconditioner

    if not version("torchopt"):
        print("TorchOpt is not installed (pip install -e '.[bench]'): no comparison")
        return
    exp = pa.convex_experiment("cpu", False)
    tb, vb = exp.train_sampler.next(), exp.val_sampler.next()
    ref, _ = pa.reference(exp, tb, vb)
    torch.manual_seed(0)
    sketch = problems.method("cg", preconditioner="nystrom", iterations=1, refresh_every=10**9)
    exp.hypergradient_flat(sketch, tb, vb)
    p_inv = NystromPreconditioner(sketch.state["pc_u"], sketch.state["pc_eigs"])

    def m_inv(v):  # TorchOpt hands over its pytree: here a tuple holding the one flat tensor
        return tuple(p_inv(t) for t in v) if isinstance(v, (tuple, list)) else p_inv(v)

    def hg_cached(i):  # the sketch already built: a hyper-step between two rebuilds
        m = problems.method("cg", preconditioner="nystrom", iterations=i, refresh_every=10**9)
        m.load_state_dict(dict(sketch.state))
        return lambda: exp.hypergradient_flat(m, tb, vb)

    def hg_fresh(i):  # a hyper-step that rebuilds the sketch
        return lambda: exp.hypergradient_flat(problems.method("cg", preconditioner="nystrom", iterations=i), tb, vb)

    cands = {"hgbench cg (plain)": lambda i: (lambda: exp.hypergradient_flat(problems.method("cg", iterations=i), tb, vb)),
             "hgbench cg nystrom": hg_cached,
             "torchopt solve_cg() defaults": lambda i: torchopt_adapter(exp, tb, vb, "cg", i, None, rtol=None),
             "torchopt solve_cg(M=same P)": lambda i: torchopt_adapter(exp, tb, vb, "cg", i, None, rtol=None, M=m_inv)}
    for level in pa.LEVELS:
        need = {}
        for label, make in cands.items():
            need[label] = next((i for i in pa.GRID if pa.rel_err(make(i)(), ref) <= level), None)
        fns = {label: cands[label](i) for label, i in need.items() if i is not None}
        fresh = hg_fresh(need["hgbench cg nystrom"]) if need["hgbench cg nystrom"] else None
        for fn in [*fns.values(), *([fresh] if fresh else [])]:
            fn()  # warm-up
        load0 = load_average()
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in [*fns, "sketch rebuild"]}
        for _ in range(reps):  # interleaved: every candidate once per round
            for label, fn in fns.items():
                times[label].append(_clock(fn))
            if fresh:
                times["sketch rebuild"].append(_clock(fresh))
        print(f"to {level:g} (load average {load0:.2f} -> {load_average():.2f}; {reps} interleaved reps; CPU time, wall time)")
        for label, ts in times.items():
            if not ts:
                continue
            it = need.get(label, need["hgbench cg nystrom"])
            print(f"  {label:30s} iterations {it!s:4s} CPU {_med([c for c, _ in ts])}  wall {_med([w for _, w in ts])}")
        if fresh and times["sketch rebuild"]:
            cpu = [f - c for (f, _), (c, _) in zip(times["sketch rebuild"], times["hgbench cg nystrom"], strict=True)]
            print(f"  the sketch alone (rebuild − cached, CPU): {_med(cpu)}; amortised over refresh_every=10: "
                  f"{1e3 * statistics.median(cpu) / 10:.1f} ms per hyper-step", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--only", choices=["point", "run", "mlp", "torchopt"], default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=FutureWarning)  # TorchOpt's functorch.vjp deprecation, once per call
    print(f"torch {torch.__version__}, 1 thread, load average {load_average():.2f}", flush=True)
    if a.only in (None, "point"):
        at_one_point()
    if a.only in (None, "run"):
        along_a_run(a.steps)
    if a.only in (None, "mlp"):
        on_the_mlp()
    if a.only in (None, "torchopt"):
        against_torchopt(a.reps)


if __name__ == "__main__":
    main()
