"""Recall (撤回) and typing, continued: a page that was away during a recall, what a bad
request is told, and every answer checked against handlers/openapi.json. Both backends,
through the real app (tests/test_recall.py has the rest; tests/test_recall_live.py the
real server: webhooks, two processes, pg_dump).
"""
from __future__ import annotations

import asyncio
import json

import pytest

from conftest import ROOT, Account, text
from storage.records import RECALLED_BY_THEM, RECALLED_BY_YOU

CUSTOMER, RADAR = "/zhugeleida/gongzhonghao", "/zhugeleida/qiyeweixin"
DOCUMENT = json.loads((ROOT / "handlers" / "openapi.json").read_text(encoding="utf-8"))
INT64_MAX = 2**63 - 1


def conforms(schema_name: str, body: dict) -> None:
    """``body`` is what openapi.json's ``components/schemas/<schema_name>`` says it is."""
    import jsonschema_rs

    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": DOCUMENT["components"]}
    errors = [f"{error.instance_path}: {error.message}" for error in jsonschema_rs.validator_for(schema).iter_errors(body)]
    assert not errors, (errors, body)


async def customer_recall(api, customer: Account, user_id, message_id) -> dict:
    return await api.post(f"{CUSTOMER}/chat/recall/0", customer, {"u_id": user_id, "message_id": message_id})


async def radar_recall(api, user: Account, customer_id, message_id) -> dict:
    return await api.post(f"{RADAR}/chat/recall/0", user, {"customer_id": customer_id, "message_id": message_id})


def recalled(answer: dict) -> int:
    assert answer["code"] == 200, answer
    conforms("RecallOk", answer)
    return answer["data"]["id"]


def ids(answer: dict) -> list[int]:
    assert answer["code"] == 200, answer
    return [item["id"] for item in answer["data"]["ret_data"]]


def refused(answer: dict, field: str) -> dict:
    """The one problem a 402 names, for ``field`` only."""
    assert answer["code"] == 402, answer
    conforms("InvalidParams", answer)
    assert list(answer["data"]) == [field], answer
    (problem,) = answer["data"][field]
    assert problem["message"], problem
    return problem


# -- a page that was away ---------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_a_page_back_with_the_recalled_messages_id_as_last_id_gets_the_notice(api, customer, radar_user):
    """The radar user's page last saw N, the customer's message; N was recalled meanwhile."""
    last_seen = (await api.customer_send(customer, radar_user.id, text("我的手机号是 13800000000")))["data"]["id"]
    assert ids(await api.radar_getmsg(radar_user, customer.id)) == [last_seen]
    notice = recalled(await customer_recall(api, customer, radar_user.id, last_seen))

    back = await api.radar_getmsg(radar_user, customer.id, last_id=last_seen)
    conforms("RadarGetMsgOk", back)
    (item,) = back["data"]["ret_data"]
    assert (item["id"], item["send_type"], item["info_type"], item["recalled_id"], item["recalled_by"], item["msg"]) \
        == (notice, 3, 7, last_seen, "customer", RECALLED_BY_THEM)
    # the same page's inbox (no customer_id), back from the same cursor
    assert ids(await api.radar_getmsg(radar_user, None, last_id=last_seen)) == [notice]


@pytest.mark.gen_test(timeout=30)
async def test_a_page_back_after_a_recall_of_an_earlier_message_gets_what_came_since_in_order(
        api, customer, radar_user):
    """The customer's page last saw N; meanwhile the rep recalled an earlier message M < N, sent
    another, and recalled that one too: the page gets, in order, everything after N."""
    earlier = (await api.radar_send(radar_user, customer.id, text("价格是 999")))["data"]["id"]
    last_seen = (await api.customer_send(customer, radar_user.id, text("好的")))["data"]["id"]
    assert ids(await api.customer_getmsg(customer, radar_user.id, last_id=0)) == [earlier, last_seen]

    first_notice = recalled(await radar_recall(api, radar_user, customer.id, earlier))
    kept = (await api.radar_send(radar_user, customer.id, text("价格是 899")))["data"]["id"]
    typo = (await api.radar_send(radar_user, customer.id, text("价格是 8999")))["data"]["id"]
    second_notice = recalled(await radar_recall(api, radar_user, customer.id, typo))

    back = await api.customer_getmsg(customer, radar_user.id, last_id=last_seen)
    conforms("CustomerGetMsgOk", back)
    items = back["data"]["ret_data"]
    assert [item["id"] for item in items] == [first_notice, kept, typo, second_notice]
    assert [item.get("recalled_id") for item in items] == [earlier, None, None, typo]
    assert items[1]["msg"] == "价格是 899"
    assert items[2]["recalled"] is True and "msg" not in items[2] and "info_type" not in items[2]
    assert items[3]["msg"] == RECALLED_BY_THEM
    # the rep's own page, back from the same cursor, reads "you recalled"
    mine = (await api.radar_getmsg(radar_user, customer.id, last_id=last_seen))["data"]["ret_data"]
    assert [item.get("msg") for item in mine] == [RECALLED_BY_YOU, "价格是 899", None, RECALLED_BY_YOU]


@pytest.mark.gen_test(timeout=30)
async def test_a_held_getmsg_from_the_recalled_messages_id_is_woken_by_the_notice(api, customer, radar_user):
    sent = (await api.customer_send(customer, radar_user.id, text("撤回我")))["data"]["id"]
    held = asyncio.ensure_future(api.radar_getmsg(radar_user, customer.id, wait=5, last_id=sent))
    await asyncio.sleep(0.2)
    notice = recalled(await customer_recall(api, customer, radar_user.id, sent))
    answer = await asyncio.wait_for(held, 2)
    assert ids(answer) == [notice] and answer["data"]["ret_data"][0]["recalled_id"] == sent


