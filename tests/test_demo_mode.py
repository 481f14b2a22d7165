"""Demo mode: pages and tokens only when asked for, and tokens only to this machine."""
from __future__ import annotations

import pytest
import ujson

from handlers import make_app
from handlers.demo import from_this_machine
from live import serve_args


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

    @pytest.mark.gen_test
    async def test_the_pages_and_the_first_accounts_with_their_tokens(self, api, radar_user, customer, other_customer):
        accounts = ujson.loads((await api.raw("GET", f"{api.base_url}/demo/accounts.json")).body)
        assert accounts["radar_user"]["id"] == radar_user.id and accounts["radar_user"]["token"] == radar_user.token
        assert [c["id"] for c in accounts["customers"]] == [customer.id, other_customer.id]
        for page in ("customer", "radar"):
            response = await api.raw("GET", f"{api.base_url}/demo/{page}.html")
            assert response.code == 200 and b"/static/leida-chat.js" in response.body


@pytest.mark.parametrize("address,local", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("10.0.0.5", False), ("192.168.1.2", False),
    ("203.0.113.7", False), ("::ffff:203.0.113.7", False), ("", False), (None, False), ("not an ip", False),
])
def test_tokens_are_handed_only_to_this_machine(address, local):
    assert from_this_machine(address) is local


def test_the_demo_command_seeds_accounts_and_prints_both_addresses(tmp_path, start_server):
    server = start_server("demo", *serve_args(tmp_path)[1:])
    log = server.log()
    assert f"http://127.0.0.1:{server.port}/demo/customer.html" in log
    assert f"http://127.0.0.1:{server.port}/demo/radar.html" in log
    status, accounts = server.request("GET", "/demo/accounts.json")
    assert status == 200 and accounts["radar_user"]["name"] == "王经理" and len(accounts["customers"]) == 3
    assert server.stop() == 0
