"""openapi.json: served as stored, valid OpenAPI 3.1, and true of the live server.

The schemathesis run starts the real server as a subprocess (``leida_chat.py
serve`` on a free port, a temp database, accounts made with the CLI) and sends
every operation of the document generated requests, valid and invalid,
signed by the right account through a schemathesis auth provider. Each
response must not be a 5xx and must match the document: status code,
Content-Type, headers and body schema. The conversations the server starts
with hold every kind of item (a recalled message's tombstone and its recall
notice among them), and recalls are generated for those messages' ids, so
that the item schemas are checked against each kind. Held getmsg requests are kept short
by the server's environment (``LEIDA_LONGPOLL_TIMEOUT`` /
``LEIDA_LONGPOLL_MAX_TIMEOUT``), so whatever ``wait`` is generated a request
answers within a fraction of a second.

The run is bounded for CI (``FUZZ_EXAMPLES`` = 25 examples per operation in
the fuzzing phase, derandomized, no example database). A long run, random
each time, is the same file with a bigger budget:

    LEIDA_FUZZ_EXAMPLES=2000 .venv/bin/python -m pytest tests/test_openapi.py -q
"""
from __future__ import annotations

import http.client
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from conftest import Account, sign, text
from live import Server, clean_env, cli_account

ROOT = Path(__file__).resolve().parent.parent
DOCUMENT = ROOT / "handlers" / "openapi.json"
CUSTOMER = "/zhugeleida/gongzhonghao"
RADAR = "/zhugeleida/qiyeweixin"

#: examples per operation in schemathesis's fuzzing phase; the environment variable makes a long run
FUZZ_EXAMPLES = int(os.environ.get("LEIDA_FUZZ_EXAMPLES", "25"))
LONG_RUN = "LEIDA_FUZZ_EXAMPLES" in os.environ
#: the test server's long-poll: default and cap on ``wait``, in seconds
LONGPOLL_TIMEOUT, LONGPOLL_MAX_TIMEOUT = "0.05", "0.1"
REQUEST_TIMEOUT = 10.0
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


# -- the live server --------------------------------------------------------------

# Fixed ids and tokens (the CLI's --id/--token), known before the server starts:
# schemathesis builds the examples and coverage phases' requests, and signs
# them, while pytest collects. Ids differ across kinds so that one passed for
# the other is caught.
USER = Account(11, "radar-user-token-for-openapi-tests")              # full profile, in conversations
BARE_USER = Account(12, "bare-radar-user-token-for-openapi-tests")     # a name only, no conversations
CUSTOMER_ACCOUNT = Account(21, "customer-token-for-openapi-tests")
OTHER_CUSTOMER = Account(22, "other-customer-token-for-openapi-tests")
#: the ids of the messages the server starts with (a fresh SQLite file numbers them from 1): what
#: generated recalls name, so that some are taken back (the customer's 1 and 2, the radar user's 3),
#: some are not the signer's, and one was recalled already (5, notice 6)
MESSAGE_IDS = (1, 2, 3, 4, 5)
RECALLED_BY = {CUSTOMER: (1, 2, 3, 4, 5), RADAR: (3, 1, 5)}


