"""Helpers shared by the tests (importable: tests/ is on pytest's pythonpath)."""

import ast
from pathlib import Path

import torch


def polish(exp, steps: int = 100, tol: float = 1e-13):
    """Move exp.w to the exact inner optimum (full batch), in place: Newton's method with
    Levenberg–Marquardt damping (a step is taken only if it lowers L_T), so it also converges
    from where the Hessian is still indefinite. Quadratic convergence near the optimum.

    The Hessian comes from torch.autograd.functional.hessian, not from hgbench's own HVP code.
    """
    p, lam = exp.problem, exp.lam.detach()
    batch = p.full_batch("train")
    f = lambda w: p.train_loss(w, lam, batch)  # noqa: E731
    w = exp.w.detach().clone()
    mu, best, stalled = 1e-3, float("inf"), 0
    for _ in range(steps):
        w_ = w.clone().requires_grad_(True)
        loss = f(w_)
        (g,) = torch.autograd.grad(loss, w_)
        gn = g.norm().item()
        stalled = stalled + 1 if gn > 0.5 * best else 0
        best = min(best, gn)
        if gn < tol or (gn < 1e-9 and stalled >= 2):  # converged, or at the round-off floor (two steps that gain nothing)
            break
        h = torch.autograd.functional.hessian(f, w, vectorize=True)
        eye = torch.eye(len(w), dtype=w.dtype, device=w.device)
        while mu < 1e12:
            cand = w - torch.linalg.solve(h + mu * eye, g)
            if f(cand) <= loss:
                w, mu = cand, mu / 10
                break
            mu *= 10
        else:
            raise RuntimeError("polish: no descent step found")
    else:
        raise RuntimeError(f"polish: gradient norm still {g.norm().item():.2e} after {steps} steps")
    exp.w = w
    return w


def chord_solve(exp, lam, w0, chol, batch=None, tol: float = 1e-13, floor: float = 1e-9, steps: int = 30):
    """w*(λ) for λ near the λ0 whose optimum is w0, by the chord method: Newton steps with the
    Hessian at (w0, λ0) kept (``chol``, its Cholesky factor). Each step shrinks ∇L_T by about
    ‖H0⁻¹(H(λ) − H0)‖ ∝ ‖λ − λ0‖, so a few gradients reach round-off without a Hessian per step.
    None where it stalls before ``polish``'s own stopping rule (‖∇L_T‖ < tol, or < ``floor`` at the
    round-off floor). ``batch``: the full training batch, if the caller has it."""
    p = exp.problem
    batch = p.full_batch("train") if batch is None else batch
    w, best, best_norm = w0.clone(), None, float("inf")
    for _ in range(steps):
        w_ = w.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(p.train_loss(w_, lam, batch), w_)
        norm = g.norm().item()
        if norm >= 0.5 * best_norm:  # no step gains any more
            break
        best, best_norm = w, norm
        if norm < tol:
            break
        w = w - torch.cholesky_solve(g[:, None], chol)[:, 0]
    return best if best_norm < max(tol, floor) else None


def finite_difference_hypergradient(exp, coords, eps: float = 1e-4):
    """Central differences of L_V(w*(λ), λ) on the full validation set w.r.t. λ[coords],
    re-solving the inner problem from the current optimum at every perturbed λ: chord steps
    (``chord_solve``), Newton (``polish``) where they stall or the Hessian is not positive definite."""
    lam0, w0 = exp.lam.detach().clone(), exp.w.detach().clone()
    p = exp.problem
    val, train = p.full_batch("val"), p.full_batch("train")
    h0 = torch.autograd.functional.hessian(lambda w: p.train_loss(w, lam0, train), w0, vectorize=True)
    chol, info = torch.linalg.cholesky_ex(h0)
    out = []
    for j in coords:
        vals = []
        for sign in (1, -1):
            lam = lam0.clone()
            lam[j] += sign * eps
            w = chord_solve(exp, lam, w0, chol, train) if info == 0 else None
            if w is None:
                exp.lam.data, exp.w = lam, w0.clone()
                w = polish(exp)
            vals.append(p.val_loss(w, lam, val).item())
        out.append((vals[0] - vals[1]) / (2 * eps))
    exp.lam.data, exp.w = lam0, w0
    return torch.tensor(out, dtype=lam0.dtype)


