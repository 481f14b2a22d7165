#!/usr/bin/env python3
"""Tornado's own floor for one delivered message, beside leida-chat's cost.

``bench/bare_tornado.py``'s bare long-poll gets longpoll.py's load: N held
GETs, then M POSTs at R/s, each waking one of them (no signature, no storage,
no validation: Tornado's parsing, routing, handler and answers only). The
server's CPU per delivered message is the least a Tornado server can spend on
what leida-chat does per message (one send request and its answer, one held
answer), on the same loop. Then longpoll.py's own run, for the comparison.

    python bench/floor.py                  # 10,000 held, 5,000 at 1,000/s
    python bench/floor.py --skip-leida --profile FILE   # the bare server under py-spy, in stages
    python bench/floor.py --durable        # the bare server stores each send durably first
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    Connection,
    at_rate,
    check_profile_output,
    free_port,
    held_get,
    loop_thread_cpu_seconds,
    percentile,
    print_table,
    raise_open_file_limit,
    sample_all,
    start_profiler,
    until,
    wait_for_port,
)

HERE = Path(__file__).resolve().parent


async def run(args: argparse.Namespace, port: int, pid: int) -> dict:
    raise_open_file_limit()
    received: dict[int, float] = {}

    async def hold(key: int) -> Connection:
        return await held_get(port, f"/bare/wait?key={key}", lambda status, body, at: received.__setitem__(key, at))

    connections: list[Connection] = []
    for first in range(0, args.waiters, 500):
        connections += await asyncio.gather(*(hold(key) for key in range(first, min(first + 500, args.waiters))))
    await asyncio.sleep(args.settle_seconds)
    senders: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(32):
        senders.put_nowait(await Connection.open(port))
    sent_at: dict[int, float] = {}

    async def send(key: int) -> None:
        connection = await senders.get()
        sent_at[key] = time.perf_counter()
        await connection.request("POST", "/bare/send", f"key={key}".encode())
        senders.put_nowait(connection)

    profiler = await start_profiler(pid, args.replies / args.rate + 1, args.profile) if args.profile else None
    before, loop_before = sample_all([pid]), loop_thread_cpu_seconds([pid])
    start = time.perf_counter()
    await at_rate(list(range(args.replies)), args.rate, start, send)
    seconds = time.perf_counter() - start
    await until(lambda: len(received) == args.replies, 10)
    after, loop_after = sample_all([pid]), loop_thread_cpu_seconds([pid])
    if profiler is not None:
        profiler.wait(timeout=60)
    for connection in connections:
        connection.close()
    latencies = sorted((received[key] - sent_at[key]) * 1000 for key in received)
    return {
        "waiters": args.waiters,
        "replies": args.replies,
        "rate_achieved": round(args.replies / seconds, 1),
        "delivered": len(received),
        "latency_ms_p50": round(percentile(latencies, 0.5), 3),
        "latency_ms_p99": round(percentile(latencies, 0.99), 3),
        "server_cpu_ms_per_message": round((after.cpu_seconds - before.cpu_seconds) * 1000 / max(len(received), 1), 3),
        "loop_thread_cpu_ms_per_message": round((loop_after - loop_before) * 1000 / max(len(received), 1), 3),
        "server_rss_mb": round(after.rss_mb, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiters", type=int, default=10_000)
    parser.add_argument("--replies", type=int, default=5_000)
    parser.add_argument("--rate", type=float, default=1_000)
    parser.add_argument("--settle-seconds", type=float, default=3)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    parser.add_argument("--profile", metavar="FILE",
                        help="record the bare server with py-spy during the replies, as longpoll.py --profile does")
    parser.add_argument("--durable", action="store_true",
                        help="the bare server stores each send first (aiosqlite, WAL, synchronous = FULL)")
    parser.add_argument("--skip-leida", action="store_true", help="the bare floor only")
    args = parser.parse_args()
    check_profile_output(parser, args.profile)
    port = free_port()
    database = tempfile.mkdtemp(prefix="leida-floor-")
    durable = [str(Path(database) / "bare.db")] if args.durable else []
    bare = subprocess.Popen([sys.executable, str(HERE / "bare_tornado.py"), str(port), args.loop, *durable])
    try:
        wait_for_port(port, bare)
        floor = asyncio.run(run(args, port, bare.pid))
    finally:
        bare.terminate()
        bare.wait()
        shutil.rmtree(database)
    bare_name = "bare durable" if args.durable else "bare"
    rows = [(f"{bare_name} {name}", value) for name, value in floor.items()]
    result = {"bare": floor, "durable": args.durable}
    if not args.skip_leida:
        output = subprocess.run(
            [sys.executable, str(HERE / "longpoll.py"), "--waiters", str(args.waiters), "--replies", str(args.replies),
             "--rate", str(args.rate), "--idle-seconds", "1"], capture_output=True, text=True, check=True).stdout
        leida = json.loads(output.strip().splitlines()[-1])
        result["leida"] = {name: leida[name] for name in floor if name in leida}
        rows += [(f"leida-chat {name}", value) for name, value in result["leida"].items()]
        rows.append((f"leida-chat CPU / {bare_name} CPU per message",
                     round(leida["server_cpu_ms_per_message"] / floor["server_cpu_ms_per_message"], 2)))
    if args.profile:
        from stages import report

        print("\n".join(report(args.profile, floor["loop_thread_cpu_ms_per_message"])))
    print_table("Tornado's floor per delivered message (bare long-poll) beside leida-chat", rows)
    print(json.dumps({"bench": "floor", **result}))


if __name__ == "__main__":
    main()
