"""ApiHandler sets itself up as Tornado's RequestHandler does, minus the template namespace.

``ApiHandler.__init__`` repeats Tornado's own set-up without ``self.ui``'s
per-request namespace (bench/README.md, "Hot path"). This test fails if a
Tornado release within the pinned range sets up anything the copy does not.
"""
from __future__ import annotations

from typing import Any

import tornado.web
from tornado import httputil

from handlers.base import ApiHandler


class _Connection:
    """Just enough of an HTTP connection for a handler to be constructed."""

    def set_close_callback(self, callback: Any) -> None:
        self.close_callback = callback


class _Plain(tornado.web.RequestHandler):
    pass


class _Ours(ApiHandler):
    def initialize(self) -> None:  # type: ignore[override]
        """Nothing of ours: only the set-up the two have in common is compared."""


def _request() -> httputil.HTTPServerRequest:
    return httputil.HTTPServerRequest(start_line=httputil.RequestStartLine("GET", "/", "HTTP/1.1"),
                                      headers=httputil.HTTPHeaders({"Host": "x"}),
                                      connection=_Connection())  # type: ignore[arg-type]


def test_the_handler_has_every_attribute_tornado_sets_up():
    app = tornado.web.Application()
    plain, ours = _Plain(app, _request()), _Ours(app, _request())
    assert set(vars(ours)) == set(vars(plain))
    assert ours.ui == {} and ours.get_status() == 200 and ours._write_buffer == []
    assert ours.request.connection.close_callback == ours.on_connection_close
