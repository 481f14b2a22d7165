"""What every benchmark here shares: a real server subprocess on a temp database,
demo accounts, signed URLs, a lean keep-alive HTTP client on raw asyncio streams,
and readings of the server's CPU time and memory from /proc.

``--backend postgresql`` (``add_backend_arguments``) runs the same benchmark on
a PostgreSQL cluster the harness starts itself (tests/postgres.py, with
PostgreSQL's default fsync), and ``--processes N`` serves it with N workers.

The client is deliberately minimal (one connection = one reader/writer pair, no
per-request objects beyond the bytes) so that the load generator is not the
bottleneck on a 2-core machine shared with the server.
"""
from __future__ import annotations

import argparse
import asyncio
import atexit
import hashlib
import json
import math
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def raise_open_file_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def signed_path(path: str, account_id: int | str, token: str, **params: object) -> str:
    timestamp = str(int(time.time() * 1000))
    query = {"user_id": account_id, "timestamp": timestamp,
             "rand_str": hashlib.md5((timestamp + token).encode()).hexdigest(), **params}
    return f"{path}?{urlencode(query)}"


@dataclass
class ProcessSample:
    cpu_seconds: float
    rss_mb: float
    at: float


def cpu_seconds(stat_path: str) -> float:
    """utime + stime from a /proc ``stat`` file (a process's, or one thread's under ``task/``)."""
    with open(stat_path) as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def sample(pid: int) -> ProcessSample:
    cpu = cpu_seconds(f"/proc/{pid}/stat")
    rss_kb = 0
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
    return ProcessSample(cpu, rss_kb / 1024, time.monotonic())


def loop_thread_cpu_seconds(pids: list[int]) -> float:
    """CPU of the processes' main threads (the event loop), without SQLite's and other threads'."""
    return sum(cpu_seconds(f"/proc/{pid}/task/{pid}/stat") for pid in pids)


def sample_all(pids: list[int]) -> ProcessSample:
    """The processes together: CPU and RSS summed."""
    samples = [sample(pid) for pid in pids]
    return ProcessSample(sum(s.cpu_seconds for s in samples), sum(s.rss_mb for s in samples), time.monotonic())


def cpu_percent(before: ProcessSample, after: ProcessSample) -> float:
    return 100.0 * (after.cpu_seconds - before.cpu_seconds) / max(after.at - before.at, 1e-9)


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite",
                        help="the database the server runs on (postgresql: a throwaway cluster started here)")
    parser.add_argument("--processes", type=int, default=1, help="server worker processes (PostgreSQL only)")


_cluster = None


def postgres_cluster():
    """One throwaway cluster per benchmark run, durable as PostgreSQL's defaults are; stopped at exit."""
    global _cluster
    if _cluster is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from postgres import Cluster

        _cluster = Cluster(durable=True)
        atexit.register(_cluster.destroy)
    return _cluster


def postgres_cpu_seconds() -> float:
    """CPU the PostgreSQL server has used so far: the postmaster, its live backends, and
    the backends that have exited (counted in the postmaster's cutime and cstime)."""
    if _cluster is None:
        return 0.0
    parent = int((_cluster.data / "postmaster.pid").read_text().split()[0])
    with open(f"/proc/{parent}/stat") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    total = sum(int(value) for value in fields[11:15]) / CLOCK_TICKS  # utime, stime, cutime, cstime
    return total + sum(sample(child).cpu_seconds for child in children(parent) if Path(f"/proc/{child}").exists())


