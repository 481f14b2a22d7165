"""Limits with clear answers, and signatures that cannot be replayed or guessed cheaply."""
from __future__ import annotations

import asyncio
import inspect
import socket
import time
from urllib.parse import urlencode

import pytest
import ujson

from conftest import sign, text
from handlers import ApiSettings

TOKEN_REJECTED = {"code": 400, "msg": "token异常", "data": {}}
QUERY_NUM = "/zhugeleida/gongzhonghao/chat/query_num/0"
GETMSG = "/zhugeleida/gongzhonghao/chat/getmsg/0"


class TestPerAccountWaiters:
    @pytest.fixture
    def api_settings(self):
        return ApiSettings(max_waiters_per_account=2)

    @pytest.mark.gen_test(timeout=20)
    async def test_past_the_limit_the_oldest_held_request_is_answered_empty(self, api, store, customer, radar_user):
        first = asyncio.ensure_future(api.customer_getmsg(customer, radar_user.id, wait=10, last_id=0))
        await asyncio.sleep(0.2)
        second = asyncio.ensure_future(api.customer_getmsg(customer, radar_user.id, wait=10, last_id=0))
        await asyncio.sleep(0.2)
        assert not first.done() and not second.done()
        started = time.monotonic()
        third = asyncio.ensure_future(api.customer_getmsg(customer, radar_user.id, wait=10, last_id=0))
        body = await asyncio.wait_for(first, 2)
        assert time.monotonic() - started < 1
        assert body == {"code": 200, "msg": "没有得到实时聊天信息", "data": {"ret_data": [], "data_count": 0}}
        assert not second.done() and not third.done()
        assert len(store.waiters) == 2
        await api.radar_send(radar_user, customer.id, text("to both tabs"))
        for tab in (second, third):
            assert [item["msg"] for item in (await tab)["data"]["ret_data"]] == ["to both tabs"]

    @pytest.mark.gen_test(timeout=20)
    async def test_other_accounts_are_not_affected(self, api, customer, other_customer, radar_user):
        mine = [asyncio.ensure_future(api.customer_getmsg(customer, radar_user.id, wait=3)) for _ in range(2)]
        theirs = asyncio.ensure_future(api.customer_getmsg(other_customer, radar_user.id, wait=3))
        await asyncio.sleep(0.3)
        assert not any(t.done() for t in (*mine, theirs))
        await api.radar_send(radar_user, other_customer.id, text("only theirs"))
        assert [i["msg"] for i in (await theirs)["data"]["ret_data"]] == ["only theirs"]
        assert not any(t.done() for t in mine)
        for task in mine:
            task.cancel()


class TestShortWindow:
    @pytest.fixture
    def api_settings(self):
        return ApiSettings(max_skew_seconds=1)

    @pytest.mark.gen_test(timeout=20)
    async def test_a_url_copied_from_a_log_stops_working_after_the_window(self, api, customer, radar_user):
        url = api.url(QUERY_NUM, customer, {"u_id": radar_user.id})
        assert ujson.loads((await api.raw("GET", url)).body)["code"] == 200
        await asyncio.sleep(1.3)
        assert ujson.loads((await api.raw("GET", url)).body) == TOKEN_REJECTED


@pytest.mark.gen_test
async def test_rejected_signatures_cost_no_database_write(api, store, customer, radar_user):
    from conftest import Account

    await api.customer_send(customer, radar_user.id, text("one real send"))
    commits = store.commits
    forged = Account(customer.id, "wrong-token")
    for _ in range(20):
        assert await api.customer_send(forged, radar_user.id, text("forged")) == TOKEN_REJECTED
        assert await api.customer_getmsg(forged, radar_user.id) == TOKEN_REJECTED
        assert await api.customer_history(forged, radar_user.id) == TOKEN_REJECTED
    await asyncio.sleep(0.1)  # nothing lazy left behind either
    assert store.commits == commits


def test_the_digest_is_compared_in_constant_time():
    from handlers.base import SignedHandler

    source = inspect.getsource(SignedHandler.verify_signature)
    assert "hmac.compare_digest(" in source and "==" not in source.split("compare_digest")[0].split("expected =")[1]


@pytest.mark.gen_test
@pytest.mark.parametrize("field,value", [
    ("u_id", "1' OR '1'='1"), ("u_id", "1\x00"), ("u_id", "%00"), ("u_id", "1e3"), ("u_id", "-9223372036854775809"),
    ("u_id", "９"), ("wait", "nan"), ("wait", "inf"), ("last_id", "99999999999999999999"), ("last_id", "0x10"),
])
async def test_hostile_query_values_are_402s(api, customer, radar_user, field, value):
    query = {"u_id": radar_user.id, "wait": 0, field: value}
    body = await api.get(GETMSG, customer, **query)
    assert body["code"] == 402 and field in body["data"], body


