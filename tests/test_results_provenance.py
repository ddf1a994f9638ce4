"""Every published CSV under results/ says which committed code produced it, never a checkout with
local changes (``+dirty``), and — where git history is at hand — a commit that exists in it. The
commit is a ``commit`` column on every row (the studies, the frontier, the performance sections),
the run and report commits of a study table (``run_commits``, ``report_commit``), the MLflow git tag
of each run in a report's ``runs.csv``, or, for a report's ``metrics.csv``, its runs' rows there."""

import csv
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ["results"]


def study_csvs() -> list[Path]:
    return sorted(p for d in CHECKED for p in (ROOT / d).rglob("*.csv"))


def read(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows, f"{path.relative_to(ROOT)} has no rows"
    return rows


def run_commits(runs_csv: Path) -> dict[str, str]:
    """run_id → the commit of a report's run (MLflow's git tag, ``+dirty`` where hgbench tagged it so)."""
    return {r["run_id"]: r["tags.mlflow.source.git.commit"][:12] + ("+dirty" if r.get("tags.hgbench.git_dirty") == "true" else "")
            for r in read(runs_csv)}


def commits_of(path: Path) -> set[str]:
    rows, name = read(path), path.relative_to(ROOT)
    cols = rows[0].keys()
    if "commit" in cols:
        per_row = [{r["commit"]} for r in rows]
    elif "run_commits" in cols:
        per_row = [{*r["run_commits"].split(), r["report_commit"]} for r in rows]
    elif "tags.mlflow.source.git.commit" in cols:
        per_row = [{c} for c in run_commits(path).values()]
    elif "run_id" in cols and (path.parent / "runs.csv").exists():
        known = run_commits(path.parent / "runs.csv")
        per_row = [{known.get(r["run_id"], "")} for r in rows]
    else:
        raise AssertionError(f"{name} has no commit column (nor a run_id of a sibling runs.csv)")
    missing = [i for i, cs in enumerate(per_row) if not all(cs) or "unknown" in cs]
    assert not missing, f"{name}: rows {missing[:5]} have no commit"
    return set().union(*per_row)


def test_every_study_csv_comes_from_a_committed_tree():
    paths = study_csvs()
    assert paths, "no study CSV found under " + ", ".join(CHECKED)
    dirty = {str(p.relative_to(ROOT)): sorted(c for c in commits_of(p) if c.endswith("+dirty")) for p in paths}
    dirty = {k: v for k, v in dirty.items() if v}
    assert not dirty, f"produced from a checkout with local changes: {dirty}"


def test_every_study_csv_commit_is_in_the_history():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("no git history here (an unpacked archive): the commits cannot be looked up")
    unknown = {}
    for p in study_csvs():
        for c in commits_of(p):
            ok = subprocess.run(["git", "cat-file", "-e", f"{c}^{{commit}}"], cwd=ROOT, capture_output=True).returncode == 0
            if not ok:
                unknown.setdefault(str(p.relative_to(ROOT)), []).append(c)
    assert not unknown, f"commits not in this repository's history: {unknown}"


def test_the_csvs_commit_is_the_tree_the_command_starts_from(monkeypatch, tmp_path):
    """A study that runs for an hour while its checkout changes (a commit, an edit) must stamp its
    CSVs with the tree it started from: ``hgbench-bench`` reads the commit before the first section."""
    import types

    from hgbench.benchmarks import cli, machine

    tree = {"now": ("a" * 40, False)}  # the checkout when the command starts
    monkeypatch.setattr(machine, "git_commit", lambda: tree["now"])
    machine._static_machine.cache_clear()
    seen = []

    def run(out, **kw):  # the study runs; meanwhile the checkout changes; the study writes its CSV rows
        tree["now"] = ("b" * 40, True)
        seen.append(machine.machine_info()["commit"])

    study = types.SimpleNamespace(run=run)
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: study)
    try:
        assert cli.main(["hyperclean", "--quick", "--out", str(tmp_path)]) == 0
    finally:
        machine._static_machine.cache_clear()
    assert seen == ["a" * 12]
