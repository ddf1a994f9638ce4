"""A real one-node SLURM cluster (munge + slurmctld + slurmd) and a real PostgreSQL with an
``mlflow server`` in front of it, from Debian's packages, for tests/test_cluster.py.

Everything runs as processes the tests start themselves, in a temporary folder, on free ports
of 127.0.0.1, and is stopped after: no system service, no /etc file, nothing left running.

- munged with a fresh key; slurmctld and slurmd with a generated slurm.conf (no cgroups,
  accounting off — like many small clusters —, select/cons_tres, one partition ``debug``);
- PostgreSQL: a database cluster of its own (initdb: superuser ``mlflow`` with a password,
  password logins only, TCP on 127.0.0.1 only), started with pg_ctl, the database ``mlflow``
  created with createdb; the password is read from a pgpass file (``PGPASSFILE``), never given on
  a command line — the README's recipe, with a temporary folder and free ports;
- ``mlflow server --backend-store-uri postgresql://mlflow@127.0.0.1:<port>/mlflow --host 127.0.0.1``
  with proxied artifacts (``--artifacts-destination``).
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from helpers import free_port, healthy

APT_PACKAGES = "slurmd slurmctld slurm-client munge postgresql"
INSTALL = f"apt-get install -y {APT_PACKAGES}"
SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scancel", "sinfo")
PG_BINARIES = ("initdb", "pg_ctl", "createdb")
NO_PROXY = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
PARTITION = "debug"
START_TIMEOUT_S = 90


class ClusterUnavailable(Exception):
    """What is missing on this machine, with the command that installs it (the tests skip)."""


def pg_bindir() -> Path | None:
    """PostgreSQL's programs: on PATH, else Debian's /usr/lib/postgresql/<newest>/bin."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name) if Path(d).parent.name.isdigit() else 0)
    return Path(dirs[-1]) if dirs else None


