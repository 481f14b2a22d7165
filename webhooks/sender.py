"""The webhook sender: one per serving process, beside the chat server on its event loop.

Every tick it asks the outbox whether anything is due (two index probes, so an
idle outbox costs no write), turns due unread stretches into events, leases the
events due now and POSTs each with tornado's ``AsyncHTTPClient``, which never
blocks the loop: a slow receiver holds a socket, not a send or a long-poll.

An attempt succeeds on a 2xx within ``timeout_seconds``. Anything else is
retried after the next delay of ``retry_seconds`` (with up to 10 % jitter, so
that many events failed together do not come back together), or later if the
receiver's ``Retry-After`` asks; after the last delay the event has failed. A
410 Gone stops that event at once. With several processes, each event is
leased by one (``FOR UPDATE SKIP LOCKED``) for the length of an attempt; a
process that dies mid-attempt leaves the event to be sent again, with the same
``webhook-id``, once the lease runs out.
"""
from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from prometheus_client import Counter, Gauge, Histogram
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse

from storage.outbox import BATCH, Outbox, WebhookEvent

from .signing import signature_header

log = logging.getLogger("leida_chat.webhooks")

#: attempts in flight at once, per process
MAX_IN_FLIGHT = 16
#: at most this many transactions of BATCH due watches per tick: a backlog drains at
#: BATCH x this per tick, and no tick holds the writer (which the sends share) for long
PROMOTIONS_PER_TICK = 4
#: how long an event stays leased, in attempt timeouts: another process may take it after that
LEASE_TIMEOUTS = 2
#: the longest a Retry-After may push an attempt back
MAX_RETRY_AFTER_SECONDS = 24 * 3600.0
#: how often the pending gauge is recounted
COUNT_EVERY_SECONDS = 5.0
#: a failing outbox (the database away) is logged once per this
WARN_EVERY_SECONDS = 60.0
JITTER = 0.1

EVENTS_PENDING = Gauge("leida_webhook_events_pending", "Webhook events waiting for delivery or a retry")
EVENTS_FINISHED = Counter("leida_webhook_events_total", "Webhook events finished, by outcome", ["outcome"])
ATTEMPTS = Counter("leida_webhook_attempts_total", "Webhook delivery attempts, by result", ["result"])
DELIVERY_SECONDS = Histogram(
    "leida_webhook_delivery_seconds", "From an event's creation to its receiver's 2xx",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200, 36000),
)
for _outcome in ("delivered", "failed"):
    EVENTS_FINISHED.labels(_outcome)
for _result in ("success", "failure"):
    ATTEMPTS.labels(_result)


@dataclass(frozen=True)
class WebhookSettings:
    """The ``[webhook]`` settings, checked (leida_config.webhook_settings)."""

    url: str
    keys: list[bytes]
    unread_after_seconds: float
    timeout_seconds: float
    retry_seconds: tuple[float, ...]

    @property
    def tick_seconds(self) -> float:
        """How often the outbox is looked at: often enough for the shortest delay configured."""
        shortest = min([self.unread_after_seconds, *(delay for delay in self.retry_seconds if delay > 0)])
        return min(1.0, max(0.05, shortest / 4))


