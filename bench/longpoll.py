#!/usr/bin/env python3
"""Many held getmsg requests, then replies to some of them at a fixed rate.

Starts the server on a temp database with 1 radar user and N customers, holds
one customer getmsg per conversation (N held), measures the server's RSS and
its CPU use while they sit idle, then has the radar user reply to M of them at
R messages/s and measures, per reply, the time from writing the send request
to receiving the held getmsg's answer. Prints a table and one JSON line.

    python bench/longpoll.py                       # 10,000 held, 5,000 replies at 1,000/s
    python bench/longpoll.py --waiters 2000 --replies 500 --rate 200
    python bench/longpoll.py --backend postgresql --processes 2   # workers on one port
    python bench/longpoll.py --backend postgresql --servers 2     # every send wakes a waiter on the other server

With ``--servers N`` (PostgreSQL), N servers share one database on N ports;
the held requests are split over them and each reply is sent to a server
other than the one holding its waiter, so every delivery crosses processes.

``--unread-sends N`` has the last N customers each send a message just before
the replies start, which nobody reads; with ``--webhook-delay S`` webhooks are
on (``unread_after_seconds = 1``) and go to a receiver that answers each after
S seconds, so that N ``message.unread`` events are due, and their attempts
held open, while the replies are measured (``bench/webhooks.py`` runs both).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    ChatServer,
    Connection,
    add_backend_arguments,
    at_rate,
    check_profile_output,
    cpu_percent,
    held_get,
    loop_thread_cpu_seconds,
    own_cpu_seconds,
    percentile,
    postgres_cpu_seconds,
    print_table,
    raise_open_file_limit,
    sample_all,
    signed_path,
    start_profiler,
    until,
)

CUSTOMER_GETMSG = "/zhugeleida/gongzhonghao/chat/getmsg/0"
CUSTOMER_SEND = "/zhugeleida/gongzhonghao/chat/send_msg/0"
RADAR_SEND = "/zhugeleida/qiyeweixin/chat/send_msg/0"
#: the bench's webhook secret (any whsec_ value: the receiver does not check it)
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"leida-chat bench webhook secret!").decode()


class SlowReceiver:
    """A webhook receiver on the load generator's loop: reads each request, then answers
    204 after ``delay`` seconds, holding the sender's attempt open meanwhile."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.received = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                self.received += 1
                await asyncio.sleep(self.delay)
                writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        self._server.close()


async def hold(port: int, customer_id: int, token: str, user_id: int, wait: float,
               received: dict[int, float], early: list[int]) -> Connection:
    def answered(status: int, body: bytes, at: float) -> None:
        received[customer_id] = at
        if status != 200 or b'"code":200' not in body:
            early.append(customer_id)

    return await held_get(port, signed_path(CUSTOMER_GETMSG, customer_id, token, u_id=user_id, wait=wait), answered)


