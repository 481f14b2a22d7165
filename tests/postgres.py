"""A throwaway PostgreSQL cluster, started by the tests themselves.

Debian's ``postgresql`` package (``.ci/run`` installs it) provides the
binaries; the cluster is made with ``initdb`` in a temp dir, listens on a free
port on 127.0.0.1 only, and is stopped at the end of the session. initdb
refuses to run as root, so as root every PostgreSQL program runs as the
``postgres`` user the package creates. Each test gets a database of its own.
"""
from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from live import free_port

#: where Debian puts the server binaries (PATH usually has only the client wrappers)
_DEBIAN_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda path: int(Path(path).parent.name))
BIN_DIR = Path(os.environ.get("LEIDA_PG_BIN", _DEBIAN_BIN[-1] if _DEBIAN_BIN else
                              str(Path(shutil.which("initdb") or "/nonexistent/initdb").resolve().parent)))
COMMAND_TIMEOUT = 60.0
SUPERUSER = "postgres"


def missing_binaries() -> str | None:
    """Why no cluster can be started here, or None."""
    for program in ("initdb", "pg_ctl", "createdb"):
        if not (BIN_DIR / program).exists():
            return f"no PostgreSQL binaries ({program}) in {BIN_DIR}: apt-get install postgresql"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SUPERUSER)
        except KeyError:
            return "running as root, and there is no postgres user to run PostgreSQL as"
    return None


def require_postgres() -> None:
    """Skip without the binaries; fail instead where CI says they must be there."""
    reason = missing_binaries()
    if reason is not None:
        if os.environ.get("LEIDA_TEST_REQUIRE_POSTGRES"):
            pytest.fail(f"LEIDA_TEST_REQUIRE_POSTGRES is set, and {reason}")
        pytest.skip(reason)


def _as_postgres_user() -> None:
    """initdb and the server refuse root: as root, drop to the package's postgres user."""
    if os.geteuid() == 0:
        user = pwd.getpwnam(SUPERUSER)
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)


class Cluster:
    """One ``initdb``-made cluster in a temp dir, on a free port; stopped by ``stop()``."""

    def __init__(self, durable: bool = False) -> None:
        """``durable``: PostgreSQL's defaults for fsync (the benchmarks); the tests turn it off for speed."""
        require_postgres()
        self.root = Path(tempfile.mkdtemp(prefix="leida-pg-"))
        if os.geteuid() == 0:
            user = pwd.getpwnam(SUPERUSER)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self.data = self.root / "data"
        self.port = free_port()
        self._names = itertools.count(1)
        self.run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                 "--locale=C", "--no-sync")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"port = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.root}'\n"
                       "max_connections = 300\n")
            if not durable:
                conf.write("fsync = off\nfull_page_writes = off\n")
        self.start()

    def run(self, program: str, *args: str) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(BIN_DIR / program), *args], preexec_fn=_as_postgres_user, cwd=self.root,
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
        return result

    def pg_ctl(self, *args: str) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", *args)

    def start(self) -> None:
        self.pg_ctl("start")

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("stop", "-m", mode)

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every connection is cut, the server is back when this returns."""
        self.pg_ctl("restart", "-m", "fast")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """The URL of a new, empty database."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self.run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, name)
        return self.url(name)

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""


def wait_until(predicate, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