def sbin(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def check_available() -> None:
    """Raise ClusterUnavailable with the reason and the install command when something is missing."""
    if sys.platform != "linux":
        raise ClusterUnavailable("the one-node SLURM cluster needs Linux")
    missing = [b for b in SLURM_BINARIES if sbin(b) is None]
    bindir = pg_bindir()
    missing += [b for b in PG_BINARIES if bindir is None or not (bindir / b).exists()]
    if missing:
        raise ClusterUnavailable(f"{', '.join(missing)} not installed: sudo {INSTALL}")
    if os.geteuid() != 0:
        raise ClusterUnavailable("slurmd runs jobs as their user and must be started as root: run the tests as root")
    if importlib.util.find_spec("psycopg") is None:
        raise ClusterUnavailable("the PostgreSQL driver is missing: pip install -e '.[test]' (psycopg[binary])")


def _tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def _stop_group(proc: subprocess.Popen, timeout: float = 15) -> None:
    """End a process started with start_new_session=True and everything in its process group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)


def _mem_mb() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 2048


SLURM_CONF = """\
ClusterName=hgbench-test
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SlurmdParameters=config_overrides
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
KillWait=30
NodeName=localhost NodeHostname={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} State=UNKNOWN
PartitionName={partition} Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


class Slurm:
    """munged + slurmctld + slurmd in ``root``; ``env`` is what a client (sbatch, squeue) needs."""

    def __init__(self, root: Path, cpus: int = 4) -> None:
        self.root, self.cpus = root, cpus
        self.procs: list[subprocess.Popen] = []
        self.conf = root / "slurm.conf"
        self.env = {"SLURM_CONF": str(self.conf)}

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        with open(self.root / "log" / f"{name}.out", "wb") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **self.env}, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        root = self.root
        for d in ("munge", "state", "spool", "log"):
            (root / d).mkdir(mode=0o700, parents=True, exist_ok=True)
        key = root / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))  # a fresh key: this cluster's alone
        key.chmod(0o400)
        munge = self._spawn("munged", [sbin("munged"), "--foreground", "--force", f"--socket={root}/munge/munge.socket",
                                       f"--key-file={key}", f"--log-file={root}/log/munged.log",
                                       f"--pid-file={root}/munge/munged.pid", f"--seed-file={root}/munge/munged.seed"])
        self._wait(lambda: (root / "munge" / "munge.socket").exists(), munge, "munged", "munged.log")
        self.conf.write_text(SLURM_CONF.format(
            root=root, ctld_port=free_port(), d_port=free_port(), host=socket.gethostname().split(".")[0],
            cpus=self.cpus, mem=min(8192, _mem_mb() // 2), partition=PARTITION))
        ctld = self._spawn("slurmctld", [sbin("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        d = self._spawn("slurmd", [sbin("slurmd"), "-D", "-f", str(self.conf), "-N", "localhost"])
        for proc, name in ((ctld, "slurmctld"), (d, "slurmd")):
            self._wait(lambda: self._node_state() in ("idle", "mixed", "allocated"), proc, name, f"{name}.log")

    def _node_state(self) -> str:
        try:
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=10,
                                 env={**os.environ, **self.env}, check=False)
        except subprocess.TimeoutExpired:
            return ""
        return out.stdout.strip()

    def _wait(self, ready, proc: subprocess.Popen, name: str, log: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(0.2)
        if proc.poll() is not None or not ready():
            raise RuntimeError(f"{name} did not start ({'exit ' + str(proc.returncode) if proc.poll() is not None else 'no answer'}"
                               f" within {START_TIMEOUT_S} s):\n{_tail(self.root / 'log' / log)}\n{_tail(self.root / 'log' / (name + '.out'))}")

    def run(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False,
                              env={**os.environ, **self.env})

    def stop(self) -> None:
        """Cancel what is left in the queue (its processes end with their jobs), then the daemons."""
        if self.conf.exists() and self.procs and self.procs[-1].poll() is None:
            with contextlib.suppress(Exception):
                self.run("scancel", "--full", "--partition", PARTITION, timeout=10)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and self.run("squeue", "-h", "-o", "%i", timeout=10).stdout.strip():
                    time.sleep(0.5)
        for proc in reversed(self.procs):  # slurmd, slurmctld, then munged
            _stop_group(proc)


class PostgresMlflow:
    """A PostgreSQL database cluster of its own and an ``mlflow server`` in front of it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bindir = pg_bindir()
        self.pg_port, self.port = free_port(), free_port()
        self.data = root / "pg" / "data"
        self.pgpass = root / "pgpass"
        self.server: subprocess.Popen | None = None
        self.started_pg = False
        # initdb refuses to run as root: the database runs as the postgres user (or nobody)
        self.user = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                with contextlib.suppress(KeyError):
                    self.user = pwd.getpwnam(name)
                    break
        self.uri = f"http://127.0.0.1:{self.port}"
        self.backend = f"postgresql://mlflow@127.0.0.1:{self.pg_port}/mlflow"
        self.artifacts = root / "artifacts"

    def _as_db_user(self, *cmd: str, **kw) -> subprocess.CompletedProcess:
        extra = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []} if self.user else {}
        return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120, check=False,
                              cwd=self.root / "pg", **extra, **kw)

    def start_postgres(self) -> None:
        pg = self.root / "pg"
        pg.mkdir(mode=0o700)
        password = secrets.token_hex(16)
        pwfile = pg / "pwfile"
        pwfile.write_text(password + "\n")
        if self.user:
            for p in (pg, pwfile):
                os.chown(p, self.user.pw_uid, self.user.pw_gid)
        out = self._as_db_user(self.bindir / "initdb", "-D", self.data, "-U", "mlflow", f"--pwfile={pwfile}",
                               "--auth=scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync")
        pwfile.unlink()
        if out.returncode:
            raise RuntimeError(f"initdb failed:\n{out.stdout[-1500:]}{out.stderr[-1500:]}")
        out = self._as_db_user(self.bindir / "pg_ctl", "-D", self.data, "-l", pg / "postgres.log", "-w",
                               "-o", f"-h 127.0.0.1 -p {self.pg_port} -k ''", "start")
        self.started_pg = True
        if out.returncode:
            raise RuntimeError(f"pg_ctl start failed:\n{out.stdout[-800:]}{out.stderr[-800:]}\n{_tail(pg / 'postgres.log')}")
        # the password for libpq (psycopg, createdb): a pgpass file, as users keep it in ~/.pgpass
        self.pgpass.write_text(f"127.0.0.1:{self.pg_port}:*:mlflow:{password}\n")
        self.pgpass.chmod(0o600)
        out = subprocess.run([str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.pg_port), "-U", "mlflow", "mlflow"],
                             capture_output=True, text=True, timeout=60, check=False,
                             env={**os.environ, "PGPASSFILE": str(self.pgpass)})
        if out.returncode:
            raise RuntimeError(f"createdb failed: {out.stderr.strip()}")

    def start_server(self) -> None:
        exe = shutil.which("mlflow", path=str(Path(sys.executable).parent))
        base = [exe] if exe else [sys.executable, "-m", "mlflow"]
        env = {**os.environ, **NO_PROXY, "PGPASSFILE": str(self.pgpass), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
               "MLFLOW_DISABLE_TELEMETRY": "true"}
        env.pop("MLFLOW_TRACKING_URI", None)
        cmd = [*base, "server", "--backend-store-uri", self.backend, "--artifacts-destination", str(self.artifacts),
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        with open(self.root / "mlflow-server.log", "wb") as fh:
            self.server = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_server(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self.server.poll() is None and not healthy(self.port):
            time.sleep(0.3)
        if self.server.poll() is not None or not healthy(self.port):
            raise RuntimeError(f"mlflow server did not start within {START_TIMEOUT_S} s:\n{_tail(self.root / 'mlflow-server.log')}")

    def stop(self) -> None:
        if self.server is not None:
            _stop_group(self.server)
        if self.started_pg:
            self._as_db_user(self.bindir / "pg_ctl", "-D", self.data, "-m", "fast", "stop")


@contextlib.contextmanager
def started(cpus: int = 4):
    """The cluster and the server, started (in parallel: the server's start is the slow part) and
    always stopped; yields {"slurm": Slurm, "mlflow": PostgresMlflow}."""
    root = Path(tempfile.mkdtemp(prefix="hgbench-cluster-"))
    root.chmod(0o755)  # the database's user must reach its folder inside
    db, slurm = PostgresMlflow(root), Slurm(root / "slurm", cpus)
    try:
        db.start_postgres()
        db.start_server()
        slurm.start()
        db.wait_server()
        yield {"slurm": slurm, "mlflow": db, "root": root}
    finally:
        try:
            slurm.stop()
        finally:
            db.stop()
            shutil.rmtree(root, ignore_errors=True)