async def run(args: argparse.Namespace) -> dict:
    raise_open_file_limit()
    receiver = None
    env = None
    if args.webhook_delay is not None:
        receiver = SlowReceiver(args.webhook_delay)
        env = {"LEIDA_WEBHOOK_URL": f"http://127.0.0.1:{await receiver.start()}/hooks",
               "LEIDA_WEBHOOK_SECRET": WEBHOOK_SECRET, "LEIDA_WEBHOOK_UNREAD_AFTER_SECONDS": "1",
               "LEIDA_WEBHOOK_TIMEOUT_SECONDS": str(args.webhook_delay + 10)}
    server = ChatServer(users=args.users, customers=args.waiters, python=args.python, backend=args.backend,
                        processes=args.processes, env=env)
    servers = [server] + [ChatServer(0, args.waiters, python=args.python, processes=args.processes,
                                     database=server.db) for _ in range(args.servers - 1)]
    users = sorted(server.users.items())
    customers = sorted(server.customers.items())
    #: each customer's conversation is with one radar user, who replies to it
    rep = {cid: users[index % len(users)] for index, (cid, _) in enumerate(customers)}
    #: the server holding each customer's getmsg (its index in ``servers``), and where its reply goes
    holder = {cid: index % len(servers) for index, (cid, _) in enumerate(customers)}
    received: dict[int, float] = {}
    errors: list[int] = []
    connections: list[Connection] = []
    for other in servers[1:]:
        other.start()
    with server:
        pids = [pid for each in servers for pid in each.worker_pids]
        started = time.monotonic()
        for first in range(0, len(customers), args.connect_batch):
            batch = customers[first:first + args.connect_batch]
            connections += await asyncio.gather(*(
                hold(servers[holder[cid]].port, cid, token, rep[cid][0], args.wait, received, errors)
                for cid, token in batch
            ))
        connect_seconds = time.monotonic() - started
        # The server is still working through the last getmsg requests for a moment
        # (and collecting the garbage of 10,000 connects); let it finish before
        # measuring what idle held requests cost.
        await asyncio.sleep(args.settle_seconds)
        held_before = args.waiters - len(received)

        idle_start = sample_all(pids)
        await asyncio.sleep(args.idle_seconds)
        idle_end = sample_all(pids)
        answered_early = len(received)

        # Replies: a pool of keep-alive connections for the radar user's sends.
        # (with several servers, one pool per server; a reply goes to the next server after its waiter's)
        senders: list[asyncio.Queue[Connection]] = [asyncio.Queue() for _ in servers]
        for pool, each in zip(senders, servers, strict=True):
            for _ in range(args.send_connections):
                pool.put_nowait(await Connection.open(each.port))
        sent_at: dict[int, float] = {}
        send_failures = 0
        targets = [cid for cid, _ in customers[:args.replies]]
        body_template = "customer_id={}&content=%7B%22info_type%22%3A1%2C%22msg%22%3A%22bench%22%7D"

        async def post(pool: asyncio.Queue[Connection], signed: Any, sent_key: int | None = None) -> None:
            """POST ``signed()`` (path, body), signed once a connection is free; ``sent_key``: time it."""
            nonlocal send_failures
            connection = await pool.get()
            if sent_key is not None:
                sent_at[sent_key] = time.perf_counter()
            path, body = signed()
            status, answer = await connection.request("POST", path, body)
            if status != 200 or b'"code":200' not in answer:
                send_failures += 1
            pool.put_nowait(connection)

        async def reply(customer_id: int) -> None:
            user_id, user_token = rep[customer_id]
            await post(senders[(holder[customer_id] + 1) % len(servers)],
                       lambda: (signed_path(RADAR_SEND, user_id, user_token),
                                body_template.format(customer_id).encode()),
                       sent_key=customer_id)

        # messages nobody reads, from the customers that get no reply
        unread_senders = customers[len(customers) - args.unread_sends:] if args.unread_sends else []

        async def send_unread(customer_id: int, token: str) -> None:
            await post(senders[holder[customer_id]],
                       lambda: (signed_path(CUSTOMER_SEND, customer_id, token),
                                f"u_id={rep[customer_id][0]}&content=%7B%22info_type%22%3A1%2C%22msg%22%3A%22unread%22%7D"
                                .encode()))

        await asyncio.gather(*(send_unread(cid, token) for cid, token in unread_senders))

        profiler = None
        if args.profile:  # py-spy over exactly the replies (and the wait for their deliveries)
            profiler = await start_profiler(pids[0], len(targets) / args.rate + 1, args.profile)
        send_start = time.perf_counter()
        hooks_before = receiver.received if receiver is not None else 0
        busy_start = sample_all(pids)
        loop_start = loop_thread_cpu_seconds(pids)
        postgres_start, loadgen_start = postgres_cpu_seconds(), own_cpu_seconds()
        await at_rate(targets, args.rate, send_start, reply)
        send_seconds = time.perf_counter() - send_start
        await until(lambda: sum(1 for c in targets if c in received) == len(targets), 10)
        busy_end = sample_all(pids)
        loop_busy = loop_thread_cpu_seconds(pids) - loop_start
        hooks_during = (receiver.received if receiver is not None else 0) - hooks_before
        postgres_busy = postgres_cpu_seconds() - postgres_start
        loadgen_busy = own_cpu_seconds() - loadgen_start
        busy_seconds = busy_end.at - busy_start.at
        delivered = [c for c in targets if c in received]
        latencies = sorted((received[c] - sent_at[c]) * 1000 for c in delivered)
        still_held = args.waiters - len(received)

        if profiler is not None:
            profiler.wait(timeout=60)
        for connection in connections:
            connection.close()
    for other in servers[1:]:
        other.stop()
    if receiver is not None:
        receiver.close()
    return {
        "backend": args.backend,
        "radar_users": len(users),
        "servers": len(servers),
        "processes_per_server": args.processes,
        "waiters": args.waiters,
        "held": held_before,
        "answered_before_any_reply": answered_early,
        "connect_seconds": round(connect_seconds, 2),
        "server_rss_mb": round(idle_end.rss_mb, 1),
        "server_rss_mb_per_process": round(idle_end.rss_mb / len(pids), 1),
        "idle_cpu_percent": round(cpu_percent(idle_start, idle_end), 2),
        "idle_seconds": args.idle_seconds,
        "replies": len(targets),
        "rate_target": args.rate,
        "rate_achieved": round(len(targets) / send_seconds, 1),
        "send_failures": send_failures,
        "delivered": len(delivered),
        "not_delivered": len(targets) - len(delivered),
        "still_held_after": still_held,
        "bad_answers": len(errors),
        "latency_ms_p50": round(percentile(latencies, 0.50), 3),
        "latency_ms_p90": round(percentile(latencies, 0.90), 3),
        "latency_ms_p99": round(percentile(latencies, 0.99), 3),
        "latency_ms_max": round(latencies[-1], 3) if latencies else None,
        "server_cpu_percent_during_replies": round(cpu_percent(busy_start, busy_end), 1),
        "server_cpu_ms_per_message": round(
            (busy_end.cpu_seconds - busy_start.cpu_seconds) * 1000 / max(len(delivered), 1), 3),
        "loop_thread_cpu_ms_per_message": round(loop_busy * 1000 / max(len(delivered), 1), 3),
        "postgres_cpu_percent_during_replies": round(100 * postgres_busy / busy_seconds, 1),
        "loadgen_cpu_percent_during_replies": round(100 * loadgen_busy / busy_seconds, 1),
        "server_rss_mb_after": round(busy_end.rss_mb, 1),
        "unread_sends": args.unread_sends,
        "webhook_receiver_delay_s": args.webhook_delay,
        "webhooks_received_during_replies": hooks_during,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiters", type=int, default=10_000, help="held getmsg requests, one per conversation")
    parser.add_argument("--replies", type=int, default=5_000, help="how many of them get a reply")
    parser.add_argument("--rate", type=float, default=1_000, help="replies per second")
    parser.add_argument("--idle-seconds", type=float, default=10, help="how long to watch the idle held requests")
    parser.add_argument("--settle-seconds", type=float, default=3, help="pause between connecting and the idle watch")
    parser.add_argument("--wait", type=float, default=55, help="the getmsg wait parameter")
    parser.add_argument("--send-connections", type=int, default=32)
    parser.add_argument("--connect-batch", type=int, default=500)
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs the server")
    parser.add_argument("--users", type=int, default=1,
                        help="radar users; the customers are spread over them and each replies to its own")
    parser.add_argument("--servers", type=int, default=1,
                        help="servers on one PostgreSQL database; each reply goes to another server than its waiter's")
    parser.add_argument("--unread-sends", type=int, default=0,
                        help="messages from the customers without a reply, sent just before the replies, never read")
    parser.add_argument("--profile", metavar="FILE",
                        help="record the (first) server with py-spy during the replies; bench/stages.py reads it")
    parser.add_argument("--webhook-delay", type=float,
                        help="webhooks on, to a receiver that answers each after this many seconds")
    add_backend_arguments(parser)
    args = parser.parse_args()
    if args.servers > 1 and args.backend != "postgresql":
        parser.error("--servers needs --backend postgresql")
    check_profile_output(parser, args.profile)
    if args.replies > args.waiters:
        parser.error("--replies must not exceed --waiters")
    if args.unread_sends > args.waiters - args.replies:
        parser.error("--unread-sends must not exceed --waiters minus --replies (the customers without a reply)")
    result = asyncio.run(run(args))
    print_table("long-poll: held requests and reply delivery", list(result.items()))
    if args.profile:
        from stages import report

        loop_ms = result["loop_thread_cpu_ms_per_message"]
        print(f"\nstages during the replies (server CPU {result['server_cpu_ms_per_message']:.2f} ms per delivered"
              f" message, {loop_ms:.2f} on the event loop's thread):")
        print("\n".join(report(args.profile, loop_ms, result["server_cpu_ms_per_message"] - loop_ms)))
    print(json.dumps({"bench": "longpoll", **result}))


if __name__ == "__main__":
    main()
