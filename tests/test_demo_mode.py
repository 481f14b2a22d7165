"""Demo mode: pages and tokens only when asked for, only the demo's own accounts,
and tokens only to this machine, never through a proxy."""
from __future__ import annotations

import http.client
import json
import time

import pytest
import ujson

from conftest import ROOT
from handlers import make_app
from handlers.demo import from_this_machine
from live import cli_account, run_cli, serve_args
from nginx import start_nginx  # noqa: F401  (fixture)


@pytest.mark.gen_test
async def test_without_demo_mode_there_are_no_demo_routes(api, radar_user, customer):
    for path in ("/demo/accounts.json", "/demo/customer.html", "/demo/radar.html"):
        response = await api.raw("GET", f"{api.base_url}{path}")
        assert response.code == 404, path
    # the browser client itself is for every deployment
    response = await api.raw("GET", f"{api.base_url}/static/leida-chat.js")
    assert response.code == 200 and b"LeidaChat" in response.body


class TestDemoMode:
    @pytest.fixture
    def app(self, store, api_settings):
        return make_app(store, api_settings, demo=True)

    @pytest.fixture
    def seeded(self, io_loop, store):
        user = io_loop.run_sync(lambda: store.save_radar_user(None, seeded_by_demo=True, username="演示"))
        customer = io_loop.run_sync(lambda: store.save_customer(None, seeded_by_demo=True, username="客"))
        return user, customer

    @pytest.mark.gen_test
    async def test_only_the_demo_seeded_accounts_are_listed(self, api, radar_user, customer, seeded):
        (user_id, user_token), (customer_id, customer_token) = seeded
        response = await api.raw("GET", f"{api.base_url}/demo/accounts.json")
        accounts = ujson.loads(response.body)
        assert accounts["radar_user"]["id"] == user_id and accounts["radar_user"]["token"] == user_token
        assert [(c["id"], c["token"]) for c in accounts["customers"]] == [(customer_id, customer_token)]
        # the accounts made as a deployment makes them are nowhere in the answer
        assert radar_user.token not in response.body.decode() and customer.token not in response.body.decode()
        for page in ("customer", "radar"):
            response = await api.raw("GET", f"{api.base_url}/demo/{page}.html")
            assert response.code == 200 and b"/static/leida-chat.js" in response.body

    @pytest.mark.gen_test
    async def test_real_accounts_alone_are_never_handed_out(self, api, radar_user, customer):
        response = await api.raw("GET", f"{api.base_url}/demo/accounts.json")
        assert response.code == 404
        assert radar_user.token.encode() not in response.body and customer.token.encode() not in response.body

    @pytest.mark.gen_test
    @pytest.mark.parametrize("header", [
        ("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-For", "127.0.0.1"), ("X-Real-IP", "127.0.0.1"),
        ("Forwarded", "for=127.0.0.1"),
    ])
    async def test_a_request_a_proxy_forwarded_is_not_from_this_machine(self, api, seeded, header):
        response = await api.raw("GET", f"{api.base_url}/demo/accounts.json", headers=dict([header]))
        assert response.code == 404 and b"token" not in response.body


@pytest.mark.parametrize("address,local", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("10.0.0.5", False), ("192.168.1.2", False),
    ("203.0.113.7", False), ("::ffff:203.0.113.7", False), ("", False), (None, False), ("not an ip", False),
])
def test_tokens_are_handed_only_to_this_machine(address, local):
    assert from_this_machine(address) is local
    assert from_this_machine(address, {"X-Forwarded-For": "127.0.0.1"}) is False


def test_the_demo_command_seeds_accounts_and_prints_both_addresses(tmp_path, start_server):
    server = start_server("demo", *serve_args(tmp_path)[1:])
    log = server.log()
    assert f"http://127.0.0.1:{server.port}/demo/customer.html" in log
    assert f"http://127.0.0.1:{server.port}/demo/radar.html" in log
    status, accounts = server.request("GET", "/demo/accounts.json")
    assert status == 200 and accounts["radar_user"]["name"] == "王经理" and len(accounts["customers"]) == 3
    assert server.stop() == 0


def test_accounts_made_by_the_cli_are_never_listed_even_in_demo_mode(tmp_path, start_server):
    db = str(tmp_path / "chat.db")
    made = [
        cli_account(tmp_path, "add-user", "--db", db, "--name", "真实销售"),
        cli_account(tmp_path, "add-customer", "--db", db, "--name", "真实客户"),
    ]
    result = run_cli(tmp_path, "demo-accounts", "--db", db, "--users", "1", "--customers", "2",
                     "--json", str(tmp_path / "numbered.json"))
    assert result.returncode == 0, result.stderr
    numbered = json.loads((tmp_path / "numbered.json").read_text())
    tokens = {a.token for a in made} | set(numbered["users"].values()) | set(numbered["customers"].values())

    server = start_server("demo", *serve_args(tmp_path)[1:])  # seeds its own accounts beside them
    status, accounts = server.request("GET", "/demo/accounts.json")
    assert status == 200 and accounts["radar_user"]["name"] == "王经理"
    listed = {accounts["radar_user"]["token"]} | {c["token"] for c in accounts["customers"]}
    assert len(listed) == 4 and not listed & tokens
    assert server.stop() == 0


def test_the_shipped_config_serves_without_demo_mode(tmp_path, start_server):
    server = start_server("serve", "--config", str(ROOT / "config.toml"), *serve_args(tmp_path)[1:])
    assert "demo mode" not in server.log()
    status, body = server.request("GET", "/demo/accounts.json")
    assert status == 404 and body["code"] == 404


def test_demo_tokens_are_not_handed_out_through_a_same_host_proxy(tmp_path, start_server, start_nginx):
    server = start_server("demo", *serve_args(tmp_path)[1:])
    nginx = start_nginx(
        "server { listen 127.0.0.1:{{port}};\n"
        f"  location / {{ proxy_pass http://127.0.0.1:{server.port};\n"
        "    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Real-IP $remote_addr; }\n"
        "}"
    )
    status, direct = server.request("GET", "/demo/accounts.json")
    assert status == 200 and direct["radar_user"]["token"]
    conn = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=10)
    try:
        # the proxy reports a remote client, and the request reaches the server from 127.0.0.1
        conn.request("GET", "/demo/accounts.json", headers={"X-Forwarded-For": "203.0.113.9"})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 404, body
    assert direct["radar_user"]["token"].encode() not in body and json.loads(body)["code"] == 404
    access_log = nginx.prefix / "logs" / "access.log"
    deadline = time.monotonic() + 5
    while "GET /demo/accounts.json" not in access_log.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)  # nginx writes its log line after the answer
    assert "GET /demo/accounts.json" in access_log.read_text()  # it did go through nginx
    assert server.stop() == 0
