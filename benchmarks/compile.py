"""Section ``compile``: does ``compile=true`` (torch.compile of the inner step) help, and is it right?

For the default MLP (``mlp:[128]``, the quick-start run's model), the 1M-parameter MLP and the
LeNet CNN (per-weight decay, batch 128), two experiments with the same seed, one with
``compile=false`` and one with ``compile=true``:

- correctness: the compiled gradient of L_T against the eager one on the same batch (max relative
  difference) and the status the run's own check gives (on / unverified / fallback);
- compile time: the first call (compilation and the check);
- inner step (L_T and its gradient), compiled ÷ eager, side by side;
- one whole hyper-step (k = 10 inner steps + a Neumann hypergradient, which stays eager),
  compiled ÷ eager, side by side.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

from hgbench.benchmarks import output, plotting, problems, timing
from hgbench.machine import resolve_device
from hgbench.compiled import loss_gradient as _grad

MODELS = ("mlp:[128]", "mlp", "cnn")
QUICK_MODELS = ("mlp",)


def run(out: Path, quick: bool = False, device: str = "auto", reps: int | None = None) -> list[dict]:
    dev = resolve_device(device)
    reps = reps or (2 if quick else 7)
    rows = []
    for model in QUICK_MODELS if quick else MODELS:
        eager = problems.experiment(model, dev, quick, extra=["compile=false"])
        comp = problems.experiment(model, dev, quick, extra=["compile=true"])
        tb = eager.train_sampler.next()
        w, lam = eager.w.detach(), eager.lam.detach()
        timing.sync(dev)
        t0 = time.perf_counter()
        _grad(comp.inner_loss, w, lam, tb)  # compiles, checks against eager, picks
        timing.sync(dev)
        compile_s = time.perf_counter() - t0
        diff = comp.inner_loss.rel_diff if comp.inner_loss.rel_diff is not None else float("nan")  # nan: did not compile
        status = comp.inner_loss.status
        inner = timing.compare(partial(_grad, eager.inner_loss, w, lam, tb), partial(_grad, comp.inner_loss, w, lam, tb), reps, dev,
                               timing.timing_target(quick))
        step = timing.compare(eager.hyper_step, comp.hyper_step, reps, dev, target=0.0)  # one hyper-step per timing
        row = {"section": "compile", "model": model, "num_weights": eager.problem.num_weights, "batch": len(tb.x),
               "k": int(eager.cfg.inner_steps), "status": status, "note": comp.inner_loss.note,
               "max_rel_diff": diff, "compile_s": compile_s,
               "inner_eager_ms": 1e3 * inner["ref_s"]["median"], "inner_compiled_ms": 1e3 * inner["fn_s"]["median"],
               **output.ratio_cols("inner_ratio", inner["ratio"]),
               "step_eager_ms": 1e3 * step["ref_s"]["median"], "step_compiled_ms": 1e3 * step["fn_s"]["median"],
               **output.ratio_cols("step_ratio", step["ratio"]),
               "helps": bool(status == "on" and step["ratio"]["median"] < 0.95), "reps": reps}
        rows.append(row)
        print(f"  compile {model:10s} {status:10s} max rel diff {diff:.1e}; compile {compile_s:5.1f} s; inner step "
              f"compiled/eager {inner['ratio']['median']:.2f}; hyper-step {step['ratio']['median']:.2f}", flush=True)
    output.write_csv(out, "compile", rows, dev)
    plot(rows, out / "compile.png")
    output.write_fragment(out, "compile", fragment(rows, quick), headline(rows), dev, quick=quick)
    return rows


def plot(rows, path: Path) -> None:
    fig, ax = plotting.subplots(figsize=(7, 4.2))
    x = range(len(rows))
    for off, key, label in ((-0.2, "inner_ratio", "inner step (L_T + gradient)"), (0.2, "step_ratio", "whole hyper-step (k inner + hypergradient)")):
        med = [r[f"{key}_median"] for r in rows]
        err = [[r[f"{key}_median"] - r[f"{key}_q1"] for r in rows], [r[f"{key}_q3"] - r[f"{key}_median"] for r in rows]]
        ax.bar([i + off for i in x], med, 0.4, yerr=err, capsize=3, label=label)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(list(x), [f"{r['model']}\n{r['num_weights']:,} w\n{r['status']}" for r in rows], fontsize=8)
    ax.set_ylabel("time compiled ÷ eager (lower is better)")
    ax.set_title("compile=true vs eager (median, bars: IQR); 'fallback' = compiled gradient was wrong, ran eagerly", fontsize=9)
    ax.set_ylim(0, 1.35)
    ax.legend(fontsize=8, loc="upper center", ncol=2)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def fragment(rows, quick: bool) -> str:
    table = [[r["model"], f"{r['num_weights']:,}", r["status"], f"{r['max_rel_diff']:.1e}", f"{r['compile_s']:.1f}",
              f"{r['inner_eager_ms']:.2f}", f"{r['inner_ratio_median']:.2f} ({r['inner_ratio_q1']:.2f}–{r['inner_ratio_q3']:.2f})",
              f"{r['step_ratio_median']:.2f} ({r['step_ratio_q1']:.2f}–{r['step_ratio_q3']:.2f})", "yes" if r["helps"] else "no"]
             for r in rows]
    return "\n".join([
        "## 7. compile — `compile=true` (torch.compile of the inner step) vs eager", "",
        f"Reproduce: `{output.command('compile', quick)}` (CSV: `compile.csv`, plot: `compile.png`). Per-weight decay, "
        f"batch 128; two experiments with the same seed, one compiled. `max rel diff`: compiled vs eager gradient of "
        f"L_T on one batch; `status`: what the run's own check decided (`fallback` = the compiled gradient was wrong, "
        f"so the run goes on eagerly; its timings are then eager vs eager). Ratios: median of {rows[0]['reps']} "
        f"side-by-side repetitions (IQR). `helps`: checked and the hyper-step at least 5 % faster.", "",
        output.md_table(["model", "weights", "status", "max rel diff", "compile s", "inner step eager ms",
                         "inner step compiled ÷ eager", f"hyper-step (k={rows[0]['k']}) compiled ÷ eager", "helps"], table),
        "",
    ])


def headline(rows) -> list[list]:
    return [["compile", f"{r['model']}: hyper-step compiled ÷ eager ({r['status']})",
             f"{r['step_ratio_median']:.2f} ({r['step_ratio_q1']:.2f}–{r['step_ratio_q3']:.2f}); gradient rel. diff {r['max_rel_diff']:.0e}",
             "< 1 where it helps", "helps" if r["helps"] else ("n/a (wrong gradient: eager)" if r["status"] == "fallback" else "no")]
            for r in rows]
