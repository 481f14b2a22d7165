"""Accepting connections when the process runs out of file descriptors.

Every connection is a descriptor, and the open-file limit caps them: past it
``accept()`` fails with EMFILE (or ENFILE for the whole system, ENOBUFS or
ENOMEM for kernel memory), while the listening socket stays readable because
the connection is still queued. Tornado's accept handler raises on that, the
event loop logs a traceback and calls it again on the next turn: one traceback
per loop turn, thousands a second, on a CPU spinning at 100 % (bench/README.md,
"Hostile connections").

``Acceptor`` owns a listening socket's accept path instead, as nginx's
``ngx_event_accept`` does when it disables accept events for a while: when
descriptors run out it stops watching the socket for a short pause that
doubles from ``FIRST_PAUSE`` to ``LONGEST_PAUSE`` while accepts keep failing,
and goes back to the first length on the first success. Held requests and
open connections are served as usual meanwhile, and the kernel's listen
backlog (``LISTEN_BACKLOG`` in leida_chat.py) holds new connects until a
descriptor is free. Errors that ``accept(2)`` documents as the new
connection's own (a network error, the peer gone) are skipped like
Tornado skips ECONNABORTED.

The open-file limit is the process's, so the state is too:
``DESCRIPTOR_SHORTAGE`` counts refused accepts from every listener, logs one
warning when the shortage starts, at most one a minute while it lasts (how
many accepts were refused, how many connections are open) and one line when
it is over; ``/readyz`` answers 503 while it lasts (handlers/health.py).

``PausingHTTPServer`` is Tornado's HTTPServer on ``Acceptor``: the public port
(``ChatHTTPServer``, handlers/connections.py), the server API's and the
metrics' listeners all use it, as all three share the descriptors.
"""
from __future__ import annotations

import errno
import logging
import resource
import socket
import struct
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream

from .metrics import ACCEPT_PAUSES, OPEN_CONNECTIONS

log = logging.getLogger("leida_chat.http")

#: the first pause after a refused accept, and the longest: each refusal in a row doubles it
FIRST_PAUSE = 0.010
LONGEST_PAUSE = 1.0
#: how many connections one readable event accepts before the loop serves others (Tornado's figure)
ACCEPT_BATCH = 128
#: a shortage is over once no accept has been refused for this long; /readyz is ready again then
SHORTAGE_OVER_AFTER = 5.0
#: while something lasts, a line in the log at most this often
LOG_INTERVAL = 60.0

#: accept() found no descriptor or no kernel memory for the new connection: pause
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: accept() handing over the new connection's own pending error (accept(2) says retry, as for EAGAIN)
THE_CONNECTIONS_OWN_ERRORS = frozenset(
    getattr(errno, name) for name in ("ENETDOWN", "EPROTO", "ENOPROTOOPT", "EHOSTDOWN", "ENONET",
                                      "EHOSTUNREACH", "EOPNOTSUPP", "ENETUNREACH", "ECONNABORTED", "EPERM")
    if hasattr(errno, name))


class RareLog:
    """A kind of event logged at most once per ``interval``: the first at once, in its own words;
    those that follow within the interval are counted, and ``more(count, seconds)`` says how many
    at the end of it. A flood of them is then a line a minute, never a line each."""

    def __init__(self, logger: logging.Logger, level: int, more: Callable[[int, float], str],
                 interval: float = LOG_INTERVAL) -> None:
        self._logger = logger
        self._level = level
        self._more = more
        self.interval = interval
        self._logged_at: float | None = None
        self._count = 0
        self._flush: object | None = None

    def __call__(self, message: str, *args: Any) -> bool:
        """One event: ``message % args`` is its line if none was logged within the interval (True)."""
        now = time.monotonic()
        if self._logged_at is None or now - self._logged_at >= self.interval:
            self.flush()
            self._logger.log(self._level, message, *args)
            self._logged_at = now
            return True
        self._count += 1
        if self._flush is None:  # the count is logged at the end of the interval even if nothing more comes
            self._flush = IOLoop.current().call_later(self._logged_at + self.interval - now, self._flush_due)
        return False

    def flush(self) -> None:
        """Log the count of the events not logged yet, if any."""
        if self._flush is not None:
            IOLoop.current().remove_timeout(self._flush)
            self._flush = None
        if self._count:
            assert self._logged_at is not None
            self._logger.log(self._level, self._more(self._count, time.monotonic() - self._logged_at))
            self._logged_at = time.monotonic()
            self._count = 0

    def forget(self) -> None:
        """Drop the count not logged yet (a line that follows says it all)."""
        if self._flush is not None:
            IOLoop.current().remove_timeout(self._flush)
            self._flush = None
        self._count = 0

    def _flush_due(self) -> None:
        self._flush = None
        self.flush()


class DescriptorShortage:
    """Whether this process's accepts are being refused for lack of descriptors, for the log and /readyz."""

    def __init__(self) -> None:
        #: when the shortage began (time.monotonic()), or None when there is none
        self.began: float | None = None
        self.last_refusal = 0.0
        #: accepts refused since the shortage began
        self.refused = 0
        self._log = RareLog(log, logging.WARNING, self._more_refused)
        self._over_check: object | None = None
        self._announced = False

    @property
    def lasting(self) -> bool:
        return self.began is not None and time.monotonic() - self.last_refusal < SHORTAGE_OVER_AFTER

    def problem(self) -> str | None:
        """What /readyz reports while the shortage lasts."""
        if not self.lasting:
            return None
        return (f"out of file descriptors: accepting paused (open-file limit {open_file_limit()}, "
                f"{open_connections()} connections open)")

    def refused_accept(self, error: OSError, listening: socket.socket) -> None:
        now = time.monotonic()
        self.last_refusal = now
        self.refused += 1
        starting = self.began is None
        if starting:
            self.began = now
            self._over_check = IOLoop.current().call_later(SHORTAGE_OVER_AFTER, self._maybe_over)
        logged = self._log(
            "cannot accept connections on %s: %s (open-file limit %d, %d connections open, %s waiting to be "
            "accepted); accepting pauses for %.0f ms, doubling up to %.0f s, while open connections are served. "
            "To raise the limit: README.md, \"Open files\"",
            _address(listening), error.strerror or error, open_file_limit(), open_connections(),
            _waiting_text(listening), FIRST_PAUSE * 1000, LONGEST_PAUSE)
        if starting:
            self._announced = logged

    def _more_refused(self, count: int, seconds: float) -> str:
        return (f"out of file descriptors: {count} more accepts refused in the last {seconds:.0f} s "
                f"(open-file limit {open_file_limit()}, {open_connections()} connections open)")

    def _maybe_over(self) -> None:
        self._over_check = None
        if self.began is None:
            return
        quiet_for = time.monotonic() - self.last_refusal
        if quiet_for < SHORTAGE_OVER_AFTER:
            self._over_check = IOLoop.current().call_later(SHORTAGE_OVER_AFTER - quiet_for, self._maybe_over)
            return
        if self._announced:  # a start the log did not tell (one a minute) gets no end line either
            self._log.forget()
            log.warning("accepting connections again after %.0f s out of file descriptors (%d accepts refused); "
                        "%d connections open", self.last_refusal - self.began, self.refused, open_connections())
        self.began = None
        self.refused = 0


#: one per process: the open-file limit is the process's
DESCRIPTOR_SHORTAGE = DescriptorShortage()
_unexpected_accept_errors = RareLog(log, logging.ERROR, lambda count, seconds: (
    f"{count} more accept() failures in the last {seconds:.0f} s"))


