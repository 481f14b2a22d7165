"""The customer side (公众号) of the contract: shapes, msg strings, read state."""
from __future__ import annotations

import re

import pytest

from conftest import text

ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}")

GETMSG_KEYS = {
    "id", "customer_id", "user_id", "user_avator", "user_avatar", "customer_headimgurl", "customer",
    "dateTime", "send_type", "is_first_info", "info_type", "msg",
}


@pytest.mark.gen_test
async def test_send_answers_id_and_time(api, customer, radar_user):
    body = await api.customer_send(customer, radar_user.id, text("你好"))
    assert body["code"] == 200
    assert body["msg"] == "send msg successful"
    assert isinstance(body["data"]["id"], int)
    assert ISO_MS.fullmatch(body["data"]["dateTime"])


@pytest.mark.gen_test
async def test_getmsg_returns_own_and_radar_messages_with_seed_keys(api, customer, radar_user):
    await api.customer_send(customer, radar_user.id, text("第一条 😀"))
    await api.radar_send(radar_user, customer.id, text("您好,请问有什么可以帮您?"))

    body = await api.customer_getmsg(customer, radar_user.id)
    assert body["code"] == 200
    assert body["msg"] == "实时获取-最新聊天信息成功"
    items = body["data"]["ret_data"]
    assert body["data"]["data_count"] == len(items) == 2
    first, second = items
    assert set(first) == GETMSG_KEYS
    assert first["send_type"] == 2 and second["send_type"] == 1
    assert first["msg"] == "第一条 😀"
    assert first["is_first_info"] is True and second["is_first_info"] is False
    assert first["customer_id"] == customer.id and first["user_id"] == radar_user.id
    assert first["user_avator"] == "https://img.example/card.png"  # the card photo, under the seed's spelling
    assert first["customer"] == "_zzz จุ๊บ 😀"
    assert first["customer_headimgurl"] == "https://wx.qlogo.cn/zzz/132"
    assert ISO_MS.fullmatch(first["dateTime"])
    assert first["id"] < second["id"]


@pytest.mark.gen_test
async def test_getmsg_delivers_once_then_reports_nothing_new(api, customer, radar_user):
    await api.radar_send(radar_user, customer.id, text("hi"))
    assert (await api.customer_getmsg(customer, radar_user.id))["data"]["data_count"] == 1
    body = await api.customer_getmsg(customer, radar_user.id)
    assert body == {"code": 200, "msg": "没有得到实时聊天信息", "data": {"ret_data": [], "data_count": 0}}


@pytest.mark.gen_test
async def test_user_avator_falls_back_to_avatar(api, io_loop, store, customer):
    user_id, _ = await store.save_radar_user(None, username="无名片", avatar="https://img.example/plain.png")
    await api.customer_send(customer, user_id, text("hi"))
    item = (await api.customer_getmsg(customer, user_id))["data"]["ret_data"][0]
    assert item["user_avator"] == "https://img.example/plain.png"


@pytest.mark.gen_test
async def test_content_keys_are_merged_but_cannot_override_server_keys(api, customer, radar_user):
    content = {"info_type": 2, "product_name": "产品名字", "product_price": "99.00",
               "product_cover_url": "statics/zhugeleida/imgs/chat/x.png", "id": 999, "customer_id": 42}
    await api.customer_send(customer, radar_user.id, content)
    item = (await api.customer_getmsg(customer, radar_user.id))["data"]["ret_data"][0]
    assert item["product_name"] == "产品名字" and item["product_price"] == "99.00"
    assert item["product_cover_url"] == "statics/zhugeleida/imgs/chat/x.png"
    assert item["id"] != 999 and item["customer_id"] == customer.id


@pytest.mark.gen_test
async def test_query_num_counts_unread_radar_messages_only(api, customer, radar_user):
    assert await api.customer_unread(customer, radar_user.id) == 0
    await api.customer_send(customer, radar_user.id, text("mine"))
    assert await api.customer_unread(customer, radar_user.id) == 0
    await api.radar_send(radar_user, customer.id, text("a"))
    await api.radar_send(radar_user, customer.id, text("b"))
    body = await api.get("/zhugeleida/gongzhonghao/chat/query_num/0", customer, u_id=radar_user.id)
    assert body == {"code": 200, "msg": "查询成功", "data": {"chatinfo_count": 2}}
    await api.customer_getmsg(customer, radar_user.id)
    assert await api.customer_unread(customer, radar_user.id) == 0


@pytest.mark.gen_test
async def test_customer_sending_does_not_mark_radar_messages_read(api, customer, radar_user):
    await api.radar_send(radar_user, customer.id, text("a"))
    await api.customer_send(customer, radar_user.id, text("reply without fetching"))
    assert await api.customer_unread(customer, radar_user.id) == 1