@pytest.fixture(scope="module")
def live_server(tmp_path_factory) -> Iterator[Server]:
    cwd = tmp_path_factory.mktemp("openapi")
    db = str(cwd / "chat.db")

    def account(command: str, account: Account, *fields: str) -> None:
        made = cli_account(cwd, command, "--db", db, "--id", str(account.id), "--token", account.token, *fields)
        assert made == account

    account("add-user", USER, "--name", "王经理", "--avatar", "https://img.example/a.png",
            "--mingpian-avatar", "https://img.example/card.png", "--mingpian-phone", "18932674288",
            "--wechat", "wx_wang", "--wechat-phone", "18866554433")
    account("add-user", BARE_USER, "--name", "李四")
    account("add-customer", CUSTOMER_ACCOUNT, "--name", "_zzz จุ๊บ 😀", "--headimgurl", "https://wx.qlogo.cn/zzz/132")
    account("add-customer", OTHER_CUSTOMER, "--name", "小明")
    env = clean_env(
        LEIDA_LONGPOLL_TIMEOUT=LONGPOLL_TIMEOUT,
        LEIDA_LONGPOLL_MAX_TIMEOUT=LONGPOLL_MAX_TIMEOUT,
        # Cases are signed when built, and the examples and coverage phases build theirs
        # while pytest collects: in a long run some are sent after the 15-minute window.
        LEIDA_AUTH_MAX_SKEW_SECONDS="0",
        # a recall generated at any point of a long run is inside the window
        LEIDA_CHAT_RECALL_SECONDS="86400",
    )
    server = Server(cwd, ["serve", "--db", db, "--host", "127.0.0.1", "--port", "0"], env, name="server")
    try:
        server.wait_started()
        # Conversations with messages of every kind, so that getmsg, history and contact have items to render;
        # content keys named like the server's are stored but never override them.
        server.customer_send(CUSTOMER_ACCOUNT, USER.id, text("你好"))
        server.customer_send(CUSTOMER_ACCOUNT, USER.id, {"info_type": 2, "product_name": "名片", "product_price": 9.9,
                                                         "id": -1, "send_type": 1, "tag": ["x"]})
        server.radar_send(USER, CUSTOMER_ACCOUNT.id, {"info_type": "6", "msg": "店铺"})
        server.customer_send(OTHER_CUSTOMER, USER.id, {"info_type": 4, "url": "https://img.example/s.png"})
        # a tombstone and a recall notice, in the conversation every generated getmsg and history reads
        recalled = server.customer_send(CUSTOMER_ACCOUNT, USER.id, text("发错了"))["data"]["id"]
        notice = server.post(f"{CUSTOMER}/chat/recall/0", CUSTOMER_ACCOUNT, {"u_id": USER.id, "message_id": recalled})
        assert (recalled, notice["code"], notice["data"]["id"]) == (MESSAGE_IDS[-1], 200, MESSAGE_IDS[-1] + 1), notice
        yield server
    finally:
        server.kill()


# -- the document -----------------------------------------------------------------


def fetch(server: Server, path: str) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=REQUEST_TIMEOUT)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        conn.close()


def schema_objects(node: Any, where: str = "#"):
    """Every JSON Schema in the document: the components' and each ``schema``/``contentSchema`` value."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{where}/{key}"
            if key in ("schema", "contentSchema"):
                yield here, value
            elif where == "#/components/schemas":
                yield here, value
            if isinstance(value, (dict, list)):
                yield from schema_objects(value, here)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from schema_objects(value, f"{where}/{index}")


def test_served_document_is_the_file(live_server):
    status, content_type, body = fetch(live_server, "/openapi.json")
    assert status == 200
    assert content_type.startswith("application/json")
    assert body == DOCUMENT.read_bytes()


def test_document_is_valid_openapi_3_1():
    document = json.loads(DOCUMENT.read_text(encoding="utf-8"))
    assert document["openapi"].startswith("3.1.")
    schemathesis.openapi.from_dict(document).validate()  # the OpenAPI 3.1 meta-schema
    for where, schema in schema_objects(document):
        assert jsonschema_rs.meta.is_valid(schema), f"{where} is not a valid JSON Schema: {schema}"


def test_document_names_every_route_of_the_contract():
    document = json.loads(DOCUMENT.read_text(encoding="utf-8"))
    operations = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert operations == {
        ("POST", f"{CUSTOMER}/chat/send_msg/{{o_id}}"),
        ("GET", f"{CUSTOMER}/chat/getmsg/{{o_id}}"),
        ("GET", f"{CUSTOMER}/chat"),
        ("GET", f"{CUSTOMER}/chat/query_num/{{o_id}}"),
        ("POST", f"{CUSTOMER}/chat/upload/{{o_id}}"),
        ("POST", f"{CUSTOMER}/chat/recall/{{o_id}}"),
        ("POST", f"{CUSTOMER}/chat/typing/{{o_id}}"),
        ("POST", f"{RADAR}/chat/send_msg/{{o_id}}"),
        ("GET", f"{RADAR}/chat/getmsg/{{o_id}}"),
        ("GET", f"{RADAR}/chat"),
        ("GET", f"{RADAR}/chat/query_num/{{o_id}}"),
        ("POST", f"{RADAR}/chat/upload/{{o_id}}"),
        ("POST", f"{RADAR}/chat/recall/{{o_id}}"),
        ("POST", f"{RADAR}/chat/typing/{{o_id}}"),
        ("GET", f"{RADAR}/contact"),
        ("GET", "/media/{attachment_id}"),
        ("GET", "/media/{attachment_id}/thumbnail"),
        ("GET", "/openapi.json"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
    }
    signature = {"#/components/parameters/user_id", "#/components/parameters/timestamp",
                 "#/components/parameters/rand_str"}
    for path, item in document["paths"].items():
        for operation in item.values():
            refs = {parameter.get("$ref") for parameter in operation.get("parameters", [])}
            assert path in ("/openapi.json", "/healthz", "/readyz") or path.startswith("/media/") \
                or signature <= refs, path


def conforms(document: dict, schema_name: str, body: dict) -> None:
    """``body`` is what the document's ``components/schemas/<schema_name>`` says it is."""
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": document["components"]}
    errors = [f"{error.instance_path}: {error.message}" for error in jsonschema_rs.validator_for(schema).iter_errors(body)]
    assert not errors, (errors, body)


