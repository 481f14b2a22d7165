#!/usr/bin/env python3
"""The chat while a customer with 100,000 messages is erased (issue 23), and that customer's export.

Before the server starts, its database is seeded straight through ``ChatStore``:
``--rounds`` customers (default 3) with ``--messages`` messages each (default
100,000: both directions, a conversation with each of 4 radar users, every 5th
send with a ``client_msg_id``, so idempotency keys exist), interleaved with 20
messages each of 1,000 other customers spread over 100 radar users. Then the
real server (``leida_chat.py serve``) runs with the server API on (a bearer key
of this run's own), and throughout the run those 1,000 other customers send at
``--rate`` (200/s, signed as an H5 page signs), each to its radar user; each of
the 100 radar users holds a getmsg for its whole inbox (``last_id`` as a
client keeps it), answered by those sends and held again at once.

Phases, the load running through all of them:

1. **before**: ``--before-seconds`` of the load alone;
2. **export**: ``GET /api/v1/customers/1/export`` (the first big customer),
   streamed to the client and counted (and checked: every message in it); the
   server's VmRSS sampled every 10 ms, and the sends due while it streamed
   (the export paces itself: ``storage.customer_data.pace``);
3. **erase 1..N**: ``DELETE /api/v1/customers/{id}`` of each big customer in
   turn, ``--pause-seconds`` apart;
4. **after**: ``--before-seconds`` of the load alone again.

Around each phase ``leida_commit_duration_seconds`` is scraped from the metrics
listener: the transactions of the phase, their mean, how many took over 20 and
50 ms, and the histogram bucket of the longest.

Every send is timed from the moment it was due (``harness.at_rate``), so a send
that waits for a connection while the server stalls counts its wait; a
delivery is timed from that same moment to its held getmsg's answer. The
longest writer pause shows as the longest send; the metrics give the longest
transaction by histogram bucket.

The main run is the erase as shipped: ``storage.customer_data.Batches`` sizes
each batch (from FIRST_BATCH, doubled while a transaction takes under
BATCH_TARGET_SECONDS, halved while it takes over four times that). The server is
started through a few lines of this bench (``SERVER_ENTRY``) that wrap
``Batches.took`` to append each batch's size and time, as ``Batches`` saw it
(from handing the batch to the writer to its commit), to a file of the run;
so the sizes the erase settled on are reported per erasure. Production code
logs nothing of the kind.

With ``--compare-batch N[,N...]`` (default 500, the size fixed before
``Batches``; 0 for none) the whole run is made again for each N, on a fresh
database, without the export, with a server whose FIRST_BATCH, SMALLEST_BATCH
and LARGEST_BATCH are all N, set by those same lines in the server process
before ``leida_chat.py`` runs (production code has no such setting): a fixed
transaction size, side by side. A batch's ids are one statement's
parameters, so N stays under 32,000 (SQLite takes 32,766, asyncpg 32,767).

A default run takes about 2 minutes on SQLite and 3 to 5 on PostgreSQL, where
the adaptive erase takes 8 to 50 s per customer (bench/README.md, "Erasure").

    python bench/erasure.py                          # SQLite, synchronous = FULL
    python bench/erasure.py --backend postgresql     # a throwaway durable cluster
    python bench/erasure.py --compare-batch 100,500,5000  # fixed sizes beside the adaptive one
    python bench/erasure.py --messages 20000 --rounds 1 --compare-batch 0   # a quick look
"""
from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from longpoll import CUSTOMER_SEND  # noqa: E402
from uploads import RssSampler, finish, loadavg, print_columns  # noqa: E402

from harness import (  # noqa: E402
    CLOCK_TICKS,
    ROOT,
    ChatServer,
    Connection,
    add_backend_arguments,
    at_rate,
    free_port,
    own_cpu_seconds,
    percentile,
    postgres_cluster,
    postgres_cpu_seconds,
    print_table,
    raise_open_file_limit,
    sample,
    signed_path,
    until,
)

sys.path.insert(0, str(ROOT))
from storage import FROM_CUSTOMER, FROM_RADAR_USER, ChatStore  # noqa: E402
from storage.customer_data import BATCH_TARGET_SECONDS, FIRST_BATCH  # noqa: E402

