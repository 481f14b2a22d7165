#!/usr/bin/env python3
"""What "typing…" (对方正在输入) costs the server: 1,000 typing POSTs a second.

Starts the server (``leida_chat.py serve``) on a temp database with N radar
users and N customers, one conversation each (customer i with radar user i).
Every radar user holds a getmsg of its conversation with ``typing=1`` and polls
again as soon as it is answered, so that every wake-up is seen. Then, in
phases of ``--seconds`` each, the customers' pages post
``…/chat/typing/{o_id}`` (signed, over a pool of keep-alive connections) at
``--rate`` per second:

1. **spread**: round-robin over all N conversations (at 1,000/s and N = 50,
   each conversation gets 20 posts a second);
2. **one**: every post in conversation 1 (a runaway page, or a hostile one);
3. **healthz**: the reference: unsigned ``GET /healthz`` at the same rate,
   the cheapest answer the server has (no signature, no storage), so that
   what a typing POST costs beyond any request is apparent.

The server wakes the other side at most once a second per conversation and
drops the rest, so the wake-ups delivered should be at most one per
conversation per second whatever the rate. For each phase: the rate achieved,
the typing POST's answer time p50/p99/max (request written → answer's last
byte), the server's CPU (utime + stime of /proc/<pid>/stat, every worker's
under ``--processes``; and its event loop's thread alone), the CPU per POST,
and the wake-ups delivered: in all, against the most allowed (one at once,
then one a second, per conversation), per conversation per second, the most
of one conversation, and the shortest time between two wake-ups of one
conversation (as the client saw them arrive). A quiet phase first gives the
server's CPU with the same requests held and nobody typing; a warm-up (spread,
not reported) precedes the measured phases. Prints a table per phase and one
JSON line.

    python bench/typing_posts.py                                  # 50 conversations, 1,000/s, 10 s per phase
    python bench/typing_posts.py --conversations 500 --rate 2000 --seconds 20
    python bench/typing_posts.py --backend postgresql --processes 2   # typing crosses processes by NOTIFY
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    ChatServer,
    Connection,
    ProcessSample,
    add_backend_arguments,
    at_rate,
    cpu_percent,
    loop_thread_cpu_seconds,
    own_cpu_seconds,
    percentile,
    postgres_cpu_seconds,
    print_table,
    raise_open_file_limit,
    sample_all,
    signed_path,
)

CUSTOMER_TYPING = "/zhugeleida/gongzhonghao/chat/typing/0"
#: the phases, in order: typing spread over every conversation, all in one, and the reference
PHASES = ("spread", "one", "healthz")
RADAR_GETMSG = "/zhugeleida/qiyeweixin/chat/getmsg/0"


class Pollers:
    """One radar user's held ``typing=1`` getmsg per conversation, polled again at once when
    answered; records when each answer that carried ``typing`` arrived."""

    def __init__(self, server: ChatServer, pairs: list[tuple[int, int, str]], wait: float) -> None:
        self.server, self.pairs, self.wait = server, pairs, wait
        #: customer_id -> when (perf_counter) each typing answer arrived
        self.woken: dict[int, list[float]] = {customer_id: [] for customer_id, _, _ in pairs}
        self.other_answers = 0
        self.bad_answers = 0
        self._tasks: list[asyncio.Task] = []
        self._connections: list[Connection] = []

    async def start(self) -> None:
        for customer_id, user_id, token in self.pairs:
            connection = await Connection.open(self.server.port)
            self._connections.append(connection)
            self._tasks.append(asyncio.ensure_future(self._poll(connection, customer_id, user_id, token)))

    async def _poll(self, connection: Connection, customer_id: int, user_id: int, token: str) -> None:
        while True:
            connection.send("GET", signed_path(RADAR_GETMSG, user_id, token, customer_id=customer_id,
                                               wait=self.wait, typing=1))
            try:
                status, body = await connection.response()
            except ConnectionError:
                return
            if status != 200 or b'"code":200' not in body:
                self.bad_answers += 1
                await asyncio.sleep(0.1)
            elif b'"typing":' in body:
                self.woken[customer_id].append(connection.answered_at)
            else:
                self.other_answers += 1

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for connection in self._connections:
            connection.close()


async def phase(name: str, server: ChatServer, pollers: Pollers, targets: list[tuple[int, int, str]],
                rate: float, seconds: float, connections: int) -> dict:
    """``rate`` typing POSTs a second for ``seconds``, to ``targets`` in turn; the figures.
    No ``targets``: GET /healthz instead (the reference: the server's cheapest answer)."""
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await Connection.open(server.port))
    count = int(rate * seconds)
    latencies: list[float] = []
    failures = 0

    async def post(index: int) -> None:
        nonlocal failures
        connection = await pool.get()
        sent = time.perf_counter()
        if targets:
            customer_id, user_id, token = targets[index % len(targets)]
            status, body = await connection.request("POST", signed_path(CUSTOMER_TYPING, customer_id, token),
                                                    f"u_id={user_id}".encode())
        else:
            status, body = await connection.request("GET", "/healthz")
        latencies.append((connection.answered_at - sent) * 1000)
        if status != 200 or b'"code":200' not in body:
            failures += 1
        pool.put_nowait(connection)

    pids = server.worker_pids
    woken_before = {customer_id: len(times) for customer_id, times in pollers.woken.items()}
    before, loop_before = sample_all(pids), loop_thread_cpu_seconds(pids)
    postgres_before, loadgen_before = postgres_cpu_seconds(), own_cpu_seconds()
    start = time.perf_counter()
    await at_rate(list(range(count)), rate, start, post)
    took = time.perf_counter() - start
    await asyncio.sleep(0.2)  # the last wake-ups on their way
    after, loop_after = sample_all(pids), loop_thread_cpu_seconds(pids)
    postgres_busy, loadgen_busy = postgres_cpu_seconds() - postgres_before, own_cpu_seconds() - loadgen_before
    while not pool.empty():
        pool.get_nowait().close()

    window = after.at - before.at
    woken = {customer_id: times[woken_before[customer_id]:] for customer_id, times in pollers.woken.items()}
    typed_in = {customer_id for customer_id, _, _ in targets}
    delivered = sum(len(times) for times in woken.values())
    gaps = [later - earlier for times in woken.values() for earlier, later in itertools.pairwise(times)]
    latencies.sort()
    server_cpu = after.cpu_seconds - before.cpu_seconds
    figures = {
        "phase": name,
        "conversations_typed_in": len(typed_in),
        "requests": count,
        "rate_target": rate,
        "rate_achieved": round(count / took, 1),
        "failures": failures,
        "answer_ms_p50": round(percentile(latencies, 0.50), 3),
        "answer_ms_p99": round(percentile(latencies, 0.99), 3),
        "answer_ms_max": round(latencies[-1], 3),
        "server_cpu_percent": round(cpu_percent(before, after), 1),
        "server_cpu_us_per_request": round(server_cpu * 1e6 / count, 1),
        "loop_thread_cpu_us_per_request": round((loop_after - loop_before) * 1e6 / count, 1),
        "postgres_cpu_percent": round(100 * postgres_busy / window, 1),
        "loadgen_cpu_percent": round(100 * loadgen_busy / window, 1),
        "wakeups_delivered": delivered,
        # one at once, then one a second: at most 1 + whole seconds posted, per conversation typed in
        "wakeups_allowed": len(typed_in) * (1 + int(took)),
        "wakeups_per_conversation_per_s": round(delivered / took / len(typed_in), 3) if typed_in else None,
        "most_wakeups_of_one_conversation": max(len(times) for times in woken.values()),
        "wakeups_outside_the_typed_conversations": sum(len(woken[c]) for c in woken if c not in typed_in),
        "shortest_gap_between_wakeups_s": round(min(gaps), 3) if gaps else None,
    }
    if not targets:  # the reference: nobody typed
        figures = {key: value for key, value in figures.items() if "wakeups" not in key and "typed" not in key}
    return figures


