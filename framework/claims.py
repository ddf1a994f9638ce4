"""Each job run by one process at a time: a claim in the MLflow store.

Before a job that resumes (grids; ``resume=true``) looks at what the store holds for it, its
process claims it: a row keyed by the job (``job_key``: its experiment and fingerprint, as the
store's runs identify a job) in the table ``hgbench_claims`` of the sqlite store, written in one
sqlite transaction that first reads the row already there — so of two launches of the same job
at once exactly one gets it. The claim is a lease: it names its
host and pid and carries a heartbeat, renewed by a thread while the job runs; it is released
(the row deleted) once the run's end is recorded. A claim whose process is gone (same host), or
whose heartbeat is older than ``resume_stale_after_s``, is taken over, as a RUNNING run is. The
other launch skips the job and says who runs it; a later one finds it FINISHED. Stores other
than a sqlite file have no claim table: there, a job RUNNING in a live process is not started
twice (``previous_runs``), but two launches in the same second can still both start it."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from hgbench.store import plain_sqlite_path

CLAIMS_TABLE = "hgbench_claims"


@dataclass
class Holder:
    """The process that holds a job's claim."""
    host: str
    pid: int
    since: float  # epoch seconds
    heartbeat: float

    def describe(self) -> str:
        from datetime import datetime, timezone

        since = datetime.fromtimestamp(self.since, timezone.utc).strftime("%H:%M:%S UTC")
        return f"pid {self.pid} on {self.host}, since {since}"


_held_tokens: set[str] = set()  # the claims this process holds (a second claim from it is refused too)


def _claims_db(db: Path):
    import sqlite3

    con = sqlite3.connect(str(db), timeout=60, isolation_level=None)
    con.execute("PRAGMA busy_timeout = 60000")
    return con


def _holder_alive(holder: Holder, token: str, stale_after_s: float) -> bool:
    if time.time() - holder.heartbeat >= stale_after_s:
        return False
    if holder.host != platform.node():
        return True
    if holder.pid == os.getpid():
        return token in _held_tokens
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Claim:
    """This process's claim on a job; ``release()`` it once the run's end is recorded."""

    def __init__(self, db: Path, fingerprint: str, token: str, heartbeat_s: float):
        import threading

        self.db, self.fingerprint, self.token = db, fingerprint, token
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), name="hgbench-claim-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self, every_s: float) -> None:
        import sqlite3

        while not self._stop.wait(every_s):
            with contextlib.suppress(sqlite3.Error, OSError):  # a missed beat: the next one renews it
                con = _claims_db(self.db)
                try:
                    con.execute(f"UPDATE {CLAIMS_TABLE} SET heartbeat = ? WHERE fingerprint = ? AND token = ?",
                                (time.time(), self.fingerprint, self.token))
                finally:
                    con.close()

    def release(self) -> None:
        import sqlite3

        self._stop.set()
        self._thread.join(timeout=5)
        _held_tokens.discard(self.token)
        with contextlib.suppress(sqlite3.Error, OSError):  # not deleted: it expires with this process
            con = _claims_db(self.db)
            try:
                con.execute(f"DELETE FROM {CLAIMS_TABLE} WHERE fingerprint = ? AND token = ?", (self.fingerprint, self.token))
            finally:
                con.close()


def job_key(experiment: str, fingerprint: str) -> str:
    """What a claim is keyed by: a job is its fingerprint *in an experiment* — the same config
    recorded in two experiments is two jobs (``hgbench.store.previous_runs`` looks in one), and
    both may run at once."""
    return f"{experiment}/{fingerprint}"


def claim_job(uri: str, fingerprint: str, stale_after_s: float = 900) -> tuple[Claim | None, Holder | None]:
    """Claim a job for this process: ``(claim, None)``; ``(None, holder)`` when another live
    process holds it; ``(None, None)`` for a store without claims (not a sqlite file)."""
    import uuid

    db = plain_sqlite_path(uri)
    if db is None or not db.is_file():
        return None, None
    token = uuid.uuid4().hex
    now = time.time()
    con = _claims_db(db)
    try:
        con.execute("BEGIN IMMEDIATE")  # the write lock first: no other claim between the read and the write
        try:
            con.execute(f"CREATE TABLE IF NOT EXISTS {CLAIMS_TABLE} (fingerprint TEXT PRIMARY KEY, token TEXT NOT NULL, "
                        "host TEXT NOT NULL, pid INTEGER NOT NULL, since REAL NOT NULL, heartbeat REAL NOT NULL)")
            row = con.execute(f"SELECT host, pid, since, heartbeat, token FROM {CLAIMS_TABLE} WHERE fingerprint = ?",
                              (fingerprint,)).fetchone()
            if row is not None and _holder_alive(Holder(*row[:4]), row[4], stale_after_s):
                con.execute("ROLLBACK")
                return None, Holder(*row[:4])
            # held from before the commit: another thread of this process that reads the row
            # right after it must find the claim alive (its pid is this process's own)
            _held_tokens.add(token)
            con.execute(f"INSERT OR REPLACE INTO {CLAIMS_TABLE} VALUES (?, ?, ?, ?, ?, ?)",
                        (fingerprint, token, platform.node(), os.getpid(), now, now))
            con.execute("COMMIT")
        except BaseException:
            _held_tokens.discard(token)
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
    finally:
        con.close()
    return Claim(db, fingerprint, token, heartbeat_s=max(0.5, min(60.0, stale_after_s / 4))), None
