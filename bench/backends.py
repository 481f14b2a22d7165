#!/usr/bin/env python3
"""SQLite and PostgreSQL side by side, in one run: the figures of bench/README.md's "Backends".

Runs, one after the other on the same machine, ``throughput.py`` (send_msg
req/s) and ``longpoll.py`` (delivery at 1,000 replies/s to 10,000 held
requests) for each setup: SQLite with one process, PostgreSQL with one process,
PostgreSQL with ``--processes 2`` (one port; the kernel spreads connections,
so about half the deliveries cross processes), and two PostgreSQL servers
(``--servers 2``: every reply is sent to the server that does not hold its
waiter). Then ``notify_cost.py``. Prints one table and one JSON line.

    python bench/backends.py                  # the defaults of each script
    python bench/backends.py --quick          # 2,000 held, 1,000 replies at 500/s, 5 s of wrk
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

SETUPS = {
    "SQLite, 1 process": ["--backend", "sqlite"],
    "PostgreSQL, 1 process": ["--backend", "postgresql"],
    "PostgreSQL, --processes 2": ["--backend", "postgresql", "--processes", "2"],
    "PostgreSQL, 2 servers": ["--backend", "postgresql", "--servers", "2"],
}


def last_json(script: str, *args: str) -> dict:
    output = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True,
                            timeout=900, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--users", default="1", help="radar users in longpoll.py (their replies serialize per user)")
    parser.add_argument("--rate", help="longpoll.py's replies per second (default: its own, 1,000)")
    parser.add_argument("--no-throughput", action="store_true", help="longpoll.py only")
    parser.add_argument("--no-notify-cost", action="store_true")
    args = parser.parse_args()
    wrk_args = ["--seconds", "5"] if args.quick else []
    poll_args = (["--waiters", "2000", "--replies", "1000", "--rate", "500", "--idle-seconds", "2"]
                 if args.quick else []) + ["--users", args.users] + (["--rate", args.rate] if args.rate else [])
    rows = {}
    for name, setup in SETUPS.items():
        row: dict = {}
        if "--servers" not in setup and not args.no_throughput:  # one port: the send rate of that one address
            sent = last_json("throughput.py", "--skip-bare", *wrk_args, *setup)["send_msg"]
            row.update(send_msg_per_s=sent["rate"], send_p99=sent["p99"], send_server_cpu=sent["server_cpu_percent"],
                       send_postgres_cpu=sent["postgres_cpu_percent"], send_wrk_cpu=sent["wrk_cpu_percent"])
        polled = last_json("longpoll.py", *poll_args, *setup)
        row.update({key: polled[key] for key in (
            "latency_ms_p50", "latency_ms_p99", "delivered", "replies", "server_rss_mb_per_process",
            "server_cpu_percent_during_replies", "postgres_cpu_percent_during_replies",
            "loadgen_cpu_percent_during_replies")})
        rows[name] = row
        print(name, json.dumps(row), flush=True)
    if not args.no_notify_cost:
        rows["notify_cost"] = last_json("notify_cost.py")
    print(json.dumps({"bench": "backends", **rows}))


if __name__ == "__main__":
    main()
