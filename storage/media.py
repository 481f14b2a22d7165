"""Attachment records: what is kept of each upload beside the messages, on both backends.

The bytes live in a media store (media/); the database keeps who uploaded what,
for which conversation, and which message claimed it. Each write is an outbox-style
script (storage/outbox.py): ``?`` placeholders, run inside one of the writer's
transactions on either backend. The claim itself runs in the send's own
transaction (``CLAIM_ATTACHMENT``, storage/sqlite.py and storage/postgres.py), so a
message and its attachment are committed together or not at all.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .outbox import Script
from .records import Attachment

#: what an upload can be (the table's CHECK says the same)
KINDS = ("image", "video")
#: a new message takes an upload that is unclaimed, its sender's, and of its conversation
CLAIM_ATTACHMENT = (
    "UPDATE attachment SET message_id = ? WHERE id = ? AND message_id IS NULL"
    " AND send_type = ? AND uploader_id = ? AND customer_id = ? AND user_id = ?"
)

_COLUMNS = (
    "id, send_type, uploader_id, customer_id, user_id, kind, content_type, size, width, height, duration,"
    " sha256, storage_key, thumbnail_key, thumbnail_size, message_id, created_at"
)
ATTACHMENT_BY_ID = f"SELECT {_COLUMNS} FROM attachment WHERE id = ?"
SERVER_KEY = "SELECT value FROM server_key WHERE name = ?"
#: count and bytes (thumbnails included) per kind, claimed or not
USAGE = (
    "SELECT kind, CASE WHEN message_id IS NULL THEN 0 ELSE 1 END, count(*), COALESCE(SUM(size + thumbnail_size), 0)"
    " FROM attachment GROUP BY 1, 2"
)


def attachment(row: Sequence[Any]) -> Attachment:
    return Attachment(*row)


def save(record: Attachment) -> Script[None]:
    placeholders = ", ".join("?" for _ in _COLUMNS.split(","))
    yield (f"INSERT INTO attachment ({_COLUMNS}) VALUES ({placeholders})",
           (record.id, record.send_type, record.uploader_id, record.customer_id, record.user_id, record.kind,
            record.content_type, record.size, record.width, record.height, record.duration, record.sha256,
            record.storage_key, record.thumbnail_key, record.thumbnail_size, record.message_id, record.created_at))


def server_key(name: str, candidate: str) -> Script[str]:
    """The key called ``name``: ``candidate`` if none was made before, else the one every
    process already uses (whichever process got there first wins)."""
    yield ("INSERT INTO server_key (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING", (name, candidate))
    ((value,),) = yield (SERVER_KEY, (name,))
    return str(value)


def take_unclaimed(created_before: float, limit: int, postgres: bool) -> Script[list[tuple[str, str | None]]]:
    """Delete at most ``limit`` uploads that no message claimed and that are older than
    ``created_before``; returns their store keys (file, thumbnail) for the caller to
    delete once this has committed. A send that claims one of them afterwards finds it
    gone and is refused, so no message ever points at a deleted file."""
    lock = " FOR UPDATE SKIP LOCKED" if postgres else ""
    rows = yield (
        "DELETE FROM attachment WHERE id IN (SELECT id FROM attachment"
        f" WHERE message_id IS NULL AND created_at < ? ORDER BY created_at LIMIT ?{lock})"
        " RETURNING storage_key, thumbnail_key",
        (created_before, limit),
    )
    return [(row[0], row[1]) for row in rows]
