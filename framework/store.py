"""The MLflow store: where it is, the experiment, one run's buffered writes, and what the store
already knows about a job (for resuming interrupted grids), for the recorder plugin, the CLI's
checks and the sweep callback (the report reads its runs with its own client). Every access is
through an ``MlflowClient`` of the store at hand, never MLflow's global tracking URI, and MLflow's
environment settings are set only around the calls that need them (``scoped_env``); ``mlflow``
itself is imported lazily (it takes seconds).

A job is identified by its fingerprint (``hgbench.config.fingerprint``: the resolved config
and seed, without recording options), recorded as the tag ``hgbench.fingerprint``. Relaunching a
grid then:
- skips a job that already FINISHED (``resume: true``; ``auto`` = in grids only);
- does not start a job that is RUNNING right now in a live process;
- marks a run left RUNNING by a dead process (same host: its pid is gone; another host: no
  metric for ``resume_stale_after_s``) as interrupted (MLflow status KILLED), and reruns the job,
  from the latest checkpoint of an interrupted run if there is one;
- and, before any of that, claims the job (``hgbench.claims``: a lease in a sqlite store), so
  that of two launches of the same job at once one runs it and the other skips it.
A sqlite store is created once however many launches open it first (``prepare_store``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hgbench.errors import StoreError

CHECKPOINT_ARTIFACT_DIR = "checkpoint"
# hgbench's run status -> MLflow's (a skipped run is "KILLED" there, with tag hgbench.status=skipped)
MLFLOW_STATUS = {"FINISHED": "FINISHED", "FAILED": "FAILED", "SKIPPED": "KILLED", "KILLED": "KILLED"}


def resolve_tracking_uri(configured: str | None = None) -> str:
    """Config value, else $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db (absolute)."""
    if configured:
        return str(configured)
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(Path.cwd() / 'mlflow.db').resolve()}"


@contextlib.contextmanager
def scoped_env(values: dict[str, str]):
    """Environment variables set while the block runs — each only where the user has not set it —
    and removed after: MLflow reads its settings from the environment, and hgbench sets none for a
    whole process (a notebook or an application importing hgbench keeps its own)."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k, v in added.items():
            if os.environ.get(k) == v:
                os.environ.pop(k, None)


# hgbench's commands (hgbench, hgbench-report) run with MLflow's usage telemetry off unless the
# user set MLFLOW_DISABLE_TELEMETRY; the jobs a command launches inherit it
NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true"}


UI_PORT = 5000  # mlflow ui's default port

# The runs table opens on the benchmark's numbers: MLflow's UI (3.x) loads a "shared view" — its
# own state of the runs table, as its Share button saves it — from the experiment tag
# ``mlflow.sharedViewState.<key>`` when the link says ``viewStateShareKey=<key>``. hgbench keeps
# one such view in every experiment it records to (``ensure_default_view``): these columns, in
# this order, first; the run name wide enough to tell runs apart. MLflow's own Duration column
# (wall time from run creation to end, data loading and recording included) stays; ``runtime_s``
# is the run itself.
VIEW_KEY = "hgbench"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
VIEW_METRICS = ("val_loss", "test_loss", "test_acc", "hg_cosine", "runtime_s", "peak_memory_mb", "load_avg_start", "load_avg_end")


def default_view() -> str:
    """The runs table's state (MLflow's ExperimentPageUIState and search facets), as JSON."""
    import json

    col = lambda kind, name: f"{kind}.`{name}`"  # noqa: E731 - MLflow's column ids (makeCanonicalSortKey)
    metrics = [col("metrics", m) for m in VIEW_METRICS]
    return json.dumps({
        "selectedColumns": metrics,
        "columnOrder": [col("attributes", "Run Name"), *metrics],
        "columnWidths": {col("attributes", "Run Name"): 380},
        "orderByKey": "attributes.start_time", "orderByAsc": False,
    }, separators=(",", ":"))


def ensure_default_view(client, experiment_id: str) -> None:
    """Give the experiment hgbench's view of its runs table (``default_view``) if it has not got
    it yet (one read, and a write the first time)."""
    view = default_view()
    if client.get_experiment(experiment_id).tags.get(VIEW_TAG) != view:
        client.set_experiment_tag(experiment_id, VIEW_TAG, view)


