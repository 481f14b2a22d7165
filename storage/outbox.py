"""The outbox of webhook events, and the rules that decide when one is due.

An unread stretch is watched from the send's own transaction: each backend
writes an ``unread_watch`` row with the messages, due when the stretch's oldest
message turns ``webhook.unread_after_seconds`` old. ``promote_due`` then looks
at each due watch against its conversation's read position:

- read since: nothing (and the watch is cleared);
- the stretch already announced, and nothing read since: nothing more, however
  many messages join it;
- otherwise one event (``message.unread`` for the customer's messages,
  ``reply.unread`` for the radar user's) naming every message not yet announced,
  written to ``webhook_event`` in the same transaction.

So nothing depends on memory: a watch or an event committed before a SIGKILL is
looked at, or sent, after the restart, under the same event id.

Each step is a *script*: a generator that yields ``(sql, params)`` with ``?``
placeholders and is sent back the rows. The rules are written once, and each
backend runs a script inside one of its writer's transactions
(``Database.scripted``): SQLite on its writer thread, PostgreSQL on its own.
"""
from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import ujson

from .records import (
    CONTACT_REQUEST,
    FROM_CUSTOMER,
    FROM_RADAR_USER,
    IMAGE,
    PRODUCT,
    SHOP_LINK,
    TEXT,
    TIP,
    VIDEO,
    AttachmentLinks,
    attachment_urls,
    info_type_number,
)

T = TypeVar("T")
Query = tuple[str, Sequence[Any]]
#: yields (sql, params), is sent the rows of each, returns the script's result
Script = Generator[Query, list[Sequence[Any]], T]

#: the event a stretch of each side's messages raises
EVENT_TYPES = {FROM_CUSTOMER: "message.unread", FROM_RADAR_USER: "reply.unread"}
#: most message ids one event lists (unread_count still counts them all): a body stays small
MAX_MESSAGE_IDS = 100
PREVIEW_CHARS = 200
#: the preview of a message that is not text, by info_type (the contract's table)
PREVIEW_LABELS = {PRODUCT: "[商品]", CONTACT_REQUEST: "[索要联系方式]", IMAGE: "[图片]", VIDEO: "[视频]",
                  SHOP_LINK: "[店铺链接]"}
#: how many due watches, or events to send, one transaction takes
BATCH = 50

STATUSES = ("pending", "delivered", "failed")


@dataclass(frozen=True)
class WebhookEvent:
    id: str
    type: str
    body: str
    attempts: int
    created_at: float


@dataclass(frozen=True)
class EventSummary:
    """One row of ``leida_chat.py webhooks``."""

    id: str
    type: str
    status: str
    attempts: int
    created_at: float
    next_attempt_at: float | None
    last_error: str
    user_id: int
    customer_id: int


def run_script(script: Script[T], fetch: Callable[[str, Sequence[Any]], list[Sequence[Any]]]) -> T:
    """Drive ``script`` with a synchronous ``fetch(sql, params)`` (SQLite's writer thread)."""
    rows: Any = None
    try:
        while True:
            sql, params = script.send(rows)
            rows = fetch(sql, params)
    except StopIteration as done:
        return done.value


async def run_script_async(
    script: Script[T], fetch: Callable[[str, Sequence[Any]], Awaitable[list[Sequence[Any]]]]
) -> T:
    """Drive ``script`` with an asynchronous ``fetch(sql, params)`` (PostgreSQL's connection)."""
    rows: Any = None
    try:
        while True:
            sql, params = script.send(rows)
            rows = await fetch(sql, params)
    except StopIteration as done:
        return done.value


def unread_watches(messages: Sequence[tuple], due_at: float) -> list[tuple[int, int, int, float]]:
    """The watches a batch's new message rows (id, customer_id, user_id, send_type, ...) start:
    one per conversation and side, due ``due_at`` unless that stretch is already due earlier.
    A tip is unread for nobody, so it starts none."""
    return [(*key, due_at) for key in dict.fromkeys((row[1], row[2], row[3]) for row in messages if row[3] != TIP)]


