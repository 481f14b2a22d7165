"""Several processes on one PostgreSQL: wake-ups across them, ids in commit order, faults.

Everything here runs real ``leida_chat.py`` processes against a PostgreSQL
cluster the tests start themselves (tests/postgres.py); a test that restarts
PostgreSQL gets a cluster of its own.
"""
from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import threading
import time
import urllib.request

import pytest

from conftest import Account, text
from live import CUSTOMER, RADAR, Background, accounts, clean_env, query, run_cli, serve_args
from nginx import start_nginx  # noqa: F401  (fixture)
from postgres import Cluster, require_postgres
from storage.doorbell import CHANNEL, HAND_OFF_MAX_SECONDS, MAX_PAYLOAD_BYTES, Listener, doorbells, rung
from storage.records import FROM_CUSTOMER, Message
from storage.waiters import Waiters, inbox_key

WAKE_BOUND = 2.0  # seconds a wake-up may take here; the figures are in bench/README.md


@pytest.fixture
def own_cluster():
    """A cluster of the test's own, for the tests that stop or restart PostgreSQL."""
    require_postgres()
    cluster = Cluster()
    yield cluster
    cluster.destroy()


def send(server, sender: Account, to: int, msg: str, client_msg_id: str | None = None,
         radar: bool = False, timeout: float = 5.0) -> tuple[int, dict, dict]:
    """(status, body, headers) of a send_msg, with an optional client_msg_id."""
    path, form = (f"{RADAR}/chat/send_msg/0", {"customer_id": to}) if radar else (f"{CUSTOMER}/chat/send_msg/0", {"u_id": to})
    form = {**form, "content": json.dumps(text(msg), ensure_ascii=False), "client_msg_id": client_msg_id}
    import http.client
    from urllib.parse import urlencode

    from conftest import sign

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        conn.request("POST", path + "?" + urlencode(sign(sender)),
                     body=urlencode({k: v for k, v in form.items() if v is not None}),
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        response = conn.getresponse()
        return response.status, json.loads(response.read()), dict(response.getheaders())
    finally:
        conn.close()


def inbox_after(server, user: Account, last_id: int, wait: float = 0) -> list[int]:
    body = server.get(f"{RADAR}/chat/getmsg/0", user, timeout=10 + wait, wait=wait, last_id=last_id)
    assert body["code"] == 200, body
    return [item["id"] for item in body["data"]["ret_data"]]


def no_traceback(*servers) -> None:
    for server in servers:
        log = server.log()
        assert "Traceback" not in log and " 500 " not in log, log


# -- the doorbell ----------------------------------------------------------------------


def test_doorbells_name_every_conversation_and_its_ids_in_payloads_under_8000_bytes():
    spans = {(customer_id, customer_id % 7 + 10**12): (customer_id * 10, customer_id * 10 + 3)
             for customer_id in range(10**12, 10**12 + 2000)}
    payloads = doorbells("1234-abcd/17", spans)
    assert len(payloads) > 1 and all(len(payload.encode()) <= MAX_PAYLOAD_BYTES for payload in payloads)
    rung_spans = {pair: (first_id, last_id) for payload in payloads for pair, first_id, last_id in rung(payload)[1]}
    assert rung_spans == spans and {rung(p)[0] for p in payloads} == {"1234-abcd/17"}


def doorbell_message(message_id: int, customer_id: int) -> Message:
    """A radar user 1's message as the database would return it."""
    return Message(message_id, customer_id, 1, FROM_CUSTOMER, {"info_type": 1, "msg": str(message_id)},
                   "2026-12-03T18:00:00.000", False, False, False, "客户", "", "")


async def listening(pg_database: str, scenario) -> object:
    """``scenario(listener, waiters, ring, read)`` on a real LISTEN connection with real waiters;
    ``ring(ringer, spans)`` sends the doorbells from another connection, and another
    process's messages are read as ``doorbell_message`` (``read`` is set once one is)."""
    import asyncpg

    waiters = Waiters()
    read = asyncio.Event()

    async def messages_between(first_id: int, last_id: int) -> list[Message]:
        read.set()
        return [doorbell_message(message_id, 8) for message_id in range(first_id, last_id + 1)]

    listener = Listener(pg_database, "this-process", waiters, messages_between)
    await listener.start()
    connection = await asyncpg.connect(pg_database)

    async def ring(ringer: str, spans: dict) -> None:
        for payload in doorbells(ringer, spans):
            await connection.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)

    try:
        return await scenario(listener, waiters, ring, read)
    finally:
        await connection.close()
        await listener.close()