def compare_link(base: str, run_ids: list[str], experiment_ids: list[str]) -> str:
    """MLflow's compare-runs page for these runs (``#/compare-runs?runs=[...]&experiments=[...]``,
    the JSON lists URL-encoded so that a terminal keeps the link whole)."""
    import json
    from urllib.parse import quote

    enc = lambda xs: quote(json.dumps(list(xs), separators=(",", ":")), safe="")  # noqa: E731
    return f"{base}/#/compare-runs?runs={enc(run_ids)}&experiments={enc(experiment_ids)}"


def browse_lines(uri: str, experiment_id: str | None, run_ids: list[str] | None = None) -> list[str]:
    """How to look at an experiment's runs, as commands that work in a fresh shell: the UI (for a
    sqlite store, ``mlflow ui`` from this environment, bound to 127.0.0.1), the link that opens
    the runs table itself — MLflow 3 otherwise opens an experiment in its GenAI view — on
    hgbench's columns (``default_view``), and with ``run_ids`` (a grid's) the compare-runs page."""
    if uri.startswith(("http://", "https://")):
        base, start = uri.rstrip("/"), []
    else:
        import sys

        exe = Path(sys.executable).with_name("mlflow")
        mlflow_cmd = str(exe) if exe.exists() else "mlflow"
        base = f"http://127.0.0.1:{UI_PORT}"
        start = [f"browse it: {mlflow_cmd} ui --backend-store-uri {uri} --host 127.0.0.1 --port {UI_PORT}"]
    link = base if experiment_id is None else f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
    lines = start + [f"{'then open' if start else 'browse it: open'} {link}"]
    if run_ids and experiment_id is not None:
        lines.append(f"compare these {len(run_ids)} runs: open {compare_link(base, run_ids, [experiment_id])}")
    return lines


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_DB_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def uri_problem(uri: str) -> str | None:
    """What is wrong with a tracking URI that the string itself shows — and, for a SQLite file,
    whether its folder exists — as the rest of a one-line message with the URI to use instead;
    None when nothing is. Pure: MLflow is not imported and nothing is created, so the CLI checks
    it before anything starts. (What the store itself says — unreachable, read-only — is
    ``check_store``'s.)"""
    m = _SCHEME.match(uri)
    scheme = m.group(1).lower() if m and len(m.group(1)) > 1 else ""  # one letter: a Windows drive
    if uri in ("databricks", "databricks-uc"):  # MLflow's names for a Databricks workspace
        return None
    if scheme in ("", "file"):
        if scheme == "file":
            from urllib.parse import urlsplit

            path = urlsplit(uri).path
        else:
            path = uri
        if path.lower().endswith(_DB_SUFFIXES):
            return f"a file path, not a store URI: for a SQLite file write sqlite:///{path}"
        what = "MLflow's folder store (file:)" if scheme else "a folder path, not a store URI; MLflow's folder store"
        return (f"{what} is refused by MLflow 3 (in maintenance mode): record to a SQLite file instead, "
                f"e.g. sqlite:///{os.path.normpath(path)}.db, or to a tracking server (http://host:port)")
    if scheme != "sqlite":
        return None
    rest = uri[len("sqlite:"):]
    if not rest.startswith("///"):
        path = rest[2:] if rest.startswith("//") else rest
        if not path or path.startswith("/"):
            return None  # sqlite:// (in memory) or sqlite:/x: MLflow's own message
        return f"a SQLite URI has three slashes before a relative path (four before an absolute one): did you mean sqlite:///{path}?"
    path = rest[3:].split("?", 1)[0]
    if not path or path.startswith("file:") or path == ":memory:":
        return None
    folder = Path(path).parent
    if not folder.is_dir():
        if folder.exists():
            return f"the store's folder {folder.absolute()} is not a folder: correct the path"
        return f"the store's folder {folder.absolute()} does not exist: create it (mkdir -p {folder}) or correct the path"
    return None


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


