"""Signatures: every request proves its caller; nothing else can name the caller."""
from __future__ import annotations

import hashlib
import logging
import time

import pytest

from conftest import Account, sign, text

TOKEN_REJECTED = {"code": 400, "msg": "token异常", "data": {}}
QUERY_NUM = "/zhugeleida/gongzhonghao/chat/query_num/0"


async def fetch_json(api, url):
    import ujson

    response = await api.raw("GET", url)
    assert response.code == 200
    return ujson.loads(response.body)


def url_with(api, params):
    from urllib.parse import urlencode

    return f"{api.base_url}{QUERY_NUM}?{urlencode(params)}"


@pytest.mark.gen_test
async def test_good_signature_is_accepted(api, customer, radar_user):
    body = await fetch_json(api, url_with(api, {**sign(customer), "u_id": radar_user.id}))
    assert body["code"] == 200


@pytest.mark.gen_test
async def test_wrong_digest_is_rejected(api, customer, radar_user):
    params = {**sign(customer), "u_id": radar_user.id}
    params["rand_str"] = hashlib.md5(b"something else").hexdigest()
    assert await fetch_json(api, url_with(api, params)) == TOKEN_REJECTED


@pytest.mark.gen_test
async def test_uppercase_digest_of_the_right_value_is_accepted(api, customer, radar_user):
    params = {**sign(customer), "u_id": radar_user.id}
    params["rand_str"] = params["rand_str"].upper()
    assert (await fetch_json(api, url_with(api, params)))["code"] == 200


@pytest.mark.gen_test
async def test_unknown_account_is_rejected(api, radar_user):
    ghost = Account(id=424242, token="whatever")
    assert await fetch_json(api, url_with(api, {**sign(ghost), "u_id": radar_user.id})) == TOKEN_REJECTED


@pytest.mark.gen_test
@pytest.mark.parametrize("missing", ["user_id", "timestamp", "rand_str"])
async def test_missing_parameter_is_rejected(api, customer, radar_user, missing):
    params = {**sign(customer), "u_id": radar_user.id}
    del params[missing]
    assert await fetch_json(api, url_with(api, params)) == TOKEN_REJECTED


@pytest.mark.gen_test
@pytest.mark.parametrize("field,value", [("user_id", "abc"), ("user_id", "-1"), ("timestamp", "12.5"),
                                         ("timestamp", "99999999999999999999999"), ("rand_str", "xyz")])
async def test_malformed_parameter_is_rejected(api, customer, radar_user, field, value):
    params = {**sign(customer), "u_id": radar_user.id, field: value}
    assert await fetch_json(api, url_with(api, params)) == TOKEN_REJECTED


@pytest.mark.gen_test
@pytest.mark.parametrize("skew_seconds", [-901, 901, -86400 * 365, 86400])
async def test_stale_and_future_timestamps_are_rejected(api, customer, radar_user, skew_seconds):
    stamp = int(time.time() * 1000) + skew_seconds * 1000
    params = {**sign(customer, stamp), "u_id": radar_user.id}
    assert await fetch_json(api, url_with(api, params)) == TOKEN_REJECTED


@pytest.mark.gen_test
async def test_timestamp_inside_the_window_is_accepted(api, customer, radar_user):
    stamp = int(time.time() * 1000) - 600 * 1000
    params = {**sign(customer, stamp), "u_id": radar_user.id}
    assert (await fetch_json(api, url_with(api, params)))["code"] == 200


class TestWindowOff:
    @pytest.fixture
    def api_settings(self):
        from handlers import ApiSettings

        return ApiSettings(max_skew_seconds=0)

    @pytest.mark.gen_test
    async def test_zero_turns_the_window_off(self, api, customer, radar_user):
        params = {**sign(customer, 1537514281502), "u_id": radar_user.id}  # the seed's 2018 example time
        assert (await fetch_json(api, url_with(api, params)))["code"] == 200


