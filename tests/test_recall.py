"""Recall (撤回) and typing (对方正在输入), through the real app on both backends.

``chat.recall_seconds`` is one second here, so that "too late" is a real wait
of a little more than a second, not a faked clock.
"""
from __future__ import annotations

import asyncio
import time

import pytest
from media_files import jpeg
from test_media import fetch, media_files, upload

from conftest import Account, text
from handlers import ApiSettings
from storage.records import RECALLED_BY_THEM, RECALLED_BY_YOU

RECALL_SECONDS = 1.0
CUSTOMER, RADAR = "/zhugeleida/gongzhonghao", "/zhugeleida/qiyeweixin"


@pytest.fixture
def api_settings() -> ApiSettings:
    return ApiSettings(recall_seconds=RECALL_SECONDS)


async def customer_recall(api, customer: Account, user_id: int, message_id) -> dict:
    return await api.post(f"{CUSTOMER}/chat/recall/0", customer, {"u_id": user_id, "message_id": message_id})


async def radar_recall(api, user: Account, customer_id: int, message_id) -> dict:
    return await api.post(f"{RADAR}/chat/recall/0", user, {"customer_id": customer_id, "message_id": message_id})


@pytest.mark.gen_test(timeout=30)
async def test_a_recall_empties_the_message_and_both_sides_read_the_notice_through_their_cursor(
        api, store, customer, radar_user, database):
    kept = await api.customer_send(customer, radar_user.id, text("您好"))
    sent = await api.customer_send(customer, radar_user.id, text("我的银行卡号是 6222 0000 1111 2222"))
    message_id = sent["data"]["id"]
    radar_cursor = (await api.radar_getmsg(radar_user, customer.id))["data"]["ret_data"][-1]["id"]
    assert radar_cursor == message_id

    answer = await customer_recall(api, customer, radar_user.id, message_id)

    assert answer["code"] == 200 and answer["msg"] == "撤回成功", answer
    notice_id = answer["data"]["id"]
    assert answer["data"]["recalled_id"] == message_id and notice_id > message_id
    # the radar user, resuming from what it saw, gets the notice in order: the grey line, "the other side"
    (radar_item,) = (await api.radar_getmsg(radar_user, customer.id, last_id=radar_cursor))["data"]["ret_data"]
    assert (radar_item["id"], radar_item["send_type"], radar_item["info_type"]) == (notice_id, 3, 7)
    assert radar_item["recalled_id"] == message_id and radar_item["msg"] == RECALLED_BY_THEM
    # the customer's own page: "you recalled"; the history keeps a tombstone, without the text
    mine = (await api.customer_history(customer, radar_user.id))["data"]["ret_data"]
    assert [item["id"] for item in mine] == [kept["data"]["id"], message_id, notice_id]
    tombstone = mine[1]
    assert tombstone["recalled"] is True and "msg" not in tombstone and tombstone["send_type"] == 2
    assert mine[2]["msg"] == RECALLED_BY_YOU
    # really gone from the database, not hidden
    assert "6222" not in str(await store.messages_between(0, 10**9))
    if "://" not in database:
        await asyncio.sleep(0)
        assert b"6222 0000" not in _database_bytes(database)


def _database_bytes(path: str) -> bytes:
    import pathlib
    import sqlite3

    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return b"".join(p.read_bytes() for p in pathlib.Path(path).parent.glob(pathlib.Path(path).name + "*"))


@pytest.mark.gen_test(timeout=30)
async def test_recalling_twice_answers_with_the_first_notice(api, customer, radar_user):
    sent = await api.radar_send(radar_user, customer.id, text("发错了"))
    first = await radar_recall(api, radar_user, customer.id, sent["data"]["id"])
    again = await radar_recall(api, radar_user, customer.id, sent["data"]["id"])
    assert first["code"] == again["code"] == 200
    assert again["data"]["id"] == first["data"]["id"]
    items = (await api.customer_getmsg(customer, radar_user.id, last_id=0))["data"]["ret_data"]
    assert [item.get("info_type") for item in items] == [None, 7]  # the tombstone, then one notice


@pytest.mark.gen_test(timeout=30)
async def test_a_recall_past_the_window_or_of_another_sides_message_names_message_id(api, customer, radar_user):
    sent = await api.customer_send(customer, radar_user.id, text("hello"))
    message_id = sent["data"]["id"]
    by_the_other_side = await radar_recall(api, radar_user, customer.id, message_id)
    assert by_the_other_side["code"] == 402 and by_the_other_side["data"]["message_id"][0]["code"] == "not_yours"
    unknown = await customer_recall(api, customer, radar_user.id, 10**12)
    assert unknown["code"] == 402 and "message_id" in unknown["data"]
    missing = await customer_recall(api, customer, radar_user.id, None)
    assert missing["code"] == 402 and "message_id" in missing["data"]
    await asyncio.sleep(RECALL_SECONDS + 0.2)
    late = await customer_recall(api, customer, radar_user.id, message_id)
    assert late["code"] == 402, late
    (problem,) = late["data"]["message_id"]
    assert problem["code"] == "too_late" and "within 1 seconds" in problem["message"]
    history = (await api.radar_history(radar_user, customer.id))["data"]["ret_data"]
    assert [item["msg"] for item in history] == ["hello"]


