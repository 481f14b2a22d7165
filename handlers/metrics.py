"""Prometheus metrics of the HTTP layer, and the listener that serves every metric.

``metrics_app`` answers ``GET /metrics`` in Prometheus' text format with what
prometheus_client's default registry holds: these metrics and storage's
(storage/metrics.py). It is served on a listener of its own (``metrics.host``,
``metrics.port``), never on the public port, so no proxy rule is needed to keep
it private and deploy/nginx.conf has no route to it.
"""
from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from tornado.web import Application, RequestHandler

from storage import Waiters
from storage.metrics import count_error

REQUESTS = Counter("leida_requests", "Answers by route and envelope code", ["route", "code"])
HELD_REQUESTS = Gauge("leida_held_requests", "getmsg requests held open right now")
DELIVERY_LATENCY = Histogram(
    "leida_delivery_latency_seconds",
    "From the COMMIT of a message to the end of writing the held getmsg answer that carries it",
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
)
# the server's edge (handlers/accepting.py, handlers/connections.py)
OPEN_CONNECTIONS = Gauge("leida_open_connections", "Connections open right now, by listener (public, server_api, "
                         "metrics)", ["listener"])
UNFINISHED_CONNECTIONS = Gauge("leida_unfinished_connections", "Connections on the public port that have not sent "
                               "a complete request header yet (server.max_unfinished_connections)")
ACCEPT_PAUSES = Counter("leida_accept_paused", "Pauses of accepting because accept() found no file descriptor "
                        "(EMFILE, ENFILE) or no kernel memory (ENOBUFS, ENOMEM)")
CONNECTIONS_CLOSED = Counter("leida_connections_closed", "Connections the server closed while waiting for a "
                             "request: reason = idle, header_timeout, unfinished_cap, body_timeout", ["reason"])
CLOSED_REASONS = ("idle", "header_timeout", "unfinished_cap", "body_timeout")
for _reason in CLOSED_REASONS:  # exported at 0 from the start, so a rate() has a baseline
    CONNECTIONS_CLOSED.labels(reason=_reason)

_request_counters: dict[tuple[str, int], Any] = {}


def count_request(route: str, code: int) -> None:
    """One answer of ``route`` with envelope ``code``; label children are looked up once each."""
    counter = _request_counters.get((route, code))
    if counter is None:
        counter = _request_counters[(route, code)] = REQUESTS.labels(route=route, code=str(code))
    counter.inc()


def watch_held_requests(waiters: Waiters) -> None:
    """``leida_held_requests`` reads the count when scraped, so holding a request costs nothing more."""
    HELD_REQUESTS.set_function(lambda: len(waiters))


class MetricsHandler(RequestHandler):
    """GET /metrics, for Prometheus."""

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(REGISTRY))


def metrics_app() -> Application:
    return Application([(r"/metrics", MetricsHandler)], log_function=_scrapes_are_not_logged)


def _scrapes_are_not_logged(handler: RequestHandler) -> None:
    """A scrape every 15 s would be most of a quiet server's access log."""


__all__ = ["ACCEPT_PAUSES", "CONNECTIONS_CLOSED", "DELIVERY_LATENCY", "OPEN_CONNECTIONS", "UNFINISHED_CONNECTIONS",
           "count_error", "count_request", "metrics_app", "watch_held_requests"]