class WebhookSender:
    """The outbox's one sender in this process (see the module docstring)."""

    def __init__(self, outbox: Outbox, settings: WebhookSettings) -> None:
        self.outbox = outbox
        self.settings = settings
        self._client = AsyncHTTPClient(force_instance=True, max_clients=MAX_IN_FLIGHT)
        self._in_flight: set[asyncio.Task] = set()
        self._task: asyncio.Task | None = None
        #: set when half the attempt slots are free: look again now rather than at the next tick
        #: (by halves, so that each claim, a write transaction, takes several events)
        self._slot_freed = asyncio.Event()
        self._counted_at = 0.0
        self._warned_at = 0.0
        #: where events go, for log lines: scheme and host only (a URL's path or query may carry a token)
        url = urlsplit(settings.url)
        self.destination = f"{url.scheme}://{url.netloc.rpartition('@')[2]}"

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())
        log.info("webhooks to %s: unread after %g s, retries after %s s", self.destination,
                 self.settings.unread_after_seconds, ",".join(f"{d:g}" for d in self.settings.retry_seconds))

    async def stop(self) -> None:
        """Stop looking and cancel attempts in flight: their events stay leased, and are sent
        again (same id) once the lease runs out, by this process after a restart or another."""
        if self._task is not None:
            self._task.cancel()
        for attempt in list(self._in_flight):
            attempt.cancel()
        await asyncio.gather(*(t for t in (self._task, *self._in_flight) if t is not None), return_exceptions=True)
        self._client.close()

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the database away, most often: the next tick tries again
                now = time.monotonic()
                if now - self._warned_at >= WARN_EVERY_SECONDS:
                    log.warning("webhook outbox not reachable (%s); retrying", error)
                    self._warned_at = now
            try:
                await asyncio.wait_for(self._slot_freed.wait(), self.settings.tick_seconds)
            except TimeoutError:
                pass
            self._slot_freed.clear()

    async def tick(self) -> None:
        """Promote due stretches to events, and start an attempt for each event due now."""
        now = time.time()
        watch_due, event_due = await self.outbox.anything_due(now)
        for _ in range(PROMOTIONS_PER_TICK if watch_due else 0):
            if await self.outbox.promote_due(now, self.settings.unread_after_seconds,
                                             first_attempt_at=now + self.settings.retry_seconds[0]) < BATCH:
                break
        event_due = event_due or (watch_due and self.settings.retry_seconds[0] == 0)
        free = MAX_IN_FLIGHT - len(self._in_flight)
        if event_due and free > 0:
            lease = self.settings.timeout_seconds * LEASE_TIMEOUTS
            for event in await self.outbox.claim(now, lease, free):
                attempt = asyncio.get_running_loop().create_task(self._attempt(event))
                self._in_flight.add(attempt)
                attempt.add_done_callback(self._attempt_ended)
        if time.monotonic() - self._counted_at >= COUNT_EVERY_SECONDS:
            self._counted_at = time.monotonic()
            EVENTS_PENDING.set(await self.outbox.pending())

    def _attempt_ended(self, attempt: asyncio.Task) -> None:
        self._in_flight.discard(attempt)
        if len(self._in_flight) <= MAX_IN_FLIGHT // 2:
            self._slot_freed.set()

    async def _attempt(self, event: WebhookEvent) -> None:
        try:
            await self._attempt_and_record(event)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the database away: the lease runs out and the event is sent again
            log.warning("webhook %s: the attempt could not be recorded (%s); it is sent again once its "
                        "lease runs out", event.id, error)

    async def _attempt_and_record(self, event: WebhookEvent) -> None:
        error_text = ""
        try:
            response: HTTPResponse | None = await self._post(event)
        except Exception as no_answer:  # in time, refused, reset: tornado raises these whatever raise_error says
            response, error_text = None, f"no answer ({_reason(no_answer)})"
        now = time.time()
        code = response.code if response is not None else 599
        if 200 <= code < 300:
            ATTEMPTS.labels("success").inc()
            await self.outbox.delivered(event.id, now)
            EVENTS_FINISHED.labels("delivered").inc()
            DELIVERY_SECONDS.observe(max(0.0, now - event.created_at))
            return
        ATTEMPTS.labels("failure").inc()
        error_text = error_text if response is None else f"HTTP {code}"
        if code == 410:
            log.warning("webhook %s: the receiver answered 410 Gone; not retrying this event", event.id)
            next_attempt_at = None
        else:
            retry_after = _retry_after(response, now) if response is not None else None
            next_attempt_at = self.next_attempt_at(event.attempts + 1, now, retry_after)
        await self.outbox.attempt_failed(event.id, now, error_text, next_attempt_at)
        if next_attempt_at is None:
            EVENTS_FINISHED.labels("failed").inc()
            log.warning("webhook %s (%s) failed after %d attempts: %s", event.id, event.type, event.attempts + 1, error_text)
        else:
            log.info("webhook %s attempt %d to %s: %s; next in %.1f s", event.id, event.attempts + 1,
                     self.destination, error_text, next_attempt_at - now)

    def next_attempt_at(self, attempts_made: int, now: float, retry_after: float | None) -> float | None:
        """When to try again after ``attempts_made`` attempts, or None: that was the last."""
        if attempts_made >= len(self.settings.retry_seconds):
            return None
        delay = self.settings.retry_seconds[attempts_made] * (1 + random.uniform(0, JITTER))
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER_SECONDS))
        return now + delay

    async def _post(self, event: WebhookEvent) -> HTTPResponse:
        body = event.body.encode()
        timestamp = int(time.time())
        request = HTTPRequest(
            self.settings.url, method="POST", body=body, follow_redirects=False,
            connect_timeout=self.settings.timeout_seconds, request_timeout=self.settings.timeout_seconds,
            headers={
                "Content-Type": "application/json",
                "User-Agent": "leida-chat-webhooks",
                "webhook-id": event.id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": signature_header(self.settings.keys, event.id, timestamp, body),
            },
        )
        return await self._client.fetch(request, raise_error=False)


def _reason(error: BaseException) -> str:
    """Why there was no answer, in words: never the URL (it may carry a token) nor a header."""
    if isinstance(error, HTTPClientError):
        return error.message or f"HTTP {error.code}"
    if isinstance(error, OSError) and error.errno:
        return os.strerror(error.errno)
    return type(error).__name__


def _retry_after(response: HTTPResponse, now: float) -> float | None:
    """The answer's Retry-After, in seconds from ``now``: delta-seconds or an HTTP date."""
    value = response.headers.get("Retry-After") if response.headers else None
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)