RADAR_GETMSG = "/zhugeleida/qiyeweixin/chat/getmsg/0"
SEND_BODY = "u_id={}&content=%7B%22info_type%22%3A1%2C%22msg%22%3A%22during%20the%20erasure%22%7D"
#: radar users; each holds its inbox's getmsg, and the customers erased talk with the first 4
RADAR_USERS = 100
BIG_CONVERSATIONS = 4
OTHER_CUSTOMERS = 1000
#: messages each other customer has before the run (their conversations exist; the table is not one customer's)
OTHER_MESSAGES = 20
#: sends in flight while seeding (the writer commits up to 500 per transaction)
SEED_CHUNK = 5000
#: a send or delivery slower than this stalls the chat (the issue's "a few tens of milliseconds")
STALL_MS = 50.0
COMMIT_METRIC = "leida_commit_duration_seconds"
#: the server process (bench only): every erasure batch's size and time appended to ``record`` as
#: Batches sees them, a line "erasure" where an erasure begins; with ``batch``, every batch that size
SERVER_ENTRY = """
import runpy, sys
sys.path.insert(0, {root!r})
import storage.customer_data as data
if {batch}:
    data.FIRST_BATCH = data.SMALLEST_BATCH = data.LARGEST_BATCH = {batch}
record = open({record!r}, "a", buffering=1)
init, took = data.Batches.__init__, data.Batches.took
def started(self):
    record.write("erasure\\n")
    init(self)
def recorded(self, seconds):
    record.write(f"{{self.size}} {{seconds:.6f}}\\n")
    took(self, seconds)
data.Batches.__init__, data.Batches.took = started, recorded
sys.argv[0] = {script!r}
runpy.run_path({script!r}, run_name="__main__")
"""


# -- seeding ------------------------------------------------------------------------


