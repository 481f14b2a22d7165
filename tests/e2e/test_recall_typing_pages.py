"""Recall (撤回) and typing (对方正在输入) in the demo pages, in real headless Chromium.

Against the real server in demo mode (``leida_chat.py demo``, recall window 120 s):
a page's input events post typing (leida-chat.js throttles them to one every 3 s),
and the other page says "对方正在输入…" for 5 s, or until the message comes; a
right-click (desktop) or a long press (phone) on one's own bubble offers 撤回, and
both pages then show the grey line in place of the bubble. A page that was away
during the recall learns of it when it comes back: reopened (from history, whose
tombstone is no bubble) or resumed with its old cursor (the notice, in order,
takes the bubble it still had away). Screenshots land in e2e-screenshots/.
"""
from __future__ import annotations

import re

from test_demo_pages import (  # noqa: F401  (browser, demo_server: fixtures; the import skips without Chromium)
    DELIVERY_MS,
    browser,
    demo_server,
    expect_message,
    open_pages,
    screenshot,
    send,
    sync_api,
)
from test_tip_pages import expect_tip

expect = sync_api.expect
GETMSG = re.compile(r"/chat/getmsg/")
TYPING_SHOWN_MS = 5000  # demo.js: how long "对方正在输入…" stays after the last typing


def track_errors(*pages) -> list[str]:
    errors: list[str] = []
    for page in pages:
        page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


def message(page, text: str):
    return page.locator("[data-testid=messages] [data-testid=message]", has_text=text)


def stored(page, text: str) -> str:
    """The id of the message shown with this text, once the server has stored it (no longer pending)."""
    row = message(page, text)
    expect(row).to_have_count(1, timeout=5000)
    expect(row).not_to_have_attribute("data-id", "", timeout=5000)
    return row.get_attribute("data-id") or ""


def expect_gone(page, text: str, message_id: str) -> None:
    """Neither the text nor any bubble of the recalled message is anywhere on the page."""
    expect(message(page, text)).to_have_count(0, timeout=DELIVERY_MS)
    expect(page.locator(f"[data-testid=messages] [data-id='{message_id}']")).to_have_count(0)
    assert text not in page.locator("body").inner_text()


def expect_no_empty_bubble(page) -> None:
    """Every bubble shows something: a tombstone (recalled: true, no content) is never a bubble."""
    empty = page.locator("[data-testid=messages] .bubble").evaluate_all(
        "bubbles => bubbles.filter(b => !b.textContent.trim() && !b.querySelector('img, video')).length")
    assert empty == 0


def recall_by_right_click(page, text: str) -> None:
    page.locator("[data-testid=messages] [data-testid=message]", has_text=text).locator(".bubble").click(button="right")
    menu = page.locator("[data-testid=msg-menu]")
    expect(menu).to_be_visible()
    menu.locator("[data-testid=recall]").click()
    expect(menu).to_have_count(0)


def long_press(page, locator, ms: int = 700) -> None:
    """A finger held on the element (real touch events, through the DevTools protocol)."""
    box = locator.bounding_box()
    assert box is not None
    point = {"x": box["x"] + box["width"] / 2, "y": box["y"] + box["height"] / 2}
    cdp = page.context.new_cdp_session(page)
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [point]})
    page.wait_for_timeout(ms)
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    cdp.detach()


