"""Every published study's CSV says which committed code produced it: a ``commit`` column on
every row, never a checkout with local changes (``+dirty``), and — where git history is at hand —
a commit that exists in it: the paper studies, hyper-cleaning and the frontier. The performance
sections (results/perf) and the older sweep tables are outside this check (see results/README.md)."""

import csv
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ["results/paper", "results/hyperclean", "results/frontier"]


def study_csvs() -> list[Path]:
    return sorted(p for d in CHECKED for p in (ROOT / d).rglob("*.csv"))


def commits_of(path: Path) -> set[str]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows, f"{path.relative_to(ROOT)} has no rows"
    assert "commit" in rows[0], f"{path.relative_to(ROOT)} has no commit column"
    missing = [i for i, r in enumerate(rows) if not r["commit"]]
    assert not missing, f"{path.relative_to(ROOT)}: rows {missing[:5]} have no commit"
    return {r["commit"] for r in rows}


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