#: the watch upsert both backends run with the messages: an earlier due time stands
#: (PostgreSQL's send statement writes its rows from arrays, with the same conflict rule)
WATCH_UNREAD_ON_CONFLICT = (
    "ON CONFLICT (customer_id, user_id, send_type) DO UPDATE SET due_at = excluded.due_at"
    " WHERE unread_watch.due_at IS NULL"
)
WATCH_UNREAD = (
    "INSERT INTO unread_watch (customer_id, user_id, send_type, due_at) VALUES (?, ?, ?, ?) "
    + WATCH_UNREAD_ON_CONFLICT
)


# -- scripts ------------------------------------------------------------------------


#: what an event tells of a picture or video it previews, besides its URLs
ATTACHMENT_PREVIEW_KEYS = ("attachment_id", "content_type", "size", "width", "height", "duration")


def promote_due(now: float, unread_after: float, postgres: bool, first_attempt_at: float,
                links: AttachmentLinks | None = None) -> Script[int]:
    """Turn at most BATCH watches due at ``now`` into events (or clear them), each to be sent
    first at ``first_attempt_at``; returns how many watches it looked at (BATCH: there may be more).

    On PostgreSQL each process takes watches no other holds (``SKIP LOCKED``), so
    that one stretch is looked at, and announced, by one process only.
    """
    lock = " FOR UPDATE OF w SKIP LOCKED" if postgres else ""
    due = yield (
        "SELECT w.customer_id, w.user_id, w.send_type, w.announced_read_id, w.announced_up_to,"
        " c.customer_read_id, c.user_read_id, cu.username, u.username"
        " FROM unread_watch w"
        " JOIN conversation c ON c.customer_id = w.customer_id AND c.user_id = w.user_id"
        " JOIN customer cu ON cu.id = w.customer_id JOIN radar_user u ON u.id = w.user_id"
        f" WHERE w.due_at <= ? ORDER BY w.due_at LIMIT ?{lock}",
        (now, BATCH),
    )
    for customer_id, user_id, send_type, announced_read_id, announced_up_to, customer_read, user_read, \
            customer_name, user_name in due:
        key = (customer_id, user_id, send_type)
        read_id = user_read if send_type == FROM_CUSTOMER else customer_read
        if announced_read_id is not None and read_id <= announced_read_id:
            yield _set_due(key, None)  # announced already, and not read since: the stretch goes on
            continue
        unannounced = yield (
            "SELECT id, content, created_at FROM message"
            " WHERE customer_id = ? AND user_id = ? AND send_type = ? AND id > ? AND recalled_by IS NULL"
            " ORDER BY id LIMIT ?",
            (*key, max(read_id, announced_up_to), MAX_MESSAGE_IDS),
        )
        if not unannounced:
            yield _set_due(key, None)  # read in time
            continue
        first_at = message_time(unannounced[0][2])
        if first_at + unread_after > now:  # the older ones were read: the stretch now starts later
            yield _set_due(key, first_at + unread_after)
            continue
        ((unread_count, last_id),) = yield (
            "SELECT count(*), MAX(id) FROM message WHERE customer_id = ? AND user_id = ? AND send_type = ? AND id > ?"
            " AND recalled_by IS NULL",
            (*key, read_id),
        )
        event_type = EVENT_TYPES[send_type]
        first_content = ujson.loads(unannounced[0][1])
        data = {
            "user_id": user_id,
            "customer_id": customer_id,
            "message_ids": [row[0] for row in unannounced],
            "unread_count": unread_count,
            "first_unread_at": iso_utc(first_at),
            "preview": preview(first_content),
            "customer_name": customer_name,
            "user_name": user_name,
        }
        if links is not None and isinstance(first_content.get("attachment_id"), str):
            data["attachment"] = attachment_preview(first_content, links)
        body = ujson.dumps({"type": event_type, "timestamp": iso_utc(now), "data": data}, ensure_ascii=False)
        yield (
            "INSERT INTO webhook_event (id, type, user_id, customer_id, body, created_at, status, next_attempt_at)"
            " VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
            (new_event_id(), event_type, user_id, customer_id, body, now, first_attempt_at),
        )
        yield (
            "UPDATE unread_watch SET due_at = NULL, announced_read_id = ?, announced_up_to = ?"
            " WHERE customer_id = ? AND user_id = ? AND send_type = ?",
            (read_id, last_id, *key),
        )
    return len(due)


