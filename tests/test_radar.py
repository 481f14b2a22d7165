"""The radar-user side (企业微信) of the contract: shapes, msg strings, read state, isolation."""
from __future__ import annotations

import asyncio
import re

import pytest

from conftest import Account, text

ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}")

RADAR_ITEM_KEYS = {
    "id", "customer_id", "customer_avatar", "user_id", "src", "name", "dateTime", "send_type",
    "is_customer_already_read", "is_customer_already_read_text",
}
TEXT_KEYS = RADAR_ITEM_KEYS | {"info_type", "msg"}
CONTACT_KEYS = {"customer_id", "customer", "customer_headimgurl", "unread_count", "last_msg"}

CUSTOMER_NAME = "_zzz จุ๊บ 😀"
CUSTOMER_HEAD = "https://wx.qlogo.cn/zzz/132"


def msgs(body: dict) -> list[str]:
    return [item["msg"] for item in body["data"]["ret_data"]]


def ids(body: dict) -> list[int]:
    return [item["id"] for item in body["data"]["ret_data"]]


# -- send_msg -----------------------------------------------------------------


@pytest.mark.gen_test
async def test_send_answers_id_and_time(api, customer, radar_user):
    body = await api.radar_send(radar_user, customer.id, text("您好"))
    assert body["code"] == 200
    assert body["msg"] == "发送成功"
    assert set(body["data"]) == {"id", "dateTime"}
    assert isinstance(body["data"]["id"], int)
    assert ISO_MS.fullmatch(body["data"]["dateTime"])

    item = (await api.customer_getmsg(customer, radar_user.id))["data"]["ret_data"][0]
    assert item["id"] == body["data"]["id"] and item["dateTime"] == body["data"]["dateTime"]
    assert item["send_type"] == 1 and item["msg"] == "您好"


@pytest.mark.gen_test
async def test_shop_link_is_radar_side_only(api, customer, radar_user):
    sent = await api.radar_send(radar_user, customer.id, {"info_type": 6, "msg": "店铺链接"})
    assert sent["code"] == 200 and sent["msg"] == "发送成功"
    bare = await api.radar_send(radar_user, customer.id, {"info_type": 6})  # msg is optional
    assert bare["code"] == 200

    refused = await api.customer_send(customer, radar_user.id, {"info_type": 6, "msg": "店铺链接"})
    assert refused["code"] == 402 and refused["msg"] == "请求异常"
    assert list(refused["data"]) == ["content"]
    assert refused["data"]["content"][0]["message"] and refused["data"]["content"][0]["code"]

    history = await api.radar_history(radar_user, customer.id)
    assert history["data"]["data_count"] == 2
    assert [item["info_type"] for item in history["data"]["ret_data"]] == [6, 6]


@pytest.mark.gen_test
async def test_send_without_customer_id_is_a_402_naming_it(api, customer, radar_user):
    body = await api.post(
        "/zhugeleida/qiyeweixin/chat/send_msg/0", radar_user, {"content": '{"info_type": 1, "msg": "hi"}'}
    )
    assert body["code"] == 402 and body["msg"] == "请求异常"
    assert "customer_id" in body["data"]
    assert body["data"]["customer_id"][0]["code"] == "required"


@pytest.mark.gen_test
async def test_unknown_customer_is_a_402_does_not_exist(api, customer, radar_user):
    for body in (
        await api.radar_send(radar_user, 999, text("hi")),
        await api.radar_getmsg(radar_user, 999),
        await api.radar_history(radar_user, 999),
        await api.get("/zhugeleida/qiyeweixin/chat/query_num/0", radar_user, customer_id=999),
    ):
        assert body["code"] == 402 and body["msg"] == "请求异常"
        assert body["data"]["customer_id"][0]["code"] == "does_not_exist"
    assert (await api.contacts(radar_user))["data"]["data_count"] == 0


@pytest.mark.gen_test
async def test_send_type_other_than_1_is_a_402_naming_it(api, customer, radar_user):
    for send_type in (2, 3, "x"):
        body = await api.radar_send(radar_user, customer.id, text("hi"), send_type=send_type)
        assert body["code"] == 402 and body["msg"] == "请求异常"
        assert "send_type" in body["data"]
    ok = await api.radar_send(radar_user, customer.id, text("hi"), send_type=1)
    assert ok["code"] == 200
    history = await api.radar_history(radar_user, customer.id)
    assert history["data"]["data_count"] == 1


