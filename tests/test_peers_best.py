"""The peers at their best (benchmarks/peers_best.py, peer_libs.torchopt_adapter): TorchOpt given
hgbench's warm start and Nyström preconditioner through its public API runs the same algorithm —
the same hypergradient at the same iteration count, step after step — on the Hessian and, through
the linearised network, on the Gauss–Newton matrix; and the study's table from a tiny run."""

import warnings

import pytest
import torch

pytest.importorskip("torchopt")

from hgbench.benchmarks import peers_best, problems  # noqa: E402
from hgbench.benchmarks.peer_libs import torchopt_adapter  # noqa: E402


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchOpt 0.7.3 calls the deprecated functorch.vjp
        yield


def _rel(a, b) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
def test_torchopt_warm_started_and_preconditioned_matches_hgbench(curvature):
    torch.manual_seed(0)
    exp = peers_best.build("mlp", quick=True)
    tb, vb = problems.fixed_batches(exp)
    sk, n = peers_best.sketch(exp, tb, vb, curvature, rank=20)
    assert n == 20 and 0 < sk["pc_u"].shape[1] <= 20  # eigenvalues at the noise floor are dropped
    state, keep = dict(sk), {}
    for step in range(2):  # the second step starts both from their first step's solution
        if step:
            exp.train_inner(5)
        m = problems.method("cg", iterations=4, curvature=curvature, warm_start=True, refresh_every=10**9,
                            preconditioner="nystrom", preconditioner_rank=20)
        m.load_state_dict(dict(state))
        ours = exp.hypergradient_flat(m, tb, vb)
        state = dict(m.state)
        init = tuple(t.detach().clone() for t in keep["x"]) if "x" in keep else None
        theirs = torchopt_adapter(exp, tb, vb, "cg", 4, None, rtol=0.0, init=init, M=peers_best.m_inv_of(sk), keep=keep,
                                  curvature=curvature)()
        assert _rel(theirs, ours) < 1e-4, (step, _rel(theirs, ours))
    cold = exp.hypergradient_flat(problems.method("cg", iterations=4, curvature=curvature), tb, vb)
    assert _rel(cold, ours) > 1e-3  # the warm start and the preconditioner did change the answer at 4 iterations


def test_peers_best_table_from_a_tiny_run(monkeypatch):
    monkeypatch.setattr(peers_best, "GRID", (2, 8, 30, 100))
    monkeypatch.setattr(peers_best, "RANK", 10)
    monkeypatch.setattr(peers_best.pa, "REF_TOL", 1e-8)
    monkeypatch.setattr(peers_best, "LEVELS", (1e-2,))
    rows = peers_best.along_run("mlp", fixed=True, steps=2, reps=1, quick=True)
    counts = [r for r in rows if r["row"] == "count"]
    assert {r["candidate"] for r in counts} >= {peers_best.SAME, peers_best.DEFAULTS, peers_best.AT_BEST}
    same = {(r["step"], r["level"]): r["iterations"] for r in counts if r["candidate"] == peers_best.SAME}
    best = {(r["step"], r["level"]): r["iterations"] for r in counts if r["candidate"] == peers_best.AT_BEST}
    assert same == best  # the same algorithm needs the same iterations
    times = [r for r in rows if r["row"] == "time"]
    assert times and all(r["cpu_ms"] > 0 and r["load_before"] >= 0 for r in times)
    assert {r["against"] for r in times if r["candidate"] == peers_best.AT_BEST} <= {peers_best.SAME}
    md = peers_best.fragment(rows, 2)
    assert "At their defaults and at their best" in md and "against" in md


def test_hypergrad_conjugate_gradient_is_hgbenchs_cg():
    pytest.importorskip("hypergrad")
    from hgbench.benchmarks.peer_libs import hypergrad_adapter

    exp = peers_best.build("mlp", quick=True)
    tb, vb = problems.fixed_batches(exp)
    one = exp.hypergradient_flat(problems.method("cg", iterations=1), tb, vb)
    assert _rel(hypergrad_adapter(exp, tb, vb, 1)().reshape(-1), one) < 1e-4  # the same first CG step, same sign
    # from the second step on it differs: hypergrad 0.0.1 builds the next direction from the previous
    # residual (p <- r_old + beta p), as Betty's cg does, so it is not conjugate gradient
    six = exp.hypergradient_flat(problems.method("cg", iterations=6), tb, vb)
    assert _rel(hypergrad_adapter(exp, tb, vb, 6)().reshape(-1), six) > 1e-2

