"""Measurements in a fresh Python process: ``run_worker`` (in the parent) starts
``python -m hgbench.benchmarks.worker MODULE:FUNC SPEC OUT`` and watches it; ``main`` (in the
child) calls ``hgbench.benchmarks.MODULE.FUNC(spec)`` and writes the dict it returns as JSON to
OUT. A failure is written as ``{"status": "error" | "oom", "error": ...}`` so the parent can
report why.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from hgbench.memory import status_kb

# the checkout (the children run there, with it on their PYTHONPATH)
ROOT = Path(__file__).resolve().parents[1]


def run_worker(func: str, spec: dict[str, Any], timeout: float = 600, mem_cap_gib: float | None = None,
               threads: int | None = None, exact_rss: bool = False) -> dict[str, Any]:
    """Run ``hgbench.benchmarks.<func>`` (``module:function``) on ``spec`` in a FRESH Python process
    and return the dict it returns, plus ``wall_s``, the child's ``child_peak_rss_mb`` (its VmHWM)
    and ``status`` (``ok`` | ``error`` | ``oom`` | ``memory_cap`` | ``timeout``).

    With ``mem_cap_gib`` the child gets ``RLIMIT_AS`` = cap + 4 GiB of address-space slack (so a
    too-large allocation fails inside torch with an error instead of swapping), and the parent
    kills it as soon as its resident set passes the cap. With ``exact_rss`` (memory measurements
    only, never timings) glibc's ``MALLOC_MMAP_THRESHOLD_`` is fixed at 128 KiB so freed tensors go
    back to the kernel at once and RSS follows live memory — at the price of a page fault per new
    tensor, which makes a training loop several times slower.
    """
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if exact_rss:
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    else:
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if threads:
        env["HGBENCH_BENCH_THREADS"] = str(threads)
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as res:
        res_path = res.name

    def limit():  # in the child, before exec
        os.setsid()
        if mem_cap_gib:
            import resource

            cap = int((mem_cap_gib + 4) * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "hgbench.benchmarks.worker", func, json.dumps(spec), res_path],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=limit)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    status, peak_kb = None, 0
    while proc.poll() is None:
        peak_kb = max(peak_kb, status_kb("VmHWM", proc.pid) or 0, status_kb("VmRSS", proc.pid) or 0)
        if mem_cap_gib and peak_kb > mem_cap_gib * 2**20:
            status = "memory_cap"
        elif time.perf_counter() - t0 > timeout:
            status = "timeout"
        if status:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.wait()
            break
        time.sleep(0.05)
    reader.join(timeout=5)
    proc.stdout.close()
    wall = time.perf_counter() - t0
    result: dict[str, Any] = {}
    try:
        text = Path(res_path).read_text()
        result = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        result = {}
    finally:
        try:
            os.unlink(res_path)
        except OSError:
            pass
    if status is None:
        status = result.pop("status", None) or ("ok" if proc.returncode == 0 else "error")
    result.setdefault("error", "" if status == "ok" else "".join(output)[-2000:])
    return {**result, "status": status, "wall_s": wall, "child_peak_rss_mb": peak_kb / 1024, "returncode": proc.returncode}


def main() -> None:
    func, spec, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import torch

    if os.environ.get("HGBENCH_BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["HGBENCH_BENCH_THREADS"]))
    mod, name = func.split(":")
    try:
        result = getattr(importlib.import_module(f"hgbench.benchmarks.{mod}"), name)(spec)
        result.setdefault("status", "ok")
    except (MemoryError, RuntimeError) as exc:  # torch's "can't allocate memory" is a RuntimeError
        oom = isinstance(exc, MemoryError) or "allocate" in str(exc) or "out of memory" in str(exc)
        result = {"status": "oom" if oom else "error", "error": f"{type(exc).__name__}: {exc}"[:2000]}
    except Exception:  # noqa: BLE001 - reported to the parent (the traceback)
        result = {"status": "error", "error": traceback.format_exc()[-2000:]}
        print(result["error"], file=sys.stderr)
    with open(out, "w") as f:
        json.dump(result, f, default=float)


if __name__ == "__main__":
    main()
