"""Long-poll getmsg: held until its own conversation changes, or until `wait` passes."""
from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import pytest

from conftest import text


async def held(coroutine):
    """Start a getmsg and give the server time to hold it."""
    task = asyncio.ensure_future(coroutine)
    await asyncio.sleep(0.2)
    assert not task.done(), "the request was answered instead of held"
    return task


def msgs(body):
    return [item["msg"] for item in body["data"]["ret_data"]]


@pytest.mark.gen_test(timeout=15)
async def test_held_customer_getmsg_wakes_within_a_second_of_a_radar_reply(api, customer, radar_user):
    task = await held(api.customer_getmsg(customer, radar_user.id, wait=10))
    sent_at = time.monotonic()
    await api.radar_send(radar_user, customer.id, text("来了"))
    body = await task
    assert time.monotonic() - sent_at < 1.0
    assert body["msg"] == "实时获取-最新聊天信息成功" and msgs(body) == ["来了"]


@pytest.mark.gen_test(timeout=15)
async def test_held_radar_getmsg_wakes_on_a_customer_message(api, customer, radar_user):
    task = await held(api.radar_getmsg(radar_user, customer.id, wait=10))
    sent_at = time.monotonic()
    await api.customer_send(customer, radar_user.id, text("在吗"))
    body = await task
    assert time.monotonic() - sent_at < 1.0
    assert msgs(body) == ["在吗"]


@pytest.mark.gen_test(timeout=15)
async def test_answers_at_once_when_something_is_already_new(api, customer, radar_user):
    await api.radar_send(radar_user, customer.id, text("waiting for you"))
    started = time.monotonic()
    body = await api.customer_getmsg(customer, radar_user.id, wait=10)
    assert time.monotonic() - started < 0.5 and msgs(body) == ["waiting for you"]


@pytest.mark.gen_test(timeout=15)
async def test_wait_expiry_gives_an_empty_list(api, customer, radar_user):
    started = time.monotonic()
    body = await api.customer_getmsg(customer, radar_user.id, wait=1)
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 2.0
    assert body == {"code": 200, "msg": "没有得到实时聊天信息", "data": {"ret_data": [], "data_count": 0}}


@pytest.mark.gen_test(timeout=15)
async def test_fractional_wait_and_wait_zero(api, customer, radar_user):
    started = time.monotonic()
    await api.customer_getmsg(customer, radar_user.id, wait="0.3")
    assert 0.25 <= time.monotonic() - started < 1.0
    started = time.monotonic()
    await api.customer_getmsg(customer, radar_user.id, wait=0)
    assert time.monotonic() - started < 0.3


@pytest.mark.gen_test(timeout=15)
async def test_a_send_to_another_conversation_does_not_wake_it(api, store, customer, other_customer, radar_user, other_radar_user):
    task = await held(api.customer_getmsg(customer, radar_user.id, wait=1.5))
    await api.radar_send(radar_user, other_customer.id, text("not yours"))
    await api.radar_send(other_radar_user, customer.id, text("other radar user"))
    await asyncio.sleep(0.3)
    assert not task.done()
    body = await task
    assert body["data"]["ret_data"] == []


@pytest.mark.gen_test(timeout=15)
async def test_inbox_wakes_on_any_conversation_of_the_user_only(api, customer, other_customer, radar_user, other_radar_user):
    task = await held(api.radar_getmsg(radar_user, wait=10))
    await api.customer_send(customer, other_radar_user.id, text("to someone else"))
    await asyncio.sleep(0.3)
    assert not task.done()
    sent_at = time.monotonic()
    await api.customer_send(other_customer, radar_user.id, text("from the second customer"))
    body = await task
    assert time.monotonic() - sent_at < 1.0
    assert msgs(body) == ["from the second customer"]
    assert body["data"]["ret_data"][0]["customer_id"] == other_customer.id


@pytest.mark.gen_test(timeout=15)
async def test_own_reply_does_not_end_a_radar_wait_without_last_id(api, customer, radar_user):
    task = await held(api.radar_getmsg(radar_user, customer.id, wait=1.5))
    await api.radar_send(radar_user, customer.id, text("my own reply"))
    await asyncio.sleep(0.3)
    assert not task.done()
    assert (await task)["data"]["ret_data"] == []


@pytest.mark.gen_test(timeout=15)
async def test_other_tab_polling_with_last_id_sees_own_reply(api, customer, radar_user):
    first = await api.radar_send(radar_user, customer.id, text("one"))
    task = await held(api.radar_getmsg(radar_user, wait=10, last_id=first["data"]["id"]))
    await api.radar_send(radar_user, customer.id, text("two"))
    assert msgs(await task) == ["two"]


@pytest.mark.gen_test(timeout=15)
async def test_last_id_redelivers_what_a_lost_response_carried(api, customer, radar_user):
    a = await api.radar_send(radar_user, customer.id, text("a"))
    await api.radar_send(radar_user, customer.id, text("b"))
    lost = await api.customer_getmsg(customer, radar_user.id)  # pretend this never arrived
    assert msgs(lost) == ["a", "b"]
    assert (await api.customer_getmsg(customer, radar_user.id))["data"]["ret_data"] == []
    again = await api.customer_getmsg(customer, radar_user.id, last_id=0)
    assert msgs(again) == ["a", "b"]
    after_a = await api.customer_getmsg(customer, radar_user.id, last_id=a["data"]["id"])
    assert msgs(after_a) == ["b"]