def test_typing_shows_on_the_other_page_until_the_message_comes_or_5_seconds_pass(browser, demo_server):
    customer, radar = open_pages(browser, demo_server.base)  # the radar console has customer 1's chat open
    errors = track_errors(customer, radar)
    radar_typing = radar.locator("[data-testid=pane] [data-testid=typing]")
    customer_typing = customer.locator("[data-testid=typing]")
    expect(radar_typing).to_be_hidden()
    expect(customer_typing).to_be_hidden()

    # the customer types: the radar console's header says so at once
    customer.locator("[data-testid=input]").press_sequentially("请问这款", delay=40)
    expect(radar_typing).to_be_visible(timeout=DELIVERY_MS)
    expect(radar_typing).to_have_text("对方正在输入…")
    screenshot(radar, "radar-typing")
    # ... and stops saying it when the message arrives
    customer.locator("[data-testid=input]").press_sequentially("有货吗？", delay=40)
    customer.locator("[data-testid=send]").click()
    expect_message(radar, "请问这款有货吗？")
    expect(radar_typing).to_be_hidden()

    # the radar user types back: the customer's header says so in place of the card line
    radar.locator("[data-testid=input]").press_sequentially("有的", delay=40)
    expect(customer_typing).to_be_visible(timeout=DELIVERY_MS)
    expect(customer_typing).to_have_text("对方正在输入…")
    expect(customer.locator("#peer-sub")).to_be_hidden()
    screenshot(customer, "customer-typing")
    # nothing sent: it goes by itself after 5 s, and the card line comes back
    expect(customer_typing).to_be_hidden(timeout=TYPING_SHOWN_MS + 1500)
    expect(customer.locator("#peer-sub")).to_be_visible()

    # another customer, whose chat is not open on the console: their contact's preview says it, not the header
    other = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True).new_page()
    other.goto(f"{demo_server.base}/demo/customer.html?customer_id=2")
    expect(other.locator("[data-testid=state]")).to_have_attribute("data-state", "live", timeout=10_000)
    other.locator("[data-testid=input]").press_sequentially("在吗", delay=40)
    preview = radar.locator("[data-testid=contact][data-customer-id='2'] .c-preview")
    expect(preview).to_have_text("对方正在输入…", timeout=DELIVERY_MS)
    expect(preview).to_have_attribute("data-testid", "contact-typing")
    expect(radar_typing).to_be_hidden()
    screenshot(radar, "radar-contact-typing")
    expect(preview).not_to_have_text("对方正在输入…", timeout=TYPING_SHOWN_MS + 1500)
    other.context.close()
    assert errors == []


def test_the_customer_recalls_and_both_pages_show_the_grey_line_instead_of_the_bubble(browser, demo_server):
    customer, radar = open_pages(browser, demo_server.base)
    errors = track_errors(customer, radar)
    expect_message(customer, "很高兴为您服务", timeout_ms=5000)
    secret = "我的银行卡号是 6222 0000 1111 2222"
    send(customer, secret)
    expect_message(radar, "6222 0000")
    secret_id = stored(customer, "6222 0000")
    send(customer, "发错了，不好意思")
    expect_message(radar, "发错了")

    # the other side's messages offer no 撤回
    message(customer, "很高兴为您服务").locator(".bubble").click(button="right")
    expect(customer.locator("[data-testid=msg-menu]")).to_have_count(0)

    # a long press on one's own bubble (the customer page is a phone) opens the menu above it
    long_press(customer, message(customer, "6222 0000").locator(".bubble"))
    menu = customer.locator("[data-testid=msg-menu]")
    expect(menu).to_be_visible()
    expect(menu.locator("[data-testid=recall]")).to_have_text("撤回")
    screenshot(customer, "customer-recall-menu")
    menu.locator("[data-testid=recall]").click()

    # both pages: the grey line, and the bubble gone (the recall's answer, and the notice through the poll)
    expect_tip(customer, "你撤回了一条消息")
    expect_tip(radar, "对方撤回了一条消息")
    for page in (customer, radar):
        expect_gone(page, "6222 0000", secret_id)
        expect_message(page, "发错了")
    expect(radar.locator("[data-testid=contact][data-customer-id='1'] .c-preview")).to_have_text("对方撤回了一条消息")
    customer.wait_for_timeout(300)
    screenshot(customer, "customer-recalled")
    screenshot(radar, "radar-recalled")

    # from history after a reload: the line again; the tombstone is no (empty) bubble
    customer.reload()
    radar.reload()  # its URL keeps the open chat (?customer_id=1)
    for page, line in ((customer, "你撤回了一条消息"), (radar, "对方撤回了一条消息")):
        expect(page.locator("[data-testid=state]")).to_have_attribute("data-state", "live", timeout=10_000)
        expect_tip(page, line, timeout_ms=5000)
        expect_message(page, "发错了", timeout_ms=5000)
        expect_gone(page, "6222 0000", secret_id)
        expect_no_empty_bubble(page)
    assert errors == []