def test_a_tombstone_and_a_recall_notice_are_what_the_document_says(live_server):
    document = json.loads(DOCUMENT.read_text(encoding="utf-8"))
    recalled, notice = MESSAGE_IDS[-1], MESSAGE_IDS[-1] + 1
    answers = {
        "CustomerGetMsgOk": live_server.customer_getmsg(CUSTOMER_ACCOUNT, USER.id, last_id=0),
        "CustomerHistoryOk": live_server.customer_history(CUSTOMER_ACCOUNT, USER.id),
        "RadarGetMsgOk": live_server.get(f"{RADAR}/chat/getmsg/0", USER, customer_id=CUSTOMER_ACCOUNT.id, last_id=0,
                                         wait=0),
        "RadarHistoryOk": live_server.get(f"{RADAR}/chat", USER, customer_id=CUSTOMER_ACCOUNT.id),
    }
    for schema_name, body in answers.items():
        conforms(document, schema_name, body)
        items = {item["id"]: item for item in body["data"]["ret_data"]}
        assert items[recalled]["recalled"] is True and "info_type" not in items[recalled], items[recalled]
        assert (items[notice]["info_type"], items[notice]["recalled_id"]) == (7, recalled), items[notice]
    # the document rejects what the server never answers: an item with neither content nor `recalled`,
    # a notice without the id it recalled, a recalled tip
    items = {item["id"]: item for item in answers["CustomerGetMsgOk"]["data"]["ret_data"]}
    without_content = {key: value for key, value in items[recalled].items() if key != "recalled"}
    for wrong in (without_content, {**items[notice], "recalled_id": None}, {**items[recalled], "send_type": 3}):
        with pytest.raises(AssertionError):
            conforms(document, "CustomerItem", wrong)


# -- schemathesis against the live server -------------------------------------------

schema = schemathesis.openapi.from_path(
    DOCUMENT,
    config=schemathesis.Config.from_dict({
        "generation": {
            "max-examples": FUZZ_EXAMPLES,
            "deterministic": not LONG_RUN,
            "database": "none",
        },
    }),
)


class Signature:
    """Signs each generated request as the README says: ``rand_str = md5(timestamp + token)``.

    Registered once per side with ``apply_to(path_regex=...)``: ``get`` gives
    the customer for /gongzhonghao/ paths and the radar user for /qiyeweixin/
    paths; ``set`` puts ``user_id``/``timestamp``/``rand_str`` in the query
    string over whatever was generated for them. Nothing is cached
    (``refresh_interval=None``): each case gets its own timestamp, taken when
    schemathesis builds the case.
    """

    account: Account

    def get(self, case: schemathesis.Case, context: schemathesis.AuthContext) -> Account:
        return self.account

    def set(self, case: schemathesis.Case, account: Account, context: schemathesis.AuthContext) -> None:
        case.query = {**(case.query or {}), **sign(account)}


@schema.auth(refresh_interval=None).apply_to(path_regex=f"^{CUSTOMER}/")
class CustomerSignature(Signature):
    account = CUSTOMER_ACCOUNT


@schema.auth(refresh_interval=None).apply_to(path_regex=f"^{RADAR}/")
class RadarUserSignature(Signature):
    account = USER


# Generated ids are nearly always unknown (402 does_not_exist) and generated
# contents nearly never valid: in three cases out of four the fuzzing phase
# swaps in the real accounts' ids and a valid content (with extra keys, some
# named like the server's own), so that the handlers' success paths and the
# item shapes are exercised too.

