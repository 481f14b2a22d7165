"""A customer's data: a copy of all of it, and its erasure (PIPL articles 45 and 47, GDPR 15, 17, 20).

What belongs to a customer is decided here, once for both backends: their
account, every conversation they have (with both sides' read positions), every
message of those conversations in both directions, tips included, the
attachments of those conversations and, for erasure only, what points at those
messages (idempotency keys, unread watches, webhook events naming them).

Erasure runs in batches, each a transaction of its own through the one writer,
so that the chat's sends commit in between: a customer with 100,000 messages
never stalls the server for the length of one big DELETE. A batch is sized to
take about ``BATCH_TARGET_SECONDS`` (``Batches``): a fixed 500 cost a send up to
43 ms behind it on SQLite and 90 ms on PostgreSQL, where deleting a row costs
more (bench/README.md, "Erasure"). The scripts below are outbox-style
(storage/outbox.py): ``?`` placeholders, run on either backend.

The copy is read page by page and handed out as pieces of one JSON document,
so that a long history is never held in memory whole; after each page it lets
the loop run for as long as the page took (``pace``), because SQLite's reads
run on the loop itself and a copy read in one go held every send of the server
for its whole length (0.9 s for 100,000 messages). Attachments appear in it
as URLs signed for a day (``EXPORT_LINK_SECONDS``) rather than as files in an
archive: the document stays one streamed JSON text whichever media store holds
the bytes (an S3 bucket's files never pass through this server), and whoever
asked for the copy fetches the files within the day.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import ujson

from .accounts import announce
from .outbox import Script
from .records import FROM_CUSTOMER, FROM_RADAR_USER, HAS_THUMBNAIL, AttachmentLinks, Customer, attachment_urls

#: how long one erasing (or retention) transaction should take: what a send may wait behind it
BATCH_TARGET_SECONDS = 0.01
#: the first batch, and the bounds every later one stays within
FIRST_BATCH, SMALLEST_BATCH, LARGEST_BATCH = 200, 20, 800
#: the last transaction is tried again if a send of the customer's opened a conversation meanwhile
FINAL_ATTEMPTS = 3
#: what an erasure counts, in the order its answer lists them
ERASED = ("messages", "conversations", "read_positions", "idempotency_keys", "unread_watches",
          "webhook_events", "attachments", "files", "accounts")
#: how long the attachment URLs of a copy work
EXPORT_LINK_SECONDS = 86400
#: rows read per page while a copy is written out
EXPORT_PAGE = 200

Fetch = Callable[[str, Sequence[Any]], Awaitable[list[Sequence[Any]]]]


@dataclass
class Erased:
    """What one erasing transaction removed, and the media store's keys of the files to delete next."""

    removed: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def count(self, name: str, rows: Sequence[Any]) -> None:
        self.removed[name] = self.removed.get(name, 0) + len(rows)


# -- erasure ------------------------------------------------------------------------------