# --- a sqlite store is created once, whatever the number of first launches -------------------
# MLflow creates a new sqlite store's schema with ~60 migrations, in place, in whichever process
# opens it first; several first launches at once migrate it together and leave it half-migrated
# (``table _alembic_tmp_… already exists``), which no later launch, nor ``mlflow db upgrade``,
# gets past. Here the store is made under a lock file beside it (``mlflow.db.lock``), migrated in
# a temporary file of the same folder and renamed into place once complete: a store is either
# absent or whole, and a first launch killed mid-way leaves nothing behind. A store found
# half-migrated (by an older hgbench or another program) is refused in one line saying how to
# repair it, before MLflow is asked (it would try to migrate it again).
CREATE_LOCK_TIMEOUT_S = 600  # creating a store takes seconds; a lock held longer is reported
MIGRATION_LEFTOVER = "_alembic_tmp_"


def plain_sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` store given by path (None for other stores, sqlite's
    ``file:`` URI form and in-memory databases)."""
    db = sqlite_path(uri.split("?", 1)[0])
    if db is None or str(db).startswith("file:") or str(db) in ("", ":memory:"):
        return None
    return db


@dataclass
class SqliteState:
    tables: set[str]
    revision: str | None  # alembic's schema revision, None when the table or its row is missing

    @property
    def empty(self) -> bool:
        return not self.tables


def sqlite_state(db: Path) -> SqliteState:
    """The tables and schema revision of a sqlite file, read without changing it."""
    import sqlite3

    con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        revision = None
        if "alembic_version" in tables:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
            revision = row[0] if row else None
        return SqliteState(tables, revision)
    finally:
        con.close()


@functools.lru_cache(maxsize=1)
def schema_head() -> str:
    """The schema revision this MLflow writes: the head of the alembic migrations it ships. Read
    from the migration files (``migrations_head``, milliseconds) where they say it plainly, else
    alembic's own answer (its ScriptDirectory executes every migration module: about half a second
    in each process that opens a store)."""
    import mlflow.store

    folder = Path(mlflow.store.__file__).parent / "db_migrations"
    head = migrations_head(folder / "versions")
    if head is None:
        from alembic.script import ScriptDirectory

        head = ScriptDirectory(str(folder)).get_current_head()
    return head


def migrations_head(versions: Path) -> str | None:
    """The one ``revision`` among the alembic migration files in ``versions`` that no file names
    as (one of) its ``down_revision``; None when that is not plain: a file without both as literal
    top-level assignments, or not exactly one head."""
    import ast

    revisions, parents = set(), set()
    for path in sorted(versions.glob("*.py")):
        if path.name == "__init__.py":
            continue
        found = {}
        for node in ast.parse(path.read_text()).body:
            target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
            if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
                with contextlib.suppress(ValueError):
                    found[target.id] = ast.literal_eval(node.value)
        if "down_revision" not in found or not isinstance(found.get("revision"), str):
            return None
        down = found["down_revision"]
        if not isinstance(down, (str, tuple, type(None))):
            return None
        revisions.add(found["revision"])
        parents.update((down,) if isinstance(down, str) else down or ())
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def check_not_half_migrated(db: Path, state: SqliteState) -> None:
    """Refuse, in one line with the repair, a store that an interrupted schema migration left
    half-done: MLflow's leftover ``_alembic_tmp_*`` tables, or tables without a schema revision."""
    leftovers = sorted(t for t in state.tables if t.startswith(MIGRATION_LEFTOVER))
    if not leftovers and (state.empty or state.revision is not None):
        return
    runs = "?"
    if "runs" in state.tables:
        import sqlite3

        with contextlib.suppress(sqlite3.Error):
            con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
            try:
                runs = str(con.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
            finally:
                con.close()
    else:
        runs = "0"
    what = (f"an interrupted schema migration left table{'s' if len(leftovers) > 1 else ''} {', '.join(leftovers)}"
            if leftovers else "it has MLflow tables but no schema revision (its creation was interrupted)")
    drop = "; ".join(f"DROP TABLE {t}" for t in leftovers)
    repair = (f"cp {db} {db}.bak && sqlite3 {db} '{drop}' && mlflow db upgrade sqlite:///{db.resolve()}"
              if leftovers else f"mv {db} {db}.broken")
    raise StoreError(f"the MLflow store {db} is half-migrated ({what}; it holds {runs} runs) — repair it: {repair}"
                     + (" — or, holding no runs, delete it" if runs == "0" else ""))


def _migrate_new_store(path: Path) -> None:
    """MLflow's own creation of a store at ``path``: every migration, and the Default experiment
    (connections not pooled: none is left open on the file once it is renamed)."""
    from mlflow.tracking import MlflowClient

    with scoped_env({"MLFLOW_SQLALCHEMYSTORE_POOLCLASS": "NullPool"}):
        MlflowClient(f"sqlite:///{path}").search_experiments(max_results=1)


def _create_sqlite_store(db: Path) -> None:
    """A complete store at ``db``: migrated in a temporary file beside it, renamed into place."""
    db.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=db.parent, prefix=f".{db.name}.creating-", suffix=".db")
    os.close(fd)
    try:
        _migrate_new_store(Path(tmp))
        os.replace(tmp, db)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def prepare_store(uri: str) -> None:
    """Make sure a sqlite store is whole before MLflow opens it: create it if it is missing or
    empty, exactly once across processes (a lock file beside it), and refuse a half-migrated one
    (``StoreError``, one line with the repair). A store whose schema is MLflow's current one is
    only looked at (milliseconds, no lock). Other stores: nothing to do."""
    db = plain_sqlite_path(uri)
    if db is None:
        return
    if db.is_file():
        state = sqlite_state(db)
        check_not_half_migrated(db, state)
        if not state.empty and state.revision == schema_head():
            return
    from filelock import FileLock, Timeout

    lock = Path(f"{db}.lock")
    try:
        with FileLock(str(lock), timeout=CREATE_LOCK_TIMEOUT_S):
            state = sqlite_state(db) if db.is_file() else SqliteState(set(), None)
            check_not_half_migrated(db, state)
            if state.empty:
                _create_sqlite_store(db)
            elif state.revision != schema_head():
                # an older schema: MLflow's own answer (it refuses, or adds missing tables), one process at a time
                from mlflow.tracking import MlflowClient

                MlflowClient(uri).search_experiments(max_results=1)
    except Timeout as exc:
        raise StoreError(f"another process has been creating the MLflow store {db} for {CREATE_LOCK_TIMEOUT_S} s "
                         f"(it holds the lock file {lock}); wait for it, or stop it") from exc


def ensure_experiment(uri: str, name: str) -> str:
    """Create the store's schema and the experiment once (call it before parallel jobs start)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    prepare_store(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    db = sqlite_path(uri)
    location = (db.parent / "mlartifacts" / name).as_uri() if db else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created meanwhile by a parallel job
        return client.get_experiment_by_name(name).experiment_id


PROBE_BYTES = 64 * 1024  # what the write check writes: a config file, a checkpoint's first block


def probe_dir(folder: Path, what: str, hint: str = "launch from a writable folder, or set mlflow.tracking_uri / $MLFLOW_TRACKING_URI") -> None:
    """Prove that files can be written in ``folder`` (or, if it does not exist yet, in its nearest
    existing parent) by writing ``PROBE_BYTES`` to a new file, syncing and removing it — a full
    disk fails here (ENOSPC), not halfway through a run; raises ``StoreError`` naming the folder."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".hgbench-write-check-") as f:
            # some data, synced: a full disk still lets an empty file be created (a free inode)
            f.write(b"\0" * PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise StoreError(f"cannot write {what} {folder.absolute()}: {exc.strerror or exc} ({hint})") from exc


def checkpoint_dir(checkpoint_cfg) -> Path | None:
    """The folder a run writes its checkpoints to (``checkpoint.dir``, else ./checkpoints in the
    launch folder); None when ``checkpoint.every`` is 0."""
    if int(checkpoint_cfg.every) <= 0:
        return None
    return Path(checkpoint_cfg.dir or Path.cwd() / "checkpoints").expanduser().resolve()


def check_checkpoint_dir(checkpoint_cfg) -> None:
    """The pre-flight write check of the checkpoint folder (``probe_dir``): a full or read-only
    one is one line before any work, not a failed run at its first checkpoint."""
    folder = checkpoint_dir(checkpoint_cfg)
    if folder is not None:
        probe_dir(folder, "the checkpoint folder", hint="free some space there, or set checkpoint.dir")


# the store check's HTTP settings (MLflow's defaults retry for minutes), unless the user set them
QUICK_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
              "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


def check_store(uri: str, name: str, stale_after_s: float = 900) -> str:
    """``ensure_experiment`` plus one throw-away *write* (an experiment tag, in the store's own
    transaction; for a local artifact folder a file created and removed), with few HTTP retries
    and a short timeout: a pre-flight check that a wrong address, missing credentials or a
    read-only store fail in seconds, before any work, not at the end of a run. A sqlite file
    whose folder is not writable is refused before MLflow tries (and retries for minutes) to
    create it; a sqlite file that is a folder, read-only or on a full disk is refused before
    MLflow is asked (``probe_sqlite``). Runs that dead processes left RUNNING are then marked
    interrupted (``mark_dead_runs``). Raises ``StoreError``; returns the experiment id."""
    from datetime import datetime, timezone

    db = sqlite_path(uri)
    if db is not None and not str(db).startswith("file:") and not db.exists():
        probe_dir(db.parent, "the MLflow store's folder")
    probe_sqlite(uri)  # a folder, a read-only file, a full disk: refused before MLflow (or the creation below) is asked
    try:
        prepare_store(uri)
    except StoreError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise StoreError(f"cannot use the MLflow store at {uri}: {type(exc).__name__}: {first[:300]}") from exc
    import logging

    db_log = logging.getLogger("mlflow.store.db.utils")  # logs a failed write with its traceback
    db_level = db_log.level
    db_log.setLevel(logging.CRITICAL)
    try:
        from mlflow.tracking import MlflowClient

        with scoped_env(QUICK_HTTP):  # MLflow reads them at each request: only this check's are quick
            exp_id = ensure_experiment(uri, name)
            client = MlflowClient(uri)
            client.set_experiment_tag(exp_id, "hgbench.write_check", datetime.now(timezone.utc).isoformat(timespec="seconds"))
            location = client.get_experiment(exp_id).artifact_location or ""
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise StoreError(f"cannot use the MLflow store at {uri}: {type(exc).__name__}: {first[:300]}") from exc
    finally:
        db_log.setLevel(db_level)
    if location.startswith("file:") or location.startswith("/"):
        from urllib.parse import urlparse
        from urllib.request import url2pathname

        folder = Path(url2pathname(urlparse(location).path)) if location.startswith("file:") else Path(location)
        probe_dir(folder, "the MLflow artifact folder")
    mark_dead_runs(uri, stale_after_s)
    return exp_id


def probe_sqlite(uri: str) -> None:
    """A sqlite store refused in milliseconds, before MLflow is asked (it retries for minutes):
    a path that is a folder, a ``mode=ro`` URI, a file or folder this process may not write, a
    store on a full disk — each found by sqlite itself taking a write lock and writing its
    journal (``BEGIN IMMEDIATE`` on a scratch table, rolled back: nothing in the store changes).
    Raises ``StoreError`` in one line; a store that does not exist yet is left to MLflow."""
    import sqlite3
    from urllib.parse import parse_qs, urlparse

    db = sqlite_path(uri)
    if db is None:
        return
    target, query = str(db), {}
    if target.startswith("file:"):
        parsed = urlparse(target)
        target, query = parsed.path, parse_qs(parsed.query)
    path = Path(target)
    if path.is_dir():
        raise StoreError(f"cannot use the MLflow store at {uri}: {path} is a folder, not a sqlite file "
                         f"(give the file inside it, e.g. sqlite:///{path / 'mlflow.db'})")
    if not path.exists():
        return
    if query.get("mode", [""])[-1] == "ro":
        raise StoreError(f"cannot use the MLflow store at {uri}: it is opened read-only (mode=ro); hgbench records into it")
    try:
        con = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=30, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot use the MLflow store at {uri}: {exc} (is it a file this user may write?)") from exc
    try:
        con.execute("BEGIN IMMEDIATE")  # the write lock: refused on a read-only file or folder
        # a page's worth of data through the journal: refused on a full disk
        con.execute("CREATE TABLE hgbench_write_check_ (x BLOB)")
        con.execute("INSERT INTO hgbench_write_check_ VALUES (zeroblob(?))", (PROBE_BYTES,))
        con.execute("ROLLBACK")
    except sqlite3.Error as exc:
        full = "full" in str(exc).lower()
        hint = "free some space on its disk" if full else "is it a sqlite file this user may write, in a writable folder?"
        raise StoreError(f"cannot use the MLflow store at {uri}: sqlite3.{type(exc).__name__}: {exc} ({hint})") from exc
    finally:
        con.close()


def brief(exc: BaseException) -> str:
    """An MLflow or SQLAlchemy error in one line: the driver's own words (``(sqlite3.OperationalError)
    database or disk is full``) rather than the statement and parameters that follow them."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    said = next((line for line in lines if line.startswith("(") and ")" in line and "Error" in line.split(")")[0]), None)
    said = said or (lines[0] if lines else "")
    return f"{type(exc).__name__}: {said[:300]}"


class StoreWriteError(StoreError):
    """A write to the MLflow store failed; its message is ``brief``'s one line."""


class MlflowRun:
    """One MLflow run: buffered metric logging through ``MlflowClient`` (no global state)."""

    def __init__(self, cfg, tags: dict[str, str], params: dict[str, Any] | None = None, default_name: str | None = None):
        """Creates the run (and logs ``params``, if given: call ``log_params`` yourself to have
        the run object even when that write fails)."""
        from mlflow.tracking import MlflowClient

        self.uri = resolve_tracking_uri(cfg.tracking_uri)
        self.experiment = str(cfg.experiment)
        self.flush_every_s = float(cfg.flush_every_s)
        self.experiment_id = ensure_experiment(self.uri, self.experiment)  # first: a new store is made whole before a client opens it
        self.client = MlflowClient(self.uri)
        self._buffer: list = []
        self._last_flush = time.monotonic()
        self.recorded_step = -1  # the last hyper-step whose metrics reached the store
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=cfg.run_name or default_name)
        self.run_id = run.info.run_id
        if params:
            self.log_params(params)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100], synchronous=True)

    @property
    def unwritten(self) -> int:
        """Metric values logged but not (yet) in the store: a failed flush keeps them for the next."""
        return len(self._buffer)

    def log_metrics(self, metrics: dict[str, float], step: int, force: bool = False) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._buffer += [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        if force or time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        for i in range(0, len(self._buffer), 1000):
            self.client.log_batch(self.run_id, metrics=self._buffer[i : i + 1000], synchronous=True)
        self.recorded_step = max([m.step for m in self._buffer if m.key == STEP_MARKER] + [self.recorded_step])
        self._buffer = []
        self._last_flush = time.monotonic()


# logged once, when a run ends: a resumed run logs its own
END_OF_RUN_METRICS = ("runtime_s", "peak_memory_mb", "load_avg_start", "load_avg_end")
# logged at every hyper-step (step 0 included), last in each step's batch: the store holds a
# step's metrics once it holds this one
STEP_MARKER = "elapsed_s"


def copy_history(rec: MlflowRun, old_run_id: str, upto_step: int) -> None:
    """A run resumed from a checkpoint starts with its predecessor's metrics up to that step,
    so the new run alone holds the whole history."""
    from mlflow.entities import Metric

    old = rec.client.get_run(old_run_id)
    metrics = []
    for key in old.data.metrics:
        if key in END_OF_RUN_METRICS:
            continue
        metrics += [Metric(m.key, m.value, m.timestamp, m.step)
                    for m in rec.client.get_metric_history(old_run_id, key) if m.step <= upto_step]
    for i in range(0, len(metrics), 1000):
        rec.client.log_batch(rec.run_id, metrics=metrics[i : i + 1000], synchronous=True)
    rec.recorded_step = max([m.step for m in metrics if m.key == STEP_MARKER] + [rec.recorded_step])


@dataclass
class Previous:
    finished: list[Any] = field(default_factory=list)
    running: list[Any] = field(default_factory=list)  # alive, elsewhere
    interrupted: list[Any] = field(default_factory=list)  # orphaned or KILLED, newest first


def _alive(run, stale_after_s: float, client) -> bool:
    tags = run.data.tags
    if tags.get("hgbench.host") == platform.node() and tags.get("hgbench.pid", "").isdigit():
        pid = int(tags["hgbench.pid"])
        if pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    history = client.get_metric_history(run.info.run_id, "elapsed_s")
    last = max([m.timestamp for m in history] + [run.info.start_time or 0]) / 1000
    return time.time() - last < stale_after_s


def mark_dead_runs(uri: str, stale_after_s: float = 900) -> list[str]:
    """Every hgbench run of the store left RUNNING by a process that is gone (``_alive``: on this
    host its pid is gone; on another, no metric for ``stale_after_s``) marked interrupted (MLflow
    status KILLED, tag ``hgbench.status=interrupted``) — at every launch, whatever it runs, so a
    killed run never stays RUNNING. Returns their run ids. Best effort: a store that cannot be
    searched or written leaves them as they are (the launch goes on)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    marked = []
    try:
        ids = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(ids, "attributes.status = 'RUNNING'", max_results=1000) if ids else []
        for run in runs:
            if "hgbench.pid" in run.data.tags and not _alive(run, stale_after_s, client):
                mark_interrupted(client, run, "its process is gone (killed?)")
                marked.append(run.info.run_id)
    except Exception:  # noqa: BLE001 - a store that refuses this refuses the run's own writes, reported there
        pass
    return marked


def previous_runs(uri: str, experiment: str, fp: str, stale_after_s: float = 900) -> Previous:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    prev = Previous()
    if exp is None:
        return prev
    runs = client.search_runs([exp.experiment_id], f"tags.`hgbench.fingerprint` = '{fp}'", max_results=1000, order_by=["attributes.start_time DESC"])
    for run in runs:
        status = run.info.status
        if status == "FINISHED" and run.data.tags.get("hgbench.status", "finished") == "finished":
            prev.finished.append(run)
        elif status == "RUNNING":
            if _alive(run, stale_after_s, client):
                prev.running.append(run)
            else:
                mark_interrupted(client, run, "its process is gone (killed?)")
                prev.interrupted.append(run)
        elif status == "KILLED" and run.data.tags.get("hgbench.status") == "interrupted":
            prev.interrupted.append(run)
    return prev


def finished_with_other_code(uri: str, experiment: str, config_fp: str) -> Any | None:
    """The newest run that FINISHED the same configuration (``hgbench.config_fingerprint``) —
    called when none finished with the same code, so this one ran other code."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], f"tags.`hgbench.config_fingerprint` = '{config_fp}' and attributes.status = 'FINISHED'",
                              max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def mark_interrupted(client, run, why: str) -> None:
    client.set_tag(run.info.run_id, "hgbench.status", "interrupted")
    client.set_tag(run.info.run_id, "hgbench.error", f"interrupted: {why}")
    client.set_terminated(run.info.run_id, "KILLED")


def recorded_step(client, run_id: str) -> int:
    """The last hyper-step whose metrics the store holds for a run (-1: none)."""
    return max((m.step for m in client.get_metric_history(run_id, STEP_MARKER)), default=-1)


@dataclass
class Checkpoint:
    run: Any  # the interrupted MLflow run it belongs to
    state: dict[str, Any]  # Experiment.state_dict(), read back
    where: str  # the file, or "the MLflow artifact <path>"

    @property
    def step(self) -> int:
        return int(self.state["step"])


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint file read back safely (tensors and plain containers only); raises
    ``ValueError`` naming the file for anything unreadable or not a checkpoint."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupted, not a torch file, refused by weights_only
        raise ValueError(f"{path} is unreadable ({type(exc).__name__}: {str(exc)[:200]})") from exc
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or "w" not in state:
        raise ValueError(f"{path} is not an hgbench checkpoint")
    return state


def latest_checkpoint(uri: str, runs: list[Any], warn=print) -> Checkpoint | None:
    """The newest usable checkpoint of the interrupted ``runs`` (newest first): for each run its
    local file, else the copy in its artifacts. Usable = readable, and vouched for by the store:
    its step's metrics are recorded (a checkpoint ahead of the store would leave a gap in the
    resumed run's history). Each one refused is reported through ``warn``, naming the file."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    for run in runs:
        tag = run.data.tags.get("hgbench.checkpoint")
        if not tag:
            continue
        recorded = recorded_step(client, run.info.run_id)
        candidates = [Path(tag)] if Path(tag).is_file() else []
        candidates.append(None)  # the artifact copy
        for path in candidates:
            if path is None:
                artifact = f"{CHECKPOINT_ARTIFACT_DIR}/{Path(tag).name}"
                where = f"the MLflow artifact {artifact} of run {run.info.run_id}"
                with tempfile.TemporaryDirectory(prefix="hgbench-checkpoint-") as download:  # removed once read
                    try:
                        path = Path(client.download_artifacts(run.info.run_id, artifact, download))
                    except Exception:
                        continue
                    try:
                        state = read_checkpoint(path)
                    except ValueError as exc:
                        warn(f"hgbench: warning: checkpoint {exc}; not used")
                        continue
            else:
                where = str(path)
                try:
                    state = read_checkpoint(path)
                except ValueError as exc:
                    warn(f"hgbench: warning: checkpoint {exc}; not used")
                    continue
            other = checkpoint_owner_mismatch(state, run)
            if other:
                warn(f"hgbench: warning: checkpoint {where} {other}; not used")
                continue
            if state["step"] > recorded:
                warn(f"hgbench: warning: checkpoint {where} is at hyper-step {state['step']} but the store holds run "
                     f"{run.info.run_id}'s metrics only up to hyper-step {recorded}; not used (the resumed run would miss steps)")
                continue
            return Checkpoint(run, state, where)
    return None


# what a checkpoint file says about whose it is (``hgbench.plugins.recorder.checkpoint`` writes it)
CHECKPOINT_OWNER_KEY = "hgbench_owner"


def checkpoint_owner_mismatch(state: dict[str, Any], run) -> str | None:
    """Why a checkpoint does not belong to the interrupted ``run`` it stands in for (None: it
    does): written by another run, or for another job (another fingerprint) — a file copied or
    moved into its place. A checkpoint written before hgbench recorded its owner is taken as is."""
    owner = state.get(CHECKPOINT_OWNER_KEY)
    if not isinstance(owner, dict):
        return None
    run_id, fp = owner.get("run_id"), owner.get("fingerprint")
    want_fp = run.data.tags.get("hgbench.fingerprint")
    if fp and want_fp and fp != want_fp:
        return f"belongs to another job (fingerprint {fp}, written by run {run_id}), not to this one ({want_fp})"
    if run_id and run_id != run.info.run_id:
        return f"was written by run {run_id}, not by run {run.info.run_id}"
    return None


def remove_job_checkpoints(client, experiment_id: str, fp: str) -> list[Path]:
    """The local checkpoint files of a job's earlier runs that did not finish (interrupted or
    failed runs with the fingerprint ``fp``), removed once the job has FINISHED: nothing resumes
    from them any more. Only a file named after its own run (``<run id>.pt``, as the checkpoint
    recorder names them) is removed; the MLflow artifact copies stay. Returns the files removed."""
    removed = []
    runs = client.search_runs([experiment_id], f"tags.`hgbench.fingerprint` = '{fp}' and attributes.status != 'FINISHED' "
                              "and attributes.status != 'RUNNING'", max_results=1000)
    for run in runs:
        path = Path(run.data.tags.get("hgbench.checkpoint", ""))
        if path.name == f"{run.info.run_id}.pt" and path.is_file():
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed
