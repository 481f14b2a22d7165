"""Retention: what leida-chat stops keeping once a deployment no longer needs it.

Three kinds of data are deleted by one periodic task (``Retention``), each in
small batches so that the chat's sends commit in between:

- messages older than ``retention.message_days`` (0: kept forever), with their
  idempotency keys and attachments (records here, files through the media room);
  conversations and their read positions stay, so unread counts stay right;
- webhook events, ``webhook.retention_days`` after they were delivered and
  ``webhook.failed_retention_days`` after they failed;
- uploads no message claimed within ``media.unclaimed_hours`` (media/).

Messages are taken oldest first by id, which rises with time: a batch stops at
the first message that is young enough to keep, so no index on time is needed.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .customer_data import Erased, erase_message_ids
from .metrics import RETENTION_DELETED, RETENTION_LAST_RUN
from .outbox import Script

if TYPE_CHECKING:
    from .store import ChatStore

log = logging.getLogger("leida_chat.retention")

#: rows deleted per transaction
RETENTION_BATCH = 500
#: how often the task runs
RETENTION_SECONDS = 600
DAY_SECONDS = 86400


@dataclass
class Expired:
    """What one transaction of message retention removed; ``more``: the batch was full, look again."""

    messages: int
    attachments: int
    files: list[str] = field(default_factory=list)
    more: bool = False


def expire_messages(created_before: str, limit: int) -> Script[Expired]:
    rows = yield ("SELECT id, created_at FROM message ORDER BY id LIMIT ?", (limit,))
    ids = []
    for message_id, created_at in rows:
        if created_at >= created_before:
            break
        ids.append(message_id)
    erased = Erased()
    yield from erase_message_ids(ids, erased)
    return Expired(len(ids), erased.removed.get("attachments", 0), erased.files, more=len(ids) == limit)


def expire_webhook_events(status: str, finished_before: float, limit: int) -> Script[int]:
    """Events that ended before ``finished_before``; created_at (never later than finished_at) keeps it to the index."""
    rows = yield (
        "DELETE FROM webhook_event WHERE id IN (SELECT id FROM webhook_event"
        " WHERE status = ? AND created_at < ? AND finished_at < ? LIMIT ?) RETURNING 1",
        (status, finished_before, finished_before, limit),
    )
    return len(rows)


@dataclass(frozen=True)
class RetentionSettings:
    #: messages older than this many days are deleted; 0: kept forever
    message_days: float = 0.0
    delivered_webhook_days: float = 7.0
    failed_webhook_days: float = 30.0

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RetentionSettings:
        webhook = config["webhook"]
        return cls(config["retention"]["message_days"], webhook["retention_days"], webhook["failed_retention_days"])


class Retention:
    """The periodic task: now, then every ``RETENTION_SECONDS``, one run at a time."""

    def __init__(
        self,
        store: ChatStore,
        settings: RetentionSettings,
        delete_files: Callable[[list[str]], Awaitable[None]],
        sweep_unclaimed: Callable[[], Awaitable[int]],
    ) -> None:
        self.store = store
        self.settings = settings
        self._delete_files = delete_files
        self._sweep_unclaimed = sweep_unclaimed
        self._task: asyncio.Task | None = None

    def start(self, interval: float = RETENTION_SECONDS) -> None:
        self._task = asyncio.get_running_loop().create_task(self._every(interval))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)  # its cancellation is the expected end

    async def _every(self, interval: float) -> None:
        while True:
            try:
                await self.run()
            except Exception:  # the database or the media store out of reach: the next run tries again
                log.warning("retention run failed", exc_info=True)
            await asyncio.sleep(interval)

    async def run(self, now: float | None = None) -> dict[str, int]:
        """One run of all three; how many of each kind went."""
        now = time.time() if now is None else now
        deleted = {"messages": 0, "attachments": 0, "webhook_events": 0, "unclaimed_uploads": 0}
        if self.settings.message_days > 0:
            cutoff = (datetime.fromtimestamp(now) - timedelta(days=self.settings.message_days)).isoformat(
                timespec="milliseconds")  # messages keep local time (storage.store.local_timestamp)
            while True:
                expired = await self.store.expire_messages(cutoff, RETENTION_BATCH)
                if expired.files:
                    await self._delete_files(expired.files)
                deleted["messages"] += expired.messages
                deleted["attachments"] += expired.attachments
                if not expired.more:
                    break
        for status, days in (("delivered", self.settings.delivered_webhook_days),
                             ("failed", self.settings.failed_webhook_days)):
            if days > 0:
                while (count := await self.store.expire_webhook_events(status, now - days * DAY_SECONDS,
                                                                       RETENTION_BATCH)):
                    deleted["webhook_events"] += count
                    if count < RETENTION_BATCH:
                        break
        deleted["unclaimed_uploads"] = await self._sweep_unclaimed()
        for kind, count in deleted.items():
            if count:
                RETENTION_DELETED.labels(kind=kind).inc(count)
        RETENTION_LAST_RUN.set(time.time())
        if any(deleted.values()):
            log.info("retention: deleted %s", ", ".join(f"{count} {kind}" for kind, count in deleted.items() if count))
        return deleted