@pytest.mark.gen_test(timeout=30)
async def test_the_contact_list_and_history_after_a_recall_match_the_document(api, customer, radar_user):
    sent = (await api.customer_send(customer, radar_user.id, {"info_type": 2, "product_name": "雷达名片"}))["data"]["id"]
    recalled(await customer_recall(api, customer, radar_user.id, sent))
    contacts = await api.contacts(radar_user)
    conforms("ContactOk", contacts)
    (contact,) = contacts["data"]["ret_data"]
    assert contact["unread_count"] == 0 and contact["last_msg"]["recalled_id"] == sent
    for schema_name, answer in (("RadarHistoryOk", await api.radar_history(radar_user, customer.id)),
                                ("CustomerHistoryOk", await api.customer_history(customer, radar_user.id))):
        conforms(schema_name, answer)
        tombstone = answer["data"]["ret_data"][0]
        assert tombstone["recalled"] is True and "product_name" not in tombstone, tombstone


# -- typing answers, as the document says -------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_typing_answers_and_the_getmsg_it_wakes_match_the_document(api, customer, radar_user):
    held = asyncio.ensure_future(api.customer_getmsg(customer, radar_user.id, wait=5, typing=1))
    await asyncio.sleep(0.2)
    typing = await api.post(f"{RADAR}/chat/typing/0", radar_user, {"customer_id": customer.id})
    conforms("TypingOk", typing)
    woken = await asyncio.wait_for(held, 2)
    conforms("CustomerGetMsgOk", woken)
    assert woken["data"]["typing"]["side"] == "radar_user" and woken["data"]["ret_data"] == []

    held = asyncio.ensure_future(api.radar_getmsg(radar_user, None, wait=5, typing=1))
    await asyncio.sleep(0.2)
    conforms("TypingOk", await api.post(f"{CUSTOMER}/chat/typing/0", customer, {"u_id": radar_user.id}))
    woken = await asyncio.wait_for(held, 2)
    conforms("RadarGetMsgOk", woken)
    assert woken["data"]["typing"] == {"customer_id": customer.id, "user_id": radar_user.id, "side": "customer"}


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("message_id, code", [
    (None, "required"),
    ("", "required"),
    ("abc", "invalid"),
    ("1.5", "invalid"),
    ("0x10", "invalid"),
    (0, "min_value"),
    (-7, "min_value"),
    (INT64_MAX + 1, "invalid"),
    (10**30, "invalid"),
    (INT64_MAX, "not_yours"),  # a number storage can hold, naming no message
])
@pytest.mark.gen_test(timeout=30)
async def test_a_recall_with_a_bad_message_id_is_a_402_naming_message_id(api, customer, radar_user, message_id,
                                                                          code):
    sent = (await api.customer_send(customer, radar_user.id, text("留着")))["data"]["id"]
    for answer in (await customer_recall(api, customer, radar_user.id, message_id),
                   await radar_recall(api, radar_user, customer.id, message_id)):
        assert refused(answer, "message_id")["code"] == code
    history = (await api.customer_history(customer, radar_user.id))["data"]["ret_data"]
    assert [(item["id"], item.get("msg")) for item in history] == [(sent, "留着")]  # nothing recalled


@pytest.mark.gen_test(timeout=30)
async def test_a_recall_of_a_message_of_another_conversation_is_not_yours(
        api, customer, other_customer, radar_user, other_radar_user):
    theirs = (await api.customer_send(other_customer, radar_user.id, text("别人的")))["data"]["id"]
    mine_elsewhere = (await api.customer_send(customer, other_radar_user.id, text("另一个会话")))["data"]["id"]
    for message_id in (theirs, mine_elsewhere):
        assert refused(await customer_recall(api, customer, radar_user.id, message_id), "message_id")["code"] \
            == "not_yours"
    assert refused(await radar_recall(api, radar_user, customer.id, theirs), "message_id")["code"] == "not_yours"
    # to a peer that does not exist: the peer is named, not the message
    assert refused(await customer_recall(api, customer, 10**9, mine_elsewhere), "u_id")["code"] == "does_not_exist"
    assert refused(await radar_recall(api, radar_user, 10**9, theirs), "customer_id")["code"] == "does_not_exist"


@pytest.mark.gen_test(timeout=30)
async def test_typing_for_a_peer_that_does_not_exist_names_the_peer(api, customer, radar_user):
    for peer, code in ((10**9, "does_not_exist"), (None, "required"), ("x", "invalid"), (0, "min_value")):
        customer_side = await api.post(f"{CUSTOMER}/chat/typing/0", customer, {"u_id": peer})
        assert refused(customer_side, "u_id")["code"] == code
        radar_side = await api.post(f"{RADAR}/chat/typing/0", radar_user, {"customer_id": peer})
        assert refused(radar_side, "customer_id")["code"] == code
    # the old clients' customer_id on the customer side may only name the signer
    assert refused(await api.post(f"{CUSTOMER}/chat/typing/0", customer,
                                  {"u_id": radar_user.id, "customer_id": customer.id + 1}), "customer_id")


@pytest.mark.parametrize("typing", ["2", "-1", "yes", "1.0"])
@pytest.mark.gen_test(timeout=30)
async def test_getmsg_with_typing_other_than_0_or_1_is_a_402_naming_typing(api, customer, radar_user, typing):
    assert refused(await api.customer_getmsg(customer, radar_user.id, typing=typing), "typing")
    assert refused(await api.radar_getmsg(radar_user, customer.id, typing=typing), "typing")
    assert refused(await api.radar_getmsg(radar_user, None, typing=typing), "typing")
    for accepted in ("0", "1"):
        assert (await api.customer_getmsg(customer, radar_user.id, typing=accepted))["code"] == 200
