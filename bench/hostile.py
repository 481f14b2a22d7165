#!/usr/bin/env python3
"""Hostile connections: slow headers beside a signed send, and a connection flood past the open-file limit.

Two parts, each run on this checkout ("after") and, with ``--before PATH``, on
another checkout of the server (a ``git worktree`` of an earlier commit) in the
same run, one after the other, so that their figures sit side by side:

``sends``: a signed, durable send (customer → radar user, one at a time on a
kept-alive connection, ``--send-rate`` a second) timed from request written to
answer read, p50 and p99, first with nothing else, then beside
``--slow-headers`` connections that each sent ``POST … HTTP/1.1`` and then one
header line every ``--line-every`` seconds, measured ``--settle-seconds``
after they have all connected: once as the issue saw them (a connection the
server closes stays closed), once reopened at once whenever the server closes
one (an attacker keeping its count up). Also the server's and the attacker's
CPU meanwhile, how many are open, and how many the server closed a second.

``flood``: the server started with an open-file limit of ``--limit`` (prlimit),
``--flood`` connections each sending ``GET /healthz`` and staying open (pages
connecting), from processes of their own: the server's CPU over
``--flood-seconds`` once they are in, what its log grew by (lines, tracebacks),
then, once the flood has hung up, how long a new client takes to get a signed
send through.

Everything targets loopback and stops by itself. The load generators are
processes of their own at nice +10 (on a 2-core machine the server comes
first, as on a host of its own), and spread their connections over 127.0.0.2,
127.0.0.3, … (``--sources``): one source address has about 28,000 ephemeral
ports. The flood is shared out over as many processes as the hard open-file
limit needs.

    git worktree add /tmp/before <commit>                     # the server to compare with
    python bench/hostile.py --before /tmp/before             # both parts, before and after
    python bench/hostile.py --parts sends --slow-headers 2000
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    ROOT,
    ChatServer,
    Connection,
    ProcessSample,
    cpu_percent,
    percentile,
    print_table,
    sample,
    signed_path,
)

#: the load generators run at this niceness: on a 2-core machine the server comes first, as it would on its own host
NICE = 10
CUSTOMER_SEND = "/zhugeleida/gongzhonghao/chat/send_msg/0"
SEND_BODY = "u_id={}&content=%7B%22info_type%22%3A1%2C%22msg%22%3A%22bench%22%7D"


# -- the load generators (subprocesses of this script) -----------------------------


def raise_own_open_file_limit(wanted: int) -> None:
    """The load generators hold more sockets than a usual hard limit; root may raise it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def source_address(index: int, sources: int) -> str:
    return f"127.0.0.{2 + index % sources}"


async def slow_headers(port: int, count: int, every: float, sources: int, seconds: float, reconnect: bool) -> None:
    """``count`` connections trickling a header, one line every ``every`` s; with ``reconnect``, each one the
    server closes is opened again at once (an attacker keeping its count up)."""
    loop = asyncio.get_running_loop()
    stats = {"opened": 0, "closed_by_server": 0, "failed": 0}
    until = time.monotonic() + seconds

    async def one(index: int) -> None:
        await asyncio.sleep(index * every / count)  # spread the lines over the period
        while time.monotonic() < until:
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, local_addr=(source_address(index, sources), 0))
            except OSError:
                stats["failed"] += 1
                await asyncio.sleep(1)
                continue
            stats["opened"] += 1
            try:
                writer.write(b"POST /zhugeleida/gongzhonghao/chat/send_msg/0 HTTP/1.1\r\n")
                line = 0
                while time.monotonic() < until:
                    try:
                        data = await asyncio.wait_for(reader.read(1024), every)
                    except TimeoutError:
                        line += 1
                        writer.write(b"X-Line-%d: %d\r\n" % (line, line))
                        continue
                    if not data:
                        stats["closed_by_server"] += 1
                        break
            except ConnectionError:
                stats["closed_by_server"] += 1
            finally:
                writer.close()
            if not reconnect:
                return

    tasks = [loop.create_task(one(index)) for index in range(count)]

    async def report() -> None:
        while True:
            print(json.dumps(stats), flush=True)
            await asyncio.sleep(1)

    reporter = loop.create_task(report())
    await asyncio.gather(*tasks)
    reporter.cancel()
    print(json.dumps({**stats, "done": True}), flush=True)
    await asyncio.sleep(60)  # the numbers stay readable until the parent stops it (or a minute, if it died)


