"""``hgbench-bench --quick``: every section runs end to end and writes sane CSVs, plots and a README.

No timing assertions (the machines are shared and noisy): only that each section produces its
files, the expected columns, and finite, positive ratios.
"""

import csv
import math
from pathlib import Path

import pytest

from hgbench.benchmarks import SECTIONS

COLUMNS = {
    "cost": {"model", "what", "method", "iterations", "ratio_median", "ratio_q1", "ratio_q3", "time_ms_median", "target_met"},
    "memory": {"method", "iterations", "peak_mb_median", "peak_mb_min", "peak_mb_max", "fit_slope_mb_per_iter", "memory_kind"},
    "joint": {"config", "k", "time_ratio_median", "time_ratio_q1", "time_ratio_q3", "memory_footprint_ratio", "time_target_met"},
    "scale": {"target_size", "status", "num_hyperparams", "peak_mb", "first_hypergradient_s", "mem_cap_gib"},
    "peers": {"peer", "peer_call", "method", "iterations", "hgbench_ms", "peer_ms", "speedup_median", "max_rel_diff"},
    "overhead": {"what", "ratio_median", "cli_runtime_s", "bare_runtime_s"},  # the grid rows: not with --quick
    "compile": {"model", "status", "max_rel_diff", "compile_s", "inner_ratio_median", "step_ratio_median", "helps"},
}
RATIOS = {
    "cost": ["ratio_median", "ratio_q1", "ratio_q3"],
    "memory": [],  # peaks may be 0 MB on the tiny quick problem: checked >= 0 below
    "joint": ["time_ratio_median"],
    "scale": [],
    "peers": ["speedup_median", "hgbench_ms", "peer_ms"],
    "overhead": ["ratio_median"],
    "compile": ["inner_ratio_median", "step_ratio_median", "compile_s"],
}
MACHINE = {"cpu", "cores", "threads", "torch", "date", "commit", "load1", "device"}


def rows(path: Path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """``hgbench-bench all --quick``: the command's ``main`` in this process (the sections start
    their own subprocesses where they measure in one: memory, joint, scale, overhead)."""
    import contextlib
    import io

    import torch

    from hgbench.benchmarks.cli import main

    out = tmp_path_factory.mktemp("perf")
    said, threads = io.StringIO(), torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            code = main(["all", "--quick", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, said.getvalue()[-6000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("section", SECTIONS)
def test_quick_section_writes_csv_with_columns_and_finite_ratios(quick_run, section):
    path = quick_run / f"{section}.csv"
    assert path.exists(), section
    data = rows(path)
    if section == "peers" and not data:
        pytest.skip("no peer installed (pip install -e '.[bench]'): no rows, so no plot")
    assert (quick_run / f"{section}.png").stat().st_size > 1000
    assert data, section
    cols = set(data[0])
    assert COLUMNS[section] <= cols, COLUMNS[section] - cols
    assert MACHINE <= cols
    for r in data:
        for c in RATIOS[section]:
            if r.get(c, "") != "":
                v = float(r[c])
                assert math.isfinite(v) and v > 0, (section, c, r)


@pytest.mark.slow
def test_quick_sections_check_what_they_measure(quick_run):
    cost = rows(quick_run / "cost.csv")
    assert {r["model"] for r in cost} == {"mlp", "cnn"}
    assert {"neumann", "cg", "identity", "unroll"} <= {r["method"] for r in cost if r["what"] == "hypergradient"}
    assert any(r["what"] == "overhead" for r in cost)
    mem = rows(quick_run / "memory.csv")
    assert {r["method"] for r in mem} == {"neumann", "cg", "unroll"}
    scale = rows(quick_run / "scale.csv")
    assert scale[0]["status"] == "ok" and float(scale[0]["first_hypergradient_s"]) > 0
    assert scale[-1]["status"] in ("memory_cap", "oom"), scale[-1]  # the 1 GiB quick cap stops the large size
    for r in rows(quick_run / "peers.csv"):
        if r["peer_call"] in ("solve_inv(ns=True)", "solve_cg", "Config(type='neumann')"):
            assert float(r["max_rel_diff"]) < 1e-3, r  # same algorithm, same answer
    over = {r["what"]: r for r in rows(quick_run / "overhead.csv")}
    assert set(over) == {"single_run"}  # the grid comparison is not run with --quick
    (comp,) = rows(quick_run / "compile.csv")
    assert comp["status"] == "on" and float(comp["max_rel_diff"]) < 1e-4, comp  # the MLP compiles correctly


@pytest.mark.slow
def test_quick_peers_accuracy_reports_time_to_each_level(quick_run):
    """peers' time-to-accuracy part: written with or without the peers installed (hgbench's own
    rows), both levels on the convex problem reached by hgbench's CG, cold and warm along a run."""
    data = rows(quick_run / "peers_accuracy.csv")
    assert {"problem", "setting", "level", "library", "method", "iterations", "reached", "min_rel_err", "time_ms",
            "speedup_median"} <= set(data[0])
    assert (quick_run / "peers_accuracy.png").stat().st_size > 1000
    best = [r for r in data if r["row"] == "best" and r["library"] == "hgbench" and r["problem"] == "convex"
            and r["setting"] == "one point"]
    assert sorted(float(r["level"]) for r in best) == [1e-4, 1e-2]
    for r in best:
        assert r["reached"] == "True" and float(r["rel_err"]) <= float(r["level"]) and float(r["time_ms"]) > 0, r
    assert {r["start"] for r in data if r["setting"] in ("run", "run fixed")} >= {"cold", "warm"}
    for r in data:
        if r["speedup_median"] != "":
            assert math.isfinite(float(r["speedup_median"])) and float(r["speedup_median"]) > 0, r
    assert "Time to accuracy against the peers" in (quick_run / "README.md").read_text()


@pytest.mark.slow
def test_quick_readme_has_every_section_and_the_gpu_note(quick_run):
    text = (quick_run / "README.md").read_text()
    assert "QUICK SMOKE RUN" in text and "## Headline" in text and "What we could not measure" in text
    for title in ("## 1. cost", "## 2. memory", "## 3. joint", "## 4. scale", "## 5. peers", "## 6. overhead", "## 7. compile"):
        assert title in text
    assert "GPU" in text