def test_a_doorbell_back_before_its_hand_off_keeps_a_later_commit_waiting_its_turn(pg_database):
    """This process's commit 1 (message 101) rings, and the writer's result has not crossed
    back to the loop yet; another process's later commit (102) rings right after. The
    waiter must get 101 first: handed 102 alone, its client would resume past 101 for good."""

    async def scenario(listener, waiters, ring, read) -> list[int]:
        held = waiters.register([inbox_key(1)])
        await ring("this-process/1", {(7, 1): (101, 101)})
        await ring("other/5", {(8, 1): (102, 102)})
        await asyncio.wait_for(read.wait(), WAKE_BOUND)
        await asyncio.sleep(0.2)  # the other commit's read is done, and would be handed now
        assert not held.done(), "a later commit was handed before this process's earlier one"
        listener.hand_off(1, [(7, 1, doorbell_message(101, 7))])
        return [message.id for message in (await asyncio.wait_for(held, WAKE_BOUND)).messages]

    assert asyncio.run(listening(pg_database, scenario)) == [101]


def test_a_doorbell_whose_hand_off_never_comes_lets_every_held_request_read_for_itself(pg_database):
    """The writer lost its connection at COMMIT: the doorbell rang, the result never came."""

    async def scenario(listener, waiters, ring, read) -> tuple[object, float]:
        held = waiters.register([inbox_key(1)])
        await ring("this-process/1", {(7, 1): (101, 101)})
        started = time.monotonic()
        woken = await asyncio.wait_for(held, HAND_OFF_MAX_SECONDS + WAKE_BOUND)
        return woken, time.monotonic() - started

    woken, after = asyncio.run(listening(pg_database, scenario))
    assert woken is None  # "look for yourself"
    assert HAND_OFF_MAX_SECONDS * 0.8 < after < HAND_OFF_MAX_SECONDS + WAKE_BOUND


# -- wake-ups across processes ----------------------------------------------------------


def test_a_send_on_one_server_wakes_held_requests_on_the_other(tmp_path, start_server, pg_database):
    user, (customer,) = accounts(tmp_path, pg_database)
    a = start_server(*serve_args(tmp_path, pg_database))
    b = start_server(*serve_args(tmp_path, pg_database))
    held_conversation = Background(a.customer_getmsg, customer, user.id, wait=20, last_id=0)
    held_inbox = Background(a.radar_getmsg, user, None, wait=20)
    time.sleep(0.5)
    assert held_conversation.finished_at is None and held_inbox.finished_at is None
    status, sent, _ = send(b, customer, user.id, "从另一台服务器")
    sent_at = time.monotonic()
    assert status == 200, sent
    for held in (held_conversation, held_inbox):
        body = held.value(timeout=WAKE_BOUND + 1)
        assert [item["id"] for item in body["data"]["ret_data"]] == [sent["data"]["id"]], body
        assert body["data"]["ret_data"][0]["msg"] == "从另一台服务器"
        assert held.finished_at - sent_at < WAKE_BOUND
    no_traceback(a, b)


def test_processes_share_one_port_wake_each_other_and_stop_on_one_sigterm(tmp_path, start_server, pg_database):
    """Held requests spread over both workers by the kernel; a send on either wakes all;
    SIGTERM to the parent answers every held request, stops both workers, exit 0."""
    user, customers = accounts(tmp_path, pg_database, customers=12)
    server = start_server(*serve_args(tmp_path, pg_database), "--processes", "2", wait=False)
    server.wait_started(workers=2)
    assert len(set(re.findall(r"worker (\d): leida-chat listening", server.log()))) == 2
    held = [Background(server.customer_getmsg, customer, user.id, wait=20, last_id=0) for customer in customers]
    time.sleep(0.7)
    sent = {}
    for customer in customers:
        status, body, _ = send(server, customer, user.id, f"来自{customer.id}")
        assert status == 200, body
        sent[customer.id] = body["data"]["id"]
    sent_at = time.monotonic()
    for customer, request in zip(customers, held, strict=True):
        body = request.value(timeout=WAKE_BOUND + 1)
        assert [item["id"] for item in body["data"]["ret_data"]] == [sent[customer.id]]
        assert request.finished_at - sent_at < WAKE_BOUND
    served_by = set(re.findall(r"worker (\d): stopped", server.log()))  # not yet: none stopped
    assert served_by == set()

    held = [Background(server.customer_getmsg, customer, user.id, wait=30, last_id=sent[customer.id])
            for customer in customers]
    time.sleep(0.7)
    signalled = time.monotonic()
    assert server.stop(signal.SIGTERM, timeout=10) == 0, server.log()
    assert time.monotonic() - signalled < 5
    for request in held:
        body = request.value(timeout=5)
        assert body["code"] == 200 and body["data"]["ret_data"] == [], body
    log = server.log()
    assert len(set(re.findall(r"worker (\d): stopped after", log))) == 2, log
    assert log.count("exited normally") == 2, log
    no_traceback(server)