def test_a_page_away_during_the_recall_shows_the_grey_line_when_it_comes_back(browser, demo_server):
    customer, radar = open_pages(browser, demo_server.base)
    errors = track_errors(customer, radar)

    # 1. the radar console is closed while the customer recalls, and opened again: from history
    send(customer, "地址写错了：幸福路 88 号")
    expect_message(radar, "幸福路 88 号")
    address_id = stored(customer, "幸福路 88 号")
    radar.context.close()
    recall_by_right_click(customer, "幸福路 88 号")
    expect_tip(customer, "你撤回了一条消息")
    radar = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
    errors += track_errors(radar)
    radar.goto(f"{demo_server.base}/demo/radar.html?customer_id=1")
    expect(radar.locator("[data-testid=state]")).to_have_attribute("data-state", "live", timeout=10_000)
    expect_tip(radar, "对方撤回了一条消息", timeout_ms=5000)
    expect_gone(radar, "幸福路 88 号", address_id)
    expect_no_empty_bubble(radar)
    screenshot(radar, "radar-reopened-after-recall")

    # 2. the customer page loses its network while the radar user recalls a message it shows, and sends
    # and recalls another it never saw; back online, it resumes from its old cursor: the notices in order.
    # (Its polls fail from now on; the one already held is answered by this message. The radar user's
    # typing answers a held poll too: it comes first, and the page polls again before the route is set.)
    radar.locator("[data-testid=input]").fill("报价 1999 元")
    expect(customer.locator("[data-testid=typing]")).to_be_visible(timeout=DELIVERY_MS)
    customer.wait_for_timeout(200)
    customer.route(GETMSG, lambda route: route.abort("internetdisconnected"))
    radar.locator("[data-testid=send]").click()
    expect_message(customer, "报价 1999 元")
    price_id = stored(radar, "报价 1999 元")
    expect(customer.locator("[data-testid=state]")).to_have_attribute("data-state", "retrying", timeout=10_000)
    recall_by_right_click(radar, "报价 1999 元")
    send(radar, "报价 2999 元")
    unseen_id = stored(radar, "报价 2999 元")
    recall_by_right_click(radar, "报价 2999 元")
    your_lines = radar.locator("[data-testid=messages] .tip", has_text="你撤回了一条消息")
    expect(your_lines).to_have_count(2, timeout=DELIVERY_MS)
    expect_message(customer, "报价 1999 元")  # still shown: the page knows nothing yet

    customer.unroute(GETMSG)
    customer.evaluate("window.dispatchEvent(new Event('online'))")  # as a phone back on the network: no backoff
    expect(customer.locator("[data-testid=state]")).to_have_attribute("data-state", "live", timeout=10_000)
    their_lines = customer.locator("[data-testid=messages] .tip", has_text="对方撤回了一条消息")
    expect(their_lines).to_have_count(2, timeout=5000)
    expect_gone(customer, "报价 1999 元", price_id)
    expect_gone(customer, "报价 2999 元", unseen_id)
    expect_no_empty_bubble(customer)
    # in order: the customer's own line first, then the two notices, each after what it took back
    lines = customer.locator("[data-testid=messages] .tip").all_inner_texts()
    assert lines == ["你撤回了一条消息", "对方撤回了一条消息", "对方撤回了一条消息"], lines
    customer.wait_for_timeout(300)
    screenshot(customer, "customer-resumed-after-recall")
    screenshot(radar, "radar-recalled-own")
    assert errors == []