def run_cli(monkeypatch, cwd, *args):
    """The ``hgbench`` command run in this process (Hydra and all, no interpreter start-up):
    returns (exit code, stdout, stderr). For the checks that end before any training."""
    import contextlib
    import io
    import sys

    from hgbench.cli import main

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["hgbench", *args])
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def failure_report(out) -> str:
    """What a failed ``hgbench`` command (a ``hgbench_in_process`` or ``subprocess.run`` result)
    said about why, for an assertion's message: the reasons are on stdout (each run's ``reason:``
    line, a grid's summary with one line per job) and the errors on stderr."""
    lines = out.stdout.splitlines()
    start = max((i for i, line in enumerate(lines) if line.startswith("hgbench sweep ")), default=len(lines))
    said = [line for line in lines[:start] if "reason:" in line or line.startswith("hgbench run")] + lines[start:]
    return (f"exit {out.returncode}\n--- stdout (runs' reasons, the grid's summary) ---\n" + "\n".join(said)[-4000:]
            + f"\n--- stderr ---\n{out.stderr[-3000:]}")


def hgbench_in_process(cwd, *args):
    """``hgbench`` in this process, as a CompletedProcess-like result (returncode, stdout, stderr):
    the same ``main()`` as the command — Hydra, launcher, callbacks, recording — without the
    seconds an interpreter takes to import torch and MLflow."""
    from types import SimpleNamespace

    import pytest

    with pytest.MonkeyPatch.context() as mp:
        code, out, err = run_cli(mp, cwd, *args)
    return SimpleNamespace(returncode=code, stdout=out, stderr=err)


# --- end-to-end grids: every metric of every step, and local servers ------------------------------
# every step of the run (1..hyper_steps), or step 0 too for what is also logged before the first
# hyper-step; eval metrics at every eval step (eval_every=1: all of them); the end-of-run ones once
PER_STEP = ("hypergrad_norm", "hypergrad_time_s", "inner_time_s", "inner_loss")
WITH_STEP_0 = ("elapsed_s", "train_loss", "val_loss", "test_loss", "train_acc", "val_acc", "test_acc",
               "hp/mean_log_decay", "hp/std_log_decay")
AT_END = ("runtime_s", "peak_memory_mb")


def assert_every_step_recorded(client, run_id: str, hyper_steps: int) -> None:
    """Every metric of a run with ``eval_every=1`` at each of its steps exactly once, finite, and
    the composed config as an artifact."""
    import math

    for keys, steps in ((PER_STEP, list(range(1, hyper_steps + 1))), (WITH_STEP_0, list(range(hyper_steps + 1))),
                        (AT_END, [hyper_steps])):
        for key in keys:
            hist = client.get_metric_history(run_id, key)
            assert sorted(m.step for m in hist) == steps, (run_id, key, [m.step for m in hist])
            assert all(math.isfinite(m.value) for m in hist), (run_id, key)
    assert "config.yaml" in [a.path for a in client.list_artifacts(run_id)]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(port: int) -> bool:
    """Whether an MLflow server answers /health on 127.0.0.1:port (never through a proxy)."""
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}/health", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def dotted(node: ast.AST) -> str:
    """The dotted name an expression spells (``a.b.c``; a call in it as ``f()``; "?" for anything
    else): what the static checks of the source match against."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Call):
        return dotted(node.func) + "()"
    return "?"


def session_processes(sid: int) -> list[str]:
    """The pids of the live (not zombie) processes of session ``sid``, read from /proc: what a
    grid started with ``start_new_session=True`` left running."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # session id; not a zombie
            out.append(stat.parent.name)
    return out