async def seed(db: str, big: list[int], others: list[int], messages: int) -> dict[str, Any]:
    """``messages`` for each big customer, over BIG_CONVERSATIONS radar users, both directions,
    every fifth with a client_msg_id, interleaved with OTHER_MESSAGES for each other customer; straight through
    ChatStore, before the server opens the database."""

    def sends() -> Iterator[tuple[int, int, int, str | None]]:
        background = [(cid, n) for n in range(OTHER_MESSAGES) for cid in others]
        every = max(1, messages * len(big) // max(len(background), 1))
        for index in range(messages):
            for cid in big:
                key = f"seed-{cid}-{index}" if index % 5 == 0 else None
                yield cid, 1 + index % BIG_CONVERSATIONS, FROM_CUSTOMER if index % 2 else FROM_RADAR_USER, key
            if index % every == 0 and background:
                for _ in range(len(big)):
                    if background:
                        cid, n = background.pop()
                        yield cid, 1 + cid % RADAR_USERS, FROM_CUSTOMER if n % 2 else FROM_RADAR_USER, None
        for cid, n in background:
            yield cid, 1 + cid % RADAR_USERS, FROM_CUSTOMER if n % 2 else FROM_RADAR_USER, None

    started = time.perf_counter()
    store = await ChatStore.open(db)
    count = 0
    try:
        chunk: list[Any] = []
        for cid, user_id, send_type, key in sends():
            chunk.append(store.send(cid, user_id, send_type, {"info_type": 1, "msg": f"seed {count}"}, key))
            count += 1
            if len(chunk) == SEED_CHUNK:
                await asyncio.gather(*chunk)
                chunk = []
        await asyncio.gather(*chunk)
        ((last_id,),) = await store.database.fetch("SELECT COALESCE(MAX(id), 0) FROM message", ())
    finally:
        await store.close()
    return {"seeded_messages": count, "seed_seconds": round(time.perf_counter() - started, 1), "last_id": last_id}


# -- the server API and the metrics --------------------------------------------------


@dataclass
class ApiAnswer:
    status: int
    body: bytes
    size: int
    seconds: float


async def api_call(port: int, method: str, path: str, secret: str, keep_body: bool = True) -> ApiAnswer:
    """One server API call with the bearer key, its body read as it streams (chunked or not);
    ``keep_body=False`` only counts it."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {secret}\r\n"
                 "Connection: close\r\n\r\n".encode())
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
    status = int(head[9:12])
    parts: list[bytes] = []
    size = 0
    if "transfer-encoding: chunked" in head:
        while True:
            length = int((await reader.readline()).split(b";")[0], 16)
            if length == 0:
                await reader.readline()
                break
            piece = await reader.readexactly(length)
            await reader.readexactly(2)
            size += length
            if keep_body:
                parts.append(piece)
    else:
        while piece := await reader.read(1 << 16):
            size += len(piece)
            if keep_body:
                parts.append(piece)
    writer.close()
    return ApiAnswer(status, b"".join(parts), size, time.perf_counter() - started)


async def scrape(port: int) -> dict[str, float]:
    """The commit histograms' series from the metrics listener, by their full name and labels."""
    connection = await Connection.open(port)
    try:
        status, body = await connection.request("GET", "/metrics")
    finally:
        connection.close()
    if status != 200:
        raise RuntimeError(f"metrics answered {status}")
    series = {}
    for line in body.decode().splitlines():
        if line.startswith("leida_commit_"):
            name, value = line.rsplit(" ", 1)
            series[name] = float(value)
    return series


def commit_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """The transactions between two scrapes: how many, their mean, how many above 20 and
    50 ms, and the bucket the longest fell in."""
    def bucket(bound: str) -> float:
        name = f'{COMMIT_METRIC}_bucket{{le="{bound}"}}'
        return after.get(name, 0.0) - before.get(name, 0.0)

    count = after.get(f"{COMMIT_METRIC}_count", 0) - before.get(f"{COMMIT_METRIC}_count", 0)
    total = after.get(f"{COMMIT_METRIC}_sum", 0) - before.get(f"{COMMIT_METRIC}_sum", 0)
    bounds = sorted({name.split('le="')[1].rstrip('"}') for name in after if name.startswith(f"{COMMIT_METRIC}_bucket")},
                    key=lambda bound: float(bound))
    longest, lower = "none", 0.0
    for bound in bounds:
        if bucket(bound) >= count:
            longest = f"{lower * 1000:g}-{float(bound) * 1000:g} ms" if bound != "+Inf" else f"> {lower * 1000:g} ms"
            break
        lower = float(bound)
    return {"commits": int(count), "commit_ms_mean": round(1000 * total / count, 2) if count else None,
            "commits_over_20ms": int(count - bucket("0.02")), "commits_over_50ms": int(count - bucket("0.05")),
            "longest_commit": longest}


def read_batches(record: Path) -> list[list[tuple[int, float]]]:
    """Each erasure's batches, (size, seconds) as ``Batches.took`` saw them, from SERVER_ENTRY's file."""
    erasures: list[list[tuple[int, float]]] = []
    for line in record.read_text().splitlines() if record.exists() else []:
        if line == "erasure":
            erasures.append([])
        elif line and erasures:
            size, seconds = line.split()
            erasures[-1].append((int(size), float(seconds)))
    return erasures


def batch_figures(batches: list[tuple[int, float]]) -> dict[str, Any]:
    """How the erase sized its batches: how many, the sizes by count (in the order first used; the
    last batch, short or empty, included), and their times as Batches measured them, overall and by
    size (with how many fell under half of BATCH_TARGET_SECONDS and over twice it)."""
    sizes: dict[int, int] = {}
    for size, _ in batches:
        sizes[size] = sizes.get(size, 0) + 1
    times = sorted(1000 * seconds for _, seconds in batches)
    low, high = 500 * BATCH_TARGET_SECONDS, 2000 * BATCH_TARGET_SECONDS  # Batches doubles under, halves over

    def by_size(size: int) -> str:
        """One size's batches: how many, their p50, and how many went under and over the band."""
        these = sorted(1000 * seconds for each, seconds in batches if each == size)
        return (f"{size}: {len(these)}, p50 {percentile(these, 0.5):.1f} ms, {sum(ms < low for ms in these)} < {low:g},"
                f" {sum(ms > high for ms in these)} > {high:g}")

    return {"batches": len(batches),
            "batch_sizes": " ".join(f"{size}x{count}" for size, count in sizes.items()) or "-",
            "batch_size_median": sorted(size for size, _ in batches)[len(batches) // 2] if batches else None,
            "batch_ms_p50": round(percentile(times, 0.5), 1) if times else None,
            "batch_ms_max": round(times[-1], 1) if times else None,
            f"batches_over_{high:g}ms": sum(1 for ms in times if ms > high),
            "batch_ms_by_size": "; ".join(by_size(size) for size in sorted(sizes))}


def machine_busy_seconds() -> float:
    """CPU time the whole machine has spent busy (every core, every process), from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / CLOCK_TICKS


class AutovacuumWatch:
    """PostgreSQL only: which tables autovacuum works on, in any database of the cluster, looked at
    every 0.25 s (a DELETE of 100,000 rows leaves dead tuples that autovacuum then clears, beside
    the chat)."""

    INTERVAL = 0.25

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples: list[tuple[float, list[str]]] = []
        self._task: asyncio.Future | None = None

    async def start(self) -> None:
        import asyncpg

        self._connection = await asyncpg.connect(self.url)
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            rows = await self._connection.fetch(
                "SELECT datname = current_database() AS here, query FROM pg_stat_activity"
                " WHERE backend_type = 'autovacuum worker'")
            self.samples.append((time.perf_counter(), [
                row["query"].removeprefix("autovacuum: ") + ("" if row["here"] else " (another database)")
                for row in rows]))
            await asyncio.sleep(self.INTERVAL)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            await self._connection.close()

    def during(self, start: float, end: float) -> dict[str, Any]:
        busy = [tables for at, tables in self.samples if start <= at <= end and tables]
        return {"autovacuum_seconds": round(len(busy) * self.INTERVAL, 2),
                "autovacuum_of": ", ".join(sorted({table for tables in busy for table in tables})) or "-"}


# -- the chat's load -------------------------------------------------------------------


@dataclass
class Chat:
    """Sends from the other customers at a steady rate; each radar user holds a getmsg for the
    whole inbox (with ``last_id``), answered by the sends, and holds it again at once."""

    port: int
    rate: float
    senders: list[tuple[int, str]]
    users: dict[int, str]
    last_id: int
    wait: float
    #: (due, answered, ok, how late this process started it) per send, perf_counter seconds
    sends: list[tuple[float, float, bool, float]] = field(default_factory=list)
    #: (due, delivered) per delivered send
    deliveries: list[tuple[float, float]] = field(default_factory=list)
    #: when each customer's last send was due, until it is delivered
    pending: dict[int, float] = field(default_factory=dict)
    bad_getmsg: int = 0
    stopping: bool = False

    def rep(self, customer_id: int) -> int:
        return 1 + customer_id % len(self.users)

    async def hold(self) -> None:
        users = sorted(self.users.items())
        self._connections = await asyncio.gather(*(Connection.open(self.port) for _ in users))
        self._watchers = [asyncio.ensure_future(self._watch(connection, user_id, token))
                          for connection, (user_id, token) in zip(self._connections, users, strict=True)]

    async def _watch(self, connection: Connection, user_id: int, token: str) -> None:
        last_id = self.last_id
        while not self.stopping:
            try:
                status, body = await connection.request("GET", signed_path(
                    RADAR_GETMSG, user_id, token, wait=self.wait, last_id=last_id))
            except ConnectionError:
                return
            answer = json.loads(body) if status == 200 else {}
            if answer.get("code") != 200:
                self.bad_getmsg += 1
                await asyncio.sleep(0.5)
                continue
            for item in answer["data"]["ret_data"]:
                last_id = max(last_id, item["id"])
                due = self.pending.pop(item["customer_id"], None)
                if due is not None:
                    self.deliveries.append((due, connection.answered_at))

    def start(self) -> None:
        self._pool: asyncio.Queue[Connection] = asyncio.Queue()

        start = time.perf_counter()

        def schedule() -> Iterator[tuple[tuple[int, str], float]]:
            """Each sender in turn, with when its send is due (as at_rate computes it)."""
            index = 0
            while not self.stopping:
                yield self.senders[index % len(self.senders)], start + index / self.rate
                index += 1

        async def send(item: tuple[tuple[int, str], float]) -> None:
            # timed from when it was due, not from when this loop got round to it: a send
            # started late (this process busy) or waiting for a connection counts the delay
            (customer_id, token), due = item
            late = time.perf_counter() - due
            self.pending[customer_id] = due
            connection = await self._pool.get() if not self._pool.empty() else await Connection.open(self.port)
            status, answer = await connection.request("POST", signed_path(CUSTOMER_SEND, customer_id, token),
                                                      SEND_BODY.format(self.rep(customer_id)).encode())
            self.sends.append((due, connection.answered_at, status == 200 and b'"code":200' in answer, late))
            self._pool.put_nowait(connection)

        # at_rate only enumerates its items: here a schedule that ends when the run stops
        self._load = asyncio.ensure_future(at_rate(schedule(), self.rate, start, send))  # type: ignore[arg-type]

    async def stop(self) -> None:
        self.stopping = True
        await self._load
        await until(lambda: not self.pending, 5)
        for connection in [*self._connections, *self._pool._queue]:  # type: ignore[attr-defined]
            connection.close()
        await asyncio.gather(*self._watchers)

    def figures(self, start: float, end: float) -> dict[str, Any]:
        """Sends due in [start, end] (or still waiting at start), and their deliveries."""
        sends = [send for send in self.sends if send[0] <= end and send[1] >= start]
        waits = sorted(1000 * (answered - due) for due, answered, *_ in sends)
        delivered = sorted(1000 * (at - due) for due, at in self.deliveries if due <= end and at >= start)
        return {
            "sends": len(sends), "send_failures": sum(1 for _, _, ok, _ in sends if not ok),
            "send_ms_p50": round(percentile(waits, 0.5), 2), "send_ms_p99": round(percentile(waits, 0.99), 2),
            "send_ms_max": round(waits[-1], 2) if waits else None,
            f"sends_over_{STALL_MS:g}ms": sum(1 for wait in waits if wait > STALL_MS),
            "loadgen_late_ms_max": round(1000 * max((late for *_, late in sends), default=0), 2),
            "delivered": len(delivered),
            "delivery_ms_p50": round(percentile(delivered, 0.5), 2),
            "delivery_ms_p99": round(percentile(delivered, 0.99), 2),
            "delivery_ms_max": round(delivered[-1], 2) if delivered else None,
        }


# -- one run ---------------------------------------------------------------------------


def count_exported(document: bytes) -> tuple[int, int]:
    """(conversations, messages) in an export document."""
    exported = json.loads(document)
    conversations = exported["conversations"]
    return len(conversations), sum(len(conversation["messages"]) for conversation in conversations)


async def run_one(args: argparse.Namespace, batch: int, export: bool) -> dict[str, Any]:
    """One run on a fresh database; ``batch`` 0 erases as shipped (Batches), else in batches of that size."""
    secret = secrets.token_urlsafe(24)
    api_port, metrics_port = free_port(), free_port()
    env = {"LEIDA_SERVER_API_PORT": str(api_port), "LEIDA_SERVER_API_KEYS": f"bench:{secret}",
           "LEIDA_METRICS_PORT": str(metrics_port)}
    script = str(ROOT / "leida_chat.py")
    server = ChatServer(users=RADAR_USERS, customers=args.rounds + OTHER_CUSTOMERS, env=env, python=args.python,
                        backend=args.backend)
    record = server.dir / "batches.txt"
    server.entry = [args.python, "-c", SERVER_ENTRY.format(root=str(ROOT), batch=batch, record=str(record),
                                                            script=script)]
    server.env["LEIDA_MEDIA_DIRECTORY"] = str(server.dir / "media")  # uploads.finish deletes it
    customers = sorted(server.customers.items())
    big = [cid for cid, _ in customers[:args.rounds]]
    others = customers[args.rounds:]
    out: dict[str, Any] = {"backend": args.backend,
                           "erase_batch": batch or f"adaptive (from {FIRST_BATCH}, about {1000 * BATCH_TARGET_SECONDS:g} ms)",
                           "loadavg_start": loadavg()}
    phases: dict[str, dict[str, Any]] = {}
    windows: dict[str, tuple[float, float]] = {}
    erasures: list[dict[str, Any]] = []
    problems: list[str] = []
    document = b""

    async def phase(name: str, work: Any) -> Any:
        """``await work``, the load running: the chat's figures, the transactions and the CPU meanwhile."""
        scraped = await scrape(metrics_port)
        cpu, postgres, loadgen = sample(server.pid).cpu_seconds, postgres_cpu_seconds(), own_cpu_seconds()
        machine = machine_busy_seconds()
        start = time.perf_counter()
        result = await work
        end = time.perf_counter()
        seconds = end - start
        machine = machine_busy_seconds() - machine
        cpu, postgres = sample(server.pid).cpu_seconds - cpu, postgres_cpu_seconds() - postgres
        loadgen = own_cpu_seconds() - loadgen
        windows[name] = (start, end)
        phases[name] = {
            "seconds": round(seconds, 2), **commit_delta(scraped, await scrape(metrics_port)),
            "server_cpu_percent": round(100 * cpu / seconds, 1),
            "postgres_cpu_percent": round(100 * postgres / seconds, 1),
            "loadgen_cpu_percent": round(100 * loadgen / seconds, 1),
            # anything else on the machine meanwhile (other jobs, the kernel's threads): the noise
            "others_cpu_percent": round(100 * max(machine - cpu - postgres - loadgen, 0) / seconds, 1),
        }
        return result

    autovacuum = AutovacuumWatch(server.db) if args.backend == "postgresql" else None
    try:
        out.update(await seed(server.db, big, [cid for cid, _ in others], args.messages))
        chat = Chat(server.port, args.rate, others, server.users, out.pop("last_id"), args.wait)
        server.start()
        pid = server.pid
        if autovacuum is not None:
            await autovacuum.start()
        await chat.hold()
        await asyncio.sleep(args.settle_seconds)
        chat.start()
        await phase("before", asyncio.sleep(args.before_seconds))

        if export:
            await asyncio.sleep(args.pause_seconds)
            sampler = RssSampler([pid])
            sampler.start()
            await asyncio.sleep(0.5)
            idle_rss, at = sample(pid).rss_mb, time.monotonic()
            answer = await phase("export", api_call(api_port, "GET", f"/api/v1/customers/{big[0]}/export", secret))
            peak = sampler.peak(at, time.monotonic()) or idle_rss
            sampler.done.set()
            if answer.status == 200:
                document = answer.body
            else:
                problems.append(f"export: {answer.status} {answer.body[:300]!r}")
            out.update({"export_seconds": round(answer.seconds, 2), "export_mb": round(answer.size / 1e6, 1),
                        "export_mb_per_s": round(answer.size / 1e6 / answer.seconds, 1),
                        "export_rss_mb_before": round(idle_rss, 1), "export_rss_mb_peak": round(peak, 1),
                        "export_rss_mb_growth": round(peak - idle_rss, 1)})

        for index, customer_id in enumerate(big):
            await asyncio.sleep(args.pause_seconds)
            answer = await phase(f"erase {index + 1}", api_call(api_port, "DELETE", f"/api/v1/customers/{customer_id}",
                                                                secret))
            removed = json.loads(answer.body).get("removed", {}) if answer.status == 200 else {}
            if answer.status != 200 or removed.get("messages") != args.messages:
                problems.append(f"erase of {customer_id}: {answer.status} {answer.body[:300]!r}")
            erasures.append({"erase_seconds": round(answer.seconds, 2), "messages_erased": removed.get("messages"),
                             "idempotency_keys_erased": removed.get("idempotency_keys")})
        await asyncio.sleep(args.pause_seconds)
        await phase("after", asyncio.sleep(args.before_seconds))
        await chat.stop()
    finally:
        if autovacuum is not None:
            await autovacuum.stop()
        problems += finish(server)
        recorded = read_batches(record)
        if args.backend == "postgresql":  # its dead rows are not vacuumed beside the next run
            name = server.db.rsplit("/", 1)[1]
            postgres_cluster().run("dropdb", "-h", "127.0.0.1", "-p", str(postgres_cluster().port), "-U", "postgres",
                                   name)
        shutil.rmtree(server.dir, ignore_errors=True)
    # the chat's figures once every send has its answer (a send due in a phase may end after it)
    out["phases"] = {name: {"seconds": figures.pop("seconds"), **chat.figures(*windows[name]), **figures,
                            **(autovacuum.during(*windows[name]) if autovacuum is not None else {})}
                     for name, figures in phases.items()}
    if len(recorded) != len(erasures):
        problems.append(f"{len(recorded)} erasures recorded by the server for {len(erasures)} made")
    for erasure, batches in zip(erasures, recorded, strict=False):
        # disabling, the batches (the last one short or empty), the rest with the account
        erasure.update(transactions_of_the_erase=len(batches) + 2, **batch_figures(batches))
    out["erasures"] = erasures
    during = [figures for name, figures in out["phases"].items() if name.startswith("erase")]
    out["during_erase"] = {"sends": sum(figures["sends"] for figures in during),
                           "send_ms_max": max(figures["send_ms_max"] or 0 for figures in during),
                           "delivery_ms_max": max(figures["delivery_ms_max"] or 0 for figures in during)}
    if "export" in out["phases"]:
        figures = out["phases"]["export"]
        out.update({f"export_{name}": figures[name] for name in (
            "sends", "send_ms_p50", "send_ms_p99", "send_ms_max", f"sends_over_{STALL_MS:g}ms", "delivery_ms_max",
            "commits", "others_cpu_percent")})
    out["bad_getmsg_answers"] = chat.bad_getmsg
    out["undelivered"] = len(chat.pending)
    if document:
        out["export_conversations"], out["export_messages"] = count_exported(document)
        if out["export_messages"] != args.messages:
            problems.append(f"the export holds {out['export_messages']} messages, not {args.messages}")
    out["loadavg_end"] = loadavg()
    out["problems"] = problems
    return out


def report(runs: list[dict[str, Any]]) -> None:
    for run in runs:
        head = f"{run['backend']}, batches {run['erase_batch']}"
        print_table(f"{head}: seeding, export, erasures", [
            *((name, value) for name, value in run.items() if not isinstance(value, (dict, list))),
            *((f"erase {index + 1}: {name}", value) for index, erasure in enumerate(run["erasures"])
              for name, value in erasure.items()),
            *((f"during the erasures: {name}", value) for name, value in run["during_erase"].items()),
        ])
        names = list(run["phases"])
        print_columns(f"{head}: by phase (send: due -> its 200; delivery: due -> the held getmsg's answer;"
                      f" commits: {COMMIT_METRIC})", ["", *names],
                      [[key, *(run["phases"][name][key] for name in names)] for key in run["phases"]["before"]])
        for problem in run["problems"]:
            print(f"  ! {problem}")


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    raise_open_file_limit()
    runs = [await run_one(args, 0, export=not args.no_export)]
    for batch in args.compare_batch:
        runs.append(await run_one(args, batch, export=False))
    return runs


def batch_sizes(text: str) -> list[int]:
    """``--compare-batch``: comma-separated sizes, 1 to 32,000 each (a batch's ids are one statement's
    parameters); 0 for none."""
    sizes = [int(part) for part in text.split(",") if part.strip()]
    if sizes == [0]:
        return []
    if not sizes or not all(0 < size <= 32_000 for size in sizes):
        raise argparse.ArgumentTypeError("sizes from 1 to 32,000 (0 alone: no comparison)")
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000, help="messages of each customer erased")
    parser.add_argument("--rounds", type=int, default=3, help="customers of --messages each, erased one after another")
    parser.add_argument("--rate", type=float, default=200, help="sends per second from the other customers")
    parser.add_argument("--before-seconds", type=float, default=10, help="the load alone before the export and the erasures, and again after them")
    parser.add_argument("--pause-seconds", type=float, default=3, help="the load alone between phases")
    parser.add_argument("--settle-seconds", type=float, default=2, help="after holding the getmsg requests")
    parser.add_argument("--wait", type=float, default=50, help="the held getmsg's wait parameter")
    parser.add_argument("--compare-batch", type=batch_sizes, default=[500], metavar="N[,N...]",
                        help="run again with every batch of N messages, set in the server process"
                             " (default 500, the size fixed before Batches; 0: no comparison)")
    parser.add_argument("--no-export", action="store_true", help="skip the export")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs the server")
    add_backend_arguments(parser)
    args = parser.parse_args()
    if args.processes != 1:
        parser.error("one server process: the writer pause is measured in the one that erases")
    if args.messages < 1 or args.rounds < 1:
        parser.error("--messages and --rounds must be at least 1")
    runs = asyncio.run(run(args))
    report(runs)
    print(json.dumps({"bench": "erasure", "runs": runs}))


if __name__ == "__main__":
    main()