@pytest.mark.gen_test
async def test_client_msg_id_makes_a_retry_store_nothing(api, customer, radar_user):
    first = await api.radar_send(radar_user, customer.id, text("once"), client_msg_id="r-1")
    assert first["code"] == 200
    retry = await api.radar_send(radar_user, customer.id, text("once"), client_msg_id="r-1")
    assert retry == first
    history = await api.radar_history(radar_user, customer.id)
    assert history["data"]["data_count"] == 1
    assert ids(history) == [first["data"]["id"]]
    # the customer receives it once
    assert msgs(await api.customer_getmsg(customer, radar_user.id)) == ["once"]
    other = await api.radar_send(radar_user, customer.id, text("twice"), client_msg_id="r-2")
    assert other["code"] == 200 and other["data"]["id"] != first["data"]["id"]


@pytest.mark.gen_test
async def test_client_msg_id_is_per_sender(api, customer, radar_user, other_radar_user):
    mine = await api.radar_send(radar_user, customer.id, text("mine"), client_msg_id="same")
    theirs = await api.radar_send(other_radar_user, customer.id, text("theirs"), client_msg_id="same")
    assert theirs["data"]["id"] != mine["data"]["id"]
    assert msgs(await api.radar_history(other_radar_user, customer.id)) == ["theirs"]


# -- getmsg: item shape and is_customer_already_read ------------------------------


@pytest.mark.gen_test
async def test_getmsg_item_keys_and_values(api, customer, radar_user):
    await api.customer_send(customer, radar_user.id, text("第一条 😀"))
    body = await api.radar_getmsg(radar_user, customer.id)
    assert body["code"] == 200
    assert body["msg"] == "实时获取-最新聊天信息成功"
    assert body["data"]["data_count"] == len(body["data"]["ret_data"]) == 1
    item = body["data"]["ret_data"][0]
    assert set(item) == TEXT_KEYS
    assert item["customer_id"] == customer.id and item["user_id"] == radar_user.id
    assert item["src"] == item["customer_avatar"] == CUSTOMER_HEAD
    assert item["name"] == CUSTOMER_NAME
    assert item["send_type"] == 2 and item["info_type"] == 1 and item["msg"] == "第一条 😀"
    assert ISO_MS.fullmatch(item["dateTime"])


@pytest.mark.gen_test
async def test_getmsg_merges_content_keys_without_overriding_server_keys(api, customer, radar_user):
    content = {"info_type": 2, "product_name": "产品", "product_price": 12.5,
               "id": 999, "name": "冒充", "src": "https://evil.example/x.png", "send_type": 1}
    await api.customer_send(customer, radar_user.id, content)
    item = (await api.radar_getmsg(radar_user, customer.id))["data"]["ret_data"][0]
    assert set(item) == RADAR_ITEM_KEYS | {"info_type", "product_name", "product_price"}
    assert item["product_name"] == "产品" and item["product_price"] == 12.5
    assert item["id"] != 999 and item["name"] == CUSTOMER_NAME
    assert item["src"] == CUSTOMER_HEAD and item["send_type"] == 2


@pytest.mark.gen_test
async def test_is_customer_already_read_flips_when_customer_getmsg(api, customer, radar_user):
    sent = await api.radar_send(radar_user, customer.id, text("hello"))
    body = await api.radar_getmsg(radar_user, customer.id, last_id=0)
    (item,) = body["data"]["ret_data"]
    assert set(item) == TEXT_KEYS
    assert item["id"] == sent["data"]["id"] and item["send_type"] == 1
    assert item["src"] == item["customer_avatar"] == CUSTOMER_HEAD and item["name"] == CUSTOMER_NAME
    assert item["is_customer_already_read"] == 0 and item["is_customer_already_read_text"] == "未读"

    assert msgs(await api.customer_getmsg(customer, radar_user.id)) == ["hello"]

    (item,) = (await api.radar_getmsg(radar_user, customer.id, last_id=0))["data"]["ret_data"]
    assert item["is_customer_already_read"] == 1 and item["is_customer_already_read_text"] == "已读"


