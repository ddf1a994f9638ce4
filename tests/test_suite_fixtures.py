"""The suite's own machinery: the pre-made MLflow store, the copied tiny_mlp and the scheduling
lists (tests/conftest.py), and the CPU census (tests/cpu_census.py)."""

from pathlib import Path

from mlflow.tracking import MlflowClient

import conftest

TESTS = Path(__file__).resolve().parent


def test_a_copied_store_opens_at_the_current_schema_and_is_its_own(tmp_path, copy_store):
    """MLflow refuses to open a store whose schema is behind its own (it would have to migrate):
    a run written to a copy proves the template is at head. The copy's Default experiment keeps
    its artifacts beside it, and writing to one copy leaves the template (the next copy) empty."""
    (tmp_path / "a").mkdir()
    a = copy_store(tmp_path / "a" / "mlflow.db")
    client = MlflowClient(f"sqlite:///{a}")
    assert [e.name for e in client.search_experiments()] == ["Default"]
    assert client.get_experiment("0").artifact_location == str(tmp_path / "a" / "mlruns" / "0")
    exp = client.create_experiment("x", artifact_location=(tmp_path / "a" / "mlartifacts").as_uri())
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "m", 1.0, step=3)
    client.set_terminated(run.info.run_id)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "m")] == [3]

    b = MlflowClient(f"sqlite:///{copy_store(tmp_path / 'b.db')}")
    assert [e.name for e in b.search_experiments()] == ["Default"]
    assert b.get_experiment("0").artifact_location == str(tmp_path / "mlruns" / "0")


def test_the_scheduling_lists_name_test_files_that_exist():
    """A misspelt name would silently spread a file's tests over both workers (two SLURM
    clusters at once) or stop sorting it first."""
    files = {p.name for p in TESTS.glob("test_*.py")}
    assert conftest.ONE_WORKER <= files, conftest.ONE_WORKER - files
    assert set(conftest.LONGEST_FIRST) <= files, set(conftest.LONGEST_FIRST) - files
    assert len(set(conftest.LONGEST_FIRST)) == len(conftest.LONGEST_FIRST)


def test_tiny_mlp_is_a_copy_of_one_trained_experiment_and_the_same_as_a_fresh_one(tiny_mlp, request):
    """Each test gets its own deep copy of one trained and polished experiment: bitwise the same
    weights and hypergradient as one built and trained again, and changes stay in the copy."""
    import torch

    template = request.getfixturevalue("tiny_mlp_at_optimum")
    assert tiny_mlp is not template and tiny_mlp.w is not template.w and tiny_mlp.problem is not template.problem
    fresh = conftest.trained_tiny_mlp()  # built and trained again
    assert torch.equal(tiny_mlp.w, fresh.w) and torch.equal(tiny_mlp.lam, fresh.lam)
    assert torch.equal(tiny_mlp.hypergradient("exact")["log_decay"], fresh.hypergradient("exact")["log_decay"])
    tiny_mlp.train_inner(3)
    fresh.train_inner(3)
    assert torch.equal(tiny_mlp.w, fresh.w)  # optimiser and sampler states came along
    before = template.lam.detach().clone()
    tiny_mlp.lam.data.add_(1.0)  # in place, in the copy
    assert torch.equal(template.lam, before)  # the template is untouched


BURN = "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end:\n    pass\n"


def test_the_cpu_census_splits_each_tests_cpu_between_it_and_the_processes_it_started(pytester):
    """``pytest -p cpu_census``: a test that burns CPU itself is charged to the test process, one
    whose subprocess burns it to the processes it started, and the totals add both up."""
    pytester.makepyfile(test_burn=f'''
import subprocess, sys

def test_itself():
    exec({BURN.format(s=0.4)!r})

def test_in_a_child():
    subprocess.run([sys.executable, "-c", {BURN.format(s=0.6)!r}], check=True)
''')
    result = pytester.runpytest_inprocess("-p", "cpu_census", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    out = result.stdout.str()
    rows = {line.split()[-1].split("::")[-1]: [float(x) for x in line.split()[:3]]
            for line in out.splitlines() if line.strip().endswith(("test_itself", "test_in_a_child"))}
    (total_a, mine_a, theirs_a), (total_b, mine_b, theirs_b) = rows["test_itself"], rows["test_in_a_child"]
    assert mine_a >= 0.35 and theirs_a < 0.1, rows
    assert theirs_b >= 0.55 and mine_b < 0.3, rows
    assert list(rows) == ["test_in_a_child", "test_itself"], "the costliest test first"
    summary = next(line for line in out.splitlines() if line.startswith("2 tests: "))
    spent = float(summary.split()[2])
    assert abs(spent - (total_a + total_b)) <= 1.0 and "in the processes they started" in summary, summary
