"""Section ``peers``: hgbench against other implicit-differentiation libraries, same problem.

Three studies, one file each: this one, the same number of iterations (target: hgbench ≥ 1.5×
faster at equal accuracy, ``TARGET``), ``peers_accuracy``, the time to reach an error level
(target ≥ 2×), which this section's ``run`` runs after it on the same trained MLP, and (not in
--quick) ``peers_best``: hgbench's recommended solver against TorchOpt at its defaults and at its
best (the same warm start and preconditioner), along runs. The peers and
how each is called: ``peer_libs``.

The problem: per-weight decay on the 1M-parameter MLP (784-1024-192-10), batch 128, float32,
after 100 SGD steps; the same training and validation batch, the same weights and λ, the same
number of iterations i and Neumann step α (the inner learning rate), the same torch threads.
Each library is used the way its documentation shows (``peer_libs``).

Agreement: the max relative difference max|a−b| / max|b| of each hypergradient from hgbench's
with the same algorithm.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from hgbench.benchmarks import output, peers_accuracy, peers_best, plotting, problems, timing
from hgbench.benchmarks.peer_libs import betty_adapter, torchopt_adapter, version
from hgbench.machine import resolve_device

ITERATIONS = (5, 20)
QUICK_ITERATIONS = (3,)
TARGET = 1.5  # hgbench's speed-up over a peer running the same algorithm, at equal accuracy


def run(out: Path, quick: bool = False, device: str = "auto", reps: int | None = None) -> list[dict]:
    dev = resolve_device(device)
    reps = reps or (2 if quick else 5)
    exp = problems.experiment("mlp", dev, quick)
    exp.train_inner(20 if quick else 100)
    tb, vb = problems.fixed_batches(exp)
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
        ours = {m: (lambda m=m, i=i: exp.hypergradient_flat(problems.method(m, iterations=i), tb, vb)) for m in ("neumann", "cg")}
        ref = {m: f() for m, f in ours.items()}
        for lib, meth, how in peers:
            try:
                if lib == "torchopt":
                    fn = torchopt_adapter(exp, tb, vb, {"solve_inv(ns=True)": "neumann", "solve_cg": "cg", "solve_normal_cg": "normal_cg"}[how], i, alpha)
                else:
                    fn = betty_adapter(exp, tb, vb, meth, i, alpha)
                with warnings.catch_warnings():  # TorchOpt 0.7.3 calls the deprecated functorch.vjp
                    warnings.simplefilter("ignore", FutureWarning)
                    diff = problems.rel_diff(fn(), ref[meth])
                    r = timing.compare(fn, ours[meth], reps, dev, timing.timing_target(quick))  # ratio = hgbench / peer
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
                         "target_met": bool(speedup >= TARGET and agree) if same_algorithm else "",
                         "reps": reps})
            print(f"  peers i={i:<3d} {meth:8s} {lib:9s} {how:24s} hgbench {1e3 * r['fn_s']['median']:8.1f} ms, "
                  f"peer {1e3 * r['ref_s']['median']:8.1f} ms: hgbench {speedup:.2f}× faster; max rel diff {diff:.1e}", flush=True)
    output.write_csv(out, "peers", rows, dev)
    if rows:
        plot(rows, out / "peers.png")
    grid = peers_accuracy.QUICK_GRID if quick else peers_accuracy.GRID
    acc = peers_accuracy.measure(exp, tb, vb, dev, quick, reps, notes)  # its notes go into the first part too
    output.write_csv(out, "peers_accuracy", acc, dev)
    peers_accuracy.plot(acc, out / "peers_accuracy.png", grid)
    text = fragment(rows, quick, notes) + "\n" + peers_accuracy.fragment(acc, quick, grid)
    if not quick:  # part 3: the peers at their defaults and at their best, along runs (counts and CPU time)
        best = peers_best.measure(peers_best.STEPS, max(reps, 5))
        output.write_csv(out, "peers_best", best, dev)
        part3 = peers_best.fragment(best, peers_best.STEPS)
        (out / "peers_best.md").write_text(part3)  # as ``python -m hgbench.benchmarks.peers_best`` writes it: CSV and table stay one measurement
        text += "\n" + part3
    output.write_fragment(out, "peers", text, headline(rows) + peers_accuracy.headline(acc), dev, quick=quick)
    return rows


def rewrite(out: Path) -> None:
    """Redraw ``peers_accuracy.png`` and the accuracy part of the peers fragment and headline from
    ``peers.csv`` / ``peers_accuracy.csv`` (the first part of the fragment, with its notes, is
    kept); then reassemble ``<out>/README.md`` (``hgbench.benchmarks.cli.assemble_readme``)."""
    import json

    from hgbench.benchmarks.cli import assemble_readme

    rows = output.read_csv(out / "peers.csv") if (out / "peers.csv").exists() else []
    acc = output.read_csv(out / "peers_accuracy.csv")
    d = json.loads((out / "fragments" / "peers.json").read_text())
    quick = bool(d.get("quick"))
    grid = peers_accuracy.QUICK_GRID if quick else peers_accuracy.GRID
    peers_accuracy.plot(acc, out / "peers_accuracy.png", grid)
    md = out / "fragments" / "peers.md"
    first = md.read_text().split("### Time to accuracy")[0].rstrip() + "\n\n"
    md.write_text((first + peers_accuracy.fragment(acc, quick, grid)).rstrip() + "\n")  # as output.write_fragment writes it
    d["headline"] = headline(rows) + peers_accuracy.headline(acc)
    output.write_json(out / "fragments" / "peers.json", d)
    assemble_readme(out)


def plot(rows, path: Path) -> None:
    iters = sorted({r["iterations"] for r in rows})
    fig, axes = plotting.subplots(1, len(iters), figsize=(6.5 * len(iters), 4.4), squeeze=False)
    for ax, i in zip(axes[0], iters, strict=True):
        rs = [r for r in rows if r["iterations"] == i]
        labels = [f"{r['peer']}\n{r['peer_call']}" for r in rs]
        x = range(len(rs))
        ax.bar([k - 0.2 for k in x], [r["hgbench_ms"] for r in rs], 0.4, label="hgbench (same method)")
        ax.bar([k + 0.2 for k in x], [r["peer_ms"] for r in rs], 0.4, label="peer")
        for k, r in zip(x, rs, strict=True):
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


def fragment(rows, quick: bool, notes: dict[str, str]) -> str:
    table = []
    for r in rows:
        tgt = output.verdict(r["target_met"]) if r["target_met"] != "" else "n/a (different algorithm)"
        table.append([r["iterations"], r["method"], f"{r['peer']} {r['peer_version']}", f"`{r['peer_call']}`",
                      f"{r['hgbench_ms']:.1f}", f"{r['peer_ms']:.1f}",
                      f"{r['speedup_median']:.2f} ({r['speedup_q1']:.2f}–{r['speedup_q3']:.2f})", f"{r['max_rel_diff']:.1e}", tgt])
    n = rows[0]["num_hyperparams"] if rows else 0
    lines = ["## 5. peers — hgbench vs TorchOpt and Betty on the same problem", "",
             f"Reproduce: `pip install -e '.[bench]'` then `{output.command('peers', quick)}` (CSV: `peers.csv`, plot: "
             f"`peers.png`). Per-weight decay, MLP with {n:,} weights = hyperparameters, batch 128, same batches, weights, "
             "λ, i and α; each library warmed up and timed side by side with hgbench's same method (speed-up = peer time ÷ "
             "hgbench time, median and IQR); agreement = max|peer − hgbench| / max|hgbench|.", "",
             output.md_table(["i", "method", "peer", "peer call", "hgbench ms", "peer ms", "hgbench speed-up (IQR)",
                              "max rel. diff", f"≥ {TARGET:g}× at equal accuracy"], table), ""]
    for k, v in notes.items():
        lines.append(f"- {k}: {v}")
    return "\n".join(lines) + "\n"


def headline(rows) -> list[list]:
    return [["peers", f"i={r['iterations']} {r['method']}: hgbench vs {r['peer']} `{r['peer_call']}`",
             f"{r['speedup_median']:.2f}× faster (max rel. diff {r['max_rel_diff']:.0e})",
             f"≥ {TARGET:g}× at equal accuracy", output.verdict(r["target_met"]) if r["target_met"] != "" else "n/a (other algorithm)"]
            for r in rows]