def test_metrics_with_several_processes_are_one_port_per_worker(tmp_path, start_server, pg_database):
    user, (customer,) = accounts(tmp_path, pg_database)
    server = start_server(*serve_args(tmp_path, pg_database), "--processes", "2", wait=False)
    server.wait_started(workers=2)
    ports = sorted({int(port) for port in re.findall(r"worker \d: metrics on http://127\.0\.0\.1:(\d+)/metrics", server.log())})
    assert len(ports) == 2
    for n in range(6):
        assert send(server, customer, user.id, f"m{n}")[0] == 200
    total = 0.0
    for port in ports:
        scrape = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        match = re.search(r'^leida_messages_sent_total\{side="customer"\} (\S+)$', scrape, re.M)
        total += float(match[1]) if match else 0.0
    assert total == 6  # each worker counts its own; Prometheus sums the two targets


def test_sqlite_refuses_several_processes_and_points_to_postgres(tmp_path):
    for processes in ("2", "0"):
        result = run_cli(tmp_path, "serve", "--db", str(tmp_path / "chat.db"), "--processes", processes)
        if processes == "0" and "means 1 processes" in result.stderr:
            continue  # a one-core machine: 0 is one process, which SQLite serves
        assert result.returncode == 2, result
        assert "server.processes" in result.stderr and "PostgreSQL" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


# -- the cursor never skips a message ------------------------------------------------------


def test_eight_senders_on_two_servers_and_a_poller_alternating_between_them_miss_nothing(
    tmp_path, start_server, pg_database
):
    user, customers = accounts(tmp_path, pg_database, customers=8)
    servers = [start_server(*serve_args(tmp_path, pg_database)) for _ in range(2)]
    acknowledged: list[int] = []
    stop = threading.Event()
    lock = threading.Lock()

    def keep_sending(number: int, customer: Account) -> None:
        server = servers[number % 2]
        n = 0
        while not stop.is_set():
            n += 1
            status, body, _ = send(server, customer, user.id, f"{customer.id}-{n}")
            assert status == 200, body
            with lock:
                acknowledged.append(body["data"]["id"])

    received: list[int] = []
    polls = 0

    def poll() -> None:
        nonlocal polls
        last_id = 0
        while not stop.is_set() or polls < 3:
            ids = inbox_after(servers[polls % 2], user, last_id, wait=1)
            polls += 1
            received.extend(ids)
            if ids:
                last_id = ids[-1]
            if stop.is_set() and not ids:
                break

    senders = [threading.Thread(target=keep_sending, args=(n, c)) for n, c in enumerate(customers)]
    poller = threading.Thread(target=poll)
    for thread in [*senders, poller]:
        thread.start()
    time.sleep(4)
    stop.set()
    for thread in senders:
        thread.join(10)
    poller.join(20)
    assert not poller.is_alive()
    # whatever the poller had not reached when the senders stopped, it reads from its cursor now
    last = received[-1] if received else 0
    while ids := inbox_after(servers[0], user, last):
        received.extend(ids)
        last = ids[-1]
    assert len(acknowledged) > 200, len(acknowledged)
    assert polls > 20
    assert len(received) == len(set(received)), "an id was received twice"
    assert sorted(received) == sorted(acknowledged), (
        f"missed {sorted(set(acknowledged) - set(received))[:10]}, extra {sorted(set(received) - set(acknowledged))[:10]}"
    )
    assert received == sorted(received)
    no_traceback(*servers)


# -- faults ----------------------------------------------------------------------------