@pytest.mark.gen_test
async def test_is_customer_already_read_flips_when_customer_opens_history(api, customer, radar_user):
    await api.radar_send(radar_user, customer.id, text("a"))
    await api.radar_send(radar_user, customer.id, text("b"))
    before = await api.radar_history(radar_user, customer.id)
    assert [item["is_customer_already_read"] for item in before["data"]["ret_data"]] == [0, 0]
    assert [item["is_customer_already_read_text"] for item in before["data"]["ret_data"]] == ["未读", "未读"]

    await api.customer_history(customer, radar_user.id, length=1)  # even one page marks all read

    after = await api.radar_history(radar_user, customer.id)
    assert [item["is_customer_already_read"] for item in after["data"]["ret_data"]] == [1, 1]
    assert [item["is_customer_already_read_text"] for item in after["data"]["ret_data"]] == ["已读", "已读"]
    # a later message is unread again until the customer fetches it
    await api.radar_send(radar_user, customer.id, text("c"))
    latest = (await api.radar_history(radar_user, customer.id))["data"]["ret_data"][-1]
    assert latest["msg"] == "c" and latest["is_customer_already_read"] == 0


# -- getmsg without last_id: the user's unread customer messages ------------------


@pytest.mark.gen_test
async def test_getmsg_without_last_id_returns_only_unread_customer_messages(api, customer, radar_user):
    await api.customer_send(customer, radar_user.id, text("q1"))
    await api.radar_send(radar_user, customer.id, text("own reply"))
    await api.customer_send(customer, radar_user.id, text("q2"))
    assert await api.radar_unread(radar_user, customer.id) == 2

    body = await api.radar_getmsg(radar_user, customer.id)
    assert msgs(body) == ["q1", "q2"]
    assert all(item["send_type"] == 2 for item in body["data"]["ret_data"])
    assert await api.radar_unread(radar_user, customer.id) == 0

    again = await api.radar_getmsg(radar_user, customer.id)
    assert again == {"code": 200, "msg": "没有得到实时聊天信息", "data": {"ret_data": [], "data_count": 0}}

    await api.customer_send(customer, radar_user.id, text("q3"))
    assert msgs(await api.radar_getmsg(radar_user, customer.id)) == ["q3"]


@pytest.mark.gen_test
async def test_own_messages_never_appear_without_last_id(api, customer, radar_user):
    await api.radar_send(radar_user, customer.id, text("only mine"))
    body = await api.radar_getmsg(radar_user, customer.id)
    assert body["data"] == {"ret_data": [], "data_count": 0}
    assert (await api.radar_getmsg(radar_user))["data"]["data_count"] == 0
    assert await api.radar_unread(radar_user, customer.id) == 0


@pytest.mark.gen_test
async def test_radar_reading_leaves_customer_read_state_untouched(api, customer, radar_user):
    await api.radar_send(radar_user, customer.id, text("a"))
    await api.customer_send(customer, radar_user.id, text("q"))
    assert await api.customer_unread(customer, radar_user.id) == 1

    await api.radar_getmsg(radar_user, customer.id)
    await api.radar_getmsg(radar_user, customer.id, last_id=0)
    await api.radar_history(radar_user, customer.id)

    assert await api.customer_unread(customer, radar_user.id) == 1
    # the customer still receives both messages as new
    assert msgs(await api.customer_getmsg(customer, radar_user.id)) == ["a", "q"]


# -- getmsg with last_id: everything after the cursor ----------------------------


@pytest.mark.gen_test
async def test_getmsg_with_last_id_returns_everything_after_it(api, customer, radar_user):
    m1 = (await api.customer_send(customer, radar_user.id, text("q1")))["data"]["id"]
    m2 = (await api.radar_send(radar_user, customer.id, text("r1")))["data"]["id"]
    m3 = (await api.customer_send(customer, radar_user.id, text("q2")))["data"]["id"]
    m4 = (await api.radar_send(radar_user, customer.id, text("r2")))["data"]["id"]

    # read state does not matter: read everything first
    await api.radar_getmsg(radar_user, customer.id)
    assert await api.radar_unread(radar_user, customer.id) == 0

    body = await api.radar_getmsg(radar_user, customer.id, last_id=0)
    assert body["msg"] == "实时获取-最新聊天信息成功"
    assert ids(body) == [m1, m2, m3, m4]
    assert [item["send_type"] for item in body["data"]["ret_data"]] == [2, 1, 2, 1]
    assert body["data"]["data_count"] == 4
    assert ids(await api.radar_getmsg(radar_user, customer.id, last_id=m2)) == [m3, m4]
    assert ids(await api.radar_getmsg(radar_user, customer.id, last_id=m3)) == [m4]
    empty = await api.radar_getmsg(radar_user, customer.id, last_id=m4)
    assert empty["msg"] == "没有得到实时聊天信息" and empty["data"] == {"ret_data": [], "data_count": 0}


