"""The shipped deploy/nginx.conf in front of the real server, in a real nginx.

A long-poll held through nginx answers within a second of the reply; the
server believes the forwarded address only because nginx is a trusted proxy,
and logs the real client; /demo/ and the probes are not reachable through it.
"""
from __future__ import annotations

import http.client
import json
import time
from urllib.parse import urlencode

from conftest import ROOT, sign
from live import CUSTOMER, Background, clean_env, cli_account, serve_args
from nginx import start_nginx  # noqa: F401  (fixture)

CLIENT = "203.0.113.9"  # what an outer proxy reports the client as


def shipped_config(server_port: int) -> str:
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "server 127.0.0.1:8000;" in text and "listen 80;" in text
    return text.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{server_port};").replace(
        "listen 80;", "listen 127.0.0.1:{{port}};")


def through(nginx, method: str, path: str, body: bytes | None = None, timeout: float = 10,
            headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=timeout)
    try:
        sent = {"X-Forwarded-For": CLIENT, **(headers or {})}
        if body is not None:
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_a_long_poll_through_nginx_and_the_client_address_in_the_log(tmp_path, start_server, start_nginx):
    db = str(tmp_path / "chat.db")
    user = cli_account(tmp_path, "add-user", "--db", db, "--name", "王经理")
    customer = cli_account(tmp_path, "add-customer", "--db", db, "--name", "客户")
    server = start_server("demo", *serve_args(tmp_path)[1:],
                          env=clean_env(LEIDA_SERVER_TRUSTED_PROXIES="127.0.0.1,::1"))
    nginx = start_nginx(shipped_config(server.port))

    query = urlencode({**sign(customer), "u_id": user.id, "wait": 20})
    held = Background(through, nginx, "GET", f"{CUSTOMER}/chat/getmsg/0?{query}", timeout=30)
    time.sleep(0.5)
    replied_at = time.monotonic()
    server.radar_send(user, customer.id, {"info_type": 1, "msg": "经过代理"})
    status, body = held.value(timeout=25)
    assert held.finished_at - replied_at < 1.0
    assert status == 200 and [i["msg"] for i in json.loads(body)["data"]["ret_data"]] == ["经过代理"]

    # the real client in the server's access log (and never the token)
    wait_for_lines(server, f"GET {CUSTOMER}/chat/getmsg/0", 1)
    log = server.log()
    assert f"GET {CUSTOMER}/chat/getmsg/0" in log and f"({CLIENT})" in log
    assert customer.token not in log
    # the API document and the client library are routed; the demo and the probes are not
    assert through(nginx, "GET", "/openapi.json")[0] == 200
    assert through(nginx, "GET", "/static/leida-chat.js")[0] == 200
    for path in ("/demo/accounts.json", "/demo/customer.html", "/healthz", "/readyz", "/metrics"):
        status, body = through(nginx, "GET", path)
        assert status == 404 and b"token" not in body, path
    assert server.request("GET", "/demo/accounts.json")[0] == 200  # the server's own port still has it
    assert server.stop() == 0


def test_forwarded_addresses_are_believed_only_from_trusted_proxies(tmp_path, start_server):
    untrusting = start_server(*serve_args(tmp_path))
    trusting = start_server(*serve_args(tmp_path, "other.db"), env=clean_env(LEIDA_SERVER_TRUSTED_PROXIES="127.0.0.0/8"))
    for server in (untrusting, trusting):
        status, _ = server.request("GET", "/healthz", headers={"X-Forwarded-For": f"198.51.100.1, {CLIENT}"})
        assert status == 200
        server.request("GET", "/healthz", headers={"X-Real-IP": "198.51.100.77"})
    for server in (untrusting, trusting):
        wait_for_lines(server, "GET /healthz", 2)
    assert f"({CLIENT})" not in untrusting.log() and untrusting.log().count("(127.0.0.1)") == 2
    assert f"({CLIENT})" in trusting.log() and "(198.51.100.77)" in trusting.log()
    assert "198.51.100.1)" not in trusting.log()  # a hop the client could have made up


def wait_for_lines(server, text: str, count: int, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while server.log().count(text) < count and time.monotonic() < deadline:
        time.sleep(0.02)


def test_a_bad_trusted_proxy_stops_the_server_naming_it(tmp_path):
    from live import run_cli

    result = run_cli(tmp_path, *serve_args(tmp_path), env=clean_env(LEIDA_SERVER_TRUSTED_PROXIES="nginx.local"))
    assert result.returncode == 2 and "server.trusted_proxies" in result.stderr
