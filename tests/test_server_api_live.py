"""The server API of the real ``leida_chat.py serve``, its keys from LEIDA_SERVER_API_KEYS, on both backends.

What only the real process shows: the listener and its startup line, the keys
read from the environment (and refused at start when malformed, without
echoing them), the log file (audit lines present, no secret in it, a key sent
in a query string redacted), the commands export-customer and erase-customer,
the listener shared by the workers of ``--processes``, and the shipped nginx
configuration, which must not reach the server API.
"""
from __future__ import annotations

import http.client
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, Account, text
from live import CUSTOMER, Background, Server, accounts, clean_env, cli_account, query, run_cli, serve_args
from nginx import start_nginx  # noqa: F401  (fixture)

SECRET = "live-crm-secret-5b1e0c9d7a"
KEYS = f"crm:{SECRET},warehouse:another-secret-42abc9"
SERVER_API = re.compile(r"server API on http://(?P<host>[0-9.]+):(?P<port>\d+)/api/v1/")
TIMEOUT = 10.0


def server_api_port(server: Server) -> int:
    match = SERVER_API.search(server.log())
    assert match, server.log()
    return int(match["port"])


def call(server: Server, method: str, path: str, body: Any = None, *, key: str | None = SECRET,
         timeout: float = TIMEOUT) -> tuple[int, dict[str, str], Any]:
    """(status, headers by lower-case name, parsed JSON body) of a call to the server's server-API listener."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    conn = http.client.HTTPConnection("127.0.0.1", server_api_port(server), timeout=timeout)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body, ensure_ascii=False).encode(),
                     headers=headers)
        response = conn.getresponse()
        payload = response.read()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, json.loads(payload) if payload else None
    finally:
        conn.close()


def wait_for(server: Server, text: str, count: int = 1, timeout: float = 5) -> str:
    deadline = time.monotonic() + timeout
    while server.log().count(text) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return server.log()


def serve_with_keys(start_server, tmp_path: Path, database: str, keys: str = KEYS, *args: str) -> Server:
    return start_server(*serve_args(tmp_path, database), *args, env=clean_env(LEIDA_SERVER_API_KEYS=keys))


def test_keys_tips_disabling_and_the_log_of_the_real_server(tmp_path, start_server, database):
    server = serve_with_keys(start_server, tmp_path, database)
    assert "server API on http://127.0.0.1:" in server.log() and "(keys: crm, warehouse)" in server.log()

    # keys: none, a wrong one of the right length, and one in the query string
    status, headers, body = call(server, "GET", "/api/v1/customers/1", key=None)
    assert status == 401 and headers["www-authenticate"].startswith("Bearer") and body["status"] == 401
    assert headers["content-type"] == "application/problem+json"
    assert call(server, "GET", "/api/v1/customers/1", key=SECRET[:-1] + "b")[0] == 401
    for name in ("key", "api_key", "access_token", "token"):
        status, _, body = call(server, "GET", f"/api/v1/customers/1?{name}={SECRET}")
        assert status == 400 and "Authorization header" in body["detail"]

    # accounts, a tip into their conversation, seen by the customer
    status, _, customer = call(server, "PUT", "/api/v1/customers/31?with_token=1",
                               {"username": "客户", "token": "live-customer-token-0001"})
    assert status == 200 and customer["token"] == "live-customer-token-0001"
    status, _, user = call(server, "PUT", "/api/v1/radar_users/41", {"username": "王经理"})
    assert status == 200 and user == {"id": 41, "username": "王经理", "avatar": "", "mingpian_avatar": "",
                                      "mingpian_phone": "", "wechat": "", "wechat_phone": "", "disabled": False}
    me = Account(31, "live-customer-token-0001")
    held = Background(server.customer_getmsg, me, 41, wait=20)
    time.sleep(0.5)
    status, _, tip = call(server, "POST", "/api/v1/tips",
                          {"customer_id": 31, "user_id": 41, "text": "TIP-TEXT-NEVER-LOGGED"})
    assert status == 200 and tip["send_type"] == 3
    items = held.value(timeout=5)["data"]["ret_data"]
    assert [(item["id"], item["send_type"]) for item in items] == [(tip["id"], 3)]

    # disabled: a held getmsg answered within 2 s, the next request refused as with a bad signature
    held = Background(server.customer_getmsg, me, 41, wait=20)
    time.sleep(0.5)
    disabled_at = time.monotonic()
    assert call(server, "POST", "/api/v1/customers/31/disable")[2]["disabled"] is True
    held.value(timeout=5)
    assert held.finished_at - disabled_at < 2
    status, refused = server.request("GET", f"{CUSTOMER}/chat/getmsg/0", me, query={"u_id": 41, "wait": 0})
    assert (status, refused["code"], refused["msg"]) == (200, 400, "token异常")
    assert call(server, "POST", "/api/v1/customers/31/enable")[2]["disabled"] is False
    assert server.customer_getmsg(me, 41)["code"] == 200

    # the log: an audit line per call, and no key, token or tip text anywhere in it
    log = wait_for(server, "op=customer.enable")
    assert "leida_chat.audit: key=- op=customer.get status=401" in log
    assert "leida_chat.audit: key=crm op=customer.put customer_id=31 fields=2 status=200" in log
    assert f"leida_chat.audit: key=crm op=tip.post customer_id=31 user_id=41 message_id={tip['id']} status=200" in log
    assert "leida_chat.audit: key=crm op=customer.disable customer_id=31 status=200" in log
    assert "GET /api/v1/customers/1?api_key=*** (127.0.0.1)" in log
    for secret in (SECRET, SECRET[:-1], "another-secret-42abc9", "live-customer-token-0001", "TIP-TEXT-NEVER-LOGGED"):
        assert secret not in log, secret
    assert server.stop() == 0


def test_with_no_keys_the_api_is_off_but_answers(tmp_path, start_server, database):
    server = start_server(*serve_args(tmp_path, database))
    assert "server API on http://127.0.0.1:" in server.log() and "is off: no server_api.keys" in server.log()
    for path in ("/api/v1/customers/1", "/api/v1/openapi.json", "/api/v1/tips"):
        status, headers, body = call(server, "GET", path)
        assert status == 404 and headers["content-type"] == "application/problem+json"
        assert body["detail"] == "the server API is off: set server_api.keys"


@pytest.mark.parametrize("keys, shown", [
    ("crm:too-short", "at least 16 characters"),
    ("no-colon-but-a-long-secret-1234", "is not name:secret"),
    ("bad name:a-long-enough-secret-5678", "the name must be"),
    ("crm:a-long-enough-secret-5678,crm:another-long-secret-90", "given twice"),
    ("crm:a-long-enough-secret-with space", "visible ASCII"),
])
def test_malformed_keys_stop_the_start_naming_the_setting_never_the_secret(tmp_path, keys, shown):
    result = run_cli(tmp_path, *serve_args(tmp_path), env=clean_env(LEIDA_SERVER_API_KEYS=keys))
    assert result.returncode == 2, result.stderr
    assert "server_api.keys" in result.stderr and shown in result.stderr
    for part in keys.replace(",", ":").split(":"):
        if len(part) > 8:
            assert part not in result.stderr


def test_the_shipped_nginx_does_not_reach_the_server_api(tmp_path, start_server, start_nginx):
    from test_behind_nginx import shipped_config, through

    shipped = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "9481" not in shipped and "/api/" not in shipped
    server = serve_with_keys(start_server, tmp_path, str(tmp_path / "chat.db"))
    assert call(server, "GET", "/api/v1/customers/1")[0] == 404  # the API answers on its own port
    audited = wait_for(server, "leida_chat.audit").count("leida_chat.audit")
    nginx = start_nginx(shipped_config(server.port))
    for method, path in (("GET", "/api/v1/customers/1"), ("GET", "/api/v1/openapi.json"),
                         ("POST", "/api/v1/tips"), ("DELETE", "/api/v1/customers/1")):
        status, body = through(nginx, method, path, body=b"{}" if method == "POST" else None,
                               headers={"Authorization": f"Bearer {SECRET}"})
        assert status == 404 and b"problem" not in body and b"about:blank" not in body, (path, body[:200])
    time.sleep(0.2)
    assert server.log().count("leida_chat.audit") == audited  # nothing reached the server API
    # nor does the public port route it, whatever nginx forwards there
    status, body = server.request("GET", "/api/v1/customers/1", headers={"Authorization": f"Bearer {SECRET}"})
    assert (status, body) == (404, {"code": 404, "msg": "Not Found", "data": {}})


def test_export_and_erase_commands(tmp_path, start_server, database):
    user, (customer, other) = accounts(tmp_path, database, customers=2)
    second_user = cli_account(tmp_path, "add-user", "--db", database, "--name", "李四")
    server = start_server(*serve_args(tmp_path, database))
    ids = []
    for radar in (user, second_user):
        ids.append(server.customer_send(customer, radar.id, text("你好"))["data"]["id"])
        ids.append(server.radar_send(radar, customer.id, text("您好"))["data"]["id"])
    server.customer_send(other, user.id, text("别人的"))

    exported = run_cli(tmp_path, "export-customer", str(customer.id), "--db", database)
    assert exported.returncode == 0, exported.stderr
    document = json.loads(exported.stdout)
    assert document["customer"]["id"] == customer.id and customer.token not in exported.stdout
    assert sorted(m["id"] for c in document["conversations"] for m in c["messages"]) == sorted(ids)
    to_file = run_cli(tmp_path, "export-customer", str(customer.id), "--db", database, "--out", str(tmp_path / "c.json"))
    assert to_file.returncode == 0 and json.loads(to_file.stdout)["bytes"] == (tmp_path / "c.json").stat().st_size
    assert json.loads((tmp_path / "c.json").read_text())["customer"] == document["customer"]
    missing = run_cli(tmp_path, "export-customer", "999", "--db", database)
    assert missing.returncode == 1 and "no customer with id 999" in missing.stderr and missing.stdout == ""

    def rows(customer_id: int) -> int:
        return query(database, f"SELECT COUNT(*) FROM message WHERE customer_id = {customer_id}")[0][0]

    others_before = rows(other.id)
    erased = run_cli(tmp_path, "erase-customer", str(customer.id), "--db", database)
    assert erased.returncode == 0, erased.stderr
    answer = json.loads(erased.stdout)
    assert answer["customer_id"] == customer.id
    assert (answer["removed"]["messages"], answer["removed"]["conversations"], answer["removed"]["accounts"]) == (4, 2, 1)
    assert rows(customer.id) == 0 and rows(other.id) == others_before
    again = json.loads(run_cli(tmp_path, "erase-customer", str(customer.id), "--db", database).stdout)
    assert set(again["removed"].values()) == {0}
    assert server.stop() == 0


def test_the_workers_of_processes_share_one_server_api_port(tmp_path, pg_database):
    server = Server(tmp_path, [*serve_args(tmp_path, pg_database), "--processes", "2"],
                    clean_env(LEIDA_SERVER_API_KEYS=KEYS), name="workers")
    try:
        server.wait_started(workers=2)
        log = wait_for(server, "server API on", 2)
        ports = {int(match) for match in re.findall(r"worker \d: server API on http://127\.0\.0\.1:(\d+)/", log)}
        assert len(ports) == 1, log
        for n in range(1, 9):  # new connections: the kernel hands them to either worker
            assert call(server, "PUT", f"/api/v1/customers/{n}", {"username": f"c{n}"})[0] == 200
        assert call(server, "GET", "/api/v1/customers/8")[2]["username"] == "c8"
        assert server.stop() == 0
    finally:
        server.kill()
