#!/usr/bin/env python3
"""Held requests turning over: N pages long-polling with a short wait, each polling again at once.

Nobody sends, so every getmsg ends by its timeout and is replaced by the next:
the server keeps N requests held while creating and dropping N / wait of them a
second. Prints the server's CPU and RSS over the measured window (after a
warm-up), the requests answered per second, as a table and one JSON line.
This is the load under which full garbage collections used to dominate
(bench/README.md).

    python bench/churn.py                     # 10,000 pages, wait=5, 25 s measured
    python bench/churn.py --pages 2000 --wait 25
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    ChatServer,
    Connection,
    cpu_percent,
    print_table,
    raise_open_file_limit,
    sample,
    signed_path,
)

CUSTOMER_GETMSG = "/zhugeleida/gongzhonghao/chat/getmsg/0"


async def page(port: int, customer_id: int, token: str, user_id: int, wait: float, until: float,
               answered: list[int]) -> None:
    connection = await Connection.open(port)
    try:
        while time.monotonic() < until:
            status, _ = await connection.request("GET", signed_path(CUSTOMER_GETMSG, customer_id, token,
                                                                    u_id=user_id, wait=wait))
            answered[0] += status == 200
    except ConnectionError:
        pass
    finally:
        connection.close()


async def run(args: argparse.Namespace) -> dict:
    raise_open_file_limit()
    server = ChatServer(users=1, customers=args.pages, python=args.python)
    (user_id, _), = server.users.items()
    answered = [0]
    with server:
        until = time.monotonic() + args.warmup_seconds + args.seconds + args.wait + 1
        customers = sorted(server.customers.items())
        tasks = []
        for first in range(0, len(customers), 500):
            tasks += [asyncio.ensure_future(page(server.port, cid, token, user_id, args.wait, until, answered))
                      for cid, token in customers[first:first + 500]]
            await asyncio.sleep(0.1)
        await asyncio.sleep(args.warmup_seconds)
        start, answered_before = sample(server.pid), answered[0]
        await asyncio.sleep(args.seconds)
        end, answered_after = sample(server.pid), answered[0]
        await asyncio.gather(*tasks)
    return {
        "pages": args.pages,
        "wait": args.wait,
        "seconds": args.seconds,
        "answers_per_second": round((answered_after - answered_before) / args.seconds, 1),
        "server_cpu_percent": round(cpu_percent(start, end), 1),
        "server_rss_mb_start": round(start.rss_mb, 1),
        "server_rss_mb_end": round(end.rss_mb, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=10_000)
    parser.add_argument("--wait", type=float, default=5, help="the getmsg wait parameter")
    parser.add_argument("--seconds", type=float, default=25, help="the measured window")
    parser.add_argument("--warmup-seconds", type=float, default=10)
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs the server")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print_table("churn: held requests turning over", list(result.items()))
    print(json.dumps({"bench": "churn", **result}))


if __name__ == "__main__":
    main()
