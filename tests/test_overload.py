"""Hostile connections and overload, on the real server over real sockets.

Past the open-file limit (the server started with a low one), accepting pauses
instead of spinning on a traceback per loop turn, the connections it holds are
served, and it recovers by itself; a header trickled a line at a time is closed
at ``server.header_timeout``; connections that never become requests are
capped (``server.max_unfinished_connections``) and the oldest closed first;
bad values of the new settings stop the server at start, naming them.
"""
from __future__ import annotations

import http.client
import json
import re
import resource
import select
import socket
import threading
import time
from urllib.parse import urlencode

import pytest

from conftest import Account, sign
from live import CUSTOMER, Background, clean_env, cli_account, run_cli, serve_args

#: the open-file limit of the server under test: about 25 are taken at start, the rest are for connections
LOW_LIMIT = 200


def open_file_limit(limit: int):
    """A preexec_fn: the child's open-file limit, soft and hard (the server raises its soft one to the hard)."""
    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    return lower


def need_open_files(count: int) -> None:
    """This process opens ``count`` sockets: raise the soft limit, or skip where the hard one is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 100:
        if hard != resource.RLIM_INFINITY and hard < count + 100:
            pytest.skip(f"needs {count + 100} open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (count + 100, hard))


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def read_answer(sock: socket.socket, timeout: float) -> tuple[int, bytes] | None:
    """One HTTP answer (status, body) from a kept-alive socket; None if it closed or nothing came in time."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                length = re.search(rb"(?i)content-length: *(\d+)", data[:end])
                total = end + 4 + (int(length[1]) if length else 0)
                if len(data) >= total:
                    return int(data[9:12]), data[end + 4:total]
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
    except (TimeoutError, ConnectionError):
        return None


def ask(sock: socket.socket, method: str, path: str, body: bytes = b"", timeout: float = 5) -> tuple[int, bytes] | None:
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\n"
    if method == "POST":
        head += f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n"
    sock.sendall(head.encode() + b"\r\n" + body)
    return read_answer(sock, timeout)


def signed_send(sock: socket.socket, customer: Account, user: Account, msg: str,
                timeout: float = 5) -> tuple[int, bytes] | None:
    form = urlencode({"u_id": user.id, "content": json.dumps({"info_type": 1, "msg": msg})}).encode()
    return ask(sock, "POST", f"{CUSTOMER}/chat/send_msg/0?{urlencode(sign(customer))}", form, timeout)


def metric(scrape: bytes, name: str) -> float:
    match = re.search(rb"^" + re.escape(name.encode()) + rb" (\S+)$", scrape, re.M)
    assert match, name
    return float(match[1])


def answered_within(sockets: list[socket.socket], seconds: float) -> list[socket.socket]:
    """Of sockets that each sent one request, those answered before the answers stop coming for ``seconds``."""
    waiting = {sock.fileno(): sock for sock in sockets}
    poller = select.poll()
    for fd in waiting:
        poller.register(fd, select.POLLIN)
    answered = []
    while waiting:
        events = poller.poll(seconds * 1000)
        if not events:
            break
        for fd, _ in events:
            poller.unregister(fd)
            sock = waiting.pop(fd)
            if read_answer(sock, 2) is not None:
                answered.append(sock)
    return answered


def accounts(tmp_path, database: str) -> tuple[Account, Account]:
    return (cli_account(tmp_path, "add-user", "--db", database, "--name", "王经理"),
            cli_account(tmp_path, "add-customer", "--db", database, "--name", "小明"))


# -- past the open-file limit ----------------------------------------------------


