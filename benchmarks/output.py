"""What the benchmark writes: ``<section>.csv`` (the machine facts on every row) and reading it
back, the README fragments and their headline rows, Markdown tables and the text of a figure
(median with its spread, mean ± std, a verdict, the command that reproduces it)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from hgbench.benchmarks.machine import machine_info

META_COLUMNS = ("device", "gpu", "cpu", "cores", "threads", "torch", "python", "date", "commit", "load1")


def ratio_cols(prefix: str, s: dict[str, float]) -> dict[str, float]:
    """A ``stats.spread`` as CSV columns ``<prefix>_median``, ``_q1``, ``_q3``, ``_min``, ``_max``."""
    return {f"{prefix}_median": s["median"], f"{prefix}_q1": s["q1"], f"{prefix}_q3": s["q3"],
            f"{prefix}_min": s["min"], f"{prefix}_max": s["max"]}


def write_csv(out: Path, section: str, rows: list[dict[str, Any]], device: torch.device | str = "cpu") -> Path:
    """``<out>/<section>.csv``: one row per measurement, the machine facts on every row."""
    out.mkdir(parents=True, exist_ok=True)
    meta = machine_info(device)
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    cols += [c for c in META_COLUMNS if c not in cols]
    path = out / f"{section}.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({**{c: meta.get(c, "") for c in META_COLUMNS}, **{k: _fmt(v) for k, v in r.items()}})
    return path


def write_derived_csv(out: Path, section: str, rows: list[dict[str, Any]], runs: list[dict[str, Any]]) -> Path:
    """``write_csv`` for rows computed again from a study's runs (its intervals, its differences):
    each row names this tree's commit (``commit``) and the runs' commits (``runs_commit``)."""
    runs_commit = " ".join(sorted({str(r.get("commit", "")) for r in runs}))
    return write_csv(out, section, [{**r, "runs_commit": runs_commit} for r in rows])


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return v


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV written by ``write_csv``, numbers and booleans parsed back (for re-plotting)."""
    def parse(v: str) -> Any:
        if v in ("True", "False"):
            return v == "True"
        for t in (int, float):
            try:
                return t(v)
            except ValueError:
                pass
        return v

    with open(path, newline="") as f:
        return [{k: parse(v) for k, v in r.items()} for r in csv.DictReader(f)]


def write_fragment(out: Path, section: str, text: str, headline: list[list[Any]] | None = None,
                   device: torch.device | str = "cpu", quick: bool = False) -> None:
    """``<out>/fragments/<section>.md`` (this section's part of the README, assembled by the CLI)
    and ``<section>.json`` (its rows of the headline table, the machine it ran on, and whether it
    was a --quick smoke run). The CLI adds the load average at the section's start
    (``add_load_at_start``)."""
    d = out / "fragments"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{section}.md").write_text(text.rstrip() + "\n")
    write_json(d / f"{section}.json", {"headline": headline or [], "machine": machine_info(device), "quick": quick})


def add_load_at_start(out: Path, section: str, load1: float) -> None:
    """Record in ``<out>/fragments/<section>.json`` the load average before the section ran."""
    path = out / "fragments" / f"{section}.json"
    d = json.loads(path.read_text())
    d["machine"]["load1_start"] = round(load1, 2)
    write_json(path, d)


def write_json(path: Path, d: dict[str, Any]) -> None:
    """A fragment's JSON as every section writes it (indented by one, anything else as text)."""
    path.write_text(json.dumps(d, indent=1, default=str))


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def fr(s: dict[str, float], digits: int = 2) -> str:
    """A ``stats.spread`` as '8.34 (8.10–8.61)': the median and its interquartile range."""
    if not s or s.get("n", 0) == 0 or math.isnan(s["median"]):
        return "—"
    return f"{s['median']:.{digits}f} ({s['q1']:.{digits}f}–{s['q3']:.{digits}f})"


def pm(mean: float, std: float, fmt: str = ".3f") -> str:
    """'0.912 ± 0.004': a mean ± standard deviation (``stats.mean_std``) in the format ``fmt``."""
    return f"{mean:{fmt}} ± {std:{fmt}}"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def command(section: str, quick: bool, extra: str = "") -> str:
    """The command that reproduces a performance section into results/perf."""
    return f"hgbench-bench {section}{' --quick' if quick else ''} --out results/perf{extra}"
