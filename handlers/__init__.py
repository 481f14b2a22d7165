"""The HTTP layer: routes of the contract, parsing, checking and rendering.

``make_app`` is the only entry point. Handlers never touch SQL; they ask the
``ChatStore`` and render what it returns in the original API's shapes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tornado.web import Application, StaticFileHandler

from storage import ChatStore

from . import customer, radar
from .base import InFlight, NotFoundHandler, log_request
from .connections import ChatHTTPServer
from .demo import DemoAccountsHandler
from .health import HealthHandler, ReadyHandler
from .openapi import OpenApiHandler
from .settings import ApiSettings

O_ID = r"(-?[0-9]{1,19})/?"
STATIC = Path(__file__).resolve().parent.parent / "static"


def routes(deps: dict[str, Any], demo: bool) -> list[tuple]:
    table = [
        (rf"/zhugeleida/gongzhonghao/chat/send_msg/{O_ID}", customer.SendHandler),
        (rf"/zhugeleida/gongzhonghao/chat/getmsg/{O_ID}", customer.GetMsgHandler),
        (rf"/zhugeleida/gongzhonghao/chat/query_num/{O_ID}", customer.UnreadCountHandler),
        (r"/zhugeleida/gongzhonghao/chat/?", customer.HistoryHandler),
        (rf"/zhugeleida/qiyeweixin/chat/send_msg/{O_ID}", radar.SendHandler),
        (rf"/zhugeleida/qiyeweixin/chat/getmsg/{O_ID}", radar.GetMsgHandler),
        (rf"/zhugeleida/qiyeweixin/chat/query_num/{O_ID}", radar.UnreadCountHandler),
        (r"/zhugeleida/qiyeweixin/chat/?", radar.HistoryHandler),
        (r"/zhugeleida/qiyeweixin/contact/?", radar.ContactHandler),
        (r"/openapi\.json", OpenApiHandler),
        (r"/healthz", HealthHandler),
        (r"/readyz", ReadyHandler),
    ]
    if demo:
        table.append((r"/demo/accounts\.json", DemoAccountsHandler))
    api = [(pattern, handler, deps) for pattern, handler in table]
    # the browser client (static/leida-chat.js) is for every deployment; the demo pages only in demo mode
    files = [(r"/static/(.*)", StaticFileHandler, {"path": str(STATIC)})]
    if demo:
        files.append((r"/demo/(.*\.html)", StaticFileHandler, {"path": str(STATIC / "demo")}))
    return api + files


def make_app(
    store: ChatStore, settings: ApiSettings | None = None, access_log: bool = True, demo: bool = False
) -> Application:
    """The tornado application; ``app.settings["inflight"]`` counts unanswered requests.

    ``demo`` adds the demo pages and /demo/accounts.json (see handlers/demo.py).
    """
    deps = {"store": store, "settings": settings or ApiSettings(), "inflight": InFlight()}
    return Application(
        routes(deps, demo),
        default_handler_class=NotFoundHandler,
        default_handler_args=deps,
        log_function=log_request if access_log else _no_access_log,
        inflight=deps["inflight"],
    )


def _no_access_log(handler: Any) -> None:
    """Access logging off (log.access = false): at thousands of requests a second it costs."""


__all__ = ["ApiSettings", "ChatHTTPServer", "make_app"]
