#!/usr/bin/env python3
"""What NOTIFY costs a commit: the same send transactions with the doorbell and without.

PostgreSQL serializes the commits of transactions that sent NOTIFY on one
cluster-wide lock (the notification queue's), so that notifications are queued
in commit order. This runs the server's own send transaction
(``PostgresDatabase.transact``) from W concurrent writers, as W server
processes would, each for a radar user of its own (so that the radar-user row
lock does not serialize them instead), first with the doorbell and then with
``doorbells`` returning nothing (the same statement, notifying nobody), on a
throwaway cluster with PostgreSQL's default fsync. Prints commits/s and the
commit time per transaction both ways, and one JSON line.

    python bench/notify_cost.py                    # 1, 2, 4 and 8 writers, 3 rounds of 3 s each way
    python bench/notify_cost.py --writers 8 --seconds 10
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, percentile, postgres_cluster, print_table  # noqa: E402

sys.path.insert(0, str(ROOT))
import storage.postgres as postgres_backend  # noqa: E402
from storage.outgoing import Outgoing  # noqa: E402
from storage.records import FROM_CUSTOMER  # noqa: E402
from storage.store import ChatStore, local_timestamp  # noqa: E402
from storage.writer import Change  # noqa: E402


async def writers_for(seconds: float, database: postgres_backend.PostgresDatabase, users: list[int],
                      customers: list[int]) -> tuple[int, list[float]]:
    """Each writer commits one send after another into its own radar user's inbox."""
    durations: list[float] = []
    deadline = time.perf_counter() + seconds

    async def writer(user_id: int) -> None:
        conn = await asyncpg.connect(database.url)
        n = 0
        try:
            while time.perf_counter() < deadline:
                n += 1
                sent = Outgoing(customers[n % len(customers)], user_id, FROM_CUSTOMER,
                                '{"info_type":1,"msg":"bench"}', local_timestamp(), None, {})
                started = time.perf_counter()
                await database.transact_on(conn, [(Change.SEND, sent)])
                durations.append((time.perf_counter() - started) * 1000)
        finally:
            await conn.close()

    await asyncio.gather(*(writer(user_id) for user_id in users))
    return len(durations), durations


async def run(args: argparse.Namespace) -> dict:
    url = postgres_cluster().new_database()
    store = await ChatStore.open(url)
    database = store.database
    assert isinstance(database, postgres_backend.PostgresDatabase)
    users = [(await store.save_radar_user(None, username=f"u{n}"))[0] for n in range(max(args.writers))]
    customers = [(await store.save_customer(None, username=f"c{n}"))[0] for n in range(50)]
    ring = postgres_backend.doorbells
    result: dict = {}
    try:
        for writers in args.writers:
            await writers_for(1.0, database, users[:writers], customers)  # warm the statements and the cluster
            rates: dict[str, list[float]] = {"notify": [], "silent": []}
            durations: dict[str, list[float]] = {"notify": [], "silent": []}
            for _ in range(args.rounds):  # the two alternate, so that drift on the machine hits both
                for label in ("notify", "silent"):
                    postgres_backend.doorbells = ring if label == "notify" else (lambda origin, pairs: [])
                    count, took = await writers_for(args.seconds, database, users[:writers], customers)
                    rates[label].append(count / args.seconds)
                    durations[label] += took
            for label in ("notify", "silent"):
                result[f"w{writers}_{label}_commits_per_s"] = round(statistics.median(rates[label]), 1)
                ordered = sorted(durations[label])
                result[f"w{writers}_{label}_ms_p50"] = round(percentile(ordered, 0.5), 3)
                result[f"w{writers}_{label}_ms_p99"] = round(percentile(ordered, 0.99), 3)
            notify_rate, silent_rate = result[f"w{writers}_notify_commits_per_s"], result[f"w{writers}_silent_commits_per_s"]
            result[f"w{writers}_notify_share_of_commit_time_percent"] = round(100 * (1 - notify_rate / silent_rate), 1)
    finally:
        postgres_backend.doorbells = ring
        await store.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seconds", type=float, default=3.0, help="per leg")
    parser.add_argument("--rounds", type=int, default=3, help="notify / silent legs, alternating")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print_table("NOTIFY's cost: send transactions with and without the doorbell", list(result.items()))
    print(json.dumps({"bench": "notify_cost", **result}))


if __name__ == "__main__":
    main()