async def flood(port: int, count: int, offset: int, sources: int, seconds: float) -> None:
    """``count`` pages connecting at once, each sending GET /healthz and staying until the process ends
    (``offset``: where this process's share starts, for the source addresses)."""
    stats = {"connected": 0, "answered": 0, "failed": 0}
    writers = []

    async def one(index: int) -> None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                "127.0.0.1", port, local_addr=(source_address(index, sources), 0)), 10)
        except (OSError, TimeoutError):
            stats["failed"] += 1
            return
        stats["connected"] += 1
        writers.append(writer)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            if await reader.read(1024):
                stats["answered"] += 1
        except ConnectionError:
            pass

    tasks = []
    for first in range(offset, offset + count, 1000):
        tasks += [asyncio.ensure_future(one(index)) for index in range(first, min(offset + count, first + 1000))]
        await asyncio.sleep(0.05)
    until = time.monotonic() + seconds
    while time.monotonic() < until:  # SIGTERM ends it sooner: the kernel closes every socket
        print(json.dumps(stats), flush=True)
        await asyncio.sleep(0.5)


class LoadGenerator:
    """This script in a load generator's role, as a subprocess; ``stats`` is the last JSON line it printed."""

    def __init__(self, *args: str) -> None:
        # -P: not this folder first on the path, where a script named like a standard module would shadow it
        self.process = subprocess.Popen([sys.executable, "-P", __file__, *args], stdout=subprocess.PIPE, text=True,
                                        preexec_fn=lambda: os.nice(NICE))
        self.stats: dict[str, Any] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.stats = json.loads(line)

    def wait_for(self, condition: Any, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not (self.stats and condition(self.stats)):
            time.sleep(0.1)
        return self.stats

    def sample(self) -> ProcessSample:
        return sample(self.process.pid)

    def stop(self) -> dict[str, Any]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=5)
        return self.stats


# -- the server, from either checkout -------------------------------------------------


def start_server(checkout: Path, limit: int | None = None) -> ChatServer:
    """``leida_chat.py serve`` of ``checkout`` on a database that checkout made (its own schema), started in
    a directory of its own so that it reads the config.toml beside it, not this checkout's."""
    directory = Path(tempfile.mkdtemp(prefix="leida-hostile-"))
    os.chdir(directory)
    database = str(directory / "bench.db")
    accounts = directory / "accounts.json"
    env = {**os.environ, "LEIDA_METRICS_PORT": "0", "LEIDA_SERVER_API_PORT": "0"}
    subprocess.run([sys.executable, str(checkout / "leida_chat.py"), "demo-accounts", "--db", database,
                    "--users", "1", "--customers", "1", "--json", str(accounts)],
                   check=True, env=env, stdout=subprocess.DEVNULL, timeout=120)
    entry = [sys.executable, str(checkout / "leida_chat.py")]
    if limit is not None:
        entry = ["prlimit", f"--nofile={limit}:{limit}", *entry]
    server = ChatServer(0, 0, database=database, entry=entry)
    made = json.loads(accounts.read_text())
    server.users = {int(k): v for k, v in made["users"].items()}
    server.customers = {int(k): v for k, v in made["customers"].items()}
    return server.start()