@pytest.mark.parametrize("event_loop,processes", [("asyncio", 1), ("uvloop", 1), ("uvloop", 2)])
def test_past_the_open_file_limit_accepting_pauses_quietly_and_recovers(tmp_path, start_server, event_loop,
                                                                         processes, request):
    workers = processes
    database = request.getfixturevalue("pg_database") if processes > 1 else str(tmp_path / "chat.db")
    user, customer = accounts(tmp_path, database)
    extra = LOW_LIMIT * workers + 150
    need_open_files(extra + 50)
    server = start_server(*serve_args(tmp_path, database), "--processes", str(processes),
                          env=clean_env(LEIDA_SERVER_EVENT_LOOP=event_loop, LEIDA_LOG_ACCESS="false",
                                        LEIDA_LONGPOLL_MAX_WAITERS="50"),
                          preexec_fn=open_file_limit(LOW_LIMIT), wait=False).wait_started(workers=workers)
    assert f"open-file limit {LOW_LIMIT}," in server.log()
    started_log = server.log()
    # a first send on the one process opens what its store needs; later, no new descriptor is to be had
    probe = connect(server.port)
    assert ask(probe, "GET", "/healthz") is not None
    if processes == 1:
        assert signed_send(probe, customer, user, "before")[0] == 200
    metrics = connect(server.metrics_port)
    assert ask(metrics, "GET", "/metrics")[0] == 200

    flood = []
    for _ in range(extra):  # pages, each with its request at once (unfinished connections are another test's)
        flood.append(connect(server.port))
        flood[-1].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    held = answered_within(flood, 1.5)
    assert LOW_LIMIT // 2 < len(held) < LOW_LIMIT * workers, len(held)  # the rest wait in the backlog

    # the connections it holds are served: probes, sends, scrapes
    status, body = ask(held[0], "GET", "/readyz")
    assert status == 503 and b"out of file descriptors" in body, body
    if processes == 1:
        assert ask(probe, "GET", "/readyz")[0] == 503
        assert signed_send(probe, customer, user, "while out of descriptors")[0] == 200
    scrape = ask(metrics, "GET", "/metrics")[1]
    assert metric(scrape, "leida_accept_paused_total") >= 1
    assert metric(scrape, 'leida_open_connections{listener="public"}') >= LOW_LIMIT // 2

    # the extra sockets go; a new client connects and sends within 2 s
    keep = {held[0], probe}
    for sock in flood:
        if sock not in keep:
            sock.close()
    closed_at = time.monotonic()
    fresh = connect(server.port)
    status, body = signed_send(fresh, customer, user, "after", timeout=5)
    assert status == 200 and json.loads(body)["code"] == 200, body
    assert time.monotonic() - closed_at < 2.0

    # ready again once no accept has been refused for a few seconds, and it says so once
    deadline = time.monotonic() + 10
    while ask(held[0], "GET", "/readyz")[0] != 200:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.5)
    time.sleep(0.3)
    log = server.log()[len(started_log):]
    assert "Traceback" not in log and "Too many open files" in log, log
    noise = [line for line in log.splitlines() if "file descriptors" in line or "Too many open files" in line]
    assert 2 <= len(noise) <= 3 * workers, log  # when it began, at most one a minute meanwhile, when it ended
    assert len(log.splitlines()) <= 4 * workers, log
    for sock in (probe, metrics, fresh, held[0]):
        sock.close()


# -- slow headers ---------------------------------------------------------------


HEADER_TIMEOUT = 4.0


def test_a_trickled_header_is_closed_at_the_deadline_and_a_slow_whole_one_is_served(tmp_path, start_server):
    database = str(tmp_path / "chat.db")
    user, customer = accounts(tmp_path, database)
    server = start_server(*serve_args(tmp_path), env=clean_env(LEIDA_SERVER_HEADER_TIMEOUT=str(HEADER_TIMEOUT)))

    def trickle(sock: socket.socket, request_line: bytes) -> float:
        """One header line every 2 s, never the end; how long after its first byte the server hung up."""
        started = time.monotonic()
        sock.sendall(request_line)
        while time.monotonic() - started < HEADER_TIMEOUT + 6:
            readable, _, _ = select.select([sock], [], [], 2.0)
            if readable:
                assert sock.recv(65536) == b""  # closed without an answer
                return time.monotonic() - started
            try:
                sock.sendall(b"X-Line: %d\r\n" % int(time.monotonic()))
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - started
        return float("inf")

    def slow_but_whole() -> tuple[int, bytes] | None:
        """The whole header in 3 s (a line every 0.75 s), then answered."""
        sock = connect(server.port)
        path = f"{CUSTOMER}/chat/getmsg/0?{urlencode({**sign(customer), 'u_id': user.id, 'wait': 0})}"
        for line in (f"GET {path} HTTP/1.1\r\n", "Host: x\r\n", "User-Agent: 2G phone\r\n", "Accept: */*\r\n"):
            sock.sendall(line.encode())
            time.sleep(0.75)
        sock.sendall(b"\r\n")
        try:
            return read_answer(sock, 5)
        finally:
            sock.close()

    def kept_alive_then_trickled() -> tuple[float, float]:
        """Answered, then idle past the header timeout (the idle timeout is 120 s), then a trickled next header."""
        sock = connect(server.port)
        assert ask(sock, "GET", "/healthz")[0] == 200
        time.sleep(HEADER_TIMEOUT + 1)
        assert ask(sock, "GET", "/healthz")[0] == 200  # still open: idle is not a slow header
        idle_from = time.monotonic()
        closed_after = trickle(sock, b"GET /healthz HTTP/1.1\r\n")
        return closed_after, time.monotonic() - idle_from

    trickled = Background(lambda: trickle(connect(server.port), b"POST /zhugeleida/gongzhonghao/chat/send_msg/0 HTTP/1.1\r\n"))
    slow = Background(slow_but_whole)
    later = Background(kept_alive_then_trickled)
    held = Background(server.customer_getmsg, customer, user.id, wait=HEADER_TIMEOUT + 2)  # its header is complete

    assert HEADER_TIMEOUT - 0.5 < trickled.value(timeout=HEADER_TIMEOUT + 10) < HEADER_TIMEOUT + 2.5
    status, body = slow.value(timeout=10)
    assert status == 200 and json.loads(body)["code"] == 200, body
    closed_after, _ = later.value(timeout=3 * HEADER_TIMEOUT + 10)
    assert HEADER_TIMEOUT - 0.5 < closed_after < HEADER_TIMEOUT + 2.5  # from the next header's first byte
    answer = held.value(timeout=HEADER_TIMEOUT + 10)
    assert answer["code"] == 200 and answer["data"]["ret_data"] == []
    log = server.log()
    assert "Traceback" not in log
    assert len(re.findall(r"did not arrive whole|more connections .* whose request header", log)) <= 2, log