def own_cpu_seconds() -> float:
    """The load generator's own CPU (this process)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class ChatServer:
    """``python leida_chat.py serve`` on a fresh database: a SQLite file in a temp dir,
    or a database of its own in the harness's PostgreSQL cluster."""

    def __init__(self, users: int, customers: int, env: dict[str, str] | None = None,
                 python: str = sys.executable, backend: str = "sqlite", processes: int = 1,
                 database: str | None = None, entry: list[str] | None = None) -> None:
        """``database``: serve one that another ChatServer made (several servers, one database);
        ``entry``: what runs ``leida_chat.py serve`` (default: ``python leida_chat.py``)."""
        self.dir = Path(tempfile.mkdtemp(prefix="leida-bench-"))
        self.processes = processes
        self.db = database or (postgres_cluster().new_database() if backend == "postgresql"
                               else str(self.dir / "bench.db"))
        self.port = free_port()
        self.env = {"LEIDA_METRICS_PORT": "0", "LEIDA_SERVER_API_PORT": "0", **os.environ, "LEIDA_LOG_ACCESS": "false",
                    "LEIDA_LONGPOLL_MAX_WAITERS": str(customers + 1000), **(env or {})}
        self.python = python
        self.entry = entry or [python, str(ROOT / "leida_chat.py")]
        self.users: dict[int, str] = {}
        self.customers: dict[int, str] = {}
        if database is None:
            accounts_file = self.dir / "accounts.json"
            subprocess.run(
                [python, str(ROOT / "leida_chat.py"), "demo-accounts", "--db", self.db,
                 "--users", str(users), "--customers", str(customers), "--json", str(accounts_file)],
                check=True, env=self.env, stdout=subprocess.DEVNULL, timeout=120,
            )
            accounts = json.loads(accounts_file.read_text())
            self.users = {int(k): v for k, v in accounts["users"].items()}
            self.customers = {int(k): v for k, v in accounts["customers"].items()}
        self.process: subprocess.Popen | None = None

    def start(self) -> ChatServer:
        self.log = open(self.dir / "server.log", "w")
        self.process = subprocess.Popen(
            [*self.entry, "serve", "--db", self.db,
             "--host", "127.0.0.1", "--port", str(self.port), "--processes", str(self.processes)],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, self.process)
        deadline = time.monotonic() + 20
        while len(self.worker_pids) < self.processes and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3 if self.processes > 1 else 0)  # every worker serving, not only forked
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def worker_pids(self) -> list[int]:
        """The processes that serve: the one server, or the workers under ``--processes``."""
        return children(self.pid) if self.processes > 1 else [self.pid]

    def stop(self) -> int:
        if self.process is None:
            return 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
        finally:
            self.log.close()

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time.

    A bare asyncio Protocol rather than streams: each answer is parsed straight
    from ``data_received`` and timestamped there (``answered_at``), so the load
    generator spends little CPU per answer on a machine it shares with the
    server, and its own scheduling adds nothing to the latency it measures.
    """

    def __init__(self, host: str) -> None:
        self.host = host
        self.answered_at = 0.0
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._answers: list[tuple[int, bytes, float]] = []
        self._waiter: asyncio.Future | None = None
        self._lost = False

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> Connection:
        _, connection = await asyncio.get_running_loop().create_connection(lambda: cls(f"{host}:{port}"), host, port)
        return connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in bytes(self._buffer[:end]).split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            total = end + 4 + length
            if len(self._buffer) < total:
                return
            answer = (int(self._buffer[9:12]), bytes(self._buffer[end + 4:total]), time.perf_counter())
            del self._buffer[:total]
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(answer)
            else:
                self._answers.append(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError("connection closed"))

    def send(self, method: str, path: str, body: bytes = b"",
             content_type: str = "application/x-www-form-urlencoded") -> None:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
        if method == "POST":
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        assert self._transport is not None
        self._transport.write(head.encode() + b"\r\n" + body)

    async def response(self) -> tuple[int, bytes]:
        """The next answer; ``answered_at`` is when its last byte arrived."""
        if self._answers:
            status, body, self.answered_at = self._answers.pop(0)
            return status, body
        if self._lost:
            raise ConnectionError("connection closed")
        self._waiter = asyncio.get_running_loop().create_future()
        status, body, self.answered_at = await self._waiter
        return status, body

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        self.send(method, path, body)
        return await self.response()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def held_get(port: int, path: str, answered: Any = None) -> Connection:
    """A new connection with ``GET path`` sent and left waiting; ``answered(status, body, at)``
    runs when the answer arrives (``at``: when its last byte did), unless the connection drops first."""
    connection = await Connection.open(port)
    connection.send("GET", path)

    async def await_answer() -> None:
        try:
            status, body = await connection.response()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        answered(status, body, connection.answered_at)

    if answered is not None:
        asyncio.ensure_future(await_answer())
    return connection


def py_spy() -> str:
    return shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))


def check_profile_output(parser: argparse.ArgumentParser, output: str | None) -> None:
    """``--profile FILE`` refused before the run, not after it: py-spy must be there and FILE writable."""
    if output is None:
        return
    if not os.access(py_spy(), os.X_OK):
        parser.error("--profile needs py-spy (pip install py-spy)")
    if not os.access(Path(output).resolve().parent, os.W_OK):
        parser.error(f"--profile: cannot write {output}")


async def start_profiler(pid: int, seconds: float, output: str) -> subprocess.Popen:
    """py-spy on ``pid`` for ``seconds``, raw stacks to ``output`` (bench/stages.py reads them)."""
    profiler = subprocess.Popen(
        [py_spy(), "record",
         "--pid", str(pid), "--duration", str(math.ceil(seconds)), "--rate", "500", "--format", "raw",
         "--nonblocking", "--output", output],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await asyncio.sleep(0.3)  # py-spy attached
    return profiler


async def at_rate(items: list, rate: float, start: float, send: Any) -> None:
    """``await send(item)`` for every item, the n-th started at ``start + n / rate``
    (``time.perf_counter``), whether or not the earlier ones have been answered."""
    tasks = []
    for index, item in enumerate(items):
        delay = start + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(send(item)))
    await asyncio.gather(*tasks)


async def until(condition: Any, timeout: float) -> None:
    """Return once ``condition()`` holds, or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not condition():
        await asyncio.sleep(0.05)


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def print_table(title: str, rows: list[tuple[str, object]]) -> None:
    width = max(len(name) for name, _ in rows)
    print(f"\n{title}")
    print("-" * (width + 20))
    for name, value in rows:
        shown = f"{value:,.2f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)
        print(f"{name:<{width}}  {shown:>16}")