def test_sigkill_one_of_two_servers_and_retrying_on_the_other_stores_each_send_once(
    tmp_path, start_server, pg_database
):
    user, customers = accounts(tmp_path, pg_database, customers=6)
    servers = [start_server(*serve_args(tmp_path, pg_database)) for _ in range(2)]
    acknowledged: dict[str, int] = {}
    stop = threading.Event()
    lock = threading.Lock()

    def keep_sending(number: int, customer: Account) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            key = f"{customer.id}-{n}"
            for server in (servers[number % 2], servers[(number + 1) % 2]):  # the other one on failure
                try:
                    status, body, _ = send(server, customer, user.id, key, client_msg_id=key, timeout=3)
                except OSError:
                    continue  # killed mid-request: the answer is lost, retry on the other
                if status == 200:
                    with lock:
                        assert acknowledged.setdefault(key, body["data"]["id"]) == body["data"]["id"]
                    break
            else:
                raise AssertionError(f"{key}: neither server answered")

    threads = [threading.Thread(target=keep_sending, args=(n, c)) for n, c in enumerate(customers)]
    for thread in threads:
        thread.start()
    time.sleep(random.Random(1203).uniform(0.8, 1.5))
    servers[0].proc.kill()
    time.sleep(1.5)
    stop.set()
    for thread in threads:
        thread.join(15)
    assert not any(thread.is_alive() for thread in threads)
    stored = {json.loads(content)["msg"]: [] for _, content in query(pg_database, "SELECT id, content FROM message")}
    for message_id, content in query(pg_database, "SELECT id, content FROM message"):
        stored[json.loads(content)["msg"]].append(message_id)
    assert len(acknowledged) > 100
    for key, message_id in acknowledged.items():
        assert stored.get(key) == [message_id], f"{key} acknowledged as {message_id}, stored as {stored.get(key)}"
    assert all(len(ids) == 1 for ids in stored.values()), "a send was stored twice"
    no_traceback(servers[1])


def test_postgres_restarting_under_held_requests_is_503_then_delivery_within_two_seconds(
    tmp_path, start_server, own_cluster
):
    database = own_cluster.new_database()
    user, (customer,) = accounts(tmp_path, database)
    a = start_server(*serve_args(tmp_path, database))
    b = start_server(*serve_args(tmp_path, database))
    received: list[dict] = []
    answers: list[int] = []
    stop = threading.Event()

    def poll_like_a_page() -> None:
        """A page's loop: getmsg from its cursor; an empty answer or a 503 means poll again."""
        last_id = 0
        while not stop.is_set():
            try:
                status, body = a.request("GET", f"{CUSTOMER}/chat/getmsg/0", customer, timeout=30,
                                         query={"u_id": user.id, "wait": 20, "last_id": last_id})
            except OSError:
                time.sleep(0.05)
                continue
            answers.append(status)
            if status == 200 and body["data"]["ret_data"]:
                received.extend(body["data"]["ret_data"])
                last_id = body["data"]["ret_data"][-1]["id"]
            elif status != 200:
                time.sleep(0.1)

    poller = threading.Thread(target=poll_like_a_page)
    poller.start()
    time.sleep(0.5)

    # 1. PostgreSQL goes away: sends are refused with 503 and Retry-After; nothing crashes.
    own_cluster.stop("fast")
    for server in (a, b):
        status, body, headers = send(server, user, customer.id, "不应保存", radar=True)
        assert status == 503 and body["code"] == 503, body
        assert headers.get("Retry-After") == "2" and "retry later" in body["msg"], (headers, body)
    assert a.proc.poll() is None and b.proc.poll() is None
    own_cluster.start()

    # 2. Back: a reply reaches the held (or re-polled) request within 2 s of its 200.
    def reply_reaches_page(msg: str) -> None:
        deadline = time.monotonic() + 10
        while True:  # the pools reconnect on their own; until then, 503 says try again
            status, body, _ = send(b, user, customer.id, msg, radar=True, client_msg_id=msg)
            if status == 200:
                break
            assert status == 503 and time.monotonic() < deadline, body
            time.sleep(0.1)
        committed = time.monotonic()
        while time.monotonic() - committed < WAKE_BOUND:
            if any(item["msg"] == msg for item in received):
                return
            time.sleep(0.01)
        raise AssertionError(f"{msg!r} not delivered within {WAKE_BOUND} s; got {[i['msg'] for i in received]}")

    reply_reaches_page("第一次恢复之后")

    # 3. The literal `pg_ctl restart -m fast`, with the request held across it.
    time.sleep(0.5)
    own_cluster.restart()
    reply_reaches_page("重启之后")
    stop.set()
    poller.join(30)

    assert [item["msg"] for item in received] == ["第一次恢复之后", "重启之后"]
    assert set(answers) <= {200, 503}, answers
    for server in (a, b):
        assert server.proc.poll() is None
        assert "Traceback" not in server.log(), server.log()
    assert "database listener reconnected" in a.log()
    assert query(database, "SELECT count(*) FROM message") == [(2,)]