@pytest.mark.gen_test
async def test_getmsg_with_last_id_marks_delivered_customer_messages_read(api, customer, radar_user):
    await api.customer_send(customer, radar_user.id, text("q1"))
    await api.customer_send(customer, radar_user.id, text("q2"))
    assert await api.radar_unread(radar_user, customer.id) == 2
    assert msgs(await api.radar_getmsg(radar_user, customer.id, last_id=0)) == ["q1", "q2"]
    assert await api.radar_unread(radar_user, customer.id) == 0
    assert (await api.radar_getmsg(radar_user, customer.id))["data"]["data_count"] == 0
    assert await api.customer_unread(customer, radar_user.id) == 0  # the customer's side: nothing of theirs to count


# -- the inbox form (no customer_id) ------------------------------------------------


@pytest.mark.gen_test
async def test_inbox_collects_every_customer_in_id_order(
    api, customer, other_customer, radar_user, other_radar_user
):
    a1 = (await api.customer_send(customer, radar_user.id, text("a1")))["data"]["id"]
    b1 = (await api.customer_send(other_customer, radar_user.id, text("b1")))["data"]["id"]
    await api.customer_send(customer, other_radar_user.id, text("for someone else"))
    a2 = (await api.customer_send(customer, radar_user.id, text("a2")))["data"]["id"]
    own = (await api.radar_send(radar_user, other_customer.id, text("own")))["data"]["id"]
    b2 = (await api.customer_send(other_customer, radar_user.id, text("b2")))["data"]["id"]

    assert await api.radar_unread(radar_user) == 4
    body = await api.radar_getmsg(radar_user)
    assert ids(body) == [a1, b1, a2, b2]
    assert [item["customer_id"] for item in body["data"]["ret_data"]] == [
        customer.id, other_customer.id, customer.id, other_customer.id
    ]
    assert all(item["user_id"] == radar_user.id for item in body["data"]["ret_data"])
    assert [item["name"] for item in body["data"]["ret_data"]] == [CUSTOMER_NAME, "小明", CUSTOMER_NAME, "小明"]
    assert body["data"]["ret_data"][1]["src"] == "https://wx.qlogo.cn/xm/132"
    assert await api.radar_unread(radar_user) == 0
    assert (await api.radar_getmsg(radar_user))["data"]["data_count"] == 0

    # with a cursor: everything of this user's, own messages included, nobody else's
    assert ids(await api.radar_getmsg(radar_user, last_id=0)) == [a1, b1, a2, own, b2]
    assert ids(await api.radar_getmsg(radar_user, last_id=a2)) == [own, b2]

    # the other radar user's inbox was untouched and holds only their conversation
    assert await api.radar_unread(other_radar_user) == 1
    assert msgs(await api.radar_getmsg(other_radar_user)) == ["for someone else"]


@pytest.mark.gen_test
async def test_inbox_wakes_on_a_customer_message_from_any_conversation(
    api, customer, other_customer, radar_user
):
    held = asyncio.ensure_future(api.radar_getmsg(radar_user, wait=10))
    await asyncio.sleep(0.2)
    assert not held.done()
    await api.customer_send(other_customer, radar_user.id, text("wake up"))
    body = await asyncio.wait_for(held, 5)
    assert msgs(body) == ["wake up"]
    assert body["data"]["ret_data"][0]["customer_id"] == other_customer.id


@pytest.mark.gen_test
async def test_own_send_wakes_last_id_polls_but_not_unread_polls(api, customer, radar_user):
    first = (await api.customer_send(customer, radar_user.id, text("q")))["data"]["id"]
    await api.radar_getmsg(radar_user, customer.id)  # read it

    unread_poll = asyncio.ensure_future(api.radar_getmsg(radar_user, customer.id, wait=1))
    cursor_poll = asyncio.ensure_future(api.radar_getmsg(radar_user, customer.id, wait=10, last_id=first))
    await asyncio.sleep(0.2)
    sent = await api.radar_send(radar_user, customer.id, text("from another tab"))

    body = await asyncio.wait_for(cursor_poll, 5)
    assert ids(body) == [sent["data"]["id"]] and body["data"]["ret_data"][0]["send_type"] == 1
    # the unread poll is not answered with the user's own message; it times out empty
    assert (await unread_poll)["data"] == {"ret_data": [], "data_count": 0}


