"""The one writer per process: every change goes through it, in batches.

Rather than let every request open a transaction of its own, every change is
queued here and applied by a single task. The task takes whatever has queued up
while the previous commit ran and applies it in one transaction: under load
many sends share one commit, and a lone send still commits at once because
nothing waits for a batch to fill. Changes of one kind queued together reach
their backend's apply function as one list, so it can write them with a fixed
number of statements.

How a transaction runs is the backend's (storage/sqlite.py, storage/postgres.py):
this module only queues, batches, and settles each caller's future after COMMIT
returns, which is what lets a handler answer 200 only once its message is
durable. A change that fails alone is reported to its caller; a batch that
fails is retried change by change, so that one bad change fails only itself.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any

from .metrics import COMMIT_BATCH_SIZE, COMMIT_DURATION, count_error

log = logging.getLogger("leida_chat.storage")


class Change(Enum):
    """The kinds of change the writer batches; each backend has one apply function per kind."""

    #: an ``Outgoing`` message; the result is (SendReceipt, is_first_info)
    SEND = "send"
    #: (Side, {(customer_id, user_id): up_to_id}); the result is None
    READ_POSITIONS = "read_positions"
    #: a backend's own ``op(conn)``, applied on its own; the result is what it returns
    ONE_OFF = "one_off"


Changes = list[tuple[Change, Any]]
#: transact(changes) -> one result per change, in order, once they are all committed
Transact = Callable[[Changes], Awaitable[list[Any]]]
#: after_commit([(kind, item, result), ...]) runs on the loop once a transaction is durable
AfterCommit = Callable[[list[tuple[Change, Any, Any]]], None]

#: longest a change that is not urgent waits for company before it is committed alone
LAZY_SECONDS = 0.05
#: most changes in one transaction (SQLite caps a statement's parameters at 32766)
MAX_BATCH = 500

Batch = list[tuple[Change, Any, asyncio.Future]]


class WriterClosed(RuntimeError):
    """A write was submitted after the writer stopped."""


class StorageFailing(RuntimeError):
    """The disk is full or failing, or the database server is out of reach: nothing of the transaction was written.

    It says nothing about the request, so callers answer it as "try again later"
    (503 with Retry-After); the writer logs it, at most once every ``STORAGE_WARNING_SECONDS``.
    ``kind`` is its name in the errors metric.
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


#: how often a full or failing disk is logged while it lasts (a line per failed commit would flood the log)
STORAGE_WARNING_SECONDS = 60.0


def by_kind(changes: Changes) -> dict[Change, list[int]]:
    """The indexes of each kind of change, kinds in the order first queued (a backend applies each as one list)."""
    groups: dict[Change, list[int]] = {}
    for index, (kind, _) in enumerate(changes):
        groups.setdefault(kind, []).append(index)
    return groups


