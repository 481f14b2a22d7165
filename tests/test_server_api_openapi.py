"""server_api/openapi.json: served as stored, valid OpenAPI 3.1, and true of the live server API.

As tests/test_openapi.py does for the chat contract: the real server runs as a
subprocess (``leida_chat.py serve``, a temp SQLite database, its server-API
keys in LEIDA_SERVER_API_KEYS, accounts made with the CLI), and schemathesis
sends every operation of the document generated requests with a valid bearer
key. No response may be a 5xx, and each must match the document: status code,
Content-Type, headers and body schema. Generated ids are mostly unknown (404),
so in three cases out of four the path's id and a tip's ids are swapped for
the real accounts'.

Bounded for CI (``FUZZ_EXAMPLES`` = 25 examples per operation, derandomized,
no example database); a long run is the same file with a bigger budget:

    LEIDA_FUZZ_EXAMPLES=2000 .venv/bin/python -m pytest tests/test_server_api_openapi.py -q
"""
from __future__ import annotations

import http.client
import json
import os
import re
from collections.abc import Iterator
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

from conftest import ROOT, Account
from live import Server, clean_env, cli_account, serve_args

DOCUMENT = ROOT / "server_api" / "openapi.json"
SECRET = "openapi-crm-secret-3c9e71d0"
FUZZ_EXAMPLES = int(os.environ.get("LEIDA_FUZZ_EXAMPLES", "25"))
LONG_RUN = "LEIDA_FUZZ_EXAMPLES" in os.environ
REQUEST_TIMEOUT = 10.0
SERVER_API = re.compile(r"server API on http://(?P<host>[0-9.]+):(?P<port>\d+)/api/v1/")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
USER = Account(11, "radar-user-token-for-server-api-tests")
CUSTOMERS = [Account(21, "customer-token-for-server-api-tests"), Account(22, "other-customer-token-for-api-tests")]
REAL_IDS = [USER.id, *(customer.id for customer in CUSTOMERS)]


@pytest.fixture(scope="module")
def live_server_api(tmp_path_factory) -> Iterator[tuple[Server, int]]:
    cwd = tmp_path_factory.mktemp("server-api-openapi")
    db = str(cwd / "chat.db")
    cli_account(cwd, "add-user", "--db", db, "--id", str(USER.id), "--token", USER.token, "--name", "王经理")
    for customer in CUSTOMERS:
        cli_account(cwd, "add-customer", "--db", db, "--id", str(customer.id), "--token", customer.token,
                    "--name", "客户")
    server = Server(cwd, serve_args(cwd, db), clean_env(LEIDA_SERVER_API_KEYS=f"crm:{SECRET}"), name="server")
    try:
        server.wait_started()
        server.customer_send(CUSTOMERS[0], USER.id, {"info_type": 1, "msg": "你好"})
        server.radar_send(USER, CUSTOMERS[0].id, {"info_type": 1, "msg": "您好"})
        match = SERVER_API.search(server.log())
        assert match, server.log()
        yield server, int(match["port"])
    finally:
        server.kill()


# -- the document -------------------------------------------------------------------


def schema_objects(node: Any, where: str = "#"):
    """Every JSON Schema in the document: the components' and each ``schema`` value."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{where}/{key}"
            if key == "schema" or where == "#/components/schemas":
                yield here, value
            if isinstance(value, (dict, list)):
                yield from schema_objects(value, here)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from schema_objects(value, f"{where}/{index}")


def test_served_document_is_the_file(live_server_api):
    _, port = live_server_api
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        conn.request("GET", "/api/v1/openapi.json")  # no key
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("Content-Type").startswith("application/json")
        assert response.read() == DOCUMENT.read_bytes()
    finally:
        conn.close()


def test_document_is_valid_openapi_3_1():
    document = json.loads(DOCUMENT.read_text(encoding="utf-8"))
    assert document["openapi"].startswith("3.1.")
    schemathesis.openapi.from_dict(document).validate()
    for where, schema_object in schema_objects(document):
        assert jsonschema_rs.meta.is_valid(schema_object), f"{where} is not a valid JSON Schema: {schema_object}"


def test_document_names_every_route():
    document = json.loads(DOCUMENT.read_text(encoding="utf-8"))
    operations = {(method.upper(), path) for path, item in document["paths"].items()
                  for method in item if method != "parameters"}
    expected = {("GET", "/api/v1/openapi.json"), ("POST", "/api/v1/tips"), ("DELETE", "/api/v1/customers/{id}"),
                ("GET", "/api/v1/customers/{id}/export")}
    for plural in ("customers", "radar_users"):
        expected |= {("GET", f"/api/v1/{plural}/{{id}}"), ("PUT", f"/api/v1/{plural}/{{id}}"),
                     ("POST", f"/api/v1/{plural}/bulk"), ("POST", f"/api/v1/{plural}/{{id}}/token"),
                     ("POST", f"/api/v1/{plural}/{{id}}/disable"), ("POST", f"/api/v1/{plural}/{{id}}/enable")}
    assert operations == expected
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "A secret of `server_api.keys`."}


# -- schemathesis against the live server API ---------------------------------------------

schema = schemathesis.openapi.from_path(
    DOCUMENT,
    config=schemathesis.Config.from_dict({
        "generation": {"max-examples": FUZZ_EXAMPLES, "deterministic": not LONG_RUN, "database": "none"},
    }),
)


@schema.auth(refresh_interval=None)
class Bearer:
    """The key in the Authorization header, as the CRM sends it."""

    def get(self, case: schemathesis.Case, context: schemathesis.AuthContext) -> str:
        return SECRET

    def set(self, case: schemathesis.Case, secret: str, context: schemathesis.AuthContext) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {secret}"}


def _maybe(values: Any, real: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """``values`` as generated, or in three cases out of four with ``real`` ids swapped in."""
    if not isinstance(values, dict):
        return st.just(values)
    realistic = st.fixed_dictionaries(real).map(lambda chosen: {**values, **chosen})
    return st.sampled_from([True, True, True, False]).flatmap(lambda swap: realistic if swap else st.just(values))


@schema.hook
def flatmap_path_parameters(ctx: schemathesis.HookContext, path_parameters: Any) -> st.SearchStrategy:
    if isinstance(path_parameters, dict) and "id" in path_parameters:
        return _maybe(path_parameters, {"id": st.sampled_from(REAL_IDS)})
    return st.just(path_parameters)


@schema.hook
def flatmap_body(ctx: schemathesis.HookContext, body: Any) -> st.SearchStrategy:
    if ctx.operation.path == "/api/v1/tips":
        return _maybe(body, {"customer_id": st.sampled_from([c.id for c in CUSTOMERS]), "user_id": st.just(USER.id)})
    return st.just(body)


@schema.parametrize()
def test_live_server_api_conforms_to_document(case: schemathesis.Case, live_server_api) -> None:
    _, port = live_server_api
    response = case.call(base_url=f"http://127.0.0.1:{port}", timeout=REQUEST_TIMEOUT)
    case.validate_response(response, checks=CHECKS)