async def run(args: argparse.Namespace) -> dict:
    raise_open_file_limit()
    server = ChatServer(users=args.conversations, customers=args.conversations, python=args.python,
                        backend=args.backend, processes=args.processes,
                        env={"LEIDA_LONGPOLL_TIMEOUT": str(args.wait), "LEIDA_LONGPOLL_MAX_TIMEOUT": str(args.wait)})
    users, customers = sorted(server.users.items()), sorted(server.customers.items())
    #: (customer_id, user_id, the customer's token): conversation i is customer i with radar user i
    pairs = [(customer_id, user_id, token) for (customer_id, token), (user_id, _) in zip(customers, users, strict=True)]
    with server:
        pollers = Pollers(server, [(customer_id, user_id, server.users[user_id]) for customer_id, user_id, _ in pairs],
                          args.wait)
        await pollers.start()
        await asyncio.sleep(args.settle_seconds)
        pids = server.worker_pids
        quiet_start: ProcessSample = sample_all(pids)
        await asyncio.sleep(args.quiet_seconds)
        quiet = {"phase": "quiet", "held": len(pairs), "seconds": args.quiet_seconds,
                 "server_cpu_percent": round(cpu_percent(quiet_start, sample_all(pids)), 2)}
        phases = {"quiet": quiet}
        if args.warmup_seconds:  # connections opened, code paths warm (PostgreSQL: the pool's connections)
            await phase("warm-up", server, pollers, pairs, args.rate, args.warmup_seconds, args.connections)
            await asyncio.sleep(1.5)
        for name in PHASES:
            targets = {"spread": pairs, "one": pairs[:1], "healthz": []}[name]
            phases[name] = await phase(name, server, pollers, targets, args.rate, args.seconds, args.connections)
            await asyncio.sleep(1.5)  # every conversation's last wake-up more than a second ago
        pollers.stop()
        rss_mb = sample_all(pids).rss_mb
    return {"backend": args.backend, "processes": args.processes, "conversations": args.conversations,
            **phases, "bad_poll_answers": pollers.bad_answers, "other_poll_answers": pollers.other_answers,
            "server_rss_mb_after": round(rss_mb, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=50,
                        help="conversations (a radar user and a customer each), each with a typing=1 getmsg held")
    parser.add_argument("--rate", type=float, default=1_000, help="typing POSTs per second")
    parser.add_argument("--seconds", type=float, default=10, help="how long each phase posts")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections the POSTs share")
    parser.add_argument("--wait", type=float, default=55, help="the held getmsg's wait (and the server's cap)")
    parser.add_argument("--settle-seconds", type=float, default=1, help="pause after holding the getmsg requests")
    parser.add_argument("--quiet-seconds", type=float, default=3, help="the quiet phase: held, nobody typing")
    parser.add_argument("--warmup-seconds", type=float, default=2,
                        help="typing spread over every conversation before the measured phases (not reported)")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs the server")
    add_backend_arguments(parser)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    for name in ("quiet", *PHASES):
        print_table(f"typing: {name}", list(result[name].items()))
    print(json.dumps({"bench": "typing", **result}))


if __name__ == "__main__":
    main()