class Acceptor:
    """Accepts a listening socket's connections, pausing while descriptors run out (module docstring)."""

    def __init__(self, listening: socket.socket, accepted: Callable[[socket.socket, Any], None],
                 shortage: DescriptorShortage = DESCRIPTOR_SHORTAGE) -> None:
        self._listening = listening
        self._accepted = accepted
        self._shortage = shortage
        self._io_loop = IOLoop.current()
        #: the length of the next pause; 0 until an accept is refused
        self.pause = 0.0
        self._resume: object | None = None
        self._watching = False
        self._stopped = False
        self._watch()

    @property
    def paused(self) -> bool:
        return self._resume is not None

    def stop(self) -> None:
        """Stop accepting for good (the server stops); the socket is its owner's to close."""
        self._stopped = True
        if self._resume is not None:
            self._io_loop.remove_timeout(self._resume)
            self._resume = None
        self._unwatch()

    def _watch(self) -> None:
        self._io_loop.add_handler(self._listening, self._on_readable, IOLoop.READ)
        self._watching = True

    def _unwatch(self) -> None:
        if self._watching:
            self._io_loop.remove_handler(self._listening)
            self._watching = False

    def _on_readable(self, fd: Any, events: int) -> None:
        for _ in range(ACCEPT_BATCH):  # then the loop's other work, as Tornado's accept handler does
            if self._stopped:
                return
            try:
                connection, address = self._listening.accept()
            except BlockingIOError:
                return
            except OSError as error:
                if error.errno in THE_CONNECTIONS_OWN_ERRORS:
                    continue
                self._pause(error)  # out of descriptors, or anything else: never a spin on a readable socket
                return
            self.pause = 0.0
            self._accepted(connection, address)

    def _pause(self, error: OSError) -> None:
        self.pause = min(LONGEST_PAUSE, self.pause * 2) if self.pause else FIRST_PAUSE
        self._unwatch()
        self._resume = self._io_loop.call_later(self.pause, self._end_pause)
        ACCEPT_PAUSES.inc()
        if error.errno in OUT_OF_DESCRIPTORS:
            self._shortage.refused_accept(error, self._listening)
        else:
            _unexpected_accept_errors("accept() on %s failed: %r; accepting pauses for %.2f s",
                                      _address(self._listening), error, self.pause)

    def _end_pause(self) -> None:
        self._resume = None
        if not self._stopped:
            self._watch()  # a connection still queued makes the socket readable at once


#: every PausingHTTPServer alive, for the open-connection counts
_servers: weakref.WeakSet[PausingHTTPServer] = weakref.WeakSet()


class PausingHTTPServer(HTTPServer):
    """Tornado's HTTPServer, accepting through ``Acceptor``; ``listener`` names it in
    ``leida_open_connections`` (``public``, ``server_api``, ``metrics``)."""

    #: the stream each accepted connection is wrapped in
    stream_class: type[IOStream] = IOStream

    def initialize(self, *args: Any, listener: str = "public", **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self.listener = listener
        self.acceptors: list[Acceptor] = []
        if not any(server.listener == listener for server in _servers):
            OPEN_CONNECTIONS.labels(listener=listener).set_function(lambda: open_connections(listener))
        _servers.add(self)

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        for listening in sockets:
            acceptor = Acceptor(listening, self._accepted)
            self.acceptors.append(acceptor)
            self._sockets[listening.fileno()] = listening
            self._handlers[listening.fileno()] = acceptor.stop

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def _accepted(self, connection: socket.socket, address: Any) -> None:
        if self.ssl_options is not None:  # Tornado's own path wraps it in TLS
            self._handle_connection(connection, address)
            return
        try:
            stream = self.stream_class(connection, max_buffer_size=self.max_buffer_size,
                                       read_chunk_size=self.read_chunk_size)
            self.handle_stream(stream, address)
        except Exception:
            log.error("error in connection callback", exc_info=True)


def open_connections(listener: str | None = None) -> int:
    """Connections open on every listener of this process, or on those named ``listener``."""
    return sum(server.open_connections for server in list(_servers)
               if listener is None or server.listener == listener)


def open_file_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _address(listening: socket.socket) -> str:
    try:
        host, port = listening.getsockname()[:2]
    except (OSError, ValueError):
        return "a listening socket"
    return f"{host}:{port}"


def _waiting_text(listening: socket.socket) -> str:
    """How many connections the kernel has queued for this socket (Linux's TCP_INFO), as text."""
    waiting = listen_queue_length(listening)
    return "unknown how many" if waiting is None else str(waiting)


def listen_queue_length(listening: socket.socket) -> int | None:
    """Connections waiting in the socket's accept queue, or None where the kernel does not say.

    On Linux a listening socket's ``tcpi_unacked`` is its accept queue's length (``ss -lt`` shows it
    as Recv-Q): the connects the backlog holds while accepting pauses.
    """
    tcp_info = getattr(socket, "TCP_INFO", None)
    if tcp_info is None or listening.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        info = listening.getsockopt(socket.IPPROTO_TCP, tcp_info, 32)
    except OSError:
        return None
    return struct.unpack_from("I", info, 24)[0] if len(info) >= 28 else None
