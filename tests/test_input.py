"""Bad input gets a clear answer naming the field; never a 500, and the server keeps serving."""
from __future__ import annotations

import time
from email.utils import parsedate_to_datetime

import pytest
import ujson

from conftest import text

SEND = "/zhugeleida/gongzhonghao/chat/send_msg/0"
GETMSG = "/zhugeleida/gongzhonghao/chat/getmsg/0"


def assert_invalid(body, field, code=None):
    assert body["code"] == 402, body
    assert body["msg"] == "请求异常"
    assert field in body["data"], body
    errors = body["data"][field]
    assert errors and all(set(error) == {"message", "code"} for error in errors)
    if code is not None:
        assert errors[0]["code"] == code, errors


@pytest.mark.gen_test
@pytest.mark.parametrize("content,code", [
    ("not json", "invalid"),
    ("[1, 2]", "invalid"),
    ('"a string"', "invalid"),
    ("{}", "invalid"),
    ('{"info_type": 9, "msg": "x"}', "invalid"),
    ('{"info_type": 6, "msg": "shop"}', "invalid"),          # radar side only
    ('{"info_type": true, "msg": "x"}', "invalid"),
    ('{"info_type": 1}', "required"),
    ('{"info_type": 1, "msg": ""}', "required"),
    ('{"info_type": 1, "msg": "   "}', "required"),
    ('{"info_type": 1, "msg": 5}', "invalid"),
    ('{"info_type": 2}', "required"),
    ('{"info_type": 2, "product_name": ["x"]}', "invalid"),
    ('{"info_type": 2, "product_name": "p", "product_price": {"a": 1}}', "invalid"),
    ('{"info_type": 4}', "required"),
    ('{"info_type": 4, "url": "javascript:alert(1)"}', "invalid"),
    ('{"info_type": 5, "url": 7}', "invalid"),
    ('{"info_type": 2, "product_name": "p", "product_cover_url": "data:text/html,x"}', "invalid"),
    ('{"info_type": 1, "msg": "\\ud800"}', "invalid"),
    ('{"info_type": 1, "msg": "x", "n": 1e999999}', "invalid"),
])
async def test_bad_content_is_a_402_naming_content(api, customer, radar_user, content, code):
    assert_invalid(await api.customer_send(customer, radar_user.id, content), "content", code)


@pytest.mark.gen_test
@pytest.mark.parametrize("content", [
    {"info_type": 1, "msg": "这个信息是文字\\表情 😀🎉"},
    {"info_type": "1", "msg": "info_type as a digit string, as some old pages send it"},
    {"info_type": 2, "product_name": "产品名字", "product_price": 99.5, "product_cover_url": "statics/x.png"},
    {"info_type": 3},
    {"info_type": 3, "msg": "您好,请问能否告诉我您的手机号?"},
    {"info_type": 4, "url": "https://img.example/shot.png"},
    {"info_type": 5, "url": "http://video.example/v.mp4", "extra": {"nested": [1, 2]}},
])
async def test_every_customer_info_type_is_accepted_and_round_trips(api, customer, radar_user, content):
    assert (await api.customer_send(customer, radar_user.id, content))["code"] == 200
    item = (await api.customer_getmsg(customer, radar_user.id))["data"]["ret_data"][0]
    for key, value in content.items():
        assert item[key] == value


@pytest.mark.gen_test
async def test_msg_length_limit(api, customer, radar_user):
    assert (await api.customer_send(customer, radar_user.id, text("字" * 5000)))["code"] == 200
    assert_invalid(await api.customer_send(customer, radar_user.id, text("字" * 5001)), "content", "max_length")


@pytest.mark.gen_test
async def test_content_size_limit(api, customer, radar_user):
    content = {"info_type": 3, "padding": "x" * (16 * 1024)}
    assert_invalid(await api.customer_send(customer, radar_user.id, content), "content", "max_length")


@pytest.mark.gen_test
async def test_missing_fields_are_all_named_at_once(api, customer):
    body = await api.post(SEND, customer, {})
    assert_invalid(body, "u_id", "required")
    assert_invalid(body, "content", "required")
    # a missing field is one mistake, not also a badly formed one
    assert [error["code"] for error in body["data"]["u_id"]] == ["required"]


@pytest.mark.gen_test
@pytest.mark.parametrize("value,code", [
    ("abc", "invalid"), ("1.5", "invalid"), ("0", "min_value"), ("-3", "min_value"),
    ("99999999999999999999999", "invalid"), ("9223372036854775808", "invalid"),
])
async def test_bad_u_id_is_a_402(api, customer, value, code):
    assert_invalid(await api.customer_send(customer, value, text("x")), "u_id", code)
    assert_invalid(await api.customer_getmsg(customer, value), "u_id", code)


@pytest.mark.gen_test
async def test_send_type_must_be_2_on_the_customer_side(api, customer, radar_user):
    assert_invalid(await api.customer_send(customer, radar_user.id, text("x"), send_type=1), "send_type")
    assert (await api.customer_send(customer, radar_user.id, text("x"), send_type=2))["code"] == 200


@pytest.mark.gen_test
async def test_client_msg_id_limit(api, customer, radar_user):
    assert_invalid(await api.customer_send(customer, radar_user.id, text("x"), client_msg_id="k" * 65),
                   "client_msg_id", "max_length")


@pytest.mark.gen_test
@pytest.mark.parametrize("field,value", [("wait", "-1"), ("wait", "soon"), ("wait", "1e3"),
                                         ("last_id", "-1"), ("last_id", "x")])
