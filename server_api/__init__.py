"""The server API: what a deployment's CRM calls, under /api/v1/, on a listener of its own.

The chat contract (handlers/) is for H5 pages signed by an account's token;
this is for one trusted system, the CRM, that keeps accounts in step, drops
system tips into conversations, and exports or erases a customer's data. It is
JSON in and out with real HTTP statuses, failures as RFC 9457 problem details
(problems.py), and every call authenticated by a bearer key of
``server_api.keys`` (auth.py) and written to the audit log.

It is served on its own listener (``server_api.host``/``server_api.port``,
9481 by default), never on the public port: the CRM's network is not the
public's, a separate port cannot be reached through the public proxy by a
routing mistake, it can be bound to a private interface, and its keys are
never open to guessing from the internet. With no keys configured the API is
off: the listener answers every /api/v1/ call with a 404 problem saying so.

``make_server_api_app`` is the only entry point. As in handlers/, nothing here
writes SQL or holds a rule of the chat: the handlers parse, check and render
what ChatStore does.
"""
from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from tornado.web import Application

from media import Media
from storage import ChatStore

from .accounts import MAX_BULK_ROWS, AccountHandler, BulkHandler, DisableHandler, TokenHandler
from .auth import KEY_QUERY_PARAMS, KeysInvalid, ServerApiKey, parse_keys
from .base import MAX_BODY_BYTES, NoRouteHandler, ServerApiHandler, ServerApiSettings, log_call
from .customer_data import ExportHandler
from .tips import TipHandler

DOCUMENT_PATH = Path(__file__).resolve().parent / "openapi.json"
PREFIX = "/api/v1"
_ID = r"([^/]+)"


@cache
def document() -> bytes:
    return DOCUMENT_PATH.read_bytes()


class OpenApiHandler(ServerApiHandler):
    """GET /api/v1/openapi.json: this API's own OpenAPI document, read without a key."""

    needs_key = False

    @property
    def operation(self) -> str:
        return "openapi.get"

    def get(self) -> None:
        self.finish(document())


def routes(deps: dict[str, Any]) -> list[tuple[str, type, dict[str, Any]]]:
    table: list[tuple[str, type, dict[str, Any]]] = [(f"{PREFIX}/openapi.json", OpenApiHandler, deps)]
    for plural, kind in (("customers", "customer"), ("radar_users", "radar_user")):
        route = {**deps, "kind": kind}
        table += [
            (f"{PREFIX}/{plural}/bulk", BulkHandler, route),
            (f"{PREFIX}/{plural}/{_ID}", AccountHandler, route),
            (f"{PREFIX}/{plural}/{_ID}/token", TokenHandler, route),
            (f"{PREFIX}/{plural}/{_ID}/disable", DisableHandler, {**route, "action": "disable"}),
            (f"{PREFIX}/{plural}/{_ID}/enable", DisableHandler, {**route, "action": "enable"}),
        ]
    table += [
        (f"{PREFIX}/customers/{_ID}/export", ExportHandler, deps),
        (f"{PREFIX}/tips", TipHandler, deps),
    ]
    return table


def make_server_api_app(
    store: ChatStore, media: Media | None, keys: tuple[ServerApiKey, ...], *, msg_max_chars: int = 5000,
    access_log: bool = True,
) -> Application:
    """The server API's tornado application, for a listener of its own.

    ``keys`` from ``parse_keys(server_api.keys)``; none: the API is off (404 problems).
    ``media`` is the media room: an export's picture and video URLs, an erasure's files.
    """
    deps: dict[str, Any] = {"store": store, "media": media,
                            "settings": ServerApiSettings(keys=keys, msg_max_chars=msg_max_chars)}
    return Application(
        routes(deps),
        default_handler_class=NoRouteHandler,
        default_handler_args=deps,
        log_function=log_call if access_log else _not_logged,
    )


def _not_logged(handler: Any) -> None:
    """log.access = false: the audit line is still written (server_api/auth.py)."""


__all__ = [
    "KEY_QUERY_PARAMS", "MAX_BODY_BYTES", "MAX_BULK_ROWS", "KeysInvalid", "ServerApiKey", "make_server_api_app",
    "parse_keys",
]