# -- history ------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_history_requires_customer_id(api, customer, radar_user):
    await api.customer_send(customer, radar_user.id, text("hi"))
    body = await api.radar_history(radar_user, None)
    assert body["code"] == 402 and body["msg"] == "请求异常"
    assert body["data"]["customer_id"][0]["code"] == "required"


@pytest.mark.gen_test
async def test_history_items_and_paging(api, customer, radar_user):
    sent = []
    for n in range(5):
        if n % 2:
            sent.append((await api.radar_send(radar_user, customer.id, text(f"m{n}")))["data"]["id"])
        else:
            sent.append((await api.customer_send(customer, radar_user.id, text(f"m{n}")))["data"]["id"])

    page1 = await api.radar_history(radar_user, customer.id, current_page=1, length=2)
    assert page1["code"] == 200 and page1["msg"] == "分页获取-全部聊天消息成功"
    assert set(page1["data"]) == {"ret_data", "data_count"}
    assert msgs(page1) == ["m3", "m4"]
    assert page1["data"]["data_count"] == 5
    for item in page1["data"]["ret_data"]:
        assert set(item) == TEXT_KEYS
        assert item["src"] == item["customer_avatar"] == CUSTOMER_HEAD and item["name"] == CUSTOMER_NAME
        assert item["customer_id"] == customer.id and item["user_id"] == radar_user.id
    assert [item["send_type"] for item in page1["data"]["ret_data"]] == [1, 2]

    assert msgs(await api.radar_history(radar_user, customer.id, current_page=2, length=2)) == ["m1", "m2"]
    assert msgs(await api.radar_history(radar_user, customer.id, current_page=3, length=2)) == ["m0"]
    page4 = await api.radar_history(radar_user, customer.id, current_page=4, length=2)
    assert page4["data"] == {"ret_data": [], "data_count": 5}

    whole = await api.radar_history(radar_user, customer.id, length=0)
    assert ids(whole) == sent


@pytest.mark.gen_test
async def test_history_marks_conversation_read_for_user_only(api, customer, radar_user):
    await api.radar_send(radar_user, customer.id, text("hello"))
    await api.customer_send(customer, radar_user.id, text("q1"))
    await api.customer_send(customer, radar_user.id, text("q2"))
    assert await api.radar_unread(radar_user, customer.id) == 2
    assert await api.customer_unread(customer, radar_user.id) == 1

    await api.radar_history(radar_user, customer.id, length=1)  # one page marks the whole conversation

    assert await api.radar_unread(radar_user, customer.id) == 0
    assert (await api.radar_getmsg(radar_user, customer.id))["data"]["data_count"] == 0
    assert (await api.contacts(radar_user))["data"]["ret_data"][0]["unread_count"] == 0
    # the customer's side is untouched
    assert await api.customer_unread(customer, radar_user.id) == 1
    assert msgs(await api.customer_getmsg(customer, radar_user.id)) == ["hello", "q1", "q2"]


# -- query_num ------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_query_num_per_customer_and_across_conversations(
    api, customer, other_customer, radar_user, other_radar_user
):
    assert await api.radar_unread(radar_user) == 0
    assert await api.radar_unread(radar_user, customer.id) == 0
    await api.customer_send(customer, radar_user.id, text("a1"))
    await api.customer_send(customer, radar_user.id, text("a2"))
    await api.customer_send(other_customer, radar_user.id, text("b1"))
    await api.radar_send(radar_user, customer.id, text("own"))  # never counted
    await api.customer_send(customer, other_radar_user.id, text("elsewhere"))  # another user's

    body = await api.get("/zhugeleida/qiyeweixin/chat/query_num/0", radar_user, customer_id=customer.id)
    assert body == {"code": 200, "msg": "查询成功", "data": {"chatinfo_count": 2}}
    assert await api.radar_unread(radar_user, other_customer.id) == 1
    assert await api.radar_unread(radar_user) == 3
    assert await api.radar_unread(other_radar_user) == 1

    await api.radar_getmsg(radar_user, customer.id)
    assert await api.radar_unread(radar_user, customer.id) == 0
    assert await api.radar_unread(radar_user, other_customer.id) == 1
    assert await api.radar_unread(radar_user) == 1