_short_text = st.text(min_size=1, max_size=40).filter(str.strip)
_url = st.sampled_from(["https://img.example/p.png", "http://v.example/v.mp4", "/static/a.jpg", ""])
_extra_keys = st.dictionaries(
    st.sampled_from(["id", "send_type", "customer_id", "user_id", "dateTime", "is_first_info", "name", "note"]),
    st.one_of(st.none(), st.booleans(), st.integers(-10, 10), st.text(max_size=10), st.lists(st.integers(), max_size=2)),
    max_size=3,
)


def _contents(radar: bool) -> st.SearchStrategy[str]:
    # info_type as a number or, as old clients send it, a digit string
    kinds = [
        st.fixed_dictionaries({"info_type": st.sampled_from([1, "1"]), "msg": _short_text}),
        st.fixed_dictionaries({"info_type": st.sampled_from([2, "02"]), "product_name": _short_text},
                              optional={"product_cover_url": _url,
                                        "product_price": st.one_of(st.integers(0, 10**6), st.floats(0, 1e6),
                                                                   st.text(max_size=8))}),
        st.fixed_dictionaries({"info_type": st.sampled_from([3, "3"])}, optional={"msg": st.text(max_size=40)}),
        st.fixed_dictionaries({"info_type": st.sampled_from([4, 5]), "url": _url.filter(bool)}),
    ]
    if radar:
        kinds.append(st.fixed_dictionaries({"info_type": st.just(6)}, optional={"msg": st.text(max_size=40)}))
    return st.tuples(_extra_keys, st.one_of(kinds)).map(
        lambda parts: json.dumps({**parts[0], **parts[1]}, ensure_ascii=False)
    )


def _with_real_ids(ctx: schemathesis.HookContext, values: Any, body: bool) -> st.SearchStrategy:
    path = ctx.operation.path
    if not isinstance(values, dict) or (ctx.operation.method.upper() == "POST") != body:
        return st.just(values)  # ids travel in the form body of a send, in the query string otherwise
    if path.startswith(CUSTOMER):
        real = {"u_id": st.sampled_from([USER.id, BARE_USER.id]),
                "customer_id": st.sampled_from([CUSTOMER_ACCOUNT.id, None])}
    else:
        real = {"customer_id": st.sampled_from([CUSTOMER_ACCOUNT.id, OTHER_CUSTOMER.id])}
    if body and "/chat/recall/" in path:
        real["message_id"] = st.sampled_from(RECALLED_BY[CUSTOMER if path.startswith(CUSTOMER) else RADAR])
    elif body and "/chat/typing/" not in path:
        real["content"] = _contents(radar=path.startswith(RADAR))

    def patched(choices: dict[str, Any]) -> dict[str, Any]:
        merged = dict(values)
        for name, value in choices.items():
            if value is None:
                merged.pop(name, None)
            else:
                merged[name] = value
        return merged

    realistic = st.fixed_dictionaries(real).map(patched)
    return st.sampled_from([True, True, True, False]).flatmap(lambda swap: realistic if swap else st.just(values))


@schema.hook
def flatmap_query(ctx: schemathesis.HookContext, query: Any) -> st.SearchStrategy:
    return _with_real_ids(ctx, query, body=False)


@schema.hook
def flatmap_body(ctx: schemathesis.HookContext, body: Any) -> st.SearchStrategy:
    return _with_real_ids(ctx, body, body=True)


# -- a body sent to an unknown route ---------------------------------------------

UNNAMED_FIELD_BOUNDARY = "b0undary"
UNNAMED_FIELD_BODY = (
    f"--{UNNAMED_FIELD_BOUNDARY}\r\nContent-Disposition: form-data; name=\"\"\r\n\r\n1\r\n"
    f"--{UNNAMED_FIELD_BOUNDARY}--\r\n"
).encode()


def test_unknown_route_with_malformed_multipart_body_is_404(live_server):
    status, body = live_server.request(
        "POST", f"{CUSTOMER}/chat/send_msg/x", CUSTOMER_ACCOUNT, body=UNNAMED_FIELD_BODY,
        headers={"Content-Type": f"multipart/form-data; boundary={UNNAMED_FIELD_BOUNDARY}"},
    )
    assert (status, body) == (404, {"code": 404, "msg": "Not Found", "data": {}})


@schema.parametrize()
def test_live_server_conforms_to_document(case: schemathesis.Case, live_server: Server) -> None:
    response = case.call(base_url=f"http://127.0.0.1:{live_server.port}", timeout=REQUEST_TIMEOUT)
    case.validate_response(response, checks=CHECKS)
