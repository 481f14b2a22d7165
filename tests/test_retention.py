"""Retention: old messages, ended webhook events and unclaimed uploads go; what stays stays right.

The real app on both backends, with real timestamps: messages are sent, a
moment is noted, more are sent, and one run of the retention task is asked to
look from a day after that moment with ``message_days = 1``, so the moment is
the cutoff. Nothing about the clock is faked.
"""
from __future__ import annotations

import asyncio
import time

import pytest
from media_files import jpeg
from prometheus_client import REGISTRY
from test_media import fetch, media_files, upload

from conftest import text
from storage.retention import DAY_SECONDS, Retention, RetentionSettings


def retention(store, media, message_days: float = 1.0) -> Retention:
    return Retention(store, RetentionSettings(message_days, 7.0, 30.0), media.delete,
                     lambda: media.sweep_unclaimed(store))


def deleted(kind: str) -> float:
    return REGISTRY.get_sample_value("leida_retention_deleted_total", {"kind": kind}) or 0.0


@pytest.mark.gen_test(timeout=30)
async def test_old_messages_and_their_pictures_go_while_read_positions_and_unread_counts_stay_right(
        api, store, media, customer, radar_user):
    old_reply = await api.radar_send(radar_user, customer.id, text("old reply"))
    assert (await api.customer_getmsg(customer, radar_user.id))["data"]["data_count"] == 1  # read by the customer
    await api.customer_send(customer, radar_user.id, text("old question, never read"))
    picture = await upload(api, customer, radar_user, jpeg(320, 240))
    await api.customer_send(customer, radar_user.id, {"info_type": 4, "attachment_id": picture["attachment_id"]})
    assert len(media_files(media)) == 2  # the picture and its thumbnail
    await asyncio.sleep(0.05)
    moment = time.time()
    await asyncio.sleep(0.05)
    await api.customer_send(customer, radar_user.id, text("new question"))
    await api.radar_send(radar_user, customer.id, text("new reply"))
    assert await api.radar_unread(radar_user) == 3
    assert await api.customer_unread(customer, radar_user.id) == 1
    before = deleted("messages")

    ran = await retention(store, media).run(now=moment + DAY_SECONDS)

    assert ran["messages"] == 3 and ran["attachments"] == 1
    assert deleted("messages") - before == 3
    assert REGISTRY.get_sample_value("leida_retention_last_run_timestamp_seconds") >= moment
    assert media_files(media) == []
    assert (await fetch(api, picture["url"])).code == 404
    # unread: only what is still there, and what was read stays read
    assert await api.radar_unread(radar_user) == 1
    assert await api.customer_unread(customer, radar_user.id) == 1
    delivered = (await api.customer_getmsg(customer, radar_user.id))["data"]["ret_data"]
    assert [item["msg"] for item in delivered] == ["new question", "new reply"]  # (its own sends echo back)
    assert delivered[0]["id"] > old_reply["data"]["id"]
    (contact,) = (await api.contacts(radar_user))["data"]["ret_data"]
    assert contact["last_msg"]["msg"] == "new reply" and contact["unread_count"] == 1
    # (opening the history marks the conversation read: last)
    history = (await api.radar_history(radar_user, customer.id))["data"]
    assert [item["msg"] for item in history["ret_data"]] == ["new question", "new reply"]
    assert history["data_count"] == 2
    # a new message keeps numbering after the deleted ones and is not "first"
    sent = await api.customer_send(customer, radar_user.id, text("later"))
    (item,) = (await api.customer_getmsg(customer, radar_user.id, last_id=sent["data"]["id"] - 1))["data"]["ret_data"]
    assert item["is_first_info"] is False


@pytest.mark.gen_test(timeout=30)
async def test_nothing_goes_when_messages_are_kept_forever(api, store, media, customer, radar_user):
    await api.customer_send(customer, radar_user.id, text("kept"))
    ran = await retention(store, media, message_days=0).run(now=time.time() + 3650 * DAY_SECONDS)
    assert ran["messages"] == 0
    assert (await api.radar_history(radar_user, customer.id))["data"]["data_count"] == 1


@pytest.mark.gen_test(timeout=60)
async def test_many_old_messages_go_in_batches(api, store, media, customer, radar_user):
    await asyncio.gather(*(store.send(customer.id, radar_user.id, 2, {"info_type": 1, "msg": str(n)})
                           for n in range(1203)))
    await asyncio.sleep(0.05)
    moment = time.time()
    await asyncio.sleep(0.05)
    await api.customer_send(customer, radar_user.id, text("kept"))
    ran = await retention(store, media).run(now=moment + DAY_SECONDS)
    assert ran["messages"] == 1203
    assert (await api.radar_history(radar_user, customer.id))["data"]["data_count"] == 1


def _event(event_id: str, status: str, finished_at: float, customer_id: int, user_id: int):
    yield ("INSERT INTO webhook_event (id, type, user_id, customer_id, body, created_at, status, finished_at)"
           " VALUES (?, 'message.unread', ?, ?, '{}', ?, ?, ?)",
           (event_id, user_id, customer_id, finished_at - 60, status, finished_at))


@pytest.mark.gen_test(timeout=30)
async def test_delivered_webhook_events_go_after_a_week_and_failed_ones_after_a_month(
        store, media, customer, radar_user):
    now = time.time()
    for event_id, status, age_days in (("delivered-8d", "delivered", 8), ("delivered-6d", "delivered", 6),
                                       ("failed-8d", "failed", 8), ("failed-31d", "failed", 31),
                                       ("pending", "pending", 40)):
        await store._run_script(_event(event_id, status, now - age_days * DAY_SECONDS, customer.id, radar_user.id))

    ran = await retention(store, media).run(now=now)

    assert ran["webhook_events"] == 2
    left = {event.id for status in ("pending", "delivered", "failed") for event in await store.outbox.events(status)}
    assert left == {"delivered-6d", "failed-8d", "pending"}


@pytest.mark.gen_test(timeout=30)
async def test_unclaimed_uploads_are_swept_by_the_same_run(api, store, media, customer, radar_user):
    await upload(api, customer, radar_user, jpeg(320, 240))
    ran = await retention(store, media).run(now=time.time() + 2 * DAY_SECONDS)
    # media.unclaimed_hours is measured from the media room's own clock: the upload is fresh there
    assert ran["unclaimed_uploads"] == 0
    assert await media.sweep_unclaimed(store, now=time.time() + 2 * DAY_SECONDS) == 1
    assert media_files(media) == []