@pytest.mark.gen_test
async def test_hostile_bodies_never_500(api, customer, radar_user):
    url = api.url("/zhugeleida/gongzhonghao/chat/send_msg/0", customer)
    attempts = [
        (b"u_id=1&content=" + b"%22" * 100, "application/x-www-form-urlencoded"),
        (b"\xff\xfe\x00garbage", "application/x-www-form-urlencoded"),
        (b"--x\r\nnot really multipart", "multipart/form-data; boundary=x"),
        (b"u_id=1&content={}", "text/plain"),
        (ujson.dumps({"u_id": radar_user.id, "content": "{}"}).encode(), "application/json"),
        (b"u_id=" + str(radar_user.id).encode() + b"&content=%7B%22info_type%22%3A1%2C%22msg%22%3A%22a%5Cu0000b%22%7D",
         "application/x-www-form-urlencoded"),
    ]
    for body, content_type in attempts:
        response = await api.raw("POST", url, body, headers={"Content-Type": content_type})
        assert response.code == 200, (response.code, body)
        assert ujson.loads(response.body)["code"] in (200, 402), (body, response.body)
    # the NUL inside the JSON string is stored and returned as it was sent
    item = (await api.customer_getmsg(customer, radar_user.id))["data"]["ret_data"][-1]
    assert item["msg"] == "a\x00b"
    assert (await api.customer_send(customer, radar_user.id, text("still serving")))["code"] == 200


def raw_exchange(port: int, data: bytes, read_timeout: float) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except TimeoutError:
            chunks.append(b"<timeout>")
        return b"".join(chunks)


def test_slow_bodies_and_huge_headers_are_cut_off(tmp_path, start_server):
    from live import clean_env, cli_account, serve_args

    customer = cli_account(tmp_path, "add-customer", "--db", str(tmp_path / "chat.db"), "--name", "小明")
    server = start_server(*serve_args(tmp_path), env=clean_env(LEIDA_SERVER_BODY_TIMEOUT="0.5",
                                                                LEIDA_SERVER_MAX_HEADER_BYTES="4096"))
    # signed, so that the server accepts the headers and waits for the rest of the body
    path = f"/zhugeleida/gongzhonghao/chat/send_msg/0?{urlencode(sign(customer))}".encode()
    started = time.monotonic()
    stalled = raw_exchange(server.port, b"POST " + path + b" HTTP/1.1\r\n"
                                        b"Host: x\r\nContent-Length: 100\r\n\r\nu_id=1", read_timeout=5)
    assert stalled == b"" and 0.4 < time.monotonic() - started < 3  # closed by the server, no answer
    huge = raw_exchange(server.port, b"GET /zhugeleida/gongzhonghao/chat HTTP/1.1\r\nHost: x\r\nX-Big: "
                        + b"a" * 10000 + b"\r\n\r\n", read_timeout=5)
    assert b"<timeout>" not in huge and not huge.startswith(b"HTTP/1.1 200")
    status, body = server.request("GET", "/zhugeleida/gongzhonghao/chat/query_num/0")
    assert body["code"] == 400  # and it goes on serving


def test_idle_and_slow_connections_are_closed_but_held_requests_are_not(tmp_path, start_server):
    from live import clean_env, cli_account, serve_args

    db = str(tmp_path / "chat.db")
    user = cli_account(tmp_path, "add-user", "--db", db, "--name", "王经理")
    customer = cli_account(tmp_path, "add-customer", "--db", db, "--name", "小明")
    server = start_server(*serve_args(tmp_path), env=clean_env(LEIDA_SERVER_IDLE_CONNECTION_TIMEOUT="0.5",
                                                                LEIDA_SERVER_HEADER_TIMEOUT="0.5"))

    def closed_within(data: bytes) -> bytes:
        started = time.monotonic()
        answer = raw_exchange(server.port, data, read_timeout=5)
        assert b"<timeout>" not in answer and time.monotonic() - started < 3  # closed by the server
        return answer

    assert closed_within(b"") == b""                                 # connected, never sent a byte
    assert closed_within(b"GET /zhugeleida/gongzhonghao/chat HTTP/1.1\r\nHost: x\r\n") == b""  # headers never end
    # a keep-alive connection is answered, then closed once it has been idle for the timeout
    answer = closed_within(b"GET /zhugeleida/gongzhonghao/chat/query_num/0 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200") and b'"code":400' in answer
    # a held getmsg is the server's own wait: it lasts its full wait, far past the idle timeout
    started = time.monotonic()
    body = server.customer_getmsg(customer, user.id, wait=2)
    assert body["code"] == 200 and body["data"]["ret_data"] == []
    assert time.monotonic() - started >= 1.9


async def settles(condition, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


@pytest.mark.gen_test(timeout=15)
async def test_connection_deadlines_end_with_their_connection_and_skip_held_requests(
    http_server, http_port, api, store, customer, radar_user
):
    # an idle connection has its deadline; hanging up ends it, not the idle timeout (120 s)
    _, writer = await asyncio.open_connection("127.0.0.1", http_port)
    assert await settles(lambda: http_server.pending_deadlines == 1)
    writer.close()
    assert await settles(lambda: http_server.pending_deadlines == 0)
    # a held getmsg has none: its headers are in and its wait has its own timer
    held = asyncio.ensure_future(api.customer_getmsg(customer, radar_user.id, wait=5))
    assert await settles(lambda: len(store.waiters) == 1)
    assert http_server.pending_deadlines == 0 and not held.done()
    assert (await api.customer_send(customer, radar_user.id, text("到了")))["code"] == 200
    assert [item["msg"] for item in (await held)["data"]["ret_data"]] == ["到了"]