@pytest.mark.gen_test
async def test_radar_token_cannot_sign_customer_routes(api, customer, radar_user, store):
    # A radar user whose id collides with a customer's id signs a customer route with its own token.
    assert radar_user.id == customer.id
    await api.radar_send(radar_user, customer.id, text("hello"))
    body = await api.get(QUERY_NUM, radar_user, u_id=radar_user.id)
    assert body == TOKEN_REJECTED
    body = await api.get("/zhugeleida/qiyeweixin/chat/query_num/0", customer)
    assert body == TOKEN_REJECTED


@pytest.mark.gen_test
async def test_no_parameter_lets_a_customer_read_another_customers_conversation(
    api, customer, other_customer, radar_user
):
    await api.customer_send(other_customer, radar_user.id, text("private to other_customer"))
    await api.radar_send(radar_user, other_customer.id, text("reply to other_customer"))
    tries = [
        await api.customer_getmsg(customer, radar_user.id, customer_id=other_customer.id),
        await api.customer_getmsg(customer, radar_user.id, last_id=0),
        await api.get("/zhugeleida/gongzhonghao/chat/getmsg/0", customer,
                      u_id=radar_user.id, wait=0, last_id=0, user_id=other_customer.id),
        await api.customer_history(customer, radar_user.id, length=0),
        await api.customer_history(customer, radar_user.id, customer_id=other_customer.id),
    ]
    for body in tries:
        assert "private" not in str(body) and "reply to other" not in str(body), body
    assert await api.customer_unread(customer, radar_user.id) == 0
    # and other_customer still has its reply unread
    assert await api.customer_unread(other_customer, radar_user.id) == 1


@pytest.mark.gen_test
async def test_send_cannot_be_made_in_another_customers_name(api, customer, other_customer, radar_user):
    body = await api.customer_send(customer, radar_user.id, text("spoof"), customer_id=other_customer.id)
    assert body["code"] == 402 and "customer_id" in body["data"]
    history = await api.customer_history(other_customer, radar_user.id)
    assert history["data"]["data_count"] == 0


@pytest.mark.gen_test
async def test_rejected_signature_reads_no_body_and_writes_nothing(api, customer, radar_user, store):
    forged = Account(customer.id, "not-the-token")
    body = await api.customer_send(forged, radar_user.id, text("forged"))
    assert body == TOKEN_REJECTED
    assert (await api.customer_history(customer, radar_user.id))["data"]["data_count"] == 0


@pytest.mark.gen_test
async def test_logs_never_carry_rand_str_or_tokens(api, customer, radar_user, caplog):
    caplog.set_level(logging.DEBUG)
    params = sign(customer)
    await api.get(QUERY_NUM, customer, u_id=radar_user.id)
    await fetch_json(api, url_with(api, {**params, "u_id": radar_user.id}))
    await fetch_json(api, url_with(api, {**params, "rand_str": "0" * 32, "u_id": radar_user.id}))
    await api.raw("GET", f"{api.base_url}/no/such/route?rand_str={params['rand_str']}&token={customer.token}")
    await api.raw("POST", api.url("/zhugeleida/gongzhonghao/chat/getmsg/0", customer), b"")
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "/zhugeleida/gongzhonghao/chat/query_num/0" in logged  # the access log is there
    assert params["rand_str"] not in logged
    assert customer.token not in logged
    assert "rand_str=***" in logged


@pytest.mark.gen_test
async def test_a_token_changed_through_the_store_applies_at_once(api, store, customer, radar_user):
    assert (await api.get(QUERY_NUM, customer, u_id=radar_user.id))["code"] == 200  # now cached
    await store.save_customer(customer.id, token="rotated")
    assert await api.get(QUERY_NUM, customer, u_id=radar_user.id) == TOKEN_REJECTED
    assert (await api.get(QUERY_NUM, Account(customer.id, "rotated"), u_id=radar_user.id))["code"] == 200