@pytest.mark.gen_test
async def test_history_pages_newest_first_each_oldest_first(api, customer, radar_user):
    ids = []
    for n in range(5):
        ids.append((await api.customer_send(customer, radar_user.id, text(f"m{n}")))["data"]["id"])

    page1 = await api.customer_history(customer, radar_user.id, current_page=1, length=2)
    assert page1["code"] == 200 and page1["msg"] == "分页获取-全部聊天消息成功"
    assert [item["msg"] for item in page1["data"]["ret_data"]] == ["m3", "m4"]
    assert page1["data"]["data_count"] == 5
    page2 = await api.customer_history(customer, radar_user.id, current_page=2, length=2)
    assert [item["msg"] for item in page2["data"]["ret_data"]] == ["m1", "m2"]
    page3 = await api.customer_history(customer, radar_user.id, current_page=3, length=2)
    assert [item["msg"] for item in page3["data"]["ret_data"]] == ["m0"]
    assert page3["data"]["ret_data"][0]["is_first_info"] is True
    page4 = await api.customer_history(customer, radar_user.id, current_page=4, length=2)
    assert page4["data"]["ret_data"] == [] and page4["data"]["data_count"] == 5

    whole = await api.customer_history(customer, radar_user.id, length=0)
    assert [item["id"] for item in whole["data"]["ret_data"]] == ids
    assert [item["is_first_info"] for item in whole["data"]["ret_data"]] == [True, False, False, False, False]


@pytest.mark.gen_test
async def test_history_item_keys_and_card_contacts(api, customer, radar_user):
    await api.customer_send(customer, radar_user.id, text("hi"))
    body = await api.customer_history(customer, radar_user.id, customer_id=customer.id)
    data = body["data"]
    assert set(data) == {"ret_data", "mingpian_phone", "wechat", "data_count"}
    assert data["mingpian_phone"] == "18932674288" and data["wechat"] == "wx_wang"
    item = data["ret_data"][0]
    assert set(item) == GETMSG_KEYS | {"from_user_name", "user_avatar"}
    assert item["from_user_name"] == "_zzz จุ๊บ 😀"
    assert item["user_avatar"] == "https://img.example/card.png"


@pytest.mark.gen_test
async def test_history_phone_and_wechat_fall_back_to_wechat_phone(api, store, customer):
    user_id, _ = await store.save_radar_user(None, username="仅微信手机", wechat_phone="13800000000")
    body = await api.customer_history(customer, user_id)
    assert body["data"]["mingpian_phone"] == "13800000000"
    assert body["data"]["wechat"] == "13800000000"
    assert body["data"]["ret_data"] == [] and body["data"]["data_count"] == 0


@pytest.mark.gen_test
async def test_history_marks_conversation_read_for_customer_only(api, customer, radar_user):
    await api.customer_send(customer, radar_user.id, text("question"))
    await api.radar_send(radar_user, customer.id, text("answer"))
    assert await api.customer_unread(customer, radar_user.id) == 1
    await api.customer_history(customer, radar_user.id)
    assert await api.customer_unread(customer, radar_user.id) == 0
    assert (await api.customer_getmsg(customer, radar_user.id))["data"]["data_count"] == 0
    # the radar user's side is untouched
    assert await api.radar_unread(radar_user, customer.id) == 1


@pytest.mark.gen_test
async def test_history_customer_id_must_be_the_signer(api, customer, other_customer, radar_user):
    await api.customer_send(other_customer, radar_user.id, text("secret"))
    body = await api.customer_history(customer, radar_user.id, customer_id=other_customer.id)
    assert body["code"] == 402 and "customer_id" in body["data"]


@pytest.mark.gen_test
async def test_unknown_radar_user_is_a_402_naming_u_id(api, customer):
    for body in (
        await api.customer_send(customer, 999, text("hi")),
        await api.customer_getmsg(customer, 999),
        await api.customer_history(customer, 999),
        await api.get("/zhugeleida/gongzhonghao/chat/query_num/0", customer, u_id=999),
    ):
        assert body["code"] == 402 and body["msg"] == "请求异常"
        assert body["data"]["u_id"][0]["code"] == "does_not_exist"


@pytest.mark.gen_test
async def test_client_msg_id_makes_a_retry_store_nothing(api, customer, radar_user):
    first = await api.customer_send(customer, radar_user.id, text("once"), client_msg_id="abc-1")
    retry = await api.customer_send(customer, radar_user.id, text("once"), client_msg_id="abc-1")
    assert retry == first
    history = await api.customer_history(customer, radar_user.id)
    assert history["data"]["data_count"] == 1
    other = await api.customer_send(customer, radar_user.id, text("twice"), client_msg_id="abc-2")
    assert other["data"]["id"] != first["data"]["id"]


@pytest.mark.gen_test
async def test_o_id_is_ignored_and_trailing_slash_accepted(api, customer, radar_user):
    await api.radar_send(radar_user, customer.id, text("hi"))
    body = await api.get("/zhugeleida/gongzhonghao/chat/query_num/12345/", customer, u_id=radar_user.id)
    assert body["data"]["chatinfo_count"] == 1


@pytest.mark.gen_test
async def test_multipart_form_is_accepted(api, customer, radar_user):
    boundary = "leidaBoundary"
    parts = []
    for name, value in (("u_id", str(radar_user.id)), ("content", '{"info_type": 1, "msg": "多部分"}')):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n')
    body = ("".join(parts) + f"--{boundary}--\r\n").encode()
    response = await api.raw(
        "POST", api.url("/zhugeleida/gongzhonghao/chat/send_msg/0", customer), body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    import ujson
    assert ujson.loads(response.body)["code"] == 200
    item = (await api.customer_getmsg(customer, radar_user.id))["data"]["ret_data"][0]
    assert item["msg"] == "多部分"
