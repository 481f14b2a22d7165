"""Deadlines for the two moments a connection may keep the server waiting:
for the next request's headers (``server.idle_connection_timeout``: idle
keep-alive connections and slow headers) and for a body that has begun
(``server.body_timeout``: stalled uploads).

Tornado enforces both itself by wrapping each read in ``gen.with_timeout``:
a future, a chained future and a timer for every request, about 7 % of the
event loop's time at 1,000 sends/s (bench/README.md). ``ChatHTTPServer`` turns
those off and gives each request one loop timer instead, cancelled as soon as
what it waits for has arrived. A held getmsg has neither deadline: its headers
and body are in, and its wait has its own timer.

The same per-request delegate gives a request the client's address when it
came through a proxy we trust (``server.trusted_proxies``): only from those
peers are ``X-Forwarded-For`` and ``X-Real-IP`` believed, so the access log and
everything else that uses the address see the real client, and nobody else can
claim an address by sending the header.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Sequence
from typing import Any

from tornado import httputil
from tornado.http1connection import HTTP1Connection
from tornado.httpserver import HTTPServer

log = logging.getLogger("leida_chat.http")

#: what the paths of the upload routes contain (their body deadline is media.upload_timeout)
UPLOAD_PATH = "/chat/upload/"


class ChatHTTPServer(HTTPServer):
    """Tornado's HTTPServer with cheaper per-request deadlines (see module docstring)."""

    def initialize(
        self, *args: Any, idle_connection_timeout: float | None = None, body_timeout: float | None = None,
        trusted_proxies: Sequence[str] = (), upload_timeout: float | None = None, **kwargs: Any,
    ) -> None:
        super().initialize(*args, **kwargs)
        #: the body deadline of uploads (a 50 MB video from a phone takes minutes), media.upload_timeout
        self.upload_timeout = upload_timeout
        self.trusted_proxies = TrustedProxies(trusted_proxies)
        self.conn_params.header_timeout = None
        self.conn_params.body_timeout = None
        self.idle_connection_timeout = idle_connection_timeout or 3600.0  # Tornado's default
        self.body_timeout = body_timeout
        self._current: dict[object, RequestDeadlines] = {}  # per open connection, its latest request

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        """Called as a connection starts waiting for its next request."""
        delegate = super().start_request(server_conn, request_conn)
        assert isinstance(request_conn, HTTP1Connection)
        deadlines = RequestDeadlines(delegate, request_conn, self.idle_connection_timeout, self.body_timeout,
                                     self.trusted_proxies, self.upload_timeout)
        self._current[server_conn] = deadlines
        return deadlines

    def on_close(self, server_conn: object) -> None:
        """A client that hangs up while idle tells no request delegate: drop its timer here,
        or each closed connection would be kept until its idle deadline."""
        deadlines = self._current.pop(server_conn, None)
        if deadlines is not None:
            deadlines.cancel()
        super().on_close(server_conn)

    @property
    def pending_deadlines(self) -> int:
        """Connections with a running deadline timer (for tests and curiosity)."""
        return sum(1 for deadlines in self._current.values() if deadlines.running)


class RequestDeadlines(httputil.HTTPMessageDelegate):
    """Passes one request through to the application's delegate, closing the
    connection if its headers, or then its body, do not arrive in time."""

    def __init__(
        self, delegate: httputil.HTTPMessageDelegate, connection: HTTP1Connection,
        idle_timeout: float, body_timeout: float | None, trusted_proxies: TrustedProxies | None = None,
        upload_timeout: float | None = None,
    ) -> None:
        self._delegate = delegate
        self._trusted_proxies = trusted_proxies
        self._upload_timeout = upload_timeout
        self._peer_ip: str | None = None
        self._peer_protocol: str | None = None
        self._connection = connection
        self._body_timeout = body_timeout
        self._deadline: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            idle_timeout, self._idle_too_long)

    @property
    def running(self) -> bool:
        return self._deadline is not None

    def headers_received(
        self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine, headers: httputil.HTTPHeaders,
    ) -> Any:
        self.cancel()
        if self._trusted_proxies:
            self._believe_forwarded_address(headers)
        if self._body_timeout is not None and _has_body(headers):
            timeout = self._body_timeout
            if self._upload_timeout is not None and isinstance(start_line, httputil.RequestStartLine) \
                    and UPLOAD_PATH in start_line.path:
                timeout = max(timeout, self._upload_timeout)
            self._deadline = asyncio.get_running_loop().call_later(timeout, self._body_too_slow)
        return self._delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Any:
        return self._delegate.data_received(chunk)

    def finish(self) -> None:
        self.cancel()
        self._delegate.finish()
        self._restore_peer_address()

    def on_connection_close(self) -> None:
        self.cancel()
        self._delegate.on_connection_close()
        self._restore_peer_address()

    def _believe_forwarded_address(self, headers: httputil.HTTPHeaders) -> None:
        """Before the request object is made from the connection's context: the client's address."""
        context = self._connection.context
        peer = getattr(context, "remote_ip", None)
        assert self._trusted_proxies is not None
        client = self._trusted_proxies.client_address(peer, headers)
        if client is not None and client != peer:
            self._peer_ip = peer
            context.remote_ip = client  # type: ignore[attr-defined]
        protocol = headers.get("X-Forwarded-Proto", "").strip().lower()
        if protocol in ("http", "https") and self._trusted_proxies.trusts(peer):
            # the page's own scheme: media URLs handed out must be https on an https page
            self._peer_protocol = getattr(context, "protocol", None)
            context.protocol = protocol  # type: ignore[attr-defined]

    def _restore_peer_address(self) -> None:
        """The next request on this keep-alive connection starts from the real peer again."""
        if self._peer_ip is not None:
            self._connection.context.remote_ip = self._peer_ip  # type: ignore[attr-defined]
            self._peer_ip = None
        if self._peer_protocol is not None:
            self._connection.context.protocol = self._peer_protocol  # type: ignore[attr-defined]
            self._peer_protocol = None

    def cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _idle_too_long(self) -> None:
        self._deadline = None
        self._connection.close()

    def _body_too_slow(self) -> None:
        self._deadline = None
        log.info("body not received within %s s from %s: connection closed",
                 self._body_timeout, self._connection.context)
        self._connection.close()


class TrustedProxies:
    """The addresses and networks whose forwarded-address headers are believed."""

    def __init__(self, proxies: Sequence[str]) -> None:
        self.networks = [ipaddress.ip_network(proxy, strict=False) for proxy in proxies]

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: str | None) -> bool:
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        return any(ip in network for network in self.networks)

    def client_address(self, peer: str | None, headers: httputil.HTTPHeaders) -> str | None:
        """The client as the trusted proxies report it, or None to keep the peer.

        ``X-Forwarded-For`` is read from the right: each proxy appends the address
        it saw, so the rightmost address that is not one of ours is the client
        (anything to its left could be made up by the client). ``X-Real-IP`` is
        taken when there is no ``X-Forwarded-For``.
        """
        if not self.trusts(peer):
            return None
        forwarded = headers.get_list("X-Forwarded-For")
        hops = [hop.strip() for value in forwarded for hop in value.split(",") if hop.strip()]
        if not hops and headers.get("X-Real-IP"):
            hops = [headers["X-Real-IP"].strip()]
        for hop in reversed(hops):
            if not _is_address(hop):
                return None  # garbage in the header: believe nothing of it
            if not self.trusts(hop):
                return hop
        return None


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _has_body(headers: httputil.HTTPHeaders) -> bool:
    return headers.get("Content-Length", "0") != "0" or "Transfer-Encoding" in headers
