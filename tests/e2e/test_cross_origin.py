"""An H5 page on another origin, in real headless Chromium, against the real server.

The page is served from a second port (another origin). It sends, long-polls
and reads history, once with plain XMLHttpRequest as the old pages do and once
with handlers/static/leida-chat.js; a server whose ``server.cors_origins`` does not list
the page's origin is refused by the browser and stores nothing.
"""
from __future__ import annotations

import http.server
import json
import threading
import time
from urllib.parse import urlencode

import pytest
from test_demo_pages import CHROMIUM, CHROMIUM_ARGS, sync_api  # noqa: F401  (skips without Chromium)

from conftest import sign
from live import clean_env, cli_account, serve_args

PAGE_HTML = b"<!doctype html><meta charset=utf-8><title>H5</title><body>H5 page on its own origin</body>"

XHR = """([method, url, body]) => new Promise((resolve) => {
  const xhr = new XMLHttpRequest();
  xhr.open(method, url);
  if (body) xhr.setRequestHeader("Content-Type", "application/x-www-form-urlencoded");
  xhr.onload = () => resolve({status: xhr.status, body: JSON.parse(xhr.responseText)});
  xhr.onerror = () => resolve({status: 0, error: "network error"});
  xhr.send(body || null);
})"""


@pytest.fixture
def page_origin():
    """A plain static server on another port: the page's own origin."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(PAGE_HTML)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def accounts(tmp_path):
    db = str(tmp_path / "chat.db")
    return (cli_account(tmp_path, "add-user", "--db", db, "--name", "王经理"),
            cli_account(tmp_path, "add-customer", "--db", db, "--name", "客户"))


def signed(base: str, path: str, account, **query) -> str:
    return f"{base}{path}?{urlencode({**sign(account), **query})}"


def test_plain_xhr_from_another_origin_sends_long_polls_and_reads_history(tmp_path, start_server, page_origin,
                                                                          browser):
    user, customer = accounts(tmp_path)
    server = start_server(*serve_args(tmp_path))
    base = f"http://127.0.0.1:{server.port}"
    page = browser.new_page()
    page.goto(page_origin)

    form = urlencode({"u_id": user.id, "content": json.dumps({"info_type": 1, "msg": "跨域你好"})})
    sent = page.evaluate(XHR, ["POST", signed(base, "/zhugeleida/gongzhonghao/chat/send_msg/0", customer), form])
    assert sent["status"] == 200 and sent["body"]["code"] == 200, sent

    page.evaluate(f"([url]) => {{ window.held = ({XHR})(['GET', url]); }}",
                  [signed(base, "/zhugeleida/gongzhonghao/chat/getmsg/0", customer,
                          u_id=user.id, wait=10, last_id=sent["body"]["data"]["id"])])
    time.sleep(0.5)
    started = time.monotonic()
    server.radar_send(user, customer.id, {"info_type": 1, "msg": "回复"})
    answer = page.evaluate("window.held")
    assert time.monotonic() - started < 2
    assert answer["status"] == 200 and [i["msg"] for i in answer["body"]["data"]["ret_data"]] == ["回复"], answer

    history = page.evaluate(XHR, ["GET", signed(base, "/zhugeleida/gongzhonghao/chat", customer, u_id=user.id), None])
    assert history["status"] == 200 and history["body"]["data"]["data_count"] == 2
    # a 402 is readable too, so the page can show which field was wrong
    invalid = page.evaluate(XHR, ["GET", signed(base, "/zhugeleida/gongzhonghao/chat/getmsg/0", customer,
                                                 u_id="abc"), None])
    assert invalid["status"] == 200 and invalid["body"]["code"] == 402 and "u_id" in invalid["body"]["data"]
    page.close()


def test_the_browser_client_from_another_origin(tmp_path, start_server, page_origin, browser):
    user, customer = accounts(tmp_path)
    server = start_server(*serve_args(tmp_path))
    base = f"http://127.0.0.1:{server.port}"
    page = browser.new_page()
    page.goto(page_origin)
    page.add_script_tag(url=f"{base}/static/leida-chat.js")
    page.evaluate("""([base, id, token, peer]) => {
      window.received = [];
      window.chat = new LeidaChat({side: "customer", accountId: id, token: token, peerId: peer, baseUrl: base,
                                   onMessages: (items) => items.forEach((m) => window.received.push(m.msg))});
      return window.chat.send({info_type: 1, msg: "从别的域名"})
        .then(() => window.chat.history({currentPage: 1, length: 20}))
        .then((data) => { window.historyCount = data.data_count; window.chat.start(); });
    }""", [base, customer.id, customer.token, user.id])
    assert page.evaluate("window.historyCount") == 1
    time.sleep(0.5)
    server.radar_send(user, customer.id, {"info_type": 1, "msg": "收到"})
    page.wait_for_function("window.received.includes('收到')", timeout=2000)
    page.evaluate("window.chat.stop()")
    page.close()


def test_an_origin_not_in_the_list_is_refused(tmp_path, start_server, page_origin, browser):
    user, customer = accounts(tmp_path)
    server = start_server(*serve_args(tmp_path),
                          env=clean_env(LEIDA_SERVER_CORS_ORIGINS="https://h5.example.com"))
    base = f"http://127.0.0.1:{server.port}"
    page = browser.new_page()
    page.goto(page_origin)
    form = urlencode({"u_id": user.id, "content": json.dumps({"info_type": 1, "msg": "不该存"})})
    sent = page.evaluate(XHR, ["POST", signed(base, "/zhugeleida/gongzhonghao/chat/send_msg/0", customer), form])
    assert sent["status"] == 0 and sent["error"] == "network error"
    assert server.customer_history(customer, user.id)["data"]["data_count"] == 0  # and nothing was stored
    page.close()
