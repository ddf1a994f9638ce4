"""Section ``scale``: how many hyperparameters fit, and the time per hypergradient at 1M and 10M.

Per-weight decay on an MLP 784-H-H-10 scaled up (H chosen so the weights — and so the
hyperparameters — reach 1M, 3M, 10M, 30M, 100M, …), neumann i = 5, batch 128. Each size runs in a
FRESH subprocess under a memory cap (``RLIMIT_AS`` and an RSS watchdog that kills the process
the moment its resident set passes the cap: the machine never swaps or OOM-kills a neighbour;
glibc's default allocator, so the peak RSS is an upper bound of the live memory);
sizes grow until one fails (memory cap, out of memory, or the time cap). At 1M and 10M the
hypergradient is timed properly (warm-up, then repetitions side by side with a plain gradient);
beyond, one hypergradient is run and timed once (first call, so it includes one-time costs).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from hgbench.benchmarks import machine, output, plotting, problems, timing, worker
from hgbench.machine import resolve_device

SIZES_M = (1, 3, 10, 30, 100, 200, 300, 400, 600, 800)
TIMED_M = (1, 10)
QUICK_SIZES = (0.02, 100)  # the second must stop at the 1 GiB quick cap (the failure path)


def hidden_for(n: float) -> int:
    """H with H² + 796·H + 10 ≈ n (the weights of 784-H-H-10)."""
    return max(1, round((-796 + math.sqrt(796**2 + 4 * max(n - 10, 0))) / 2))


def point(spec: dict) -> dict:
    """In the fresh process: build the problem, one hypergradient (timed), optionally repeated."""
    import time

    from hgbench.memory import status_kb

    dev = resolve_device(spec["device"])
    h = spec["hidden"]
    t0 = time.perf_counter()
    exp = problems.experiment(f"mlp:[{h},{h}]", dev, False)
    build_s = time.perf_counter() - t0
    p = exp.problem
    tb, vb = problems.fixed_batches(exp)
    w, lam = exp.w.detach().requires_grad_(True), exp.lam.detach()
    m = problems.method("neumann", iterations=spec["i"])

    def grad():
        return torch.autograd.grad(p.train_loss(w, lam, tb), w)[0]

    def hypergrad():
        return exp.hypergradient_flat(m, tb, vb)

    first_s = timing.timed(hypergrad, dev)
    out = {"num_weights": p.num_weights, "num_hyperparams": p.num_hyperparams, "hidden": h, "build_s": build_s,
           "first_hypergradient_s": first_s}
    if spec["timed"]:
        r = timing.compare(grad, hypergrad, spec["reps"], dev)
        out.update({"hypergradient_s": r["fn_s"]["median"], "hypergradient_s_q1": r["fn_s"]["q1"],
                    "hypergradient_s_q3": r["fn_s"]["q3"], "grad_s": r["ref_s"]["median"],
                    **output.ratio_cols("ratio", r["ratio"])})
    else:
        out["grad_s"] = timing.timed(grad, dev)
    if dev.type == "cuda":
        out["peak_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        out["peak_mb"] = (status_kb("VmHWM") or 0) / 1024
    return out


def run(out: Path, quick: bool = False, device: str = "auto", reps: int | None = None,
        mem_cap_gib: float | None = None, time_cap_s: float = 300) -> list[dict]:
    dev = resolve_device(device)
    reps = reps or (2 if quick else 5)
    avail = machine.mem_available_gib()
    cap = mem_cap_gib or (1.0 if quick else max(2.0, min(16.0, avail - 4)))
    sizes = [s * 1e6 for s in (QUICK_SIZES if quick else SIZES_M)]
    timed = {s * 1e6 for s in (QUICK_SIZES[:1] if quick else TIMED_M)}
    rows, largest, failure = [], None, None
    for n in sizes:
        h = hidden_for(n)
        spec = {"device": str(dev), "hidden": h, "i": 5, "timed": n in timed, "reps": reps}
        if quick and n == sizes[0]:  # a smoke run: the small point in this process; the failure path in a worker
            res = {**point(spec), "status": "ok", "child_peak_rss_mb": float("nan"), "wall_s": float("nan")}
        else:
            res = worker.run_worker("scale:point", spec, timeout=time_cap_s, mem_cap_gib=None if dev.type == "cuda" else cap)
        row = {"section": "scale", "target_size": int(n), "hidden": f"[{h},{h}]", "method": "neumann", "iterations": 5,
               "batch": 128, "status": res["status"], "mem_cap_gib": cap, "time_cap_s": time_cap_s,
               "child_peak_rss_mb": res["child_peak_rss_mb"], "process_wall_s": res["wall_s"]}
        for k in ("num_weights", "num_hyperparams", "build_s", "first_hypergradient_s", "hypergradient_s",
                  "hypergradient_s_q1", "hypergradient_s_q3", "grad_s", "ratio_median", "ratio_q1", "ratio_q3", "peak_mb"):
            if k in res:
                row[k] = res[k]
        if res["status"] != "ok":
            row["error"] = (res.get("error") or "")[-300:].replace("\n", " ")
        rows.append(row)
        if res["status"] == "ok":
            largest = row
            t = res.get("hypergradient_s", res["first_hypergradient_s"])
            print(f"  scale {res['num_hyperparams']:>12,} hyperparameters: ok, hypergradient {t:.2f} s, "
                  f"peak RSS {res['peak_mb']:.0f} MB (process {res['wall_s']:.0f} s)", flush=True)
        else:
            failure = row
            print(f"  scale ~{int(n):>12,} hyperparameters: {res['status']} after {res['wall_s']:.0f} s "
                  f"(peak RSS {res['child_peak_rss_mb']:.0f} MB)", flush=True)
            break
    for r in rows:
        r["largest_ok"] = r is largest
    output.write_csv(out, "scale", rows, dev)
    plot(rows, out / "scale.png", cap)
    output.write_fragment(out, "scale", fragment(rows, quick, cap, largest, failure, avail), headline(rows), dev, quick=quick)
    return rows


def plot(rows, path: Path, cap: float) -> None:
    ok = [r for r in rows if r["status"] == "ok"]
    fig, (a1, a2) = plotting.subplots(1, 2, figsize=(12, 4.4))
    if ok:
        x = [r["num_hyperparams"] for r in ok]
        a1.plot(x, [r["peak_mb"] / 1024 for r in ok], "o-", label="peak RSS of the process (GiB)")
        t = [r.get("hypergradient_s", r["first_hypergradient_s"]) for r in ok]
        a2.plot(x, t, "o-", label="one hypergradient (neumann i=5)")
        a2.plot(x, [r["grad_s"] for r in ok], "s--", label="one plain gradient")
        for xi, ti, r in zip(x, t, ok, strict=True):
            a2.annotate(f"{ti:.2g} s" + ("" if "hypergradient_s" in r else " (1 run)"), (xi, ti), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))
    for r in rows:
        if r["status"] != "ok":
            a1.axvline(r["target_size"], color="red", ls=":", label=f"~{r['target_size'] / 1e6:.0f}M: {r['status']}")
    if rows[0].get("device", "cpu") != "cuda":
        a1.axhline(cap, color="k", ls="--", lw=1, label=f"memory cap {cap:.1f} GiB")
    for ax in (a1, a2):
        ax.set_xscale("log")
        ax.set_xlabel("hyperparameters (= weights, per-weight decay)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    a2.set_yscale("log")
    a1.set_ylabel("GiB (includes ~0.5 GiB of Python + torch)")
    a1.set_ylim(bottom=0)
    a2.set_ylabel("seconds")
    a1.set_title("Peak memory (fresh process per size)", fontsize=10)
    a2.set_title("Time per hypergradient (median at 1M and 10M; else one run)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def fragment(rows, quick, cap, largest, failure, avail) -> str:
    table = []
    for r in rows:
        if r["status"] == "ok":
            t = (f"{r['hypergradient_s']:.3f} s (IQR {r['hypergradient_s_q1']:.3f}–{r['hypergradient_s_q3']:.3f}); "
                 f"{r['ratio_median']:.1f} gradients" if "hypergradient_s" in r else f"{r['first_hypergradient_s']:.2f} s (one run, first call)")
            table.append([f"{r['num_hyperparams']:,}", r["hidden"], "ok", f"{r['peak_mb'] / 1024:.2f}", t, f"{r['grad_s']:.3f}"])
        else:
            table.append([f"~{r['target_size']:,}", r["hidden"], f"**{r['status']}**", f"> {r['child_peak_rss_mb'] / 1024:.2f}" if r["status"] == "memory_cap" else f"{r['child_peak_rss_mb'] / 1024:.2f}", "—", "—"])
    lines = ["## 4. scale — how many hyperparameters fit", "",
             f"Reproduce: `{output.command('scale', quick)}` (CSV: `scale.csv`, plot: `scale.png`). Per-weight decay on "
             f"784-H-H-10 MLPs, neumann i=5, batch 128, each size in a fresh process under a memory cap of {cap:.1f} GiB "
             f"(RLIMIT_AS + an RSS watchdog; {avail:.1f} GiB were available when it started; the machine is shared, so "
             "the cap stays below the 24 GiB it has) and a time cap; sizes grow until one fails.", "",
             output.md_table(["hyperparameters", "hidden", "status", "peak RSS GiB", "time per hypergradient", "plain gradient s"], table), ""]
    ten = [r for r in rows if r["status"] == "ok" and r.get("num_hyperparams", 0) >= 9.5e6]
    if largest:
        lines.append(f"- largest that ran: **{largest['num_hyperparams']:,} hyperparameters** "
                     f"(peak RSS {largest['peak_mb'] / 1024:.1f} GiB)"
                     + (f"; the next size (~{failure['target_size']:,}) stopped with `{failure['status']}`" if failure else
                        "; no size failed up to the largest tried"))
    lines.append(f"- target 10M hyperparameters: {output.verdict(bool(ten))}")
    return "\n".join(lines) + "\n"


def headline(rows) -> list[list]:
    ok = [r for r in rows if r["status"] == "ok"]
    fail = [r for r in rows if r["status"] != "ok"]
    out = []
    if ok:
        big = ok[-1]
        out.append(["scale", "largest number of hyperparameters whose hypergradient ran",
                    f"{big['num_hyperparams']:,} (peak RSS {big['peak_mb'] / 1024:.1f} GiB, cap {big['mem_cap_gib']:.1f} GiB"
                    + (f"; ~{fail[0]['target_size'] / 1e6:.0f}M: {fail[0]['status']})" if fail else ")"),
                    "≥ 10,000,000", output.verdict(big["num_hyperparams"] >= 9.5e6)])
    for r in ok:
        if "hypergradient_s" in r:
            out.append(["scale", f"time per hypergradient at {r['num_hyperparams']:,} (neumann i=5)",
                        f"{r['hypergradient_s']:.3f} s ({r['ratio_median']:.1f} gradients)", "—", ""])
    return out
