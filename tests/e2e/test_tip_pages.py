"""A tip (send_type 3) in the demo pages, in real headless Chromium.

A tip is the server's own words in a conversation (e.g. "客户正在查看您的名片"):
both pages show it as a grey line in the middle of the message list, nobody's
bubble, and the radar console never counts it as unread, nor writes "我：" before
it in the contact list's preview.

The demo app runs in this process here (``leida_chat.py demo``'s seeding, app and
server class, on a thread with its own event loop), so that the test posts tips
with the store itself, ``store.send_tip``, and the pages' held long-polls are woken
by that commit as they are by a send. Screenshots land in e2e-screenshots/.
"""
from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from test_demo_pages import (  # noqa: F401  (browser: fixture; the import skips without Chromium)
    DELIVERY_MS,
    browser,
    expect_message,
    open_pages,
    screenshot,
    send,
    sync_api,
)
from tornado.netutil import bind_sockets

from handlers import ApiSettings, ChatHTTPServer, make_app
from leida_commands import seed_demo
from leida_config import load_config
from media import KEY_NAME as MEDIA_URL_KEY
from media import Media, MediaSettings
from storage import FROM_CUSTOMER, ChatStore

expect = sync_api.expect
START_TIMEOUT = 10.0  # seconds to seed, open and listen, or to close


class InProcessDemo:
    """The demo server in this process: seeded as ``leida_chat.py demo`` seeds, served by its
    app and server class from a thread of its own; ``run(coroutine)`` runs on that thread's loop."""

    def __init__(self, directory: Path) -> None:
        self.db = directory / "demo.db"
        self.media_directory = directory / "media"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="demo-server", daemon=True)
        self.store: ChatStore
        self.media: Media
        self.server: ChatHTTPServer
        self.base = ""

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout: float = START_TIMEOUT) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start(self) -> InProcessDemo:
        self.thread.start()
        self.run(self._open())
        return self

    def stop(self) -> None:
        try:
            self.run(self._close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=START_TIMEOUT)
            self.loop.close()

    async def _open(self) -> None:
        config = load_config(None, {})
        config[""]["demo"] = True
        config["database"]["url"], config["database"]["path"] = "", str(self.db)
        await seed_demo(config)  # a radar user and three customers, each greeted once
        self.store = await ChatStore.open(str(self.db))
        self.media = await Media.open(MediaSettings(directory=self.media_directory),
                                      await self.store.server_key(MEDIA_URL_KEY))
        app = make_app(self.store, ApiSettings(), access_log=False, demo=True, media=self.media)
        self.server = ChatHTTPServer(app, idle_connection_timeout=120.0, body_timeout=30.0)
        sockets = bind_sockets(0, "127.0.0.1")
        self.server.add_sockets(sockets)
        self.base = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"

    async def _close(self) -> None:  # as leida_chat.py stops: held requests answered, then closed
        self.server.stop()
        self.store.waiters.close()
        await self.server.close_all_connections()
        await self.media.close()
        await self.store.close()

    def send_tip(self, customer_id: int, user_id: int, text: str) -> None:
        self.run(self.store.send_tip(customer_id, user_id, text))

    def customer_says(self, customer_id: int, user_id: int, text: str) -> None:
        self.run(self.store.send(customer_id, user_id, FROM_CUSTOMER, {"info_type": 1, "msg": text}))


@pytest.fixture
def demo_in_process(tmp_path):
    demo = InProcessDemo(tmp_path).start()
    yield demo
    demo.stop()


def demo_ids(base: str) -> tuple[int, list[int]]:
    """The demo's radar user id and its customers' ids (/demo/accounts.json answers this machine)."""
    with urllib.request.urlopen(f"{base}/demo/accounts.json", timeout=10) as response:
        accounts = json.load(response)
    return accounts["radar_user"]["id"], [customer["id"] for customer in accounts["customers"]]