def test_a_lost_listener_connection_reconnects_and_every_held_request_reads_again(
    tmp_path, start_server, pg_database
):
    user, (customer,) = accounts(tmp_path, pg_database)
    a = start_server(*serve_args(tmp_path, pg_database))
    b = start_server(*serve_args(tmp_path, pg_database))
    held = Background(a.customer_getmsg, customer, user.id, wait=20, last_id=0)
    time.sleep(0.5)
    # cut only the LISTEN connections (both servers'), then send at once: the doorbell may ring for nobody
    terminated = query(pg_database, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                    " WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()")
    assert len(terminated) == 2, terminated
    status, sent, _ = send(b, user, customer.id, "监听断开时发的", radar=True)
    assert status == 200, sent
    sent_at = time.monotonic()
    body = held.value(timeout=WAKE_BOUND + 1)
    assert [item["id"] for item in body["data"]["ret_data"]] == [sent["data"]["id"]], body
    assert held.finished_at - sent_at < WAKE_BOUND
    deadline = time.monotonic() + 5
    while "database listener reconnected" not in a.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "database listener reconnected" in a.log()
    no_traceback(a, b)


@pytest.mark.parametrize("command", [
    ["serve"], ["serve", "--processes", "2"], ["add-user", "--name", "x"], ["demo-accounts", "--users", "1",
    "--customers", "1", "--json", "a.json"],
], ids=["serve", "processes", "add-user", "demo-accounts"])
def test_postgres_down_at_start_is_one_clear_line_and_a_nonzero_exit(tmp_path, own_cluster, command):
    url = own_cluster.url()
    own_cluster.stop("fast")
    started = time.monotonic()
    result = run_cli(tmp_path, *command, "--db", url, env=clean_env())
    assert result.returncode == 1, result
    assert time.monotonic() - started < 10
    assert result.stderr.strip().count("\n") == 0, result.stderr  # one line
    assert f"cannot connect to {url}" in result.stderr and "refused" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_nginx_balances_two_servers_on_one_database_and_skips_a_dead_one(
    tmp_path, start_server, start_nginx, pg_database
):
    """deploy/nginx.conf with its second upstream line in use: held requests spread over
    both servers, a send through nginx wakes them all, and with one server killed the
    other carries every request."""
    import http.client
    from urllib.parse import urlencode

    from conftest import ROOT, sign

    user, customers = accounts(tmp_path, pg_database, customers=6)
    a = start_server(*serve_args(tmp_path, pg_database))
    b = start_server(*serve_args(tmp_path, pg_database))
    shipped = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "    # server 127.0.0.1:8001;" in shipped
    nginx = start_nginx(shipped.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{a.port};")
                        .replace("# server 127.0.0.1:8001;", f"server 127.0.0.1:{b.port};")
                        .replace("listen 80;", "listen 127.0.0.1:{{port}};"))

    def through(method: str, path: str, account: Account, params: dict, timeout: float = 30) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=timeout)
        try:
            url = f"{path}?{urlencode(sign(account))}"
            if method == "GET":
                conn.request("GET", f"{url}&{urlencode(params)}")
            else:
                conn.request("POST", url, body=urlencode(params),
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
            response = conn.getresponse()
            assert response.status == 200, response.status
            return json.loads(response.read())
        finally:
            conn.close()

    held = [Background(through, "GET", f"{CUSTOMER}/chat/getmsg/0", customer,
                       {"u_id": user.id, "wait": 20, "last_id": 0}) for customer in customers]
    time.sleep(0.7)
    assert all(request.finished_at is None for request in held)
    sent = {}
    for customer in customers:
        body = through("POST", f"{RADAR}/chat/send_msg/0", user,
                       {"customer_id": customer.id, "content": json.dumps(text(f"给{customer.id}"))})
        assert body["code"] == 200, body
        sent[customer.id] = body["data"]["id"]
    sent_at = time.monotonic()
    for customer, request in zip(customers, held, strict=True):
        body = request.value(timeout=WAKE_BOUND + 1)
        assert [item["id"] for item in body["data"]["ret_data"]] == [sent[customer.id]], body
        assert request.finished_at - sent_at < WAKE_BOUND
    assert "getmsg" in a.log() and "getmsg" in b.log()  # both servers held some (logged once answered)

    a.proc.kill()
    a.proc.wait(5)
    for customer in customers:  # every request now reaches b, sends and reads alike
        body = through("POST", f"{CUSTOMER}/chat/send_msg/0", customer,
                       {"u_id": user.id, "content": json.dumps(text("还在"))})
        assert body["code"] == 200, body
        body = through("GET", f"{CUSTOMER}/chat/getmsg/0", customer, {"u_id": user.id, "last_id": sent[customer.id]})
        assert [item["msg"] for item in body["data"]["ret_data"]] == ["还在"], body
    no_traceback(b)


def test_a_local_commit_never_overtakes_an_earlier_commit_of_another_process(tmp_path, start_server, pg_database):
    """A waiter on server A resumes from ``last_id``; B and A commit into its inbox at the
    same moment. Whatever order the two land in, the answer never carries A's message
    without B's earlier one: the client would resume past B's and never see it."""
    user, (customer,) = accounts(tmp_path, pg_database)
    a = start_server(*serve_args(tmp_path, pg_database))
    b = start_server(*serve_args(tmp_path, pg_database))
    last_id = 0
    skipped = []
    for trial in range(40):
        held = Background(a.radar_getmsg_after, user, last_id, wait=10)
        time.sleep(0.15)
        senders = [Background(send, server, customer, user.id, f"{trial}-{name}")
                   for name, server in (("b", b), ("a", a))]
        ids = sorted(sender.value(timeout=10)[1]["data"]["id"] for sender in senders)
        answered = [item["id"] for item in held.value(timeout=10)["data"]["ret_data"]]
        if answered and answered[0] != ids[0]:
            skipped.append((trial, ids, answered))
        last_id = ids[-1]
    assert not skipped, f"answers that skipped an earlier commit (trial, committed, answered): {skipped}"


@pytest.mark.gen_test(timeout=30)
async def test_a_commit_is_handed_to_local_waiters_only_after_every_earlier_commit_rang(pg_database):
    """Server B's listener is held inside a transaction (PostgreSQL delivers nothing to a
    session in one), so process A's doorbell for message 1 waits there. B then commits
    message 2 for the same inbox: B must not hand 2 to its waiter on its own, or the
    client would resume past 1 for good. Once the listener's transaction ends, the
    waiter is answered with 1 first (and resumes for 2); if it never ends (a connection
    gone silent), the waiter reads for itself after HAND_OFF_MAX_SECONDS: 1 and 2."""
    import asyncio

    from tornado.httpclient import AsyncHTTPClient
    from tornado.testing import bind_unused_port

    from conftest import Api
    from handlers import ApiSettings, ChatHTTPServer, make_app
    from storage import ChatStore

    a, b = await ChatStore.open(pg_database), await ChatStore.open(pg_database)
    sock, port = bind_unused_port()
    server = ChatHTTPServer(make_app(b, ApiSettings()))
    server.add_sockets([sock])
    try:
        user = Account(*await a.save_radar_user(None, username="王经理"))
        customer = Account(*await a.save_customer(None, username="客户"))
        api = Api(AsyncHTTPClient(), f"http://127.0.0.1:{port}")
        listener = b.database.listener._conn
        last_id = 0
        for listener_comes_back in (True, False):
            await listener.execute("BEGIN")
            held = asyncio.ensure_future(api.radar_getmsg(user, wait=10, last_id=last_id))
            while not len(b.waiters):
                await asyncio.sleep(0.01)
            first = await a.send(customer.id, user.id, 1, text("一"))
            second = await api.customer_send(customer, user.id, text("二"))
            assert second["code"] == 200, second
            await asyncio.sleep(0.3)
            assert not held.done(), held.result()
            if listener_comes_back:
                await listener.execute("COMMIT")
            body = await asyncio.wait_for(held, HAND_OFF_MAX_SECONDS + WAKE_BOUND)
            received = [item["id"] for item in body["data"]["ret_data"]]
            if received[-1] != second["data"]["id"]:  # the client resumes from what it received
                body = await api.radar_getmsg(user, wait=0, last_id=received[-1])
                received += [item["id"] for item in body["data"]["ret_data"]]
            assert received == [first.id, second["data"]["id"]], body
            if not listener_comes_back:
                await listener.execute("COMMIT")
            last_id = second["data"]["id"]
    finally:
        server.stop()
        await a.close()
        await b.close()