def claim(now: float, lease_seconds: float, limit: int, postgres: bool) -> Script[list[WebhookEvent]]:
    """The events due at ``now`` (at most ``limit``), each leased to this process for
    ``lease_seconds``: if it dies mid-attempt, another takes the event after that."""
    lock = " FOR UPDATE SKIP LOCKED" if postgres else ""
    rows = yield (
        "SELECT id, type, body, attempts, created_at FROM webhook_event"
        f" WHERE status = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?{lock}",
        (now, limit),
    )
    if rows:
        yield (
            f"UPDATE webhook_event SET next_attempt_at = ? WHERE id IN ({', '.join('?' * len(rows))})",
            (now + lease_seconds, *(row[0] for row in rows)),
        )
    return [WebhookEvent(*row) for row in rows]


def delivered(event_id: str, now: float) -> Script[None]:
    yield (
        "UPDATE webhook_event SET status = 'delivered', attempts = attempts + 1, finished_at = ?,"
        " next_attempt_at = NULL, last_error = '' WHERE id = ?",
        (now, event_id),
    )


def attempt_failed(event_id: str, now: float, error: str, next_attempt_at: float | None) -> Script[None]:
    """Another attempt at ``next_attempt_at``, or none (None): the event has failed."""
    if next_attempt_at is None:
        yield (
            "UPDATE webhook_event SET status = 'failed', attempts = attempts + 1, finished_at = ?,"
            " next_attempt_at = NULL, last_error = ? WHERE id = ?",
            (now, error, event_id),
        )
    else:
        yield (
            "UPDATE webhook_event SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? WHERE id = ?",
            (next_attempt_at, error, event_id),
        )


def requeue(event_ids: Sequence[str] | None, now: float) -> Script[list[str]]:
    """Pending again from the first attempt: the events named, or (None) every failed one.
    Returns the ids queued; a delivered event is queued too when named."""
    if event_ids is None:
        rows = yield ("SELECT id FROM webhook_event WHERE status = 'failed' ORDER BY created_at", ())
    else:
        rows = yield (f"SELECT id FROM webhook_event WHERE id IN ({', '.join('?' * len(event_ids))})"
                      " ORDER BY created_at", tuple(event_ids))
    ids = [row[0] for row in rows]
    if ids:
        yield (
            "UPDATE webhook_event SET status = 'pending', attempts = 0, next_attempt_at = ?, finished_at = NULL"
            f" WHERE id IN ({', '.join('?' * len(ids))})",
            (now, *ids),
        )
    return ids


def _set_due(key: tuple[int, int, int], due_at: float | None) -> Query:
    return ("UPDATE unread_watch SET due_at = ? WHERE customer_id = ? AND user_id = ? AND send_type = ?",
            (due_at, *key))


# -- reads (no transaction needed) -----------------------------------------------------

#: whether promote_due or claim has anything to do: two index probes, so that an idle
#: outbox costs no write transaction (on SQLite, no fsync) per tick
ANYTHING_DUE = (
    "SELECT EXISTS (SELECT 1 FROM unread_watch WHERE due_at <= ?),"
    " EXISTS (SELECT 1 FROM webhook_event WHERE status = 'pending' AND next_attempt_at <= ?)"
)
COUNT_BY_STATUS = "SELECT status, count(*) FROM webhook_event GROUP BY status"
#: the gauge's count: the partial index on pending events answers it, however many were delivered
COUNT_PENDING = "SELECT count(*) FROM webhook_event WHERE status = 'pending'"
LIST_EVENTS = (
    "SELECT id, type, status, attempts, created_at, next_attempt_at, last_error, user_id, customer_id"
    " FROM webhook_event WHERE status = ? ORDER BY created_at LIMIT ?"
)