async def timed_sends(server: ChatServer, count: int, rate: float) -> list[float]:
    """``count`` signed sends, one at a time at ``rate`` a second: each one's ms from written to answered."""
    (user_id, _), = server.users.items()
    (customer_id, token), = server.customers.items()
    connection = await Connection.open(server.port)
    latencies = []
    try:
        started = time.perf_counter()
        for n in range(count):
            delay = started + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent_at = time.perf_counter()
            status, body = await connection.request("POST", signed_path(CUSTOMER_SEND, customer_id, token),
                                                    SEND_BODY.format(user_id).encode())
            if status != 200 or b'"code":200' not in body:
                raise RuntimeError(f"send answered {status}: {body[:200]!r}")
            latencies.append((connection.answered_at - sent_at) * 1000)
    finally:
        connection.close()
    return sorted(latencies)


def server_log(server: ChatServer) -> str:
    return (server.dir / "server.log").read_text(errors="replace")


async def sends_part(name: str, checkout: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The send alone; beside slow headers that stay closed once closed (the attack as the issue saw it);
    beside slow headers reopened at once whenever closed."""
    rows = []
    server = start_server(checkout)
    try:
        await timed_sends(server, 20, args.send_rate)  # warm-up
        cpu_from = sample(server.pid)
        alone = await timed_sends(server, args.sends, args.send_rate)
        rows.append({"server": name, "beside": "nothing", "p50_ms": percentile(alone, 0.5),
                     "p99_ms": percentile(alone, 0.99),
                     "server_cpu_percent": round(cpu_percent(cpu_from, sample(server.pid)), 1)})
        for reconnect in (False, True):
            rows.append(await beside_slow_headers(name, server, args, reconnect))
    finally:
        server.stop()
    return rows


async def beside_slow_headers(name: str, server: ChatServer, args: argparse.Namespace,
                              reconnect: bool) -> dict[str, Any]:
    attacker = LoadGenerator("--role", "slow-headers", "--port", str(server.port),
                             "--slow-headers", str(args.slow_headers), "--line-every", str(args.line_every),
                             "--sources", str(args.sources), *(["--reconnect"] if reconnect else []),
                             "--seconds", str(args.ramp_seconds + args.settle_seconds + args.sends / args.send_rate + 30))
    try:
        attacker.wait_for(lambda stats: stats["opened"] >= args.slow_headers, args.ramp_seconds)
        await asyncio.sleep(args.settle_seconds)  # every one has sent lines; past server.header_timeout
        before, cpu_from, attacker_from = attacker.stats, sample(server.pid), attacker.sample()
        beside = await timed_sends(server, args.sends, args.send_rate)
        after, cpu_to, attacker_to = attacker.stats, sample(server.pid), attacker.sample()
    finally:
        attacker.stop()
    seconds = cpu_to.at - cpu_from.at
    return {"server": name,
            "beside": f"{args.slow_headers:,} slow headers" + (", reopened when closed" if reconnect else ""),
            "p50_ms": percentile(beside, 0.5), "p99_ms": percentile(beside, 0.99),
            "server_cpu_percent": round(cpu_percent(cpu_from, cpu_to), 1),
            "attacker_cpu_percent": round(cpu_percent(attacker_from, attacker_to), 1),
            "slow_headers_open": after["opened"] - after["closed_by_server"],
            "closed_by_server_per_s": round((after["closed_by_server"] - before["closed_by_server"]) / seconds)}


async def flood_part(name: str, checkout: Path, args: argparse.Namespace) -> dict[str, Any]:
    server = start_server(checkout, limit=args.limit)
    per_process = max(1000, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 1000)
    shares = [(offset, min(per_process, args.flood - offset)) for offset in range(0, args.flood, per_process)]
    try:
        log_start = len(server_log(server))
        pages = [LoadGenerator("--role", "flood", "--port", str(server.port), "--flood", str(count),
                               "--offset", str(offset), "--sources", str(args.sources),
                               "--seconds", str(args.flood_seconds + 120)) for offset, count in shares]
        try:
            for share, (_, count) in zip(pages, shares, strict=True):
                share.wait_for(lambda stats, count=count: stats["connected"] + stats["failed"] >= count, 120)
            cpu_from, log_from = sample(server.pid), len(server_log(server))
            await asyncio.sleep(args.flood_seconds)
            cpu_to, grown = sample(server.pid), server_log(server)[log_from:]
            totals = {key: sum(share.stats.get(key, 0) for share in pages) for key in ("connected", "answered", "failed")}
        finally:
            for share in pages:
                share.stop()
        hung_up = time.monotonic()
        recovered = None
        while time.monotonic() - hung_up < 30:
            try:
                await asyncio.wait_for(timed_sends(server, 1, 1.0), 2)
                recovered = time.monotonic() - hung_up
                break
            except (OSError, TimeoutError, RuntimeError):
                await asyncio.sleep(0.05)
        whole = server_log(server)[log_start:]
    finally:
        server.stop()
    return {"server": name, "open_file_limit": args.limit, "pages": args.flood, **totals,
            "server_cpu_percent": round(cpu_percent(cpu_from, cpu_to), 1),
            "log_lines_in_window": grown.count("\n"), "tracebacks_in_window": grown.count("Traceback"),
            "log_kb_in_window": round(len(grown.encode()) / 1024, 1),
            "log_lines_whole_flood": whole.count("\n"),
            "first_send_after_hang_up_s": None if recovered is None else round(recovered, 2),
            "log_lines_about_it": [line for line in whole.splitlines() if "accept" in line][:4]}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_own_open_file_limit(args.flood + 2000)  # as far as the hard limit: the flood is shared out by that
    targets = ([("before", Path(args.before))] if args.before else []) + [("after", ROOT)]
    result: dict[str, Any] = {"sends": [], "flood": []}
    parts = args.parts.split(",")
    if "sends" in parts:
        for name, checkout in targets:
            result["sends"] += await sends_part(name, checkout, args)
    if "flood" in parts:
        for name, checkout in targets:
            result["flood"].append(await flood_part(name, checkout, args))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="another checkout of the server, measured first (e.g. /tmp/before)")
    parser.add_argument("--parts", default="sends,flood")
    parser.add_argument("--sends", type=int, default=400, help="timed sends per measurement")
    parser.add_argument("--send-rate", type=float, default=20.0)
    parser.add_argument("--slow-headers", type=int, default=8000)
    parser.add_argument("--line-every", type=float, default=5.0)
    parser.add_argument("--ramp-seconds", type=float, default=30.0, help="at most, for the slow headers to connect")
    parser.add_argument("--settle-seconds", type=float, default=12.0,
                        help="after they have, before measuring (past the 10 s header deadline)")
    parser.add_argument("--flood", type=int, default=25_000)
    parser.add_argument("--limit", type=int, default=20_000, help="the server's open-file limit in the flood")
    parser.add_argument("--flood-seconds", type=float, default=15.0)
    parser.add_argument("--sources", type=int, default=4, help="source addresses 127.0.0.2 … of the load generators")
    parser.add_argument("--role", choices=("slow-headers", "flood"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--reconnect", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "slow-headers":
        raise_own_open_file_limit(args.slow_headers + 1000)
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # the kernel closes its sockets
        asyncio.run(slow_headers(args.port, args.slow_headers, args.line_every, args.sources, args.seconds,
                                 args.reconnect))
        return
    if args.role == "flood":
        raise_own_open_file_limit(args.flood + 1000)
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        asyncio.run(flood(args.port, args.flood, args.offset, args.sources, args.seconds))
        return
    result = asyncio.run(run(args))
    for row in result["sends"]:
        print_table(f"signed send, {row['server']}, beside {row['beside']}", list(row.items()))
    for row in result["flood"]:
        print_table(f"flood, {row['server']}", list(row.items()))
    print(json.dumps({"bench": "hostile", **result}))


if __name__ == "__main__":
    main()
