#!/usr/bin/env python3
"""The original design (every page asks "anything new?" every 2 s) against long-polling.

N customer pages sit on their conversations while the radar user sends a
message now and then to a random one of them. Each mode runs for the same
time on a fresh server; for each the script reports the server's CPU use,
requests per second, and the mean delivery latency (send -> page has it).

    python bench/shortpoll_vs_longpoll.py                 # 2,000 pages, 20 s per mode
    python bench/shortpoll_vs_longpoll.py --clients 10000 --seconds 40
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
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
RADAR_SEND = "/zhugeleida/qiyeweixin/chat/send_msg/0"


async def page(port: int, customer_id: int, token: str, user_id: int, mode: str, interval: float,
               stop_at: float, received: dict[int, list[float]], counters: dict[str, int]) -> None:
    connection = await Connection.open(port)
    await asyncio.sleep(random.uniform(0, interval))  # pages opened at different moments
    wait = 0 if mode == "short" else 25
    try:
        while time.monotonic() < stop_at:
            status, body = await connection.request(
                "GET", signed_path(CUSTOMER_GETMSG, customer_id, token, u_id=user_id, wait=wait))
            counters["requests"] += 1
            if status != 200 or b'"code":200' not in body:
                counters["errors"] += 1
            elif b'"data_count":0' not in body:
                received.setdefault(customer_id, []).append(time.perf_counter())
            if mode == "short":
                await asyncio.sleep(interval)
    except (ConnectionError, asyncio.IncompleteReadError):
        counters["errors"] += 1
    finally:
        connection.close()


async def run_mode(mode: str, args: argparse.Namespace) -> dict:
    server = ChatServer(users=1, customers=args.clients, python=args.python)
    (user_id, user_token), = server.users.items()
    customers = sorted(server.customers.items())
    received: dict[int, list[float]] = {}
    sent: dict[int, list[float]] = {}
    counters = {"requests": 0, "errors": 0}
    with server:
        warmup = args.interval + 1
        stop_at = time.monotonic() + warmup + args.seconds
        pages = [asyncio.ensure_future(page(server.port, cid, token, user_id, mode, args.interval, stop_at,
                                            received, counters)) for cid, token in customers]
        await asyncio.sleep(warmup)
        requests_before = counters["requests"]
        before = sample(server.pid)
        sender = await Connection.open(server.port)
        deadline = time.monotonic() + args.seconds - 3  # leave time for the last delivery
        while time.monotonic() < deadline:
            customer_id = random.choice(customers)[0]
            if customer_id not in sent:  # one message per page keeps the accounting exact
                sent[customer_id] = [time.perf_counter()]
                body = f"customer_id={customer_id}&content=%7B%22info_type%22%3A1%2C%22msg%22%3A%22hi%22%7D"
                await sender.request("POST", signed_path(RADAR_SEND, user_id, user_token), body.encode())
            await asyncio.sleep(1 / args.message_rate)
        await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
        after = sample(server.pid)
        window = after.at - before.at
        requests = counters["requests"] - requests_before
        sender.close()
        server.stop()
        await asyncio.gather(*pages, return_exceptions=True)
    latencies = [received[c][0] - sent[c][0] for c in sent if c in received]
    return {
        "mode": mode,
        "clients": args.clients,
        "server_cpu_percent": round(cpu_percent(before, after), 1),
        "requests_per_second": round(requests / window, 1),
        "messages_sent": len(sent),
        "messages_delivered": len(latencies),
        "mean_delivery_ms": round(1000 * sum(latencies) / len(latencies), 1) if latencies else None,
        "max_delivery_ms": round(1000 * max(latencies), 1) if latencies else None,
        "errors": counters["errors"],
    }


async def main_async(args: argparse.Namespace) -> list[dict]:
    raise_open_file_limit()
    return [await run_mode("short", args), await run_mode("long", args)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=20, help="measured window per mode")
    parser.add_argument("--interval", type=float, default=2.0, help="short-poll period, seconds")
    parser.add_argument("--message-rate", type=float, default=20, help="messages per second to random pages")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs the server")
    args = parser.parse_args()
    short, long = asyncio.run(main_async(args))
    rows: list[tuple[str, object]] = []
    for result in (short, long):
        rows += [(f"{result['mode']}-poll {key}", value) for key, value in result.items() if key != "mode"]
    print_table(f"short-poll every {args.interval:g} s vs long-poll, {args.clients} idle pages", rows)
    print(json.dumps({"bench": "shortpoll_vs_longpoll", "short": short, "long": long}))


if __name__ == "__main__":
    main()
