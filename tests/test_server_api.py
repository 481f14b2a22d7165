"""The server API (server_api/) over real HTTP, on its own listener, on both backends.

The CRM's calls go to the server-API app on a port of its own; the chat's
pages are the public app's (the ``api`` fixture), on the same store, so that
what a call does is seen the way a page sees it: a tip in getmsg, a disabled
account refused as with a bad signature, a rotated token no longer signing.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
from media_files import jpeg, multipart
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from conftest import Account, text
from handlers import ApiSettings
from server_api import make_server_api_app, parse_keys
from server_api.base import API_OFF

SECRET = "crm-secret-7f3a9c2e51d04b88"
OTHER_SECRET = "import-job-secret-0a1b2c3d4e"
KEYS = f"crm:{SECRET},import:{OTHER_SECRET}"
PROBLEM = "application/problem+json"
MSG_MAX_CHARS = ApiSettings().msg_max_chars
ERASED = {"messages", "conversations", "read_positions", "idempotency_keys", "unread_watches", "webhook_events",
          "attachments", "files", "accounts"}


@dataclass
class Answer:
    status: int
    headers: Any
    body: Any
    raw: bytes

    @property
    def problem(self) -> dict[str, Any]:
        """The problem details, checked for their RFC 9457 shape."""
        assert self.headers["Content-Type"] == PROBLEM, (self.status, self.raw[:300])
        assert {"type", "title", "status", "detail"} <= set(self.body), self.body
        assert self.body["status"] == self.status and self.body["type"] == "about:blank"
        return self.body

    def errors(self) -> set[tuple[Any, str]]:
        """(row, field) of every invalid field named."""
        return {(error.get("row"), error["field"]) for error in self.problem["errors"]}


class Crm:
    """What the CRM does: JSON calls with a bearer key (``key=None``: no Authorization header)."""

    def __init__(self, http_client: Any, base_url: str) -> None:
        self.http = http_client
        self.base_url = base_url

    async def call(self, method: str, path: str, body: Any = None, *, key: str | None = SECRET,
                   headers: dict[str, str] | None = None, raw: bytes | None = None, timeout: float = 60) -> Answer:
        sent = dict(headers or {})
        if key is not None:
            sent["Authorization"] = f"Bearer {key}"
        data = raw if raw is not None else None if body is None else as_json(body)
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        if data is None and method in ("POST", "PUT"):
            data = b""
        response = await self.http.fetch(self.base_url + path, method=method, body=data, headers=sent,
                                         raise_error=False, request_timeout=timeout)
        parsed = json.loads(response.body) if response.body else None
        return Answer(response.code, response.headers, parsed, response.body)

    async def ok(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        answer = await self.call(method, path, body, **kwargs)
        assert answer.status == 200, (answer.status, answer.body)
        assert answer.headers["Content-Type"].startswith("application/json")
        return answer.body


def as_json(body: Any) -> bytes:
    """UTF-8 JSON, as a CRM sends it; a lone surrogate (not UTF-8) goes as a \\u escape, as JSON allows."""
    try:
        return json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return json.dumps(body).encode()


def serve_api(io_loop, store, media, keys: str):
    app = make_server_api_app(store, media, parse_keys(keys), msg_max_chars=MSG_MAX_CHARS)
    sock, port = bind_unused_port()
    server = HTTPServer(app)
    server.add_sockets([sock])
    return server, f"http://127.0.0.1:{port}"


@pytest.fixture
def crm(io_loop, store, media, http_client):
    server, base = serve_api(io_loop, store, media, KEYS)
    yield Crm(http_client, base)
    server.stop()
    io_loop.run_sync(server.close_all_connections)


@pytest.fixture
def crm_off(io_loop, store, media, http_client):
    """The listener with no keys configured: the API is off."""
    server, base = serve_api(io_loop, store, media, "")
    yield Crm(http_client, base)
    server.stop()
    io_loop.run_sync(server.close_all_connections)


async def held(coroutine):
    """Start a getmsg and give the server time to hold it."""
    task = asyncio.ensure_future(coroutine)
    await asyncio.sleep(0.3)
    assert not task.done(), "the request was answered instead of held"
    return task


async def rows(store, sql: str, *params: Any) -> int:
    """A count read straight from the database (``?`` placeholders on both backends)."""
    (row,) = await store.database.fetch(sql, params)
    return row[0]


# -- keys ------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_no_key_is_401_with_www_authenticate(crm, customer):
    answer = await crm.call("GET", f"/api/v1/customers/{customer.id}", key=None)
    assert answer.status == 401 and answer.problem["title"] == "Unauthorized"
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert "username" not in answer.body


@pytest.mark.gen_test
@pytest.mark.parametrize("presented", [
    "wrong", "",
    SECRET[:-1] + ("0" if SECRET[-1] != "0" else "1"),  # the right length, the last byte differing
    SECRET + "x", SECRET.upper(), f"crm:{SECRET}",
])
async def test_a_wrong_key_is_401(crm, customer, presented):
    answer = await crm.call("GET", f"/api/v1/customers/{customer.id}", key=presented)
    assert answer.status == 401 and answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert answer.problem["status"] == 401


@pytest.mark.gen_test
async def test_other_schemes_are_401(crm, customer):
    for header in (f"Basic {SECRET}", SECRET, f"Token {SECRET}"):
        answer = await crm.call("GET", f"/api/v1/customers/{customer.id}", key=None, headers={"Authorization": header})
        assert answer.status == 401, header


@pytest.mark.gen_test
async def test_every_configured_key_works(crm, customer):
    for key in (SECRET, OTHER_SECRET):
        assert (await crm.ok("GET", f"/api/v1/customers/{customer.id}", key=key))["id"] == customer.id
    lower_scheme = await crm.call("GET", f"/api/v1/customers/{customer.id}", key=None,
                                  headers={"Authorization": f"bearer {SECRET}"})
    assert lower_scheme.status == 200


@pytest.mark.gen_test
@pytest.mark.parametrize("name", ["key", "api_key", "access_token", "token", "API_KEY"])
async def test_a_key_in_the_query_string_is_refused_and_never_logged(crm, customer, caplog, name):
    caplog.set_level(logging.DEBUG)
    for key in (SECRET, None):  # with or without the header as well
        answer = await crm.call("GET", f"/api/v1/customers/{customer.id}?{name}={SECRET}", key=key)
        assert answer.status == 400
        assert "Authorization header" in answer.problem["detail"]
    assert SECRET not in caplog.text
    assert f"{name}=***" in caplog.text  # the access line is there, redacted


@pytest.mark.gen_test
async def test_no_keys_configured_is_404_on_every_path(crm_off, customer):
    for method, path in (("GET", f"/api/v1/customers/{customer.id}"), ("GET", "/api/v1/openapi.json"),
                         ("POST", "/api/v1/tips"), ("DELETE", f"/api/v1/customers/{customer.id}")):
        answer = await crm_off.call(method, path, {} if method == "POST" else None)
        assert answer.status == 404, path
        assert answer.problem["detail"] == API_OFF == "the server API is off: set server_api.keys"


@pytest.mark.gen_test
async def test_the_public_port_never_routes_the_server_api(api, crm, customer):
    response = await api.raw("GET", f"{api.base_url}/api/v1/customers/{customer.id}",
                             headers={"Authorization": f"Bearer {SECRET}"})
    assert response.code == 404
    assert json.loads(response.body) == {"code": 404, "msg": "Not Found", "data": {}}


@pytest.mark.gen_test
async def test_the_document_is_served_without_a_key(crm):
    from server_api import DOCUMENT_PATH

    answer = await crm.call("GET", "/api/v1/openapi.json", key=None)
    assert answer.status == 200 and answer.raw == DOCUMENT_PATH.read_bytes()


@pytest.mark.gen_test
async def test_unknown_routes_and_methods_are_problems(crm, radar_user):
    assert (await crm.call("GET", "/api/v1/nothing", key=None)).status == 401  # no routes told without a key
    assert (await crm.call("GET", "/api/v1/nothing")).problem["status"] == 404
    assert (await crm.call("DELETE", f"/api/v1/radar_users/{radar_user.id}")).problem["status"] == 405
    assert (await crm.call("PATCH", f"/api/v1/radar_users/{radar_user.id}", {})).problem["status"] == 405
    assert (await crm.call("GET", "/api/v1/customers/bulk")).problem["status"] == 405


# -- the audit line --------------------------------------------------------------------


@pytest.mark.gen_test
async def test_every_call_is_audited_without_secrets(crm, customer, radar_user, caplog):
    caplog.set_level(logging.INFO, logger="leida_chat.audit")
    made = await crm.ok("PUT", "/api/v1/customers/9001?with_token=1",
                        {"username": "新客户", "token": "customer-token-not-for-logs"})
    rotated = await crm.ok("POST", f"/api/v1/radar_users/{radar_user.id}/token", key=OTHER_SECRET)
    await crm.ok("POST", "/api/v1/tips", {"customer_id": customer.id, "user_id": radar_user.id,
                                          "text": "订单 ORDER-SECRET-TEXT 已发货"})
    await crm.ok("POST", "/api/v1/customers/bulk", {"customers": [{"id": n, "username": f"c{n}"} for n in (7, 8, 9, 12)]})
    await crm.call("GET", f"/api/v1/customers/{customer.id}", key="not-a-key")
    lines = [record.getMessage() for record in caplog.records if record.name == "leida_chat.audit"]
    assert len(lines) == 5, lines
    assert lines[0] == "key=crm op=customer.put customer_id=9001 fields=2 status=200"
    assert lines[1] == f"key=import op=radar_user.token radar_user_id={radar_user.id} status=200"
    assert lines[2].startswith(f"key=crm op=tip.post customer_id={customer.id} user_id={radar_user.id} message_id=")
    assert lines[3] == "key=crm op=customers.bulk ids=7-9,12 rows=4 status=200"
    assert lines[4] == "key=- op=customer.get status=401"
    for secret in (SECRET, OTHER_SECRET, made["token"], rotated["token"], "ORDER-SECRET-TEXT", "not-a-key"):
        assert secret not in caplog.text


# -- one account ---------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_put_creates_then_updates_and_is_idempotent(crm, api):
    body = {"username": "张三", "headimgurl": "https://wx.qlogo.cn/z/132"}
    first = await crm.call("PUT", "/api/v1/customers/501", body)
    second = await crm.call("PUT", "/api/v1/customers/501", body)
    assert first.status == second.status == 200 and first.body == second.body
    assert first.body == {"id": 501, "username": "张三", "headimgurl": "https://wx.qlogo.cn/z/132", "disabled": False}
    with_token = await crm.ok("GET", "/api/v1/customers/501?with_token=1")
    assert set(with_token) == {"id", "username", "headimgurl", "disabled", "token"}
    # an update sets only what it names, and the account signs chat requests with its token
    updated = await crm.ok("PUT", "/api/v1/customers/501?with_token=1", {"id": 501, "username": "张三丰"})
    assert updated["headimgurl"] == "https://wx.qlogo.cn/z/132" and updated["token"] == with_token["token"]
    user = await crm.ok("PUT", "/api/v1/radar_users/77?with_token=1", {
        "username": "王经理", "avatar": "https://img.example/a.png", "mingpian_avatar": "", "mingpian_phone": "18932674288",
        "wechat": "wx_wang", "wechat_phone": "18866554433", "token": "radar-token-given-by-the-crm"})
    assert user == {"id": 77, "username": "王经理", "avatar": "https://img.example/a.png", "mingpian_avatar": "",
                    "mingpian_phone": "18932674288", "wechat": "wx_wang", "wechat_phone": "18866554433",
                    "disabled": False, "token": "radar-token-given-by-the-crm"}
    sent = await api.customer_send(Account(501, with_token["token"]), 77, text("你好"))
    assert sent["code"] == 200
    assert (await api.radar_unread(Account(77, "radar-token-given-by-the-crm"))) == 1


@pytest.mark.gen_test
@pytest.mark.parametrize("body, field", [
    ({}, "username"),                                   # a new account needs a name (storage says so)
    ({"username": ""}, "username"),
    ({"username": "   "}, "username"),
    ({"username": 5}, "username"),
    ({"username": None}, "username"),
    ({"username": "x" * 129}, "username"),
    ({"username": "a\x00b"}, "username"),
    ({"username": "\ud800"}, "username"),
    ({"username": "x", "headimgurl": "javascript:alert(1)"}, "headimgurl"),
    ({"username": "x", "headimgurl": "https://x/" + "y" * 2048}, "headimgurl"),
    ({"username": "x", "token": " spaced "}, "token"),
    ({"username": "x", "avatar": "https://x/a.png"}, "avatar"),  # a radar user's field
    ({"username": "x", "id": 7}, "id"),                 # not the path's id
])
async def test_put_with_a_bad_field_is_422_naming_it_and_writes_nothing(crm, store, body, field):
    answer = await crm.call("PUT", "/api/v1/customers/601", body)
    assert answer.status == 422, answer.body
    assert answer.errors() == {(None, field)}
    assert await store.account("customer", 601) is None


@pytest.mark.gen_test
async def test_bodies_that_are_not_json_objects(crm):
    not_json = await crm.call("PUT", "/api/v1/customers/1", raw=b"{username: 1}")
    assert not_json.status == 400 and not_json.errors() == {(None, "body")}
    nan = await crm.call("PUT", "/api/v1/customers/1", raw=b'{"username": NaN}')
    assert nan.status == 400
    for raw in (b"[]", b'"x"', b"3"):
        answer = await crm.call("PUT", "/api/v1/customers/1", raw=raw)
        assert answer.status == 422 and answer.errors() == {(None, "body")}, raw
    deep = await crm.call("POST", "/api/v1/tips", raw=b"[" * 100_000 + b"]" * 100_000)
    assert deep.status == 400


@pytest.mark.gen_test
@pytest.mark.parametrize("raw_id", ["abc", "0", "-1", "9223372036854775808", "1.5"])
async def test_a_bad_id_in_the_path_is_422_naming_it(crm, raw_id):
    answer = await crm.call("GET", f"/api/v1/customers/{raw_id}")
    assert answer.status == 422 and answer.errors() == {(None, "id")}


@pytest.mark.gen_test
async def test_nonexistent_ids_are_404(crm):
    for kind in ("customers", "radar_users"):
        for method, path in (("GET", ""), ("POST", "/token"), ("POST", "/disable"), ("POST", "/enable")):
            answer = await crm.call(method, f"/api/v1/{kind}/424242{path}")
            assert answer.status == 404, (kind, path)
            assert "424242" in answer.problem["detail"]
    assert (await crm.call("GET", "/api/v1/customers/424242/export")).problem["status"] == 404


# -- bulk ----------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_a_bulk_of_1000_is_one_call(crm, store):
    rows_sent = [{"id": 5000 - n, "username": f"客户{n}", "headimgurl": f"https://wx.qlogo.cn/{n}/132"}
                 for n in range(1000)]
    answer = await crm.ok("POST", "/api/v1/customers/bulk", {"customers": rows_sent})
    assert [row["id"] for row in answer["customers"]] == [row["id"] for row in rows_sent]  # in row order
    assert answer["customers"][999] == {"id": 4001, "username": "客户999", "headimgurl": "https://wx.qlogo.cn/999/132",
                                        "disabled": False}
    assert await rows(store, "SELECT COUNT(*) FROM customer WHERE id BETWEEN ? AND ?", 4001, 5000) == 1000
    # the same rows again are updates, in one call too
    again = await crm.ok("POST", "/api/v1/customers/bulk", {"customers": [{"id": row["id"], "username": "改名"}
                                                                          for row in rows_sent]})
    assert {row["username"] for row in again["customers"]} == {"改名"}


@pytest.mark.gen_test(timeout=60)
async def test_a_bulk_of_1001_is_422_and_writes_nothing(crm, store):
    answer = await crm.call("POST", "/api/v1/radar_users/bulk",
                            {"radar_users": [{"id": n, "username": f"u{n}"} for n in range(1, 1002)]})
    assert answer.status == 422 and answer.errors() == {(None, "radar_users")}
    assert "1001" in answer.problem["errors"][0]["message"]
    assert await rows(store, "SELECT COUNT(*) FROM radar_user", ) == 0
    empty = await crm.call("POST", "/api/v1/radar_users/bulk", {"radar_users": []})
    assert empty.status == 422 and empty.errors() == {(None, "radar_users")}
    wrong_member = await crm.call("POST", "/api/v1/radar_users/bulk", {"customers": [{"id": 1, "username": "x"}]})
    assert wrong_member.status == 422 and (None, "customers") in wrong_member.errors()


BAD_ROWS = [
    ({"id": 3, "username": 5}, "username"),                      # a wrong type
    ({"id": 3, "username": "x", "colour": "red"}, "colour"),     # an unknown field
    ({"username": "x"}, "id"),                                   # no id
    ({"id": "3", "username": "x"}, "id"),
    ({"id": True, "username": "x"}, "id"),
    ({"id": 3}, "username"),                                     # a new account without a name (storage knows)
    ({"id": 3, "username": "x" * 129}, "username"),              # over-long
    ({"id": 3, "username": "x", "headimgurl": "h" * 2049}, "headimgurl"),
    ({"id": 1, "username": "again"}, "id"),                      # row 0's id again
    ("not a row", "row"),
]


@pytest.mark.gen_test
@pytest.mark.parametrize("bad, field", BAD_ROWS)
async def test_a_bulk_with_one_bad_row_writes_nothing_and_names_row_and_field(crm, store, bad, field):
    await crm.ok("PUT", "/api/v1/customers/1", {"username": "原名"})
    before = await crm.ok("GET", "/api/v1/customers/1?with_token=1")
    answer = await crm.call("POST", "/api/v1/customers/bulk", {"customers": [
        {"id": 1, "username": "新名", "token": "a-new-token-for-one"}, {"id": 2, "username": "新客户"}, bad,
        {"id": 4, "username": "也是新的"}]})
    assert answer.status == 422, answer.body
    assert answer.errors() == {(2, field)}
    assert "nothing was written" in answer.problem["detail"]
    assert await crm.ok("GET", "/api/v1/customers/1?with_token=1") == before
    for absent in (2, 3, 4):
        assert await store.account("customer", absent) is None


@pytest.mark.gen_test
async def test_every_bad_row_is_named(crm):
    answer = await crm.call("POST", "/api/v1/radar_users/bulk", {"radar_users": [
        {"id": 1, "username": "ok"}, {"id": 2, "wechat": 1}, {"id": 3, "username": "x", "headimgurl": "h"}]})
    assert answer.status == 422
    assert answer.errors() == {(1, "wechat"), (2, "headimgurl")}


# -- tokens, disabling ---------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=20)
async def test_a_rotated_token_refuses_the_old_one_and_answers_held_requests(crm, api, customer, radar_user):
    hold = await held(api.customer_getmsg(customer, radar_user.id, wait=10))
    started = time.monotonic()
    rotated = await crm.ok("POST", f"/api/v1/customers/{customer.id}/token")
    assert set(rotated) == {"id", "token"} and rotated["id"] == customer.id and rotated["token"] != customer.token
    await hold
    assert time.monotonic() - started < 2
    refused = await api.customer_send(customer, radar_user.id, text("旧的"))
    assert refused["code"] == 400 and refused["msg"] == "token异常"
    assert (await api.customer_send(Account(customer.id, rotated["token"]), radar_user.id, text("新的")))["code"] == 200

    given = await crm.ok("POST", f"/api/v1/radar_users/{radar_user.id}/token", {"token": "chosen-by-the-crm-0001"})
    assert given == {"id": radar_user.id, "token": "chosen-by-the-crm-0001"}
    assert (await api.radar_send(radar_user, customer.id, text("旧的")))["code"] == 400
    assert (await api.radar_send(Account(radar_user.id, given["token"]), customer.id, text("新的")))["code"] == 200
    bad = await crm.call("POST", f"/api/v1/radar_users/{radar_user.id}/token", {"token": "", "other": 1})
    assert bad.status == 422 and bad.errors() == {(None, "token"), (None, "other")}


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("side", ["customer", "radar_user"])
async def test_disable_answers_held_requests_refuses_then_enable_accepts(crm, api, customer, radar_user, side):
    if side == "customer":
        account, path = customer, f"/api/v1/customers/{customer.id}"
        def poll(wait: float = 0):
            return api.customer_getmsg(customer, radar_user.id, wait=wait)
    else:
        account, path = radar_user, f"/api/v1/radar_users/{radar_user.id}"
        def poll(wait: float = 0):
            return api.radar_getmsg(radar_user, wait=wait)
    hold = await held(poll(wait=20))
    started = time.monotonic()
    disabled = await crm.ok("POST", f"{path}/disable")
    assert disabled["disabled"] is True and disabled["id"] == account.id and "token" not in disabled
    await hold
    assert time.monotonic() - started < 2
    refused = await poll()
    assert refused["code"] == 400 and refused["msg"] == "token异常"  # as with a bad signature
    assert (await crm.ok("GET", path))["disabled"] is True
    enabled = await crm.ok("POST", f"{path}/enable")
    assert enabled["disabled"] is False
    assert (await poll())["code"] == 200


# -- tips ------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_a_tip_is_seen_by_both_sides_wakes_both_and_counts_as_unread_for_neither(crm, api, customer, radar_user):
    customer_hold = await held(api.customer_getmsg(customer, radar_user.id, wait=20))
    radar_hold = await held(api.radar_getmsg(radar_user, customer.id, wait=20))
    started = time.monotonic()
    tip = await crm.ok("POST", "/api/v1/tips", {"customer_id": customer.id, "user_id": radar_user.id,
                                               "text": "您的订单已发货", "client_msg_id": "order-17-shipped"})
    assert set(tip) == {"id", "created_at", "customer_id", "user_id", "send_type"}
    assert (tip["customer_id"], tip["user_id"], tip["send_type"]) == (customer.id, radar_user.id, 3)
    customer_items = (await customer_hold)["data"]["ret_data"]
    radar_items = (await radar_hold)["data"]["ret_data"]
    assert time.monotonic() - started < 2
    assert [(item["id"], item["send_type"], item["msg"]) for item in customer_items] == [(tip["id"], 3, "您的订单已发货")]
    assert [(item["id"], item["send_type"], item["msg"]) for item in radar_items] == [(tip["id"], 3, "您的订单已发货")]
    # the same client_msg_id again is the same tip
    again = await crm.ok("POST", "/api/v1/tips", {"customer_id": customer.id, "user_id": radar_user.id,
                                                 "text": "您的订单已发货", "client_msg_id": "order-17-shipped"})
    assert again["id"] == tip["id"]

    # a tip nobody has fetched yet is unread for neither side (query_num), beside a real unread message
    await api.customer_send(customer, radar_user.id, text("在吗"))
    unread = (await api.customer_unread(customer, radar_user.id), await api.radar_unread(radar_user),
              await api.radar_unread(radar_user, customer.id))
    assert unread == (0, 1, 1)
    second = await crm.ok("POST", "/api/v1/tips", {"customer_id": customer.id, "user_id": radar_user.id, "text": "再提示"})
    assert (await api.customer_unread(customer, radar_user.id), await api.radar_unread(radar_user),
            await api.radar_unread(radar_user, customer.id)) == unread
    history = (await api.customer_history(customer, radar_user.id))["data"]["ret_data"]
    assert [(item["id"], item["send_type"]) for item in history][-1] == (second["id"], 3)


@pytest.mark.gen_test
async def test_a_tip_to_a_missing_account_is_404_naming_which(crm, customer, radar_user):
    no_user = await crm.call("POST", "/api/v1/tips", {"customer_id": customer.id, "user_id": 999, "text": "x"})
    assert no_user.status == 404 and "radar_user" in no_user.problem["detail"]
    assert no_user.errors() == {(None, "user_id")}
    no_customer = await crm.call("POST", "/api/v1/tips", {"customer_id": 999, "user_id": radar_user.id, "text": "x"})
    assert no_customer.status == 404 and "customer" in no_customer.problem["detail"]
    assert no_customer.errors() == {(None, "customer_id")}


@pytest.mark.gen_test
@pytest.mark.parametrize("change, fields", [
    ({"text": ""}, {"text"}),
    ({"text": "  \n "}, {"text"}),
    ({"text": "长" * (MSG_MAX_CHARS + 1)}, {"text"}),
    ({"text": 5}, {"text"}),
    ({"text": None}, {"text"}),
    ({"user_id": "1"}, {"user_id"}),
    ({"customer_id": 0}, {"customer_id"}),
    ({"client_msg_id": "x" * 65}, {"client_msg_id"}),
    ({"send_type": 1}, {"send_type"}),
])
async def test_a_bad_tip_is_422_naming_each_field(crm, store, customer, radar_user, change, fields):
    tip = {"customer_id": customer.id, "user_id": radar_user.id, "text": "好", **change}
    answer = await crm.call("POST", "/api/v1/tips", tip)
    assert answer.status == 422 and {field for _, field in answer.errors()} == fields
    assert await rows(store, "SELECT COUNT(*) FROM message") == 0


@pytest.mark.gen_test
async def test_a_tip_without_its_members_names_each(crm):
    missing = await crm.call("POST", "/api/v1/tips", {})
    assert missing.status == 422 and missing.errors() == {(None, "customer_id"), (None, "user_id"), (None, "text")}


@pytest.mark.gen_test
async def test_a_tip_of_the_longest_text_with_line_breaks(crm, api, customer, radar_user):
    words = "第一行\n第二行\t" + "长" * (MSG_MAX_CHARS - 8)
    assert len(words) == MSG_MAX_CHARS
    await crm.ok("POST", "/api/v1/tips", {"customer_id": customer.id, "user_id": radar_user.id, "text": words})
    (item,) = (await api.customer_getmsg(customer, radar_user.id))["data"]["ret_data"]
    assert item["msg"] == words


# -- a customer's data ---------------------------------------------------------------------------


def stored_files(media) -> list:
    """Every file of the local media store (its temporaries apart)."""
    root = media.settings.directory
    return sorted(path for path in root.rglob("*") if path.is_file() and "tmp" not in path.relative_to(root).parts)


async def two_conversations_and_a_photo(api, crm, customer, radar_user, other_radar_user) -> list[int]:
    """Messages both ways in two conversations, a photo and a tip; their ids."""
    ids = []
    for user in (radar_user, other_radar_user):
        ids.append((await api.customer_send(customer, user.id, text(f"你好 {user.id}")))["data"]["id"])
        ids.append((await api.radar_send(user, customer.id, text(f"您好 {customer.id}")))["data"]["id"])
    status, uploaded = await api.upload(customer, *multipart(("file", "photo.jpg", jpeg(320, 240))), u_id=radar_user.id)
    assert status == 200 and uploaded["code"] == 200, uploaded
    photo = await api.customer_send(customer, radar_user.id,
                                    {"info_type": 4, "attachment_id": uploaded["data"]["attachment_id"]})
    ids.append(photo["data"]["id"])
    tip = await crm.ok("POST", "/api/v1/tips", {"customer_id": customer.id, "user_id": other_radar_user.id, "text": "提示"})
    ids.append(tip["id"])
    return ids


@pytest.mark.gen_test(timeout=30)
async def test_the_export_is_one_streamed_json_document_with_every_message(
        crm, api, customer, radar_user, other_radar_user, other_customer):
    ids = await two_conversations_and_a_photo(api, crm, customer, radar_user, other_radar_user)
    others = (await api.customer_send(other_customer, radar_user.id, text("别人的")))["data"]["id"]
    answer = await crm.call("GET", f"/api/v1/customers/{customer.id}/export")
    assert answer.status == 200, answer.raw[:300]
    assert answer.headers["Content-Disposition"] == f'attachment; filename="customer-{customer.id}.json"'
    assert answer.headers["Content-Type"].startswith("application/json")
    assert "Content-Length" not in answer.headers  # streamed, in chunks
    document = answer.body
    assert document["customer"]["id"] == customer.id and "token" not in document["customer"]
    assert {conversation["radar_user"]["id"] for conversation in document["conversations"]} == \
        {radar_user.id, other_radar_user.id}
    exported = [message["id"] for conversation in document["conversations"] for message in conversation["messages"]]
    assert sorted(exported) == sorted(ids) and others not in exported
    (attachment,) = document["attachments"]
    # the photo's URL is signed and works on the public port
    photo = await api.raw("GET", api.base_url + urlsplit(attachment["url"]).path + "?" + urlsplit(attachment["url"]).query)
    assert photo.code == 200 and photo.headers["Content-Type"] == "image/jpeg"
    assert customer.token not in answer.raw.decode()


@pytest.mark.gen_test(timeout=30)
async def test_erasure_removes_the_customers_rows_only_and_twice_is_zeros(
        crm, api, store, media, customer, radar_user, other_radar_user, other_customer):
    await two_conversations_and_a_photo(api, crm, customer, radar_user, other_radar_user)
    await api.customer_send(other_customer, radar_user.id, text("别人的"))
    await api.radar_send(radar_user, other_customer.id, text("回复别人"))
    tables = ("message", "conversation", "attachment")

    async def counts(customer_id: int) -> dict[str, int]:
        return {table: await rows(store, f"SELECT COUNT(*) FROM {table} WHERE customer_id = ?", customer_id)
                for table in tables}

    others_before = await counts(other_customer.id)
    assert all((await counts(customer.id)).values())
    files_before = stored_files(media)
    assert files_before

    erased = await crm.ok("DELETE", f"/api/v1/customers/{customer.id}")
    assert erased["customer_id"] == customer.id and set(erased["removed"]) == ERASED
    removed = erased["removed"]
    assert (removed["messages"], removed["conversations"], removed["attachments"], removed["accounts"]) == (6, 2, 1, 1)
    assert removed["files"] == len(files_before)
    assert await counts(customer.id) == dict.fromkeys(tables, 0)
    assert await rows(store, "SELECT COUNT(*) FROM customer WHERE id = ?", customer.id) == 0
    assert await counts(other_customer.id) == others_before
    assert stored_files(media) == []
    assert (await crm.call("GET", f"/api/v1/customers/{customer.id}")).status == 404
    assert (await api.customer_send(customer, radar_user.id, text("还在吗")))["code"] == 400

    twice = await crm.ok("DELETE", f"/api/v1/customers/{customer.id}")
    assert twice == {"customer_id": customer.id, "removed": dict.fromkeys(ERASED, 0)}
    assert (await crm.call("GET", f"/api/v1/customers/{customer.id}/export")).status == 404