# -- connections that never become requests --------------------------------------


def test_unfinished_connections_past_the_cap_close_the_oldest_and_sends_go_on(tmp_path, start_server):
    attackers, cap = 3000, 1000
    need_open_files(attackers + 200)
    database = str(tmp_path / "chat.db")
    user, customer = accounts(tmp_path, database)
    server = start_server(*serve_args(tmp_path), env=clean_env(LEIDA_SERVER_MAX_UNFINISHED_CONNECTIONS=str(cap),
                                                                LEIDA_LOG_ACCESS="false"))
    assert f"at most {cap} unfinished connections" in server.log()
    sent: list[int] = []
    stop = threading.Event()

    def normal_client() -> None:
        """Signed sends, each on a new connection, all through the flood."""
        while not stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            try:
                form = urlencode({"u_id": user.id, "content": json.dumps({"info_type": 1, "msg": "正常"})})
                conn.request("POST", f"{CUSTOMER}/chat/send_msg/0?{urlencode(sign(customer))}", body=form,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
                sent.append(json.loads(conn.getresponse().read())["code"])
            finally:
                conn.close()
            time.sleep(0.05)

    client = threading.Thread(target=normal_client, daemon=True)
    client.start()
    flood = []
    for n in range(attackers):  # half never send a byte, half begin a header and stop
        sock = connect(server.port)
        if n % 2:
            sock.sendall(b"POST /zhugeleida/gongzhonghao/chat/send_msg/0 HTTP/1.1\r\n")
        flood.append(sock)
    time.sleep(1.5)  # the last ones are closed too once a second old (handlers/connections.py, UNFINISHED_GRACE)
    stop.set()
    client.join(timeout=15)
    assert sent and set(sent) == {200}, sent

    scrape = urlopen_metrics(server.metrics_port)
    assert metric(scrape, "leida_unfinished_connections") <= cap
    assert metric(scrape, 'leida_open_connections{listener="public"}') <= cap + 5
    assert metric(scrape, 'leida_connections_closed_total{reason="unfinished_cap"}') >= attackers - cap
    # the oldest went first: the first ones opened are closed, the last ones still open
    assert sum(closed_by_server(sock) for sock in flood[:500]) == 500
    assert sum(closed_by_server(sock) for sock in flood[-500:]) <= 50
    for sock in flood:
        sock.close()
    log = server.log()
    assert "Traceback" not in log
    assert len(re.findall(r"unfinished connections|have not sent a complete request header", log)) <= 3, log


def urlopen_metrics(port: int) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read()
    finally:
        conn.close()


def closed_by_server(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


# -- settings ---------------------------------------------------------------------


@pytest.mark.parametrize("name,value", [("LEIDA_SERVER_HEADER_TIMEOUT", "0"), ("LEIDA_SERVER_HEADER_TIMEOUT", "soon"),
                                        ("LEIDA_SERVER_MAX_UNFINISHED_CONNECTIONS", "-1"),
                                        ("LEIDA_SERVER_MAX_UNFINISHED_CONNECTIONS", "1.5")])
def test_a_bad_value_of_the_new_settings_stops_the_server_naming_it(tmp_path, name, value):
    result = run_cli(tmp_path, *serve_args(tmp_path), env=clean_env(**{name: value}))
    key = "server." + name.removeprefix("LEIDA_SERVER_").lower()
    assert result.returncode == 2 and "configuration error" in result.stderr, result.stderr
    assert name in result.stderr or key in result.stderr, result.stderr


@pytest.mark.parametrize("toml,key", [("header_timeout = -5", "server.header_timeout"),
                                      ("max_unfinished_connections = -10", "server.max_unfinished_connections")])
def test_a_bad_value_in_the_config_file_stops_the_server_naming_it(tmp_path, toml, key):
    (tmp_path / "bad.toml").write_text(f"[server]\n{toml}\n")
    result = run_cli(tmp_path, "serve", "--config", str(tmp_path / "bad.toml"))
    assert result.returncode == 2 and key in result.stderr, result.stderr