@pytest.mark.gen_test
async def test_replying_without_fetching_leaves_customer_messages_unread(api, customer, radar_user):
    await api.customer_send(customer, radar_user.id, text("q1"))
    await api.customer_send(customer, radar_user.id, text("q2"))
    await api.radar_send(radar_user, customer.id, text("reply without fetching"))
    assert await api.radar_unread(radar_user, customer.id) == 2
    assert await api.radar_unread(radar_user) == 2
    assert (await api.contacts(radar_user))["data"]["ret_data"][0]["unread_count"] == 2
    assert msgs(await api.radar_getmsg(radar_user, customer.id)) == ["q1", "q2"]


# -- contact ------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_contacts_most_recent_first_with_items(
    api, store, customer, other_customer, radar_user, other_radar_user
):
    third_id, third_token = await store.save_customer(None, username="第三位", headimgurl="https://wx.qlogo.cn/3/132")
    empty = await api.contacts(radar_user)
    assert empty["code"] == 200 and empty["data"] == {"ret_data": [], "data_count": 0}

    await api.customer_send(customer, radar_user.id, text("a1"))
    await api.customer_send(customer, radar_user.id, text("a2"))
    await api.radar_send(radar_user, other_customer.id, text("b-greeting"))
    third_last = await api.customer_send(Account(third_id, third_token), radar_user.id, text("c1"))
    await api.customer_send(customer, other_radar_user.id, text("not mine"))

    body = await api.contacts(radar_user)
    assert body["code"] == 200
    assert set(body["data"]) == {"ret_data", "data_count"}
    assert body["data"]["data_count"] == 3
    items = body["data"]["ret_data"]
    assert [item["customer_id"] for item in items] == [third_id, other_customer.id, customer.id]
    for item in items:
        assert set(item) == CONTACT_KEYS
        assert set(item["last_msg"]) == TEXT_KEYS
        assert item["last_msg"]["customer_id"] == item["customer_id"]
        assert item["last_msg"]["user_id"] == radar_user.id
    third, b, a = items
    assert third["customer"] == "第三位" and third["customer_headimgurl"] == "https://wx.qlogo.cn/3/132"
    assert third["unread_count"] == 1
    assert third["last_msg"]["id"] == third_last["data"]["id"]
    assert third["last_msg"]["dateTime"] == third_last["data"]["dateTime"]
    assert b["customer"] == "小明" and b["customer_headimgurl"] == "https://wx.qlogo.cn/xm/132"
    assert b["unread_count"] == 0
    assert b["last_msg"]["msg"] == "b-greeting" and b["last_msg"]["send_type"] == 1
    assert b["last_msg"]["is_customer_already_read"] == 0 and b["last_msg"]["is_customer_already_read_text"] == "未读"
    assert a["customer"] == CUSTOMER_NAME and a["customer_headimgurl"] == CUSTOMER_HEAD
    assert a["unread_count"] == 2 and a["last_msg"]["msg"] == "a2"
    assert a["last_msg"]["src"] == CUSTOMER_HEAD and a["last_msg"]["name"] == CUSTOMER_NAME

    # a new message in the oldest conversation moves it to the top, whoever sends it
    await api.radar_send(radar_user, customer.id, text("a3 reply"))
    items = (await api.contacts(radar_user))["data"]["ret_data"]
    assert [item["customer_id"] for item in items] == [customer.id, third_id, other_customer.id]
    assert items[0]["last_msg"]["msg"] == "a3 reply" and items[0]["unread_count"] == 2

    await api.customer_send(other_customer, radar_user.id, text("b2"))
    items = (await api.contacts(radar_user))["data"]["ret_data"]
    assert [item["customer_id"] for item in items] == [other_customer.id, customer.id, third_id]
    assert items[0]["unread_count"] == 1 and items[0]["last_msg"]["msg"] == "b2"

    # the other radar user sees only their own conversation
    others = await api.contacts(other_radar_user)
    assert others["data"]["data_count"] == 1
    assert [item["customer_id"] for item in others["data"]["ret_data"]] == [customer.id]
    assert others["data"]["ret_data"][0]["last_msg"]["msg"] == "not mine"


