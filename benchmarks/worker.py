"""Entry point of a fresh measurement process: ``python -m hgbench.benchmarks.worker MODULE:FUNC SPEC OUT``.

Calls ``benchmarks.MODULE.FUNC(spec)`` and writes the dict it returns as JSON to OUT. A
failure is written as ``{"status": "error" | "oom", "error": ...}`` so the parent can report why.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback


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
