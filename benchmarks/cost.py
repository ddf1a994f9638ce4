"""Section ``cost``: the time of HVPs and hypergradients as multiples of one plain gradient.

On the 1M-parameter MLP (784-1024-192-10) and the LeNet CNN (1×28×28), per-weight decay,
batch 128: one plain gradient (the reference, = 1), one create_graph gradient, one HVP with a
fresh double backward, one further HVP reusing the graph (``hgbench.ift.HessianVectorProduct``),
and one full hypergradient through ``Experiment.hypergradient_flat`` (the plugin path) for
neumann and cg at i = 1, 5, 10, 20, 50, identity, and unroll with steps = i.

Target: neumann with i steps ≤ 2.6 + 1.2·i + 2 gradients (one double-backward HVP, i further
HVPs, and two gradients for ∂L_V/∂w and the mixed term). Also: the overhead of the
Experiment/plugin path over calling ``hgbench.ift.ift_hypergradient`` directly with the same
closures (target ≤ 10 %), and over a hand-written per-tensor implementation in plain PyTorch.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from hgbench.benchmarks import output, plotting, problems, timing
from hgbench.machine import resolve_device
from hgbench.ift import HessianVectorProduct, ift_hypergradient
from hgbench.linalg import neumann_solve

ITERATIONS = (1, 5, 10, 20, 50)
QUICK_ITERATIONS = (1, 2)
QUICK_BATCH = ["train_batch_size=16", "val_batch_size=16"]


def neumann_target(i: int) -> float:
    return 2.6 + 1.2 * i + 2


def handwritten_neumann(exp, tb, vb, iterations: int, alpha: float):
    """The paper's Algorithm 2+3 written directly on the module's parameter tensors (lists, as
    in the authors' code), for per-weight decay on an MLP/CNN: a reference without hgbench's
    flat vectors, closures or plugins. Returns (fn, hypergradient of one call)."""
    import copy

    p = exp.problem
    module = copy.deepcopy(p.module)
    pieces = p.w_spec.unflatten(exp.w.detach().clone())
    params = []
    for name, prm in module.named_parameters():
        prm.data = pieces[name].clone()
        prm.requires_grad_(True)
        params.append(prm)
    lam_flat = exp.lam.detach()
    lams = [t.clone().requires_grad_(True) for t in p.w_spec.unflatten(lam_flat).values()]

    def fn():
        lt = F.cross_entropy(module(tb.x), tb.y) + 0.5 * sum((lm.exp() * w * w).sum() for lm, w in zip(lams, params, strict=True))
        gt = torch.autograd.grad(lt, params, create_graph=True)
        gv = torch.autograd.grad(F.cross_entropy(module(vb.x), vb.y), params)
        v, acc = list(gv), list(gv)
        for _ in range(iterations):
            hv = torch.autograd.grad(gt, params, v, retain_graph=True)
            v = [a - alpha * b for a, b in zip(v, hv, strict=True)]
            acc = [a + b for a, b in zip(acc, v, strict=True)]
        mixed = torch.autograd.grad(gt, lams, [alpha * a for a in acc])
        return torch.cat([-m.reshape(-1) for m in mixed])

    return fn


def measure_model(model: str, device: torch.device, quick: bool, reps: int) -> list[dict]:
    exp = problems.experiment(model, device, quick, extra=QUICK_BATCH if quick else ())
    exp.train_inner(5 if quick else 100)  # away from the initialisation
    p = exp.problem
    tb, vb = problems.fixed_batches(exp)
    w = exp.w.detach().requires_grad_(True)
    lam = exp.lam.detach()
    v = torch.randn_like(w) * 1e-2
    base = {"section": "cost", "model": model, "num_weights": p.num_weights, "num_hyperparams": p.num_hyperparams,
            "batch": len(tb.x), "dtype": str(p.dtype).replace("torch.", "")}

    def grad():
        return torch.autograd.grad(p.train_loss(w, lam, tb), w)[0]

    def create_graph_grad():
        return torch.autograd.grad(p.train_loss(w, lam, tb), w, create_graph=True)[0]

    def hvp_fresh():
        g = torch.autograd.grad(p.train_loss(w, lam, tb), w, create_graph=True)[0]
        return torch.autograd.grad(g, w, v)[0]

    def hvp_fwd_over_rev():  # torch.func: jvp of grad, one fresh HVP per call (nothing to reuse)
        wd = w.detach()
        return torch.func.jvp(torch.func.grad(lambda w_: p.train_loss(w_, lam, tb)), (wd,), (v,))[1]

    g_kept = create_graph_grad()
    hvp = HessianVectorProduct(g_kept, w)

    rows = []

    def add(what, meth, iters, fn, target=None, note=""):
        r = timing.compare(grad, fn, reps, device, timing.timing_target(quick))
        med = r["ratio"]["median"]
        rows.append({**base, "what": what, "method": meth, "iterations": iters,
                     **output.ratio_cols("ratio", r["ratio"]),
                     "time_ms_median": 1e3 * r["fn_s"]["median"], "grad_ms_median": 1e3 * r["ref_s"]["median"],
                     "target_max_ratio": "" if target is None else target,
                     "target_met": "" if target is None else bool(med <= target),
                     "reps": reps, "note": note})
        print(f"  cost {model:4s} {what:14s} {meth:9s} i={iters!s:4s} {med:7.2f} gradients"
              f"  ({1e3 * r['fn_s']['median']:.1f} ms; gradient {1e3 * r['ref_s']['median']:.2f} ms)", flush=True)

    add("gradient", "plain", "", grad, note="the reference (= 1 up to noise)")
    add("gradient", "create_graph", "", create_graph_grad, note="gradient whose graph HVPs reuse")
    add("hvp", "fresh", 1, hvp_fresh, note="create_graph gradient + one double backward")
    add("hvp", "reuse", 1, partial(hvp, v), note="one further HVP on a kept create_graph gradient")
    try:
        add("hvp", "fwd_over_rev", 1, hvp_fwd_over_rev, note="torch.func.jvp(torch.func.grad(L_T)): forward-over-reverse")
    except Exception as exc:  # noqa: BLE001 - a model torch.func cannot transform
        print(f"  cost {model}: forward-over-reverse HVP not measured: {exc}", flush=True)
    del g_kept, hvp

    iters = QUICK_ITERATIONS if quick else ITERATIONS
    for i in iters:
        add("hypergradient", "neumann", i, partial(exp.hypergradient_flat, problems.method("neumann", iterations=i), tb, vb),
            target=neumann_target(i))
    for i in iters:
        add("hypergradient", "cg", i, partial(exp.hypergradient_flat, problems.method("cg", iterations=i), tb, vb))
    add("hypergradient", "identity", 0, partial(exp.hypergradient_flat, problems.method("identity"), tb, vb))
    for i in iters:
        add("hypergradient", "unroll", i, partial(exp.hypergradient_flat, problems.method("unroll", steps=i), tb, vb))

    # overhead outside the maths: the Experiment/plugin path vs ift_hypergradient with the same closures
    i_over = 5
    alpha = float(exp.inner_optimizer.lr)
    neu = problems.method("neumann", iterations=i_over)
    bl = p.bilevel(tb, vb, exp.w.detach(), exp.lam.detach(), exp.inner_optimizer, exp.inner_state)
    solve = partial(neumann_solve, iterations=i_over, alpha=alpha)
    direct = partial(ift_hypergradient, bl.train_loss, bl.val_loss, bl.w, bl.lam, solve)
    plugin = partial(exp.hypergradient_flat, neu, tb, vb)
    r = timing.compare(direct, plugin, max(reps, 3 if quick else 9), device, timing.timing_target(quick))
    rows.append({**base, "what": "overhead", "method": "neumann", "iterations": i_over,
                 **output.ratio_cols("ratio", r["ratio"]),
                 "time_ms_median": 1e3 * r["fn_s"]["median"], "grad_ms_median": "",
                 "target_max_ratio": 1.10, "target_met": bool(r["ratio"]["median"] <= 1.10), "reps": max(reps, 3 if quick else 9),
                 "note": "Experiment.hypergradient_flat / hgbench.ift.ift_hypergradient with the same closures"})
    print(f"  cost {model:4s} overhead plugin/direct {r['ratio']['median']:.3f}", flush=True)
    hand = handwritten_neumann(exp, tb, vb, i_over, alpha)
    diff = problems.rel_diff(plugin(), hand())
    r = timing.compare(hand, plugin, max(reps, 3 if quick else 9), device, timing.timing_target(quick))
    rows.append({**base, "what": "overhead_vs_handwritten", "method": "neumann", "iterations": i_over,
                 **output.ratio_cols("ratio", r["ratio"]),
                 "time_ms_median": 1e3 * r["fn_s"]["median"], "grad_ms_median": "",
                 "target_max_ratio": "", "target_met": "", "reps": max(reps, 3 if quick else 9),
                 "note": f"hgbench / hand-written per-tensor PyTorch (max rel. diff {diff:.1e})"})
    print(f"  cost {model:4s} overhead plugin/handwritten {r['ratio']['median']:.3f} (rel diff {diff:.1e})", flush=True)
    return rows


def run(out: Path, quick: bool = False, device: str = "auto", reps: int | None = None) -> list[dict]:
    dev = resolve_device(device)
    reps = reps or (2 if quick else 7)
    rows = []
    for model in ("mlp", "cnn"):
        rows += measure_model(model, dev, quick, reps)
    output.write_csv(out, "cost", rows, dev)
    plot(rows, out / "cost.png")
    output.write_fragment(out, "cost", fragment(rows, quick), headline(rows), dev, quick=quick)
    return rows


def _f(r, key="ratio"):
    return {"median": float(r[f"{key}_median"]), "q1": float(r[f"{key}_q1"]), "q3": float(r[f"{key}_q3"]), "n": 1}


def plot(rows, path: Path) -> None:
    models = sorted({r["model"] for r in rows}, key=lambda m: m != "mlp")
    fig, axes = plotting.subplots(1, len(models), figsize=(6 * len(models), 4.4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        rs = [r for r in rows if r["model"] == model and r["what"] == "hypergradient" and r["method"] != "identity"]
        for meth, style in (("neumann", "o-"), ("cg", "s-"), ("unroll", "^-")):
            pts = sorted((r for r in rs if r["method"] == meth), key=lambda r: r["iterations"])
            if not pts:
                continue
            x = [r["iterations"] for r in pts]
            y = [r["ratio_median"] for r in pts]
            lo = [r["ratio_median"] - r["ratio_q1"] for r in pts]
            hi = [r["ratio_q3"] - r["ratio_median"] for r in pts]
            ax.errorbar(x, y, yerr=[lo, hi], fmt=style, capsize=3, label=meth)
        xs = sorted({r["iterations"] for r in rs})
        if xs:
            ax.plot(xs, [neumann_target(i) for i in xs], "k--", lw=1, label="target for neumann: 2.6 + 1.2·i + 2")
        ident = [r for r in rows if r["model"] == model and r["method"] == "identity"]
        if ident:
            ax.axhline(ident[0]["ratio_median"], color="gray", lw=1, ls=":", label=f"identity ({ident[0]['ratio_median']:.1f})")
        n = rows[[r["model"] for r in rows].index(model)]["num_weights"]
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels([str(x) for x in xs])
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("iterations i (unroll: steps)")
        ax.set_ylabel("time / one plain gradient (median, IQR bars)")
        ax.set_title(f"{model}: {n:,} weights = hyperparameters, batch 128")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Hypergradient cost in plain gradients (measured side by side, same process)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def fragment(rows, quick: bool) -> str:
    parts = ["## 1. cost — hypergradient time in plain gradients", "",
             f"Reproduce: `{output.command('cost', quick)}` (CSV: `cost.csv`, plot: `cost.png`). "
             "Each figure: median over repetitions of (time of the thing) / (time of one plain gradient "
             "timed right beside it); in brackets the interquartile range. Hypergradients go through "
             "`Experiment.hypergradient_flat` (the plugin path).", ""]
    for model in sorted({r["model"] for r in rows}, key=lambda m: m != "mlp"):
        rs = [r for r in rows if r["model"] == model]
        n = rs[0]["num_weights"]
        parts.append(f"**{model}** ({n:,} weights = hyperparameters, batch {rs[0]['batch']}, "
                     f"one plain gradient = {rs[0]['grad_ms_median']:.2f} ms)")
        parts.append("")
        table = []
        for r in rs:
            if r["what"].startswith("overhead"):
                continue
            tgt = f"≤ {r['target_max_ratio']:.1f}: {output.verdict(r['target_met'])}" if r["target_max_ratio"] != "" else ""
            table.append([r["what"], r["method"], r["iterations"], output.fr(_f(r)), f"{r['time_ms_median']:.1f}", tgt])
        parts.append(output.md_table(["what", "method", "i / steps", "× gradient (IQR)", "ms", "target"], table))
        parts.append("")
        for r in rs:
            if r["what"] == "overhead":
                pct = 100 * (r["ratio_median"] - 1)
                parts.append(f"- overhead outside the maths (Experiment/plugin path ÷ `ift_hypergradient` with the same "
                             f"closures, neumann i=5): **{pct:+.1f} %** (IQR {100 * (r['ratio_q1'] - 1):+.1f} … "
                             f"{100 * (r['ratio_q3'] - 1):+.1f} %); target ≤ 10 %: {output.verdict(r['target_met'])}")
            elif r["what"] == "overhead_vs_handwritten":
                parts.append(f"- hgbench's neumann i=5 ÷ a hand-written per-tensor implementation in plain PyTorch "
                             f"(the paper's code style, `nn.Module` parameters, no flat vectors): "
                             f"**{r['ratio_median']:.3f}** (IQR {r['ratio_q1']:.3f}–{r['ratio_q3']:.3f}); {r['note']}")
        parts.append("")
    return "\n".join(parts)


def headline(rows) -> list[list]:
    out = []
    for model in sorted({r["model"] for r in rows}, key=lambda m: m != "mlp"):
        for r in rows:
            if r["model"] != model:
                continue
            if r["what"] == "hypergradient" and r["method"] == "neumann":
                out.append(["cost", f"{model}: neumann i={r['iterations']}, × plain gradient",
                            f"{r['ratio_median']:.2f} ({r['ratio_q1']:.2f}–{r['ratio_q3']:.2f})",
                            f"≤ {r['target_max_ratio']:.1f}", output.verdict(r["target_met"])])
            elif r["what"] == "hvp":
                label = {"fresh": "fresh double-backward HVP", "reuse": "further HVP reusing the graph",
                         "fwd_over_rev": "forward-over-reverse HVP (torch.func)"}[r["method"]]
                out.append(["cost", f"{model}: {label}, × gradient",
                            f"{r['ratio_median']:.2f} ({r['ratio_q1']:.2f}–{r['ratio_q3']:.2f})",
                            {"fresh": "2.6", "reuse": "1.2", "fwd_over_rev": "4.1"}[r["method"]] + " (TOOLCHAIN.md, MLP)", "(reference)"])
            elif r["what"] == "overhead":
                out.append(["cost", f"{model}: overhead outside the maths (plugin path vs ift_hypergradient)",
                            f"{100 * (r['ratio_median'] - 1):+.1f} % ({100 * (r['ratio_q1'] - 1):+.1f} … {100 * (r['ratio_q3'] - 1):+.1f} %)",
                            "≤ 10 %", output.verdict(r["target_met"])])
    return out