def expect_tip(page, text: str, timeout_ms: int = DELIVERY_MS):
    """The tip shows once in the page's message list as a grey line in the middle, nobody's bubble."""
    tip = page.locator("[data-testid=messages] .tip", has_text=text)
    expect(tip).to_have_count(1, timeout=timeout_ms)
    expect(tip).to_have_attribute("data-testid", "tip")
    expect(tip).to_have_attribute("data-send-type", "3")
    expect(tip).not_to_have_attribute("data-id", "")
    expect(page.locator("[data-testid=messages] [data-testid=message]", has_text=text)).to_have_count(0)
    look = tip.evaluate("""tip => {
        const list = tip.closest("[data-testid=messages]"), line = tip.firstElementChild;
        const box = tip.getBoundingClientRect(), text = line.getBoundingClientRect();
        return {inRowOrBubble: !!tip.closest(".msg-row, .bubble") || !!tip.querySelector(".msg-row, .bubble, .avatar"),
                color: getComputedStyle(tip).color, text: tip.textContent,
                lineCentre: text.left + text.width / 2, boxCentre: box.left + box.width / 2,
                boxWidth: box.width, listWidth: list.clientWidth};
    }""")
    assert not look["inRowOrBubble"], look
    assert look["text"] == text, look
    assert abs(look["lineCentre"] - look["boxCentre"]) <= 1, look  # centred in a line across the list
    assert look["boxWidth"] >= 0.8 * look["listWidth"], look
    red, green, blue = (int(part) for part in look["color"][look["color"].index("(") + 1:-1].split(",")[:3])
    assert red == green == blue and 100 <= red <= 180, look  # grey
    return tip


def expect_no_unread(radar, customer_id: int) -> None:
    badge = radar.locator(f"[data-testid=contact][data-customer-id='{customer_id}'] [data-testid=unread]")
    expect(badge).to_be_hidden()
    expect(badge).to_have_attribute("data-count", "0")
    expect(radar.locator("#total-unread")).to_be_hidden()


def test_a_tip_is_a_grey_line_on_both_pages_and_never_unread(browser, demo_in_process):
    demo = demo_in_process
    rep_id, (first, second, _) = demo_ids(demo.base)
    errors: list[str] = []
    customer, radar = open_pages(browser, demo.base)  # the customer page of the first customer; its chat open
    for page in (customer, radar):
        page.on("pageerror", lambda error: errors.append(str(error)))
    expect_message(customer, "很高兴为您服务", timeout_ms=5000)
    expect_message(radar, "很高兴为您服务", timeout_ms=5000)
    send(customer, "您好，我在看您的名片")
    expect_message(radar, "我在看您的名片")

    # a tip into the conversation open on both pages: each held long-poll is woken by its commit
    demo.send_tip(first, rep_id, "客户正在查看您的名片")
    expect_tip(customer, "客户正在查看您的名片")
    expect_tip(radar, "客户正在查看您的名片")
    expect(radar.locator(f"[data-testid=contact][data-customer-id='{first}'] .c-preview")).to_have_text(
        "客户正在查看您的名片")
    expect_no_unread(radar, first)

    # a tip into a conversation that is not open: the preview shows it, no "我：", and no badge
    demo.send_tip(second, rep_id, "李华 转发了您的名片")
    second_contact = radar.locator(f"[data-testid=contact][data-customer-id='{second}']")
    expect(second_contact.locator(".c-preview")).to_have_text("李华 转发了您的名片", timeout=DELIVERY_MS)
    expect_no_unread(radar, second)
    expect(customer.locator("[data-testid=messages] .tip")).to_have_count(1)  # the other chat's tip is not here

    send(radar, "您好！名片上有我的电话，随时联系 😀")
    expect_message(customer, "随时联系")
    customer.wait_for_timeout(300)
    screenshot(customer, "customer-tip")
    screenshot(radar, "radar-tip")

    # from history, after a reload: the same line, and the server counts it unread for nobody
    customer.reload()
    radar.reload()
    for page in (customer, radar):
        expect(page.locator("[data-testid=state]")).to_have_attribute("data-state", "live", timeout=10_000)
        expect_tip(page, "客户正在查看您的名片", timeout_ms=5000)
        expect_message(page, "我在看您的名片", timeout_ms=5000)
    expect(second_contact.locator(".c-preview")).to_have_text("李华 转发了您的名片")  # the contact list's last_msg
    expect_no_unread(radar, second)
    expect(customer.locator("[data-testid=unread]")).to_have_attribute("data-count", "0", timeout=5000)  # asked
    expect(customer.locator("[data-testid=unread]")).to_be_hidden()

    # what a customer says there still counts: one unread, the tip before it none
    demo.customer_says(second, rep_id, "请问有优惠吗？")
    expect(second_contact.locator(".c-preview")).to_have_text("请问有优惠吗？", timeout=DELIVERY_MS)
    expect(second_contact.locator("[data-testid=unread]")).to_have_text("1")
    expect(radar.locator("#total-unread")).to_have_text("1")
    second_contact.click()
    expect_tip(radar, "李华 转发了您的名片", timeout_ms=5000)
    expect_message(radar, "请问有优惠吗？", timeout_ms=5000)
    expect(radar.locator("#total-unread")).to_be_hidden()
    assert errors == []
