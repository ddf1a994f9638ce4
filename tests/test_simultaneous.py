"""Several launches at the same time, as a team or a cluster makes them: first launches on a new
sqlite store make it once and whole (a half-migrated store is refused in one line, untouched),
and a job launched twice at once — a single run relaunched with ``resume=true``, the same grid
twice — is run by one process and skipped by the other: one FINISHED run per job, every step
once, and each launch in an output folder of its own. The claim and the store's creation are
tried in this process (threads) and in small processes started at one moment; the
``hgbench`` processes at the end are the issue's probe, made small."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import run_cli
from mlflow.tracking import MlflowClient

from hgbench import claims, store

# N processes doing one thing at the same moment: each imports what it needs, says "ready", waits
# for the "go" file, does it, prints its result, and waits for the "end" file before exiting
# (so that what one holds, it holds while the others try)
AT_ONCE = """
import os, sys, time
from pathlib import Path
from hgbench import claims, store
go, end, uri = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
print("ready", flush=True)
while not go.exists():
    time.sleep(0.01)
try:
    {action}
except BaseException as exc:
    print(f"{{type(exc).__name__}}: {{exc}}".replace(chr(10), " "), flush=True)
while not end.exists():
    time.sleep(0.01)
os._exit(0)  # no release: what it holds is left as a killed process leaves it
"""


def at_once(tmp_path: Path, uri: str, action: str, n: int) -> list[tuple[int, str]]:
    """(pid, result line) of ``n`` processes running ``action`` at the same moment."""
    go, end = tmp_path / "go", tmp_path / "end"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    procs = [subprocess.Popen([sys.executable, "-c", AT_ONCE.format(action=action), str(go), str(end), uri],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True) for _ in range(n)]
    try:
        assert [p.stdout.readline().strip() for p in procs] == ["ready"] * n
        go.touch()
        results = [(p.pid, p.stdout.readline().strip()) for p in procs]
    finally:
        end.touch()
        for p in procs:
            p.wait(timeout=120)
            p.stdout.close()
    go.unlink()
    end.unlink()
    return results


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- 1. a fresh store, many first launches --------------------------------------------------------
@pytest.mark.slow
def test_simultaneous_first_launches_make_the_store_once_and_whole(tmp_path):
    """Four processes open a store that does not exist yet, at the same moment, as a launch does
    first: the pre-flight check, then a run (without the lock and the rename, MLflow migrates it
    four times at once: ``table _alembic_tmp_… already exists``, ``duplicate column name``, a
    store nothing can open again)."""
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    n = 4
    action = ("from mlflow.tracking import MlflowClient; exp_id = store.check_store(uri, 'hgbench'); "
              "MlflowClient(uri).create_run(exp_id); print('ok', flush=True)")
    results = at_once(tmp_path, uri, action, n)
    assert [r for _, r in results] == ["ok"] * n, results
    state = store.sqlite_state(db)
    assert state.revision == store.schema_head() and not any(t.startswith("_alembic_tmp_") for t in state.tables)
    client = MlflowClient(uri)
    (exp,) = [e for e in client.search_experiments() if e.name == "hgbench"]
    assert len(client.search_runs([exp.experiment_id])) == n
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["mlflow.db", "mlflow.db.lock"]  # no temporary store left


def test_the_store_is_created_once_by_threads_at_once(tmp_path, copy_store, monkeypatch):
    """The lock serialises creation inside one process too (a notebook's threads): one creation,
    every caller finds the store whole. (MLflow's migrations are replaced by a copy of a migrated
    store: the processes above run them.)"""
    db = tmp_path / "sub" / "mlflow.db"
    made = []

    def migrate(path):
        made.append(path)
        time.sleep(0.3)  # a slow creation: the others must wait for it, not start their own
        copy_store(path)

    monkeypatch.setattr(store, "_migrate_new_store", migrate)
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def first():
        try:
            barrier.wait(timeout=30)
            store.prepare_store(f"sqlite:///{db}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=first) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(made) == 1 and made[0].parent == db.parent and made[0] != db  # a temporary file, renamed
    assert store.sqlite_state(db).revision == store.schema_head()
    assert sorted(p.name for p in db.parent.iterdir()) == ["mlflow.db", "mlflow.db.lock"]


def test_a_creation_that_fails_half_way_leaves_no_store(tmp_path, copy_store, monkeypatch):
    """The store is renamed into place only once migrated: a migration that fails half way
    leaves neither a store nor a temporary file, and the next launch creates it."""
    db = tmp_path / "mlflow.db"

    def broken(path):
        with sqlite3.connect(path) as con:  # half a schema, then the failure
            con.execute("CREATE TABLE _alembic_tmp_latest_metrics (key VARCHAR(250))")
        con.close()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "_migrate_new_store", broken)
    with pytest.raises(OSError):
        store.prepare_store(f"sqlite:///{db}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db.lock"]
    monkeypatch.setattr(store, "_migrate_new_store", copy_store)
    store.prepare_store(f"sqlite:///{db}")
    assert store.sqlite_state(db).revision == store.schema_head()


def test_a_half_migrated_store_is_refused_in_one_line_and_left_untouched(tmp_path, copy_store, monkeypatch, capsys):
    """What simultaneous first launches left before: MLflow's leftover table of an interrupted
    migration. The launch stops in one line naming the table and the repair (exit 2), before
    MLflow is asked (it would try to migrate the file again); the repair it gives works."""
    db = copy_store(tmp_path / "mlflow.db")
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE _alembic_tmp_latest_metrics (key VARCHAR(250))")
    con.close()
    before = digest(db)
    code, out, err = run_cli(monkeypatch, tmp_path, "dataset=digits", "model.hidden=[8]", "hyper_steps=2", "progress=false",
                             f"mlflow.tracking_uri=sqlite:///{db}")
    assert code == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "half-migrated" in lines[0] and "_alembic_tmp_latest_metrics" in lines[0], err
    assert "DROP TABLE _alembic_tmp_latest_metrics" in lines[0] and "mlflow db upgrade" in lines[0]
    assert "holds 0 runs" in lines[0] and "Traceback" not in err
    assert digest(db) == before and "hgbench run" not in out
    from hgbench.report import main as report  # the report, which only reads, refuses it too

    assert report(["--tracking-uri", f"sqlite:///{db}", "--out-dir", str(tmp_path / "report")]) == 1
    assert "half-migrated" in capsys.readouterr().err and digest(db) == before
    with sqlite3.connect(db) as con:  # the repair it names (the upgrade has nothing left to do here)
        con.execute("DROP TABLE _alembic_tmp_latest_metrics")
    con.close()
    assert store.check_store(f"sqlite:///{db}", "hgbench")


def test_a_store_with_tables_but_no_schema_revision_is_refused_too(tmp_path, copy_store):
    db = copy_store(tmp_path / "mlflow.db")
    with sqlite3.connect(db) as con:
        con.execute("DROP TABLE alembic_version")
    con.close()
    with pytest.raises(store.StoreError, match=r"half-migrated \(it has MLflow tables but no schema revision.*mv "):
        store.check_store(f"sqlite:///{db}", "hgbench")



def test_a_store_of_another_mlflow_schema_is_refused_in_one_line_naming_the_upgrade(tmp_path, copy_store):
    """A store an older MLflow made (its schema revision not this MLflow's): the check does not
    compare revisions itself (MLflow does when it opens the store); the refusal is still one line,
    before any work, naming ``mlflow db upgrade``, and the store is left as it was."""
    db = copy_store(tmp_path / "mlflow.db")
    with sqlite3.connect(db) as con:
        con.execute("UPDATE alembic_version SET version_num = 'c48cb773bb87'")  # an older revision of MLflow's
    con.close()
    before = db.read_bytes()
    with pytest.raises(store.StoreError, match=r"cannot use the MLflow store at sqlite:///.*out-of-date database schema "
                                               r"\(found version c48cb773bb87, but expected " + store.schema_head() + r"\).*mlflow db upgrade"):
        store.check_store(f"sqlite:///{db}", "hgbench")
    assert db.read_bytes() == before

# --- 2. one process per job: the claim -----------------------------------------------------------
def _claims(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as con:
        rows = con.execute(f"SELECT fingerprint, host, pid, since, heartbeat FROM {claims.CLAIMS_TABLE}").fetchall()
    con.close()
    return rows


def test_the_schema_head_read_from_the_migration_files_is_alembics(tmp_path):
    """``store.schema_head`` reads the migrations' revision assignments instead of executing them
    (alembic): the same head for this MLflow; a merge, two heads, a computed revision fall back."""
    import mlflow.store
    from alembic.script import ScriptDirectory

    folder = Path(mlflow.store.__file__).parent / "db_migrations"
    assert store.schema_head() == ScriptDirectory(str(folder)).get_current_head()
    assert store.migrations_head(folder / "versions") == store.schema_head()

    def versions(**files):
        d = tmp_path / f"v{len(list(tmp_path.iterdir()))}"
        d.mkdir()
        (d / "__init__.py").write_text("")
        for name, text in files.items():
            (d / f"{name}.py").write_text(f'"""{name}"""\nimport sqlalchemy as sa\n{text}\n\ndef upgrade():\n    pass\n')
        return d

    base = {"a": 'revision = "a"\ndown_revision = None', "b": 'revision = "b"\ndown_revision = "a"'}
    assert store.migrations_head(versions(**base)) == "b"
    merged = {**base, "c": 'revision = "c"\ndown_revision = "a"', "d": 'revision: str = "d"\ndown_revision = ("b", "c")'}
    assert store.migrations_head(versions(**merged)) is None  # an annotated assignment is not read: fall back
    merged["d"] = 'revision = "d"\ndown_revision = ("b", "c")'
    assert store.migrations_head(versions(**merged)) == "d"
    assert store.migrations_head(versions(**base, c='revision = "c"\ndown_revision = "a"')) is None  # two heads
    assert store.migrations_head(versions(**base, c='revision = "c" + ""\ndown_revision = "b"')) is None
    assert store.migrations_head(versions(**base, c='revision = "c"')) is None  # no down_revision said


def test_of_threads_claiming_a_job_at_once_exactly_one_gets_it(tmp_path, copy_store):
    db = copy_store(tmp_path / "mlflow.db")
    uri = f"sqlite:///{db}"
    n = 8
    barrier, got, lock = threading.Barrier(n), [], threading.Lock()

    def claim():
        barrier.wait(timeout=30)
        result = claims.claim_job(uri, "job-a", stale_after_s=60)
        with lock:
            got.append(result)

    threads = [threading.Thread(target=claim) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    won = [c for c, _ in got if c is not None]
    holders = [h for c, h in got if c is None]
    assert len(got) == n and len(won) == 1 and len(holders) == n - 1
    assert {(h.pid, h.host) for h in holders} == {(os.getpid(), claims.platform.node())}
    assert "pid" in holders[0].describe() and "since" in holders[0].describe()
    other, none = claims.claim_job(uri, "job-b", stale_after_s=60)  # another job: its own claim
    assert other is not None and none is None
    won[0].release()
    other.release()
    assert _claims(db) == []
    again, _ = claims.claim_job(uri, "job-a", stale_after_s=60)  # released: free for the next launch
    assert again is not None
    again.release()


def test_of_processes_claiming_a_job_at_once_one_gets_it_and_its_death_frees_it(tmp_path, copy_store):
    db = copy_store(tmp_path / "mlflow.db")
    uri = f"sqlite:///{db}"
    action = ("claim, holder = claims.claim_job(uri, 'job-a', stale_after_s=60); "
              "print('won' if claim else f'lost to {holder.pid}', flush=True)")
    got = at_once(tmp_path, uri, action, 4)
    winners = [pid for pid, said in got if said == "won"]
    assert len(winners) == 1, got
    assert {said for _, said in got if said != "won"} == {f"lost to {winners[0]}"}
    assert [r[2] for r in _claims(db)] == winners  # its claim is still there, its process is gone
    claim, holder = claims.claim_job(uri, "job-a", stale_after_s=60)  # so it is taken over
    assert claim is not None and holder is None
    claim.release()


def test_a_claim_is_a_lease_renewed_while_its_job_runs_and_taken_over_once_stale(tmp_path, copy_store):
    db = copy_store(tmp_path / "mlflow.db")
    uri = f"sqlite:///{db}"
    claim, _ = claims.claim_job(uri, "job-a", stale_after_s=2)  # a heartbeat every 0.5 s
    (row,) = _claims(db)
    deadline = time.monotonic() + 10
    while _claims(db)[0][4] <= row[3] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _claims(db)[0][4] > row[3], "the heartbeat is renewed"
    claim.release()
    # another host's claim: alive while its heartbeat is fresh, taken over once it is older
    # than resume_stale_after_s (the rule a RUNNING run of another host is judged by)
    now = time.time()
    with sqlite3.connect(db) as con:
        con.execute(f"INSERT INTO {claims.CLAIMS_TABLE} VALUES ('job-b', 'x', 'elsewhere', 1, ?, ?)", (now, now))
    con.close()
    none, holder = claims.claim_job(uri, "job-b", stale_after_s=60)
    assert none is None and holder.host == "elsewhere"
    with sqlite3.connect(db) as con:
        con.execute(f"UPDATE {claims.CLAIMS_TABLE} SET heartbeat = ?", (now - 61,))
    con.close()
    claim, holder = claims.claim_job(uri, "job-b", stale_after_s=60)
    assert claim is not None and holder is None
    claim.release()


def test_a_grid_skips_a_job_another_live_process_has_claimed(tmp_path, mlflow_db, monkeypatch):
    """The launch that loses says so in one line, naming the process, and records nothing."""
    from hgbench.api import compose_config
    from hgbench.config import fingerprint

    job = ["experiment=quick", "hyper_steps=3", "mlflow.experiment=claimed"]
    fp = claims.job_key("claimed", fingerprint(compose_config(job)))
    sleeper = subprocess.Popen(["sleep", "60"])  # a live process of this host holds the claim
    try:
        now = time.time()
        with sqlite3.connect(mlflow_db) as con:
            con.execute(f"CREATE TABLE {claims.CLAIMS_TABLE} (fingerprint TEXT PRIMARY KEY, token TEXT NOT NULL, "
                        "host TEXT NOT NULL, pid INTEGER NOT NULL, since REAL NOT NULL, heartbeat REAL NOT NULL)")
            con.execute(f"INSERT INTO {claims.CLAIMS_TABLE} VALUES (?, 'x', ?, ?, ?, ?)", (fp, claims.platform.node(), sleeper.pid, now, now))
        con.close()
        code, out, err = run_cli(monkeypatch, tmp_path, "-m", *job)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert code == 0, err[-2000:]
    assert f"this job is being run now by pid {sleeper.pid} on {claims.platform.node()}" in out and "not started twice" in out
    assert "1 jobs — 1 skipped" in out and "finished earlier" not in out
    exp = MlflowClient(f"sqlite:///{mlflow_db}").get_experiment_by_name("claimed")
    assert MlflowClient(f"sqlite:///{mlflow_db}").search_runs([exp.experiment_id]) == []


# --- the probe: hgbench processes launched at the same moment ------------------------------------
JOB = ["dataset=digits", "model.hidden=[32]", "num_threads=1", "progress=false", "eval_every=5",
       "mlflow.flush_every_s=1000"]

KILLED_AT_STEP = """
import os, signal, sys
real = os.replace
def replace(src, dst):
    real(src, dst)
    if str(dst).endswith(".pt") and "mlartifacts" not in str(dst):
        os.kill(os.getpid(), signal.SIGKILL)  # right after its first checkpoint
os.replace = replace
from hgbench.cli import main
sys.argv = ["hgbench", *sys.argv[1:]]
main()
"""


def launch(cwd: Path, *args: str, script: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-c", script or "from hgbench.cli import main; main()", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    outs = [p.communicate(timeout=300) for p in procs]
    return [(p.returncode, *o) for p, o in zip(procs, outs, strict=True)]


def by_status(client: MlflowClient, experiment: str) -> dict[str, list]:
    exp = client.get_experiment_by_name(experiment)
    out: dict[str, list] = {}
    for r in client.search_runs([exp.experiment_id], max_results=1000):
        out.setdefault(r.info.status, []).append(r)
    return out


def steps(client: MlflowClient, run, key: str = "elapsed_s") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, key))


@pytest.mark.slow
def test_an_interrupted_run_relaunched_twice_at_once_finishes_once(tmp_path, mlflow_db):
    """Issue 24 §2: a run killed after its checkpoint, then ``resume=true`` twice at the same
    moment: one launch resumes it, the other skips it (or, started after the end, finds it
    FINISHED) — one FINISHED run, every step once."""
    job = [*JOB, "hyper_steps=40", "checkpoint.every=10", "resume=true", "mlflow.experiment=twice"]
    killed = launch(tmp_path, *job, script=KILLED_AT_STEP)
    _, err = killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL, err[-2000:]
    client = MlflowClient(f"sqlite:///{mlflow_db}")
    (dead,) = by_status(client, "twice")["RUNNING"]

    results = finish([launch(tmp_path, *job), launch(tmp_path, *job)])
    outs = [out for _, out, _ in results]
    resumed = [i for i, o in enumerate(outs) if f"resuming interrupted MLflow run {dead.info.run_id}" in o]
    assert len(resumed) == 1, outs
    (other,) = {0, 1} - set(resumed)
    # the other launch skipped the job (exit 3: nothing trained) or, started after its end, found it FINISHED (0)
    assert (results[resumed[0]][0], results[other][0]) in {(0, 3), (0, 0)}, [err[-2000:] for _, _, err in results]
    assert ("not started twice" in outs[other]) == (results[other][0] == 3), outs[other]
    assert "not started twice" in outs[other] or "already FINISHED" in outs[other], outs[other]
    runs = by_status(client, "twice")
    assert sorted(runs) == ["FINISHED", "KILLED"] and len(runs["FINISHED"]) == 1 and len(runs["KILLED"]) == 1
    (done,) = runs["FINISHED"]
    assert done.data.tags["hgbench.resumed_from"] == dead.info.run_id
    assert steps(client, done) == list(range(41)) and steps(client, done, "runtime_s") == [40]


@pytest.mark.slow
def test_the_same_grid_launched_twice_at_once_runs_each_job_once(tmp_path, mlflow_db):
    """Issue 24 §2: two identical 2-job grids started together on one store: each job FINISHED
    once with every step once; each grid in its own output folder, its summary its own jobs."""
    grid = ["-m", *JOB, "hyper_steps=30", "seed=0,1", "mlflow.experiment=grids"]
    results = finish([launch(tmp_path, *grid), launch(tmp_path, *grid)])
    assert [code for code, _, _ in results] == [0, 0], [err[-2000:] for _, _, err in results]
    client = MlflowClient(f"sqlite:///{mlflow_db}")
    runs = by_status(client, "grids")
    assert list(runs) == ["FINISHED"] and sorted(r.data.params["seed"] for r in runs["FINISHED"]) == ["0", "1"]
    for r in runs["FINISHED"]:
        assert steps(client, r) == list(range(31))
    for _, out, _ in results:
        assert "hgbench sweep" in out and "2 jobs —" in out, out[-2000:]
    ran = sum(out.count("hgbench run FINISHED") for _, out, _ in results)
    assert ran == 2, [out[-3000:] for _, out, _ in results]  # each job trained by one of the two
    folders = sorted(tmp_path.glob("multirun/*/*"))
    assert len(folders) == 2, folders
    for folder in folders:
        assert sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.isdigit()) == ["0", "1"]


def test_each_launch_has_an_output_folder_of_its_own(tmp_path, monkeypatch):
    """Two launches in the same second (here: one after the other in this process) never share
    Hydra's ``outputs/<day>/<time>`` or ``multirun/<day>/<time>`` folder: each gets a suffix of
    its own, which the processes it starts inherit."""
    from hgbench.callbacks import LAUNCH_ENV

    monkeypatch.delenv(LAUNCH_ENV, raising=False)
    dirs = []
    for _ in range(2):
        code, out, err = run_cli(monkeypatch, tmp_path, "--cfg", "hydra", "--resolve")
        assert code == 0, err
        dirs.append([line.split(": ", 1)[1] for line in out.splitlines() if line.strip().startswith("dir: ")])
    (run1, sweep1), (run2, sweep2) = dirs
    assert run1.startswith("outputs/") and sweep1.startswith("multirun/")
    assert run1.rsplit("-", 1)[1] == sweep1.rsplit("-", 1)[1]  # one suffix per launch
    assert run1 != run2 and sweep1 != sweep2
    assert LAUNCH_ENV not in os.environ  # not left to the next launch