@pytest.mark.gen_test
async def test_contacts_paging(api, store, radar_user):
    customers = []
    for n in range(5):
        customer_id, token = await store.save_customer(None, username=f"客户{n}", headimgurl="")
        customers.append(Account(customer_id, token))
        await api.customer_send(customers[-1], radar_user.id, text(f"hello {n}"))
    newest_first = [account.id for account in reversed(customers)]

    page1 = await api.contacts(radar_user, current_page=1, length=2)
    assert page1["data"]["data_count"] == 5
    assert [item["customer_id"] for item in page1["data"]["ret_data"]] == newest_first[:2]
    page2 = await api.contacts(radar_user, current_page=2, length=2)
    assert [item["customer_id"] for item in page2["data"]["ret_data"]] == newest_first[2:4]
    page3 = await api.contacts(radar_user, current_page=3, length=2)
    assert [item["customer_id"] for item in page3["data"]["ret_data"]] == newest_first[4:]
    page4 = await api.contacts(radar_user, current_page=4, length=2)
    assert page4["data"] == {"ret_data": [], "data_count": 5}
    default = await api.contacts(radar_user)
    assert [item["customer_id"] for item in default["data"]["ret_data"]] == newest_first


# -- isolation between radar users ------------------------------------------------------------


@pytest.mark.gen_test
async def test_a_radar_user_cannot_read_another_users_conversation(
    api, customer, radar_user, other_radar_user
):
    await api.customer_send(customer, other_radar_user.id, text("secret"))
    await api.radar_send(other_radar_user, customer.id, text("secret reply"))

    for body in (
        await api.radar_getmsg(radar_user, customer.id),
        await api.radar_getmsg(radar_user, customer.id, last_id=0),
        await api.radar_getmsg(radar_user),
        await api.radar_getmsg(radar_user, last_id=0),
    ):
        assert body["code"] == 200
        assert body["data"] == {"ret_data": [], "data_count": 0}
    history = await api.radar_history(radar_user, customer.id)
    assert history["code"] == 200
    assert history["data"] == {"ret_data": [], "data_count": 0}
    assert await api.radar_unread(radar_user, customer.id) == 0
    assert await api.radar_unread(radar_user) == 0
    assert (await api.contacts(radar_user))["data"]["data_count"] == 0

    # and nothing of the owner's read state moved
    assert await api.radar_unread(other_radar_user, customer.id) == 1
    assert msgs(await api.radar_history(other_radar_user, customer.id)) == ["secret", "secret reply"]


@pytest.mark.gen_test
async def test_same_customer_with_two_users_are_separate_conversations(
    api, customer, radar_user, other_radar_user
):
    await api.customer_send(customer, radar_user.id, text("to wang"))
    await api.customer_send(customer, other_radar_user.id, text("to li"))
    await api.radar_send(other_radar_user, customer.id, text("li answers"))

    assert msgs(await api.radar_getmsg(radar_user, customer.id, last_id=0)) == ["to wang"]
    assert msgs(await api.radar_history(radar_user, customer.id)) == ["to wang"]
    assert msgs(await api.radar_getmsg(other_radar_user, customer.id, last_id=0)) == ["to li", "li answers"]
    # the first user reading did not touch the second user's conversation
    assert await api.radar_unread(other_radar_user, customer.id) == 0  # read by the last_id fetch above
    assert await api.customer_unread(customer, other_radar_user.id) == 1
    assert await api.customer_unread(customer, radar_user.id) == 0


@pytest.mark.gen_test
async def test_radar_routes_are_signed_by_the_radar_user_only(api, customer, radar_user, other_radar_user):
    # the fixtures' customer and radar user share id 1 but not a token
    assert customer.id == radar_user.id
    forged = Account(radar_user.id, customer.token)
    for body in (
        await api.radar_send(forged, customer.id, text("hi")),
        await api.radar_getmsg(forged, customer.id),
        await api.radar_history(forged, customer.id),
        await api.get("/zhugeleida/qiyeweixin/chat/query_num/0", forged),
        await api.contacts(forged),
    ):
        assert body == {"code": 400, "msg": "token异常", "data": body["data"]}
    # a user_id in the form cannot make one radar user send as another
    sent = await api.radar_send(radar_user, customer.id, text("who am i"), user_id=other_radar_user.id)
    assert sent["code"] == 200
    assert msgs(await api.radar_history(radar_user, customer.id)) == ["who am i"]
    assert (await api.radar_history(other_radar_user, customer.id))["data"]["data_count"] == 0