class Writer:
    def __init__(
        self,
        transact: Transact,
        storage_failure: Callable[[BaseException], StorageFailing | None],
        after_commit: AfterCommit | None = None,
    ) -> None:
        """``transact`` is the backend's: every change, then COMMIT, or nothing.
        ``storage_failure`` says whether an error is the storage's rather than the change's.
        ``after_commit`` sees every committed change before any caller's future
        resolves: it is where committed messages wake their waiters, without a
        trip through each sender's task first."""
        self._transact = transact
        self._storage_failure = storage_failure
        self._after_commit = after_commit
        self._pending: Batch = []
        self._wakeup = asyncio.Event()
        self._lazy_timer: asyncio.TimerHandle | None = None
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._run())
        self.commits = 0
        self.changes = 0
        #: the last transaction failed for the storage's sake, and none has committed since
        self.storage_failing: StorageFailing | None = None
        self._storage_failures = 0
        self._storage_warned_at: float | None = None

    @property
    def running(self) -> bool:
        return not self._task.done() and not self._stopping

    def enqueue(self, kind: Change, item: Any, *, urgent: bool = True) -> asyncio.Future:
        """Queue ``item`` for the next transaction; the future resolves once committed.

        A change that is not ``urgent`` rides along with the next urgent one, so
        that it costs no commit of its own, or is committed after ``LAZY_SECONDS``
        if none comes (``hurry`` commits it at once).
        """
        if self._stopping:
            raise WriterClosed("the database writer is stopped")
        future = asyncio.get_running_loop().create_future()
        self._pending.append((kind, item, future))
        if urgent:
            self._wakeup.set()
        elif self._lazy_timer is None:
            self._lazy_timer = asyncio.get_running_loop().call_later(LAZY_SECONDS, self.hurry)
        return future

    def hurry(self) -> None:
        """Commit what is queued now, lazy changes included."""
        self._wakeup.set()

    async def submit(self, kind: Change, item: Any) -> Any:
        """``enqueue`` and wait for the commit."""
        return await self.enqueue(kind, item)

    async def run(self, op: Any) -> Any:
        """Run a backend's one-off ``op(conn)`` in the next transaction."""
        return await self.submit(Change.ONE_OFF, op)

    async def stop(self) -> None:
        """Apply everything already queued, then end the task."""
        self._stopping = True
        self._wakeup.set()
        await self._task

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._lazy_timer is not None:  # lazy changes leave with this batch
                self._lazy_timer.cancel()
                self._lazy_timer = None
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                await self._apply(batch)
            if self._stopping:
                return

    async def _apply(self, batch: Batch) -> None:
        try:
            results = await self._transaction(batch)
        except Exception as error:
            failing = error if isinstance(error, StorageFailing) else self._storage_failure(error)
            if failing is not None:  # no change of the batch is at fault: retrying each alone would fail too
                self._storage_failed(failing)
                for entry in batch:
                    _settle(entry[2], error=failing)
                return
            # Errors go to the callers, who decide whether they are worth a log line.
            if len(batch) == 1:
                _settle(batch[0][2], error=error)
                return
            log.info("a batch of %d writes failed; retrying each on its own", len(batch))
            for entry in batch:
                try:
                    (result,) = await self._transaction([entry])
                except Exception as op_error:  # reported to that caller only
                    _settle(entry[2], error=self._storage_failure(op_error) or op_error)
                else:
                    self._committed([entry], [result])
            return
        self._committed(batch, results)

    def _storage_failed(self, failing: StorageFailing) -> None:
        """One warning when the storage starts failing, then one a minute while it lasts."""
        self.storage_failing = failing
        count_error(failing.kind)
        self._storage_failures += 1
        now = asyncio.get_running_loop().time()
        if self._storage_warned_at is None or now - self._storage_warned_at >= STORAGE_WARNING_SECONDS:
            log.warning("%s: %d transaction(s) refused since the last warning; sends get 503 until it recovers",
                        failing, self._storage_failures)
            self._storage_warned_at = now
            self._storage_failures = 0

    def _committed(self, batch: Batch, results: list[Any]) -> None:
        if self.storage_failing is not None:
            # the warning's minute is kept: storage on the edge must not log a line per commit
            log.warning("storage writable again: commits succeed")
            self.storage_failing = None
            self._storage_failures = 0
        self.commits += 1
        self.changes += len(batch)
        if self._after_commit is not None:
            try:
                self._after_commit([(kind, item, result) for (kind, item, _), result in zip(batch, results, strict=True)])
            except Exception:  # the changes are durable whatever a listener does
                count_error("after_commit")
                log.exception("after-commit handling failed")
        for (_, _, future), result in zip(batch, results, strict=True):
            _settle(future, result=result)

    async def _transaction(self, batch: Batch) -> list[Any]:
        started = time.perf_counter()
        results = await self._transact([(kind, item) for kind, item, _ in batch])
        COMMIT_DURATION.observe(time.perf_counter() - started)
        COMMIT_BATCH_SIZE.observe(len(batch))
        return results


def _settle(future: asyncio.Future, *, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():  # the caller went away; the write stands regardless
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
