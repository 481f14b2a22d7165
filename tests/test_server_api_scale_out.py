"""The server API on two processes sharing one PostgreSQL: what one process does, every process obeys.

Real ``leida_chat.py serve --processes 2`` workers (the kernel hands each new
connection to either), the server API called on its own port, and the
customer's own requests sent all the while on the public one.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import re
import threading
import time
import urllib.request

import pytest

from conftest import Account, text
from live import CUSTOMER, Server, accounts, clean_env, query, serve_args
from storage import ChatStore

KEY = "crm:" + "k" * 32
SERVER_API = re.compile(r"server API on http://(?P<host>[0-9.]+):(?P<port>\d+)/api/v1/")
#: the tables that name a customer, and the column that does
CUSTOMER_ROWS = {"message": "customer_id", "conversation": "customer_id", "attachment": "customer_id",
                 "unread_watch": "customer_id", "webhook_event": "customer_id", "customer": "id"}


def server_api(server: Server, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    port = int(SERVER_API.search(server.log()).group("port"))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers={"Authorization": "Bearer " + KEY.split(":", 1)[1], "Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def held_per_worker(server: Server) -> list[int]:
    """How many getmsg each worker holds now (each worker's own metrics listener)."""
    ports = sorted({int(port) for port in re.findall(r"worker \d: metrics on http://127\.0\.0\.1:(\d+)/metrics",
                                                     server.log())})
    held = []
    for port in ports:
        scrape = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        held.append(int(float(re.search(r"^leida_held_requests (\S+)$", scrape, re.M)[1])))
    return held


def hold_on_both_workers(server: Server, poll, count: int = 4) -> list[threading.Thread]:
    """Start ``count`` held polls, each on a connection of its own, until both workers hold some:
    the kernel hands each new connection to whichever worker accepts first. At most
    ``longpoll.max_waiters_per_account`` (8) in all, or the oldest would be answered early."""
    pollers: list[threading.Thread] = []
    while True:
        batch = [threading.Thread(target=poll) for _ in range(count)]
        for poller in batch:
            poller.start()
        pollers += batch
        time.sleep(0.7)
        held = held_per_worker(server)
        if (len(held) == 2 and min(held) > 0) or len(pollers) + count > 8:
            break
    assert len(held) == 2 and min(held) > 0, held
    return pollers


def rows_of_others(database: str, customer_id: int) -> dict[str, int]:
    counts = {table: query(database, f"SELECT count(*) FROM {table} WHERE {column} <> {customer_id}")[0][0]
              for table, column in CUSTOMER_ROWS.items()}
    counts["client_message"] = query(database, "SELECT count(*) FROM client_message k JOIN message m ON m.id = k.message_id"
                                               f" WHERE m.customer_id <> {customer_id}")[0][0]
    return counts


def rows_of(database: str, customer_id: int) -> dict[str, int]:
    counts = {table: query(database, f"SELECT count(*) FROM {table} WHERE {column} = {customer_id}")[0][0]
              for table, column in CUSTOMER_ROWS.items()}
    counts["client_message"] = query(database, "SELECT count(*) FROM client_message WHERE send_type = 2"
                                               f" AND sender_id = {customer_id}")[0][0]
    return counts


def seed(database: str, user: Account, customers: list[Account], per_customer: int) -> None:
    async def run() -> None:
        store = await ChatStore.open(database)
        try:
            await asyncio.gather(*(
                store.send(customer.id, user.id, 2 - n % 2, {"info_type": 1, "msg": f"{customer.id}-{n}"},
                           client_msg_id=f"seed-{n}" if n % 3 == 0 else None)
                for customer in customers for n in range(per_customer)))
        finally:
            await store.close()
    asyncio.run(run())


def started(tmp_path, database: str) -> Server:
    env = clean_env(LEIDA_SERVER_API_KEYS=KEY, LEIDA_LONGPOLL_TIMEOUT="5")
    server = Server(tmp_path, [*serve_args(tmp_path, database), "--processes", "2"], env, "two-workers")
    server.wait_started(workers=2)
    deadline = time.monotonic() + 10
    while len(SERVER_API.findall(server.log())) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return server


def test_erasing_a_customer_who_sends_and_polls_on_two_processes_leaves_nothing_of_theirs_and_nothing_else_touched(
        tmp_path, pg_database):
    user, (leaving, staying, bystander) = accounts(tmp_path, pg_database, customers=3)
    seed(pg_database, user, [leaving, staying, bystander], per_customer=1500)
    server = started(tmp_path, pg_database)
    try:
        others_before = rows_of_others(pg_database, leaving.id)
        erased_at: list[float] = []
        polls: list[tuple[float, dict]] = []
        sends: list[dict] = []
        stop = threading.Event()

        def keep_sending() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                body = server.post(f"{CUSTOMER}/chat/send_msg/0", leaving,
                                   {"u_id": user.id, "content": json.dumps(text(f"still here {n}")),
                                    "client_msg_id": f"late-{n}"})
                sends.append(body)
                if body["code"] != 200:
                    return

        def keep_polling() -> None:
            last_id = 10**9  # only what comes after now: every poll is held
            while not stop.is_set():
                body = server.get(f"{CUSTOMER}/chat/getmsg/0", leaving, timeout=20, u_id=user.id, wait=5,
                                  last_id=last_id)
                polls.append((time.monotonic(), body))
                if body["code"] != 200:
                    return

        sender = threading.Thread(target=keep_sending)
        sender.start()
        workers = [sender, *hold_on_both_workers(server, keep_polling)]
        time.sleep(0.3)  # sends committing on both processes, polls held on both
        assert sum(1 for body in sends if body["code"] == 200) > 5, sends[-3:]
        erased_at.append(time.monotonic())
        status, answer = server_api(server, "DELETE", f"/api/v1/customers/{leaving.id}")
        took = time.monotonic() - erased_at[0]
        assert status == 200, answer
        for worker in workers:
            worker.join(timeout=10)
        stop.set()
        assert not any(worker.is_alive() for worker in workers)

        removed = answer["removed"]
        assert removed["accounts"] == 1 and removed["messages"] >= 1500, answer
        # both held polls were answered (refused) once the erasure began, not at their 5 s timeout
        refused = [(at, body) for at, body in polls if body["code"] != 200]
        assert len(refused) == len(workers) - 1 and all(body["code"] == 400 for _, body in refused), refused
        assert all(at - erased_at[0] < min(2.0, took + 2.0) for at, _ in refused), (refused, erased_at, took)
        # the sender was refused as with a bad signature, never with an error of the server
        assert sends[-1]["code"] == 400, sends[-1]
        # nothing of theirs survives; nothing of anyone else's was touched
        assert rows_of(pg_database, leaving.id) == dict.fromkeys([*CUSTOMER_ROWS, "client_message"], 0)
        assert rows_of_others(pg_database, leaving.id) == others_before
        status, again = server_api(server, "DELETE", f"/api/v1/customers/{leaving.id}")
        assert status == 200 and not any(again["removed"].values()), again
        log = server.log()
        assert "Traceback" not in log and " 500 " not in log, log
    finally:
        server.stop()


def test_disabling_on_one_process_answers_held_requests_on_both_and_refuses_the_next(tmp_path, pg_database):
    user, (customer,) = accounts(tmp_path, pg_database, customers=1)
    server = started(tmp_path, pg_database)
    try:
        polls: list[tuple[float, dict]] = []

        def poll() -> None:
            body = server.get(f"{CUSTOMER}/chat/getmsg/0", customer, timeout=20, u_id=user.id, wait=5)
            polls.append((time.monotonic(), body))

        pollers = hold_on_both_workers(server, poll)
        disabled_at = time.monotonic()
        status, account = server_api(server, "POST", f"/api/v1/customers/{customer.id}/disable")
        assert status == 200 and account["disabled"] is True, account
        for poller in pollers:
            poller.join(timeout=10)
        assert len(polls) == len(pollers) and all(body["code"] == 400 for _, body in polls), polls
        assert all(at - disabled_at < 2.0 for at, _ in polls), polls
        assert all(server.get(f"{CUSTOMER}/chat/query_num/0", customer, u_id=user.id)["code"] == 400 for _ in range(6))
        status, _ = server_api(server, "POST", f"/api/v1/customers/{customer.id}/enable")
        assert status == 200
        assert all(server.get(f"{CUSTOMER}/chat/query_num/0", customer, u_id=user.id)["code"] == 200 for _ in range(6))
    finally:
        server.stop()


@pytest.mark.parametrize("poll_side", ["customer", "radar_user"])
def test_a_tip_wakes_held_requests_on_the_other_process(tmp_path, pg_database, poll_side):
    user, (customer,) = accounts(tmp_path, pg_database, customers=1)
    server = started(tmp_path, pg_database)
    try:
        answers: list[tuple[float, dict]] = []

        def poll() -> None:
            if poll_side == "customer":
                body = server.customer_getmsg(customer, user.id, wait=5)
            else:
                body = server.radar_getmsg(user, customer.id, wait=5)
            answers.append((time.monotonic(), body))

        pollers = hold_on_both_workers(server, poll)
        posted_at = time.monotonic()
        status, tip = server_api(server, "POST", "/api/v1/tips",
                                 {"customer_id": customer.id, "user_id": user.id, "text": "客户正在查看您的名片"})
        assert status == 200, tip
        for poller in pollers:
            poller.join(timeout=10)
        assert len(answers) == len(pollers)
        for at, body in answers:
            (item,) = body["data"]["ret_data"]
            assert (item["id"], item["send_type"], item["msg"]) == (tip["id"], 3, "客户正在查看您的名片")
            assert at - posted_at < 2.0
        assert server.radar_unread(user)["data"]["chatinfo_count"] == 0
    finally:
        server.stop()