async def test_bad_getmsg_parameters(api, customer, radar_user, field, value):
    body = await api.get(GETMSG, customer, u_id=radar_user.id, **{"wait": 0, field: value})
    assert_invalid(body, field)


@pytest.mark.gen_test
@pytest.mark.parametrize("field,value,code", [("current_page", "0", "min_value"), ("current_page", "x", "invalid"),
                                              ("length", "-1", "min_value"), ("length", "101", "max_value")])
async def test_bad_pagination(api, customer, radar_user, field, value, code):
    body = await api.customer_history(customer, radar_user.id, **{field: value})
    assert_invalid(body, field, code)


@pytest.mark.gen_test
async def test_non_utf8_parameter_is_a_402(api, customer, radar_user):
    url = api.url(SEND, customer)
    body = b"u_id=" + str(radar_user.id).encode() + b"&content=%ff%fe"
    response = await api.raw("POST", url, body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_invalid(ujson.loads(response.body), "content")


@pytest.mark.gen_test
async def test_json_body_where_a_form_is_expected(api, customer, radar_user):
    body = ujson.dumps({"u_id": radar_user.id, "content": text("x")})
    response = await api.raw("POST", api.url(SEND, customer), body, headers={"Content-Type": "application/json"})
    result = ujson.loads(response.body)
    assert_invalid(result, "u_id", "required")


@pytest.mark.gen_test
async def test_oversized_body_is_a_413_with_the_envelope(api, customer, radar_user):
    body = "u_id=1&content=" + "x" * (70 * 1024)
    response = await api.raw("POST", api.url(SEND, customer), body,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.code == 413
    assert ujson.loads(response.body) == {"code": 413, "msg": "Request Entity Too Large", "data": {}}
    # and the server goes on serving
    assert (await api.customer_send(customer, radar_user.id, text("still here")))["code"] == 200


@pytest.mark.gen_test
async def test_oversized_chunked_body_is_a_413(api, customer, radar_user):
    async def chunks(write):
        for _ in range(20):
            await write(b"x" * 8192)

    response = await api.http.fetch(api.url(SEND, customer), method="POST", body_producer=chunks,
                                    raise_error=False, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.code == 413
    assert ujson.loads(response.body)["code"] == 413


@pytest.mark.gen_test
async def test_unknown_route_and_wrong_method(api, customer):
    response = await api.raw("GET", f"{api.base_url}/zhugeleida/nothing/here")
    assert response.code == 404 and ujson.loads(response.body) == {"code": 404, "msg": "Not Found", "data": {}}
    response = await api.raw("GET", api.url(SEND, customer))
    assert response.code == 405 and ujson.loads(response.body)["code"] == 405
    response = await api.raw("DELETE", api.url(SEND, customer))
    assert response.code == 405 and ujson.loads(response.body)["code"] == 405
    response = await api.raw("GET", f"{api.base_url}/zhugeleida/gongzhonghao/chat/send_msg/abc")
    assert response.code == 404


@pytest.mark.gen_test
async def test_unicode_names_and_emoji_round_trip(api, store, radar_user):
    name = "🌸 Zoë 王小二 \u200d👩‍💻 \"quoted\" <b>"
    customer_id, token = await store.save_customer(None, username=name, headimgurl="https://x/🙂.png")
    from conftest import Account

    buyer = Account(customer_id, token)
    message = "表情 😀😃😄 and quotes \" ' \\ and <script>"
    await api.customer_send(buyer, radar_user.id, text(message))
    item = (await api.radar_getmsg(radar_user, buyer.id))["data"]["ret_data"][0]
    assert item["name"] == name and item["msg"] == message and item["src"] == "https://x/🙂.png"


@pytest.mark.gen_test
async def test_repeated_parameters_take_the_last_value(api, customer, radar_user):
    url = api.url(GETMSG, customer) + f"&u_id=abc&u_id={radar_user.id}&wait=0"
    response = await api.raw("GET", url)
    assert ujson.loads(response.body)["code"] == 200


@pytest.mark.gen_test
@pytest.mark.sqlite_only
async def test_an_unexpected_error_is_a_500_envelope_without_a_traceback(api, store, customer, radar_user, caplog):
    store.database._read_conn.close()  # break the database under the running app
    response = await api.raw("GET", api.url("/zhugeleida/gongzhonghao/chat/query_num/0", customer, {"u_id": radar_user.id}))
    assert response.code == 500
    body = ujson.loads(response.body)
    assert body == {"code": 500, "msg": "Internal Server Error", "data": {}}
    assert "Uncaught exception" in caplog.text and "rand_str=***" in caplog.text


@pytest.mark.gen_test
@pytest.mark.parametrize("signed", [True, False])
async def test_every_answer_is_fresh_json_with_a_current_date(api, customer, radar_user, signed):
    """Answers are JSON, never cached, dated now, and carry no ETag (an H5 page behind a
    proxy must not be handed an old getmsg or query_num)."""
    url = api.url(f"{api.CUSTOMER}/chat/query_num/0", customer if signed else None, {"u_id": radar_user.id})
    before = time.time()
    response = await api.raw("GET", url)
    assert response.headers["Content-Type"] == "application/json; charset=UTF-8"
    assert response.headers["Cache-Control"] == "no-store"
    assert "Etag" not in response.headers
    dated = parsedate_to_datetime(response.headers["Date"]).timestamp()
    assert before - 1 <= dated <= time.time() + 1
    expected = 200 if signed else 400
    assert ujson.loads(response.body)["code"] == expected
