"""Recall (撤回): a message taken back by its sender within ``chat.recall_seconds``.

A recall is a send: a notice (send_type 3, info_type 7, ``recalled_id``) is
appended to the conversation in the same transaction that empties the recalled
message, so every client, old or new, learns of it through the cursor it
already follows, in order, on every process. The recalled message stays as a
tombstone (its id, time and sender; ``recalled_by`` names the notice) and its
content is really gone: overwritten in the row, not hidden. Its attachment's
record goes in the same transaction and its files once it has committed.

A second recall of the same message is the first one's repeat: the notice's
idempotency key is ``recall:<id>``, so it stores nothing and answers with the
first notice.
"""
from __future__ import annotations

import ujson

from .outbox import Script

#: the statements both backends run, in the send's transaction, for each (notice_id, recalled_id)
EMPTY_RECALLED = "UPDATE message SET content = '{}', recalled_by = ? WHERE id = ? AND recalled_by IS NULL"
DROP_RECALLED_ATTACHMENTS = "DELETE FROM attachment WHERE message_id = ?"
#: what a recall checks first (outside the transaction: the transaction only re-checks that it is not recalled)
RECALLABLE = "SELECT customer_id, user_id, send_type, created_at, recalled_by FROM message WHERE id = ?"
ATTACHMENT_FILES = "SELECT storage_key, thumbnail_key FROM attachment WHERE message_id = ?"


def notice_key(message_id: int) -> str:
    """The notice's idempotency key: one notice per recalled message, however often it is asked for."""
    return f"recall:{message_id}"


#: what a webhook event's preview of a recalled message says instead of its text
RECALLED_PREVIEW = "[已撤回]"


def redact_previews(customer_id: int, user_id: int, message_id: int, since: float) -> Script[int]:
    """Webhook events made since ``since`` whose preview is this message's lose its text (and its
    picture's URLs): an event already delivered cannot be taken back, but the outbox keeps
    nothing of the message. How many were changed."""
    rows = yield ("SELECT id, body FROM webhook_event WHERE customer_id = ? AND user_id = ? AND created_at >= ?",
                  (customer_id, user_id, since))
    changed = 0
    for event_id, body in rows:
        event = ujson.loads(body)
        data = event.get("data", {})
        if data.get("message_ids", [None])[0] != message_id:
            continue
        data["preview"] = RECALLED_PREVIEW
        data.pop("attachment", None)
        yield ("UPDATE webhook_event SET body = ? WHERE id = ?", (ujson.dumps(event, ensure_ascii=False), event_id))
        changed += 1
    return changed


class RecallRaced(RuntimeError):
    """The message was recalled or deleted between the check and the transaction: nothing was written."""