# -- the event's fields ------------------------------------------------------------------


def new_event_id() -> str:
    """The ``webhook-id``: random, so that ids from several processes never collide."""
    return f"evt_{secrets.token_hex(12)}"


def message_time(created_at: str) -> float:
    """A message's ``created_at`` (server-local ISO time, as the original API wrote it) as Unix time."""
    return datetime.fromisoformat(created_at).timestamp()


def iso_utc(unix_time: float) -> str:
    return datetime.fromtimestamp(unix_time, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def attachment_preview(content: dict[str, Any], links: AttachmentLinks) -> dict[str, Any]:
    """A previewed picture or video as the chat's items show it: its signed URLs and what is known of it."""
    url, thumbnail_url = attachment_urls(content, links)
    return {"url": url, "thumbnail_url": thumbnail_url,
            **{key: content[key] for key in ATTACHMENT_PREVIEW_KEYS if key in content}}


def preview(content: dict[str, Any]) -> str:
    """The message's text, or a label for what it is, at most PREVIEW_CHARS characters."""
    info_type = info_type_number(content.get("info_type"))
    text = content.get("msg") if info_type == TEXT else None
    if not isinstance(text, str) or not text:
        label = PREVIEW_LABELS.get(info_type, "[消息]") if info_type is not None else "[消息]"
        detail = content.get("product_name") if info_type == PRODUCT else content.get("msg")
        text = f"{label} {detail}" if isinstance(detail, str) and detail else label
    return text[:PREVIEW_CHARS]


class Outbox:
    """What the webhook sender and the CLI ask of the outbox. Every write is a script
    run in a transaction of the store's writer (``write``); reads go to ``fetch``."""

    def __init__(
        self,
        write: Callable[[Script[Any]], Awaitable[Any]],
        fetch: Callable[[str, Sequence[Any]], Awaitable[list[Sequence[Any]]]],
        postgres: bool,
    ) -> None:
        self._write = write
        self._fetch = fetch
        self._postgres = postgres
        #: set once the media room is open: events that preview an upload carry its URLs
        self.attachment_links: AttachmentLinks | None = None

    async def anything_due(self, now: float) -> tuple[bool, bool]:
        """(a watch is due, an event is due)."""
        ((watches, events),) = await self._fetch(ANYTHING_DUE, (now, now))
        return bool(watches), bool(events)

    async def promote_due(self, now: float, unread_after: float, first_attempt_at: float) -> int:
        return int(await self._write(promote_due(now, unread_after, self._postgres, first_attempt_at,
                                                 self.attachment_links)))

    async def claim(self, now: float, lease_seconds: float, limit: int) -> list[WebhookEvent]:
        return list(await self._write(claim(now, lease_seconds, limit, self._postgres)))

    async def delivered(self, event_id: str, now: float) -> None:
        await self._write(delivered(event_id, now))

    async def attempt_failed(self, event_id: str, now: float, error: str, next_attempt_at: float | None) -> None:
        await self._write(attempt_failed(event_id, now, error, next_attempt_at))

    async def requeue(self, event_ids: Sequence[str] | None, now: float) -> list[str]:
        return list(await self._write(requeue(event_ids, now)))

    async def counts(self) -> dict[str, int]:
        counted = {status: 0 for status in STATUSES}
        counted.update({status: count for status, count in await self._fetch(COUNT_BY_STATUS, ())})
        return counted

    async def pending(self) -> int:
        """Events waiting for delivery or a retry."""
        ((count,),) = await self._fetch(COUNT_PENDING, ())
        return int(count)

    async def events(self, status: str, limit: int = 1000) -> list[EventSummary]:
        return [EventSummary(*row) for row in await self._fetch(LIST_EVENTS, (status, limit))]
