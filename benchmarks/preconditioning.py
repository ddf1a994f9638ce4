"""Iterations to a relative error of 1e-2 and 1e-4, plain against preconditioned CG, on the peers
study's convex problem (multinomial logistic regression on mnist_5k, 7,850 weights, one decay per
weight at 1e-3, float32, batch 128; reference: float64 CG to a relative residual of 1e-12) — and
along a run of hyper-steps, where the Nyström sketch is reused and rebuilt every ``refresh_every``:

    python -m hgbench.benchmarks.preconditioning [--steps 20]

Prints one line per solver: the iterations each level needs (of ``peers_accuracy.GRID``) and the
products they cost with the sketch; then, along the run (``tol`` = 1e-4 on the residual, the
runner's own ``hvp_calls`` and ``hypergrad/iterations``), the median iterations and products per
hyper-step after the first. Counts, not timings: they do not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import statistics

import torch

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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    at_one_point()
    along_a_run(a.steps)


if __name__ == "__main__":
    main()
