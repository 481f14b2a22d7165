#!/usr/bin/env python3
"""What one durable commit costs, piece by piece, outside the HTTP server.

At 1,000 sends/s on a fast machine nearly every send commits alone, so a
delivered message pays for a whole transaction. This script runs the same
transactions as longpoll.py's load, one after another on the event loop,
without HTTP: a send to a conversation, plus the read position that the
previous delivery moved. Each way of running it is measured on a fresh copy of
a database with the bench's accounts:

- ``statements``: BEGIN IMMEDIATE and the statements, then ROLLBACK;
- ``all on the loop``: the same with COMMIT, every call on the loop's thread;
- ``COMMIT on aiosqlite's thread``: what ``SQLiteDatabase.transact`` does;
- ``through the writer``: ``storage.writer.Writer`` over ``transact``, as the server runs it.

The first two call storage/sqlite.py's own steps (its private BEGIN, apply
and COMMIT functions), so that they time exactly what ``transact`` runs, in
pieces.

For each: CPU µs per message on the loop's thread and in all threads, and
wall time, under ``synchronous = FULL`` and ``OFF``. ``--batch N`` puts N sends
in each transaction, as a busier server's writer does.

    python bench/commit_cost.py              # 2,000 sends per row, one per transaction
    python bench/commit_cost.py --batch 4
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, ChatServer, print_table  # noqa: E402

sys.path.insert(0, str(ROOT))
import ujson  # noqa: E402

from storage.outgoing import Outgoing  # noqa: E402
from storage.records import FROM_RADAR_USER, Side  # noqa: E402
from storage.sqlite import SQLiteDatabase, _apply_changes, _begin_without_waiting, _commit  # noqa: E402
from storage.writer import Change, Changes, Writer  # noqa: E402

CONTENT = {"info_type": 1, "msg": "a reply from the radar user"}
MODES = ("statements", "all on the loop", "COMMIT on aiosqlite's thread", "through the writer")


def transactions(user_id: int, customers: list[int], count: int, batch: int) -> list[Changes]:
    """``batch`` replies per transaction, to each customer in turn, each with the read position
    that its predecessor's delivery moved."""
    made: list[Changes] = []
    for first in range(0, count, batch):
        changes: Changes = []
        for index in range(first, min(first + batch, count)):
            changes.append((Change.SEND, Outgoing(
                customers[index % len(customers)], user_id, FROM_RADAR_USER,
                ujson.dumps(CONTENT, ensure_ascii=False), "2026-12-03T12:00:00.000", None, CONTENT)))
            if index:
                previous = customers[(index - 1) % len(customers)]
                changes.append((Change.READ_POSITIONS, (Side.CUSTOMER, {(previous, user_id): 10**9})))
        made.append(changes)
    return made


async def measure(source: Path, mode: str, synchronous: str, work: list[Changes]) -> dict[str, float]:
    copy = Path(tempfile.mkdtemp(prefix="leida-commit-")) / "copy.db"
    shutil.copy(source, copy)
    database = await SQLiteDatabase.open(copy, synchronous)
    conn = database._write_conn._conn
    writer = Writer(database.transact, database.storage_failure, lambda committed: None)
    run: Callable[[Changes], Awaitable[object] | None]

    def statements_only(changes: Changes) -> None:
        _begin_without_waiting(conn)
        _apply_changes(conn, changes, None)
        conn.execute("ROLLBACK")

    def on_the_loop(changes: Changes) -> None:
        _begin_without_waiting(conn)
        _apply_changes(conn, changes, None)
        _commit(conn)

    def through_the_writer(changes: Changes) -> Awaitable[object]:
        """As the server: the sends are awaited; the read positions ride along, awaited by nobody."""
        futures = [writer.enqueue(kind, item, urgent=kind is Change.SEND) for kind, item in changes]
        return futures[-1] if changes[-1][0] is Change.SEND else futures[-2]

    run = {"statements": statements_only, "all on the loop": on_the_loop,
           "COMMIT on aiosqlite's thread": database.transact, "through the writer": through_the_writer}[mode]
    loop_before, all_before, wall_before = time.thread_time(), time.process_time(), time.perf_counter()
    for changes in work:
        pending = run(changes)
        if pending is not None:
            await pending
    loop_cpu, all_cpu = time.thread_time() - loop_before, time.process_time() - all_before
    wall = time.perf_counter() - wall_before
    await writer.stop()
    await database.close()
    shutil.rmtree(copy.parent)
    per = 1e6 / sum(1 for changes in work for kind, _ in changes if kind is Change.SEND)
    return {"loop": loop_cpu * per, "all": all_cpu * per, "wall": wall * per}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sends", type=int, default=2_000)
    parser.add_argument("--customers", type=int, default=5_000)
    parser.add_argument("--batch", type=int, default=1, help="sends per transaction")
    args = parser.parse_args()
    if min(args.sends, args.batch, args.customers) < 1:
        parser.error("--sends, --batch and --customers must each be at least 1")
    accounts = ChatServer(users=1, customers=args.customers)  # the database only: never started
    (user_id,) = accounts.users
    work = transactions(user_id, sorted(accounts.customers), args.sends, args.batch)
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop  # as the server
    except ImportError:
        loop_factory = None
    rows: list[tuple[str, object]] = []
    for synchronous in ("FULL", "OFF"):
        for mode in MODES:
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                cost = runner.run(measure(Path(accounts.db), mode, synchronous, work))
            rows.append((f"{synchronous:4s} {mode}",
                         f"loop {cost['loop']:6.1f}  all {cost['all']:6.1f}  wall {cost['wall']:6.1f}"))
    shutil.rmtree(accounts.dir)
    print_table(f"µs per message ({args.batch} send(s) and as many read positions per transaction)", rows)


if __name__ == "__main__":
    main()