@pytest.mark.gen_test(timeout=15)
async def test_last_id_holds_until_something_newer(api, customer, radar_user):
    a = await api.radar_send(radar_user, customer.id, text("a"))
    task = await held(api.customer_getmsg(customer, radar_user.id, wait=10, last_id=a["data"]["id"]))
    await api.customer_send(customer, radar_user.id, text("b"))
    assert msgs(await task) == ["b"]


@pytest.mark.gen_test(timeout=15)
async def test_two_held_requests_with_last_id_both_get_the_message(api, customer, radar_user):
    tab1 = await held(api.customer_getmsg(customer, radar_user.id, wait=10, last_id=0))
    tab2 = await held(api.customer_getmsg(customer, radar_user.id, wait=10, last_id=0))
    await api.radar_send(radar_user, customer.id, text("both"))
    assert msgs(await tab1) == ["both"] and msgs(await tab2) == ["both"]


@pytest.mark.gen_test(timeout=15)
async def test_two_held_requests_without_last_id_deliver_and_end_cleanly(api, customer, radar_user):
    tab1 = await held(api.customer_getmsg(customer, radar_user.id, wait=1.5))
    tab2 = await held(api.customer_getmsg(customer, radar_user.id, wait=1.5))
    await api.radar_send(radar_user, customer.id, text("shared"))
    bodies = [await tab1, await tab2]
    assert all(body["code"] == 200 for body in bodies)
    assert ["shared"] in [msgs(body) for body in bodies]
    assert await api.customer_unread(customer, radar_user.id) == 0


async def open_and_drop(api, path_and_query: str, hold_for: float = 0.3) -> None:
    """Send a raw GET, leave it held, then close the socket without reading."""
    parts = urlsplit(api.base_url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(f"GET {path_and_query} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
    await writer.drain()
    await asyncio.sleep(hold_for)
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.1)


@pytest.mark.gen_test(timeout=15)
async def test_disconnect_while_held_marks_nothing_read_and_leaves_no_waiter(api, store, customer, radar_user):
    url = api.url("/zhugeleida/gongzhonghao/chat/getmsg/0", customer, {"u_id": radar_user.id, "wait": 10})
    await open_and_drop(api, url[len(api.base_url):])
    assert len(store.waiters) == 0
    await api.radar_send(radar_user, customer.id, text("after the drop"))
    assert await api.customer_unread(customer, radar_user.id) == 1
    assert msgs(await api.customer_getmsg(customer, radar_user.id)) == ["after the drop"]


@pytest.mark.gen_test(timeout=15)
async def test_radar_inbox_disconnect_marks_nothing_read(api, store, customer, radar_user):
    url = api.url("/zhugeleida/qiyeweixin/chat/getmsg/0", radar_user, {"wait": 10})
    await open_and_drop(api, url[len(api.base_url):])
    assert len(store.waiters) == 0
    await api.customer_send(customer, radar_user.id, text("still unread"))
    assert await api.radar_unread(radar_user) == 1


class TestWaitCap:
    @pytest.fixture
    def api_settings(self):
        from handlers import ApiSettings

        return ApiSettings(longpoll_timeout=0.5, longpoll_max_timeout=1)

    @pytest.mark.gen_test(timeout=15)
    async def test_wait_is_capped_and_defaults_to_the_configured_timeout(self, api, customer, radar_user):
        started = time.monotonic()
        await api.customer_getmsg(customer, radar_user.id, wait=3600)
        assert time.monotonic() - started < 1.8
        started = time.monotonic()
        await api.get("/zhugeleida/gongzhonghao/chat/getmsg/0", customer, u_id=radar_user.id)
        assert 0.4 <= time.monotonic() - started < 1.2


@pytest.mark.gen_test(timeout=15)
async def test_finished_waits_leave_no_waiter_behind(api, store, customer, radar_user):
    await asyncio.gather(*(api.customer_getmsg(customer, radar_user.id, wait=0.3) for _ in range(20)))
    tasks = [asyncio.ensure_future(api.radar_getmsg(radar_user, wait=5)) for _ in range(5)]
    await asyncio.sleep(0.3)
    assert len(store.waiters) == 5
    await api.customer_send(customer, radar_user.id, text("wake all five"))
    await asyncio.gather(*tasks)
    assert len(store.waiters) == 0


class TestWaiterLimit:
    @pytest.fixture
    def api_settings(self):
        from handlers import ApiSettings

        return ApiSettings(max_waiters=2)

    @pytest.mark.gen_test(timeout=15)
    async def test_past_max_waiters_a_getmsg_gets_503_with_retry_after(self, api, customer, other_customer, radar_user):
        import ujson

        held_ones = [await held(api.customer_getmsg(who, radar_user.id, wait=5)) for who in (customer, other_customer)]
        response = await api.raw("GET", api.url("/zhugeleida/qiyeweixin/chat/getmsg/0", radar_user, {"wait": 5}))
        assert response.code == 503
        assert response.headers["Retry-After"] == "2"
        assert ujson.loads(response.body) == {"code": 503, "msg": "Service Unavailable", "data": {}}
        # a poll that needs no wait is still answered, and the held ones still work
        assert (await api.radar_getmsg(radar_user, wait=0))["code"] == 200
        await api.radar_send(radar_user, customer.id, text("still delivered"))
        assert msgs(await held_ones[0]) == ["still delivered"]
        held_ones[1].cancel()