class Batches:
    """Batch sizes that follow how long the last batch took: doubled while a transaction takes
    under BATCH_TARGET_SECONDS, halved only past four times that. A PostgreSQL transaction
    costs about 10 ms however small (round trips, the commit's fsync), so a tighter band
    only ever shrank its batches, to 20 rows and 48 s per 100,000 messages; this one
    settles at 800 rows (the cap) on SQLite and 40-200 on PostgreSQL here, and backs off
    from a slower disk or a busier database without a setting (bench/README.md, "Erasure")."""

    def __init__(self) -> None:
        self.size = FIRST_BATCH

    def took(self, seconds: float) -> None:
        if seconds < BATCH_TARGET_SECONDS:
            self.size = min(LARGEST_BATCH, self.size * 2)
        elif seconds > BATCH_TARGET_SECONDS * 4:
            self.size = max(SMALLEST_BATCH, self.size // 2)


async def pace(started: float) -> None:
    """Let the loop run for as long as the work since ``started`` (a ``time.perf_counter()``) took."""
    await asyncio.sleep(min(time.perf_counter() - started, 0.05))


def disable(customer_id: int, postgres: bool) -> Script[bool]:
    """First of all: no request of theirs is served from here on (every process is told)."""
    found = yield ("UPDATE customer SET disabled = 1 WHERE id = ? RETURNING id", (customer_id,))
    if found:
        yield from announce("customer", customer_id, postgres)
    return bool(found)


def erase_message_ids(ids: list[int], erased: Erased) -> Script[None]:
    """Delete these messages with what points at them: idempotency keys and attachment records
    (their files' keys go into ``erased.files``). Shared with retention (storage/retention.py)."""
    if not ids:
        return
    marks = ", ".join("?" * len(ids))
    erased.count("idempotency_keys", (yield (f"DELETE FROM client_message WHERE message_id IN ({marks}) RETURNING 1", ids)))
    files = yield (f"DELETE FROM attachment WHERE message_id IN ({marks}) RETURNING storage_key, thumbnail_key", ids)
    _take_files(files, erased)
    erased.count("messages", (yield (f"DELETE FROM message WHERE id IN ({marks}) RETURNING 1", ids)))


def erase_messages(customer_id: int, limit: int) -> Script[Erased]:
    """Up to ``limit`` of the customer's messages, any conversation, in one transaction."""
    erased = Erased(dict.fromkeys(("messages", "idempotency_keys", "attachments"), 0))
    rows = yield ("SELECT id FROM message WHERE customer_id = ? LIMIT ?", (customer_id, limit))
    yield from erase_message_ids([row[0] for row in rows], erased)
    return erased


def erase_rest(customer_id: int, postgres: bool) -> Script[Erased]:
    """Everything else, and the account, in one transaction.

    On PostgreSQL the radar users of the customer's conversations are locked first,
    as every send locks its radar user (storage/postgres.py), so a send in flight
    commits before this looks and a later one finds the conversation gone; the
    customer's row is locked next, so a send that would open a new conversation
    waits and then fails on its reference to the customer (AccountMissing).
    """
    erased = Erased(dict.fromkeys(ERASED, 0))
    if postgres:
        yield ("SELECT 1 FROM radar_user WHERE id IN (SELECT user_id FROM conversation WHERE customer_id = ?)"
               " ORDER BY id FOR UPDATE", (customer_id,))
        yield ("SELECT 1 FROM customer WHERE id = ? FOR UPDATE", (customer_id,))
    conversations = yield ("DELETE FROM conversation WHERE customer_id = ? RETURNING 1", (customer_id,))
    erased.count("conversations", conversations)
    erased.count("read_positions", conversations * 2)  # the customer's and the radar user's, per conversation
    rows = yield ("SELECT id FROM message WHERE customer_id = ?", (customer_id,))  # sent while the batches ran
    yield from erase_message_ids([row[0] for row in rows], erased)
    # uploads no message claimed, in their conversations, by either side
    _take_files((yield ("DELETE FROM attachment WHERE customer_id = ? RETURNING storage_key, thumbnail_key",
                        (customer_id,))), erased)
    erased.count("idempotency_keys", (yield ("DELETE FROM client_message WHERE send_type = ? AND sender_id = ?"
                                             " RETURNING 1", (FROM_CUSTOMER, customer_id))))
    erased.count("unread_watches", (yield ("DELETE FROM unread_watch WHERE customer_id = ? RETURNING 1", (customer_id,))))
    erased.count("webhook_events", (yield ("DELETE FROM webhook_event WHERE customer_id = ? RETURNING 1", (customer_id,))))
    erased.count("accounts", (yield ("DELETE FROM customer WHERE id = ? RETURNING 1", (customer_id,))))
    yield from announce("customer", customer_id, postgres)
    return erased


def _take_files(rows: Sequence[Sequence[Any]], erased: Erased) -> None:
    erased.removed["attachments"] = erased.removed.get("attachments", 0) + len(rows)
    for storage_key, thumbnail_key in rows:
        erased.files.append(storage_key)
        if thumbnail_key:
            erased.files.append(thumbnail_key)


# -- the copy ----------------------------------------------------------------------------


_SENDERS = {FROM_CUSTOMER: "customer", FROM_RADAR_USER: "radar_user"}
_ATTACHMENT_COLUMNS = ("id, send_type, uploader_id, user_id, kind, content_type, size, width, height, duration,"
                       " sha256, message_id, created_at, thumbnail_key")


class CustomerExport:
    """One customer's data, read a page at a time as ``json_chunks`` is consumed.

    The pages are separate reads, not one snapshot: a message sent while the copy is
    being written may or may not be in it.
    """

    def __init__(self, fetch: Fetch, customer: Customer) -> None:
        self._fetch = fetch
        self.customer = customer

    async def json_chunks(self, links: AttachmentLinks | None) -> AsyncIterator[str]:
        """The document, in pieces to be written out in order. The token is not in it: it is a
        credential, not data about the person."""
        customer = self.customer
        head = {
            "format": "leida-chat customer export",
            "version": 1,
            "exported_at": _iso_utc(time.time()),
            "customer": {"id": customer.id, "username": customer.username, "headimgurl": customer.headimgurl,
                         "disabled": customer.disabled},
        }
        yield _dumps(head)[:-1] + ',"conversations":['
        first = True
        async for conversation in self._conversations():
            yield ("" if first else ",") + _dumps(conversation)[:-1] + ',"messages":['
            first = False
            separator = ""
            started = time.perf_counter()
            async for page in self._messages(conversation["radar_user"]["id"], links):
                yield separator + ",".join(_dumps(item) for item in page)
                separator = ","
                await pace(started)
                started = time.perf_counter()
            yield "]}"
        yield '],"attachments":['
        separator = ""
        started = time.perf_counter()
        async for page in self._attachments(links):
            yield separator + ",".join(_dumps(item) for item in page)
            separator = ","
            await pace(started)
            started = time.perf_counter()
        yield "]}\n"

    async def _conversations(self) -> AsyncIterator[dict[str, Any]]:
        after = 0
        while True:
            rows = await self._fetch(
                "SELECT c.user_id, u.username, c.customer_read_id, c.user_read_id, c.first_message_id,"
                " c.last_message_id FROM conversation c JOIN radar_user u ON u.id = c.user_id"
                " WHERE c.customer_id = ? AND c.user_id > ? ORDER BY c.user_id LIMIT ?",
                (self.customer.id, after, EXPORT_PAGE))
            for user_id, username, customer_read, user_read, first_id, last_id in rows:
                yield {"radar_user": {"id": user_id, "username": username},
                       "read_positions": {"customer": customer_read, "radar_user": user_read},
                       "first_message_id": first_id, "last_message_id": last_id}
            if len(rows) < EXPORT_PAGE:
                return
            after = rows[-1][0]

    async def _messages(self, user_id: int, links: AttachmentLinks | None) -> AsyncIterator[list[dict[str, Any]]]:
        after = 0
        while True:
            rows = await self._fetch(
                "SELECT id, send_type, content, created_at FROM message"
                " WHERE customer_id = ? AND user_id = ? AND id > ? ORDER BY id LIMIT ?",
                (self.customer.id, user_id, after, EXPORT_PAGE))
            if rows:
                yield [_message_item(row, links) for row in rows]
            if len(rows) < EXPORT_PAGE:
                return
            after = rows[-1][0]

    async def _attachments(self, links: AttachmentLinks | None) -> AsyncIterator[list[dict[str, Any]]]:
        after = ""
        while True:
            rows = await self._fetch(
                f"SELECT {_ATTACHMENT_COLUMNS} FROM attachment WHERE customer_id = ? AND id > ? ORDER BY id LIMIT ?",
                (self.customer.id, after, EXPORT_PAGE))
            if rows:
                yield [_attachment_item(row, links) for row in rows]
            if len(rows) < EXPORT_PAGE:
                return
            after = rows[-1][0]


def _message_item(row: Sequence[Any], links: AttachmentLinks | None) -> dict[str, Any]:
    message_id, send_type, content_json, created_at = row
    content = ujson.loads(content_json)
    item: dict[str, Any] = {"id": message_id, "from": _SENDERS.get(send_type, "server"), "send_type": send_type,
                            "created_at": created_at}
    if "attachment_id" in content and links is not None:
        item["url"], item["thumbnail_url"] = attachment_urls(content, links)
    content.pop(HAS_THUMBNAIL, None)
    item["content"] = content
    return item


def _attachment_item(row: Sequence[Any], links: AttachmentLinks | None) -> dict[str, Any]:
    (attachment_id, send_type, uploader_id, user_id, kind, content_type, size, width, height, duration, sha256,
     message_id, created_at, thumbnail_key) = row
    item: dict[str, Any] = {
        "id": attachment_id, "uploaded_by": _SENDERS.get(send_type, "server"), "uploader_id": uploader_id,
        "radar_user_id": user_id, "kind": kind, "content_type": content_type, "size": size, "width": width,
        "height": height, "duration": duration, "sha256": sha256, "message_id": message_id,
        "created_at": _iso_utc(created_at),
    }
    if links is not None:
        item["url"], item["thumbnail_url"] = links(attachment_id, bool(thumbnail_key))
    return item


def _dumps(value: Any) -> str:
    return ujson.dumps(value, ensure_ascii=False, escape_forward_slashes=False)


def _iso_utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
