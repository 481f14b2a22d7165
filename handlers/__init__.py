"""The HTTP layer: routes of the contract, parsing, checking and rendering.

``make_app`` is the only entry point. Handlers never touch SQL; they ask the
``ChatStore`` and render what it returns in the original API's shapes.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tornado.web import Application, RequestHandler, StaticFileHandler

from media import Media
from storage import ChatStore

from . import customer, radar
from .base import InFlight, NotFoundHandler, log_request
from .connections import ChatHTTPServer
from .demo import DemoAccountsHandler
from .health import HealthHandler, ReadyHandler
from .media import MediaFileHandler
from .metrics import count_request, metrics_app, watch_held_requests
from .openapi import OpenApiHandler
from .settings import ApiSettings

O_ID = r"(-?[0-9]{1,19})/?"
STATIC = Path(__file__).resolve().parent / "static"


#: each handler's route as the leida_requests metric labels it
ROUTE_NAMES: dict[type, str] = {StaticFileHandler: "/static/", NotFoundHandler: "unmatched"}


def routes(deps: dict[str, Any], demo: bool) -> list[tuple]:
    table = [  # (the route, as metrics name it, and its handler)
        ("/zhugeleida/gongzhonghao/chat/send_msg/{o_id}", customer.SendHandler),
        ("/zhugeleida/gongzhonghao/chat/getmsg/{o_id}", customer.GetMsgHandler),
        ("/zhugeleida/gongzhonghao/chat/query_num/{o_id}", customer.UnreadCountHandler),
        ("/zhugeleida/gongzhonghao/chat/upload/{o_id}", customer.UploadHandler),
        ("/zhugeleida/gongzhonghao/chat/recall/{o_id}", customer.RecallHandler),
        ("/zhugeleida/gongzhonghao/chat/typing/{o_id}", customer.TypingNowHandler),
        ("/zhugeleida/gongzhonghao/chat", customer.HistoryHandler),
        ("/zhugeleida/qiyeweixin/chat/send_msg/{o_id}", radar.SendHandler),
        ("/zhugeleida/qiyeweixin/chat/getmsg/{o_id}", radar.GetMsgHandler),
        ("/zhugeleida/qiyeweixin/chat/query_num/{o_id}", radar.UnreadCountHandler),
        ("/zhugeleida/qiyeweixin/chat/upload/{o_id}", radar.UploadHandler),
        ("/zhugeleida/qiyeweixin/chat/recall/{o_id}", radar.RecallHandler),
        ("/zhugeleida/qiyeweixin/chat/typing/{o_id}", radar.TypingNowHandler),
        ("/zhugeleida/qiyeweixin/chat", radar.HistoryHandler),
        ("/zhugeleida/qiyeweixin/contact", radar.ContactHandler),
        ("/openapi.json", OpenApiHandler),
        ("/healthz", HealthHandler),
        ("/readyz", ReadyHandler),
    ]
    if demo:
        table.append(("/demo/accounts.json", DemoAccountsHandler))
    ROUTE_NAMES.update((handler, name) for name, handler in table)
    api: list[tuple[str, type[RequestHandler], dict[str, Any]]] = [
        (pattern(name), handler, deps) for name, handler in table]
    # pictures and videos, by the signed URLs that answers hand out (handlers/media.py)
    ROUTE_NAMES[MediaFileHandler] = "/media/"
    api.append((r"/media/([0-9a-f]{32})(/thumbnail)?", MediaFileHandler, deps))
    # the browser client (handlers/static/leida-chat.js) is for every deployment; the demo pages only in demo mode
    files = [(r"/static/(.*)", StaticFileHandler, {"path": str(STATIC)})]
    if demo:
        files.append((r"/demo/(.*\.html)", StaticFileHandler, {"path": str(STATIC / "demo")}))
    return api + files


def pattern(route: str) -> str:
    """The URL pattern of a route: ``{o_id}`` is any integer, and the contract's routes
    without one take an optional trailing slash, as the original server's did."""
    if "/{o_id}" in route:
        return re.escape(route.removesuffix("/{o_id}")) + "/" + O_ID
    return re.escape(route) + ("/?" if route.startswith("/zhugeleida/") else "")


def make_app(
    store: ChatStore, settings: ApiSettings | None = None, access_log: bool = True, demo: bool = False,
    media: Media | None = None,
) -> Application:
    """The tornado application; ``app.settings["inflight"]`` counts unanswered requests.

    ``demo`` adds the demo pages and /demo/accounts.json (see handlers/demo.py).
    ``media`` is the media room (media/): without it, uploads and /media/ answer 404.
    """
    deps = {"store": store, "settings": settings or ApiSettings(), "inflight": InFlight(), "media": media}
    watch_held_requests(store.waiters)
    return Application(
        routes(deps, demo),
        default_handler_class=NotFoundHandler,
        default_handler_args=deps,
        log_function=_count_and_log if access_log else _count,
        inflight=deps["inflight"],
    )


def _count(handler: RequestHandler) -> None:
    """Every answer is counted by route and envelope code (leida_requests_total)."""
    count_request(ROUTE_NAMES.get(type(handler), "other"), getattr(handler, "envelope_code", handler._status_code))


def _count_and_log(handler: RequestHandler) -> None:
    """Counted, and a line in the access log (log.access; at thousands of requests a second it costs)."""
    _count(handler)
    log_request(handler)


__all__ = ["ApiSettings", "ChatHTTPServer", "make_app", "metrics_app"]
