"""Deadlines for the moments a connection may keep the server waiting, and a
cap on the connections that have not become requests yet.

A connection waits, in turn, for

- the first byte of its next request (``server.idle_connection_timeout``: a
  new connection, or a kept-alive one between requests);
- the rest of that request's header, from its first byte
  (``server.header_timeout``): without this whole-header deadline a client
  that trickles one header line every few seconds holds its descriptor as long
  as it likes (nginx's ``client_header_timeout``);
- a body that has begun (``server.body_timeout``: stalled uploads).

Tornado enforces the header and body timeouts itself by wrapping each read in
``gen.with_timeout``: a future, a chained future and a timer for every
request, about 7 % of the event loop's time at 1,000 sends/s (bench/README.md).
``ChatHTTPServer`` turns those off. Every request waits the same time for its
first byte, and the same time for its header, so the requests waiting for
either stand in a line (``WaitingLine``) in the order their deadlines fall:
one loop timer per line serves all of them, set for the first, and joining or
leaving is a dict insert or delete. A body's deadline is a loop timer of its
own (an upload's is longer). A held getmsg has none: its header and body are
in, and its wait has its own timer. ``HeaderStream`` tells the request when
the first bytes of its header arrive, which moves it from the first line to
the second.

Connections that never become requests must not crowd out those that do: at
most ``server.max_unfinished_connections`` (by default a quarter of the
open-file limit, leida_chat.py) may be open without having sent a complete
request header (new connections, and kept-alive ones in the middle of their
next header); past it the oldest of them is closed, though never one younger
than ``UNFINISHED_GRACE``: a crowd of pages reconnecting at once is accepted
faster than its requests arrive, and those are not the ones to close. There is
no limit per client address: most H5 pages are on phones, and a carrier's NAT
puts thousands of them behind one public address, so a limit low enough to stop
one flooder would cut off a carrier's customers; closing the oldest first means
a flooder mostly closes its own connections. Accepting itself, when
descriptors run out, is handlers/accepting.py's.

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
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from tornado import httputil
from tornado.http1connection import HTTP1Connection
from tornado.iostream import IOStream

from .accepting import PausingHTTPServer, RareLog
from .metrics import CLOSED_REASONS, CONNECTIONS_CLOSED, UNFINISHED_CONNECTIONS

log = logging.getLogger("leida_chat.http")

#: what the paths of the upload routes contain (their body deadline is media.upload_timeout)
UPLOAD_PATH = "/chat/upload/"
#: how early a line's timer may fire and still close what is due (the loop's clock resolution)
CLOCK_SLACK = 0.001
#: past server.max_unfinished_connections, a connection this young is not closed: its request is on its way
UNFINISHED_GRACE = 1.0

_closed = {reason: CONNECTIONS_CLOSED.labels(reason=reason) for reason in CLOSED_REASONS}
_slow_headers = RareLog(log, logging.INFO, lambda count, seconds: (
    f"closed {count} more connections in the last {seconds:.0f} s whose request header did not arrive "
    f"whole in time (server.header_timeout)"))
_shed = RareLog(log, logging.WARNING, lambda count, seconds: (
    f"closed {count} more unfinished connections in the last {seconds:.0f} s, the oldest each time "
    f"(server.max_unfinished_connections)"))


class HeaderStream(IOStream):
    """An IOStream that tells the request waiting for its header, once, when bytes arrive."""

    #: called at the next bytes read, then forgotten; set while a request waits for the first byte of its header
    on_bytes: Callable[[], None] | None = None

    def _read_to_buffer(self) -> int | None:
        size = super()._read_to_buffer()
        if size and self.on_bytes is not None:
            on_bytes, self.on_bytes = self.on_bytes, None
            on_bytes()
        return size

    @property
    def buffered(self) -> bool:
        """Bytes of the next request read already (sent while the last one was being answered)."""
        return self._read_buffer_size > 0


#: every ChatHTTPServer alive, for leida_unfinished_connections
_servers: weakref.WeakSet[ChatHTTPServer] = weakref.WeakSet()


def unfinished_connections() -> int:
    """Connections of this process that have not sent a complete request header yet."""
    return sum(len(server.unfinished) for server in list(_servers))


UNFINISHED_CONNECTIONS.set_function(unfinished_connections)


class ChatHTTPServer(PausingHTTPServer):
    """Tornado's HTTPServer with cheaper per-request deadlines, a whole-header deadline and a cap on
    unfinished connections (see module docstring)."""

    stream_class = HeaderStream

    def initialize(
        self, *args: Any, idle_connection_timeout: float | None = None, body_timeout: float | None = None,
        header_timeout: float | None = None, max_unfinished_connections: int | None = None,
        trusted_proxies: Sequence[str] = (), upload_timeout: float | None = None, **kwargs: Any,
    ) -> None:
        """``header_timeout`` None: the header may take the idle timeout; ``max_unfinished_connections`` None: no cap."""
        super().initialize(*args, **kwargs)
        #: the body deadline of uploads (a 50 MB video from a phone takes minutes), media.upload_timeout
        self.upload_timeout = upload_timeout
        self.trusted_proxies = TrustedProxies(trusted_proxies)
        self.conn_params.header_timeout = None
        self.conn_params.body_timeout = None
        self.idle_connection_timeout = idle_connection_timeout or 3600.0  # Tornado's default
        self.header_timeout = header_timeout or self.idle_connection_timeout
        self.body_timeout = body_timeout
        self.max_unfinished_connections = max_unfinished_connections
        self.idle = WaitingLine(self.idle_connection_timeout, RequestDeadlines.idle_too_long)
        self.headers = WaitingLine(self.header_timeout, RequestDeadlines.header_too_slow)
        #: requests of connections that have not sent a complete header yet, oldest first
        self.unfinished = WaitingLine(None)
        self._cap_check: asyncio.TimerHandle | None = None
        self._current: dict[object, RequestDeadlines] = {}  # per open connection, its latest request
        _servers.add(self)

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        """Called as a connection starts waiting for its next request."""
        delegate = super().start_request(server_conn, request_conn)
        assert isinstance(request_conn, HTTP1Connection)
        first = server_conn not in self._current
        deadlines = RequestDeadlines(delegate, request_conn, self)
        self._current[server_conn] = deadlines
        deadlines.wait_for_header(first)
        return deadlines

    def on_close(self, server_conn: object) -> None:
        """A client that hangs up while idle tells no request delegate: drop its deadline here,
        or each closed connection would be kept until its idle deadline."""
        deadlines = self._current.pop(server_conn, None)
        if deadlines is not None:
            deadlines.cancel()
        super().on_close(server_conn)

    def unfinished_joins(self, deadlines: RequestDeadlines) -> None:
        """A connection has not sent a whole header yet: past the cap, the oldest such are closed, but
        none that has had less than ``UNFINISHED_GRACE`` to begin (a crowd of pages connecting at once
        is accepted faster than its requests arrive)."""
        self.unfinished.join(deadlines)
        self._hold_the_cap()

    def _hold_the_cap(self) -> None:
        cap = self.max_unfinished_connections
        if cap is None:
            return
        loop = asyncio.get_running_loop()
        while len(self.unfinished) > cap:
            oldest, since = self.unfinished.first()
            if loop.time() - since < UNFINISHED_GRACE:
                if self._cap_check is None:  # over the cap with young ones only: again once the oldest is not
                    self._cap_check = loop.call_at(since + UNFINISHED_GRACE, self._check_the_cap)
                return
            oldest.shed(cap)

    def _check_the_cap(self) -> None:
        self._cap_check = None
        self._hold_the_cap()

    @property
    def pending_deadlines(self) -> int:
        """Connections with a running deadline (for tests and curiosity)."""
        return sum(1 for deadlines in self._current.values() if deadlines.running)


class WaitingLine:
    """Requests waiting for the same thing with the same allowance, in the order they began: the first is
    always the first due, so one loop timer, set for it, serves the whole line (see module docstring).
    ``seconds`` None: no deadline, only the order."""

    def __init__(self, seconds: float | None, overdue: Callable[[RequestDeadlines], None] | None = None) -> None:
        self.seconds = seconds
        self._overdue = overdue
        # an OrderedDict: its front is found at once, where a dict's is found past every entry
        # deleted since it last grew (a line is left at the front most of the time)
        self._due: OrderedDict[RequestDeadlines, float] = OrderedDict()
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, deadlines: object) -> bool:
        return deadlines in self._due

    def join(self, deadlines: RequestDeadlines) -> float:
        """In at the back of the line; returns the loop's time (without a deadline, that is what is kept)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self.seconds is None:
            self._due[deadlines] = now
            return now
        due = self._due[deadlines] = now + self.seconds
        if self._timer is None:
            self._timer = loop.call_at(due, self._expire)
        return now

    def leave(self, deadlines: RequestDeadlines) -> None:
        self._due.pop(deadlines, None)

    def first(self) -> tuple[RequestDeadlines, float]:
        """The front of the line and its deadline (its time of joining, for a line without deadlines)."""
        return next(iter(self._due.items()))

    def _expire(self) -> None:
        """The first ones are due: each leaves the line and is told; the timer is set for the next."""
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time() + CLOCK_SLACK
        overdue = []
        for deadlines, due in self._due.items():
            if due > now:
                self._timer = loop.call_at(due, self._expire)
                break
            overdue.append(deadlines)
        assert self._overdue is not None
        for deadlines in overdue:
            del self._due[deadlines]
            self._overdue(deadlines)


