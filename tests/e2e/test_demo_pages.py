"""The demo pages in real headless Chromium, against the real server in demo mode.

A customer page (phone-sized) and the radar console (desktop) run in two
browser contexts and chat both ways; a reload of the customer page shows the
history; a server killed mid-conversation and restarted loses nothing, and
both pages reconnect by themselves. Screenshots land in e2e-screenshots/.

Needs Debian's chromium (/usr/bin/chromium; .ci/run installs it) and the
playwright Python package (requirements-dev.txt); no browser download.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from live import free_port

ROOT = Path(__file__).resolve().parent.parent.parent
SCREENSHOTS = ROOT / "e2e-screenshots"
CHROMIUM = os.environ.get("LEIDA_CHROMIUM", "/usr/bin/chromium")
DELIVERY_MS = 1000  # each message shows on the other side within this

if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def demo_server(tmp_path, start_server):
    """``leida_chat.py demo`` on its own database and a fixed port (so a restart keeps the URLs)."""
    port = free_port()
    db = tmp_path / "demo.db"

    def start():
        return start_server("demo", "--db", str(db), "--host", "127.0.0.1", "--port", str(port))

    server = start()
    server.restart = start  # type: ignore[attr-defined]
    server.base = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    return server


def open_pages(browser, base: str):
    customer_context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                           is_mobile=True, has_touch=True)
    radar_context = browser.new_context(viewport={"width": 1280, "height": 800})
    customer = customer_context.new_page()
    radar = radar_context.new_page()
    customer.goto(f"{base}/demo/customer.html?customer_id=1")
    radar.goto(f"{base}/demo/radar.html")
    for page in (customer, radar):
        sync_api.expect(page.locator("[data-testid=state]")).to_have_attribute("data-state", "live", timeout=10_000)
    radar.locator("[data-testid=contact][data-customer-id='1']").click()
    return customer, radar


def send(page, text: str) -> None:
    page.locator("[data-testid=input]").fill(text)
    page.locator("[data-testid=send]").click()


def expect_message(page, text: str, timeout_ms: int = DELIVERY_MS) -> None:
    sync_api.expect(page.locator("[data-testid=messages] [data-testid=message]", has_text=text)).to_have_count(
        1, timeout=timeout_ms)


def screenshot(page, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=False)


def test_md5_in_the_browser_matches_python(browser, demo_server):
    page = browser.new_page()
    page.goto(f"{demo_server.base}/demo/customer.html")
    for text in ["", "abc", "1537514281502" + "0" * 32, "你好，雷达", "😀🎉 emoji", "x" * 1000]:
        assert page.evaluate("s => LeidaChat.md5(s)", text) == hashlib.md5(text.encode()).hexdigest()
    page.close()


def test_customer_and_radar_chat_both_ways_and_history_survives_a_reload(browser, demo_server):
    customer, radar = open_pages(browser, demo_server.base)
    expect_message(customer, "很高兴为您服务", timeout_ms=5000)  # the demo's greeting, from history

    started = time.monotonic()
    send(customer, "你好，我想了解一下产品价格")
    expect_message(radar, "我想了解一下产品价格")
    customer_to_radar = time.monotonic() - started

    started = time.monotonic()
    send(radar, "您好！这款产品现在优惠价 299 元 😀")
    expect_message(customer, "优惠价 299 元")
    radar_to_customer = time.monotonic() - started

    sync_api.expect(radar.locator("[data-testid=receipt]").last).to_have_text("已读", timeout=10_000)
    screenshot(customer, "customer-chat")
    screenshot(radar, "radar-console")

    customer.reload()
    sync_api.expect(customer.locator("[data-testid=state]")).to_have_attribute("data-state", "live", timeout=10_000)
    for text in ("很高兴为您服务", "我想了解一下产品价格", "优惠价 299 元"):
        expect_message(customer, text, timeout_ms=5000)
    screenshot(customer, "customer-after-reload")
    print(f"customer->radar {customer_to_radar * 1000:.0f} ms, radar->customer {radar_to_customer * 1000:.0f} ms")


def test_a_killed_and_restarted_server_loses_nothing_and_pages_reconnect(browser, demo_server):
    customer, radar = open_pages(browser, demo_server.base)
    send(customer, "第一条：重启之前")
    expect_message(radar, "第一条：重启之前")

    demo_server.proc.send_signal(signal.SIGKILL)
    demo_server.proc.wait(timeout=5)
    for page in (customer, radar):
        sync_api.expect(page.locator("[data-testid=state]")).to_have_attribute("data-state", "retrying",
                                                                               timeout=15_000)
    customer.wait_for_timeout(500)  # the bar slides in
    screenshot(customer, "customer-reconnecting")
    demo_server.restart()
    for page in (customer, radar):  # the client's backoff tops out at 30 s; here it is still short
        sync_api.expect(page.locator("[data-testid=state]")).to_have_attribute("data-state", "live",
                                                                               timeout=35_000)
    send(radar, "第二条：重启之后")
    expect_message(customer, "第二条：重启之后", timeout_ms=5000)
    send(customer, "第三条：收到了")
    expect_message(radar, "第三条：收到了", timeout_ms=5000)
    customer.reload()
    for text in ("第一条：重启之前", "第二条：重启之后", "第三条：收到了"):
        expect_message(customer, text, timeout_ms=5000)


def test_a_send_that_failed_while_the_server_was_down_is_sent_once_by_its_retry_button(browser, demo_server):
    customer, radar = open_pages(browser, demo_server.base)
    errors: list[str] = []
    customer.on("pageerror", lambda error: errors.append(str(error)))
    demo_server.proc.send_signal(signal.SIGKILL)
    demo_server.proc.wait(timeout=5)
    send(customer, "断线时发出的消息")
    retry = customer.locator("[data-testid=messages] button.failed")
    sync_api.expect(retry).to_have_count(1, timeout=30_000)  # the client's own retries give up first
    demo_server.restart()
    sync_api.expect(radar.locator("[data-testid=state]")).to_have_attribute("data-state", "live", timeout=35_000)
    retry.click()
    expect_message(radar, "断线时发出的消息", timeout_ms=5000)
    sync_api.expect(retry).to_have_count(0, timeout=5000)
    customer.reload()
    expect_message(customer, "断线时发出的消息", timeout_ms=5000)  # stored once
    assert errors == []


def teardown_module(module) -> None:
    if SCREENSHOTS.exists() and not any(SCREENSHOTS.iterdir()):
        shutil.rmtree(SCREENSHOTS)
