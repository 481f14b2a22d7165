"""Cross-origin H5 pages (CORS): every /zhugeleida/ answer, errors included, is
readable by an allowed origin; preflights are answered; other origins are refused."""
from __future__ import annotations

import pytest
import ujson

from conftest import text
from handlers import ApiSettings

PAGE = "https://h5.example.com"


@pytest.mark.gen_test
async def test_every_answer_under_zhugeleida_lets_any_origin_read_it_by_default(api, customer, radar_user):
    headers = {"Origin": PAGE}
    sent = await api.raw("POST", api.url("/zhugeleida/gongzhonghao/chat/send_msg/0", customer),
                         f"u_id={radar_user.id}&content=" + ujson.dumps(text("跨域")), headers=headers)
    unsigned = await api.raw("GET", api.url("/zhugeleida/gongzhonghao/chat/getmsg/0", None), headers=headers)
    invalid = await api.raw("GET", api.url("/zhugeleida/gongzhonghao/chat/getmsg/0", customer, {"u_id": "x"}),
                            headers=headers)
    unknown = await api.raw("GET", f"{api.base_url}/zhugeleida/nothing", headers=headers)
    too_big = await api.raw("POST", api.url("/zhugeleida/gongzhonghao/chat/send_msg/0", customer),
                            b"x" * (ApiSettings().max_body_bytes + 1), headers=headers)
    for response, status, code in [(sent, 200, 200), (unsigned, 200, 400), (invalid, 200, 402),
                                   (unknown, 404, 404), (too_big, 413, 413)]:
        assert response.code == status and ujson.loads(response.body)["code"] == code, response.body
        assert response.headers["Access-Control-Allow-Origin"] == "*", response.request.url
        assert response.headers["Vary"] == "Origin"
        assert "Access-Control-Allow-Credentials" not in response.headers
    # the demo's tokens and the document are not part of it
    document = await api.raw("GET", f"{api.base_url}/openapi.json", headers=headers)
    assert "Access-Control-Allow-Origin" not in document.headers


@pytest.mark.gen_test
async def test_a_preflight_is_answered_for_get_and_post(api):
    for path, methods in [("/zhugeleida/gongzhonghao/chat/send_msg/0", "POST"),
                          ("/zhugeleida/qiyeweixin/chat/getmsg/0", "GET")]:
        response = await api.raw("OPTIONS", f"{api.base_url}{path}", headers={
            "Origin": PAGE, "Access-Control-Request-Method": methods,
            "Access-Control-Request-Headers": "content-type, x-requested-with"})
        assert response.code == 204, response.body
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert response.headers["Access-Control-Allow-Methods"] == methods
        assert response.headers["Access-Control-Allow-Headers"] == "Content-Type, X-Requested-With"
        assert "Access-Control-Allow-Credentials" not in response.headers


class TestAListOfOrigins:
    @pytest.fixture
    def api_settings(self):
        return ApiSettings(cors_origins=(PAGE, "http://127.0.0.1:9999"))

    @pytest.mark.gen_test
    async def test_an_allowed_origin_is_named_and_another_is_refused_before_anything_is_stored(
            self, api, customer, radar_user):
        form = f"u_id={radar_user.id}&content=" + ujson.dumps(text("hi"))
        url = api.url("/zhugeleida/gongzhonghao/chat/send_msg/0", customer)
        allowed = await api.raw("POST", url, form, headers={"Origin": PAGE})
        assert allowed.code == 200 and allowed.headers["Access-Control-Allow-Origin"] == PAGE
        refused = await api.raw("POST", api.url("/zhugeleida/gongzhonghao/chat/send_msg/0", customer), form,
                                headers={"Origin": "https://evil.example"})
        assert refused.code == 403 and ujson.loads(refused.body)["code"] == 403
        assert "Access-Control-Allow-Origin" not in refused.headers
        preflight = await api.raw("OPTIONS", url, headers={"Origin": "https://evil.example",
                                                           "Access-Control-Request-Method": "POST"})
        assert preflight.code == 403 and "Access-Control-Allow-Origin" not in preflight.headers
        history = await api.customer_history(customer, radar_user.id)
        assert history["data"]["data_count"] == 1
        # no Origin (a server, curl) or the server's own origin: as before
        assert (await api.customer_send(customer, radar_user.id, text("curl")))["code"] == 200