class RequestDeadlines(httputil.HTTPMessageDelegate):
    """Passes one request through to the application's delegate, closing the connection if its first
    byte, then its header, then its body do not arrive in time."""

    def __init__(self, delegate: httputil.HTTPMessageDelegate, connection: HTTP1Connection,
                 server: ChatHTTPServer) -> None:
        self._delegate = delegate
        self._server = server
        self._peer_ip: str | None = None
        self._peer_protocol: str | None = None
        self._connection = connection
        self._line: WaitingLine | None = None  # the idle or the header line, while in one
        self._unfinished = False
        self._deadline: asyncio.TimerHandle | None = None  # the body's

    @property
    def running(self) -> bool:
        return self._line is not None or self._deadline is not None

    def wait_for_header(self, first: bool) -> None:
        """The connection starts waiting for this request; ``first``: the connection's first."""
        if first:
            self._unfinished = True
            self._server.unfinished_joins(self)
        stream = self._connection.stream
        if isinstance(stream, HeaderStream) and not stream.buffered:
            self._line = self._server.idle
            self._line.join(self)
            stream.on_bytes = self._header_begun
        else:
            self._header_begun()

    def _header_begun(self) -> None:
        """Its first bytes are in: from now on the whole header has ``server.header_timeout``."""
        if self._line is not None:
            self._line.leave(self)
        self._line = self._server.headers
        self._line.join(self)
        if not self._unfinished:
            self._unfinished = True
            self._server.unfinished_joins(self)

    def headers_received(
        self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine, headers: httputil.HTTPHeaders,
    ) -> Any:
        self.cancel()
        server = self._server
        if server.trusted_proxies:
            self._believe_forwarded_address(headers)
        if server.body_timeout is not None and _has_body(headers):
            timeout = server.body_timeout
            if server.upload_timeout is not None and isinstance(start_line, httputil.RequestStartLine) \
                    and UPLOAD_PATH in start_line.path:
                timeout = max(timeout, server.upload_timeout)
            self._deadline = asyncio.get_running_loop().call_later(timeout, self._body_too_slow, timeout)
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
        trusted_proxies = self._server.trusted_proxies
        client = trusted_proxies.client_address(peer, headers)
        if client is not None and client != peer:
            self._peer_ip = peer
            context.remote_ip = client  # type: ignore[attr-defined]
        protocol = headers.get("X-Forwarded-Proto", "").strip().lower()
        if protocol in ("http", "https") and trusted_proxies.trusts(peer):
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
        """Nothing more to wait for: out of its line, no longer unfinished, no body deadline."""
        if self._line is not None:
            self._line.leave(self)
            self._line = None
        if self._unfinished:
            self._server.unfinished.leave(self)
            self._unfinished = False
        stream = self._connection.stream
        if isinstance(stream, HeaderStream):
            stream.on_bytes = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def idle_too_long(self) -> None:
        """Its idle line's deadline: no byte of a request came."""
        self._line = None
        self._close("idle")

    def header_too_slow(self) -> None:
        """Its header line's deadline: the header began but did not end in time."""
        self._line = None
        _slow_headers("closed a connection from %s: its request header did not arrive whole within "
                      "server.header_timeout = %g s of its first byte (more such: one line a minute)",
                      self._connection.context, self._server.header_timeout)
        self._close("header_timeout")

    def shed(self, cap: int) -> None:
        """The oldest unfinished connection, past the cap."""
        _shed("closed the oldest of %d connections that have not sent a complete request header "
              "(server.max_unfinished_connections = %d), from %s (more such: one line a minute)",
              cap + 1, cap, self._connection.context)
        self._close("unfinished_cap")

    def _body_too_slow(self, timeout: float) -> None:
        self._deadline = None
        log.info("body not received within %s s from %s: connection closed", timeout, self._connection.context)
        self._close("body_timeout")

    def _close(self, reason: str) -> None:
        self.cancel()
        _closed[reason].inc()
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