@pytest.mark.gen_test(timeout=30)
async def test_a_recalled_picture_loses_its_files_and_its_url_answers_404(api, media, customer, radar_user):
    picture = await upload(api, customer, radar_user, jpeg(320, 240))
    sent = await api.customer_send(customer, radar_user.id, {"info_type": 4, "attachment_id": picture["attachment_id"]})
    assert (await fetch(api, picture["url"])).code == 200
    answer = await customer_recall(api, customer, radar_user.id, sent["data"]["id"])
    assert answer["code"] == 200, answer
    assert media_files(media) == []
    assert (await fetch(api, picture["url"])).code == 404
    (tombstone, notice) = (await api.radar_history(radar_user, customer.id))["data"]["ret_data"]
    assert tombstone["recalled"] is True and "url" not in tombstone and "attachment_id" not in tombstone


@pytest.mark.gen_test(timeout=30)
async def test_a_recalled_unread_message_stops_counting(api, customer, radar_user):
    await api.customer_send(customer, radar_user.id, text("one"))
    second = await api.customer_send(customer, radar_user.id, text("two"))
    assert await api.radar_unread(radar_user) == 2
    await customer_recall(api, customer, radar_user.id, second["data"]["id"])
    assert await api.radar_unread(radar_user) == 1
    assert await api.radar_unread(radar_user, customer.id) == 1
    (contact,) = (await api.contacts(radar_user))["data"]["ret_data"]
    assert contact["unread_count"] == 1 and contact["last_msg"]["info_type"] == 7
    # an old page polling without a cursor just appends what it has not had: the notice among them
    items = (await api.radar_getmsg(radar_user, customer.id))["data"]["ret_data"]
    assert [item.get("msg") for item in items] == ["one", None, RECALLED_BY_THEM]


# -- typing ---------------------------------------------------------------------------


async def customer_typing(api, customer: Account, user_id: int) -> dict:
    return await api.post(f"{CUSTOMER}/chat/typing/0", customer, {"u_id": user_id})


async def radar_typing(api, user: Account, customer_id: int) -> dict:
    return await api.post(f"{RADAR}/chat/typing/0", user, {"customer_id": customer_id})


@pytest.mark.gen_test(timeout=30)
async def test_typing_answers_the_other_sides_held_getmsg_that_asked_for_it_and_no_other(api, customer, radar_user):
    asked = asyncio.ensure_future(api.radar_getmsg(radar_user, customer.id, wait=5, typing=1))
    inbox = asyncio.ensure_future(api.radar_getmsg(radar_user, None, wait=5, typing=1))
    old_page = asyncio.ensure_future(api.radar_getmsg(radar_user, customer.id, wait=1.5))
    own_side = asyncio.ensure_future(api.customer_getmsg(customer, radar_user.id, wait=1.5, typing=1))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    assert (await customer_typing(api, customer, radar_user.id))["code"] == 200
    for woken in (asked, inbox):
        answer = await woken
        assert answer["data"]["ret_data"] == [] and answer["data"]["typing"] == {
            "customer_id": customer.id, "user_id": radar_user.id, "side": "customer"}
    assert time.monotonic() - started < 2.0
    for not_woken in (old_page, own_side):
        answer = await not_woken
        assert "typing" not in answer["data"]
    assert time.monotonic() - started > 1.0  # they waited for their timeout


@pytest.mark.gen_test(timeout=30)
async def test_ten_typing_posts_in_a_second_wake_the_peer_once(api, customer, radar_user):
    woken = []

    async def keep_polling() -> None:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            answer = await api.customer_getmsg(customer, radar_user.id, wait=1, typing=1)
            if "typing" in answer["data"]:
                woken.append(answer["data"]["typing"])

    poller = asyncio.ensure_future(keep_polling())
    await asyncio.sleep(0.2)
    for _ in range(10):
        assert (await radar_typing(api, radar_user, customer.id))["code"] == 200
        await asyncio.sleep(0.05)
    await poller
    assert woken == [{"customer_id": customer.id, "user_id": radar_user.id, "side": "radar_user"}]


@pytest.mark.gen_test(timeout=30)
async def test_a_clients_content_cannot_pose_as_a_tombstone_or_a_notice(api, customer, radar_user):
    for key, value in (("recalled", True), ("recalled_id", 1), ("recalled_by", "radar_user"), ("typing", {})):
        answer = await api.customer_send(customer, radar_user.id, {"info_type": 1, "msg": "hi", key: value})
        assert answer["code"] == 402 and answer["data"]["content"][0]["code"] == "reserved", answer
        assert key in answer["data"]["content"][0]["message"]
