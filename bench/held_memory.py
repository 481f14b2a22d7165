#!/usr/bin/env python3
"""What one held getmsg costs in memory, object by object, in the real server.

The server runs under ``tracemalloc`` (a wrapper that starts it before
``leida_chat.py`` is imported and writes a snapshot on SIGUSR1). The script
takes a snapshot, holds N getmsg requests (one per customer), takes another,
and prints the difference per held request, grouped by the line that
allocated it, plus the server's RSS per held request without tracemalloc
(a second run of the same load). Tracing slows the server; only the sizes count.

    python bench/held_memory.py            # 2,000 held
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    ROOT,
    ChatServer,
    Connection,
    held_get,
    print_table,
    raise_open_file_limit,
    sample,
    signed_path,
)

CUSTOMER_GETMSG = "/zhugeleida/gongzhonghao/chat/getmsg/0"
#: runs leida_chat.py's main with tracemalloc on, dumping a snapshot to $LEIDA_BENCH_SNAPSHOT.N on SIGUSR1
TRACED = """
import os, runpy, signal, sys, tracemalloc
tracemalloc.start()
sys.path.insert(0, %r)
taken = [0]
def dump(*_):
    taken[0] += 1
    tracemalloc.take_snapshot().dump(f"{os.environ['LEIDA_BENCH_SNAPSHOT']}.{taken[0]}")
signal.signal(signal.SIGUSR1, dump)
sys.argv = [%r] + sys.argv[1:]
runpy.run_path(%r, run_name="__main__")
"""


async def hold_all(server: ChatServer, count: int) -> list[Connection]:
    (user_id, _), = server.users.items()
    connections = []
    for customer_id, token in list(server.customers.items())[:count]:
        connections.append(await held_get(
            server.port, signed_path(CUSTOMER_GETMSG, customer_id, token, u_id=user_id, wait=55)))
    return connections


def snapshot(server: ChatServer, path: str, number: int) -> tracemalloc.Snapshot:
    os.kill(server.pid, signal.SIGUSR1)
    file = Path(f"{path}.{number}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if file.exists():
            size = file.stat().st_size
            time.sleep(0.5)
            if size and file.stat().st_size == size:
                return tracemalloc.Snapshot.load(str(file))
        time.sleep(0.2)
    raise RuntimeError("the server wrote no snapshot")


async def run(args: argparse.Namespace) -> dict:
    raise_open_file_limit()
    work = Path(tempfile.mkdtemp(prefix="leida-held-"))
    wrapper = work / "traced.py"
    wrapper.write_text(TRACED % (str(ROOT), str(ROOT / "leida_chat.py"), str(ROOT / "leida_chat.py")))
    snapshots = str(work / "snap")
    traced = ChatServer(users=1, customers=args.held, env={"LEIDA_BENCH_SNAPSHOT": snapshots},
                        entry=[sys.executable, str(wrapper)])
    with traced:
        await asyncio.sleep(2)
        before = snapshot(traced, snapshots, 1)
        connections = await hold_all(traced, args.held)
        await asyncio.sleep(args.settle_seconds)
        after = snapshot(traced, snapshots, 2)
        for connection in connections:
            connection.close()
    stats = after.compare_to(before, "lineno")
    total = sum(stat.size_diff for stat in stats)
    top = []
    for stat in stats[:args.top]:
        frame = stat.traceback[0]
        where = _short(frame.filename)
        top.append({"where": f"{where}:{frame.lineno}", "bytes_per_held": round(stat.size_diff / args.held),
                    "blocks_per_held": round(stat.count_diff / args.held, 2)})
    rows: list[tuple[str, object]] = [("traced bytes per held request", round(total / args.held))]
    rows += [(f"  {entry['where']}", f"{entry['bytes_per_held']} B in {entry['blocks_per_held']}") for entry in top]

    plain = ChatServer(users=1, customers=args.held)
    with plain:
        await asyncio.sleep(2)
        rss_before = sample(plain.pid).rss_mb
        connections = await hold_all(plain, args.held)
        await asyncio.sleep(args.settle_seconds)
        rss_after = sample(plain.pid).rss_mb
        for connection in connections:
            connection.close()
    rss_per_held = (rss_after - rss_before) * 1024 * 1024 / args.held
    rows.append(("RSS per held request (untraced run)", round(rss_per_held)))
    print_table(f"memory per held getmsg ({args.held} held)", rows)
    return {"held": args.held, "traced_bytes_per_held": round(total / args.held),
            "rss_bytes_per_held": round(rss_per_held), "top": top}


def _short(filename: str) -> str:
    """``tornado/iostream.py`` for an installed package's file, ``handlers/base.py`` for ours."""
    path = Path(filename)
    if "site-packages" in path.parts:
        return "/".join(path.parts[path.parts.index("site-packages") + 1:])
    if filename.startswith(str(ROOT)):
        return str(path.relative_to(ROOT))
    return "/".join(path.parts[-2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held", type=int, default=2_000)
    parser.add_argument("--settle-seconds", type=float, default=3)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    print(json.dumps({"bench": "held_memory", **asyncio.run(run(args))}))


if __name__ == "__main__":
    main()
