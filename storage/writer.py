"""The one writer that owns the SQLite write connection.

SQLite allows one writer at a time, so rather than let every request contend
for the write lock, every change is queued here and applied by a single task.
The task takes whatever has queued up while the previous commit ran and
applies it in one transaction: under load many sends share one commit, and a
lone send still commits at once because nothing waits for a batch to fill.

A whole transaction (BEGIN, every change, COMMIT) runs as one call on the
aiosqlite connection's thread: handing each statement to the thread and back
costs more than the statements themselves (bench/README.md). Changes of one
kind queued together reach their ``apply`` function as one list, so it can
write them with one ``executemany``. Each caller's future resolves only after
COMMIT returns, which is what lets a handler answer 200 only once its message
is durable.
"""
from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from typing import Any

import aiosqlite

log = logging.getLogger("leida_chat.storage")

#: apply(conn, items) -> one result per item, in order; runs on the writer thread
ApplyMany = Callable[[sqlite3.Connection, list[Any]], list[Any]]
WriteOp = Callable[[sqlite3.Connection], Any]

#: longest a change that is not urgent waits for company before it is committed alone
LAZY_SECONDS = 0.05
#: most changes in one transaction (SQLite caps a statement's parameters at 32766)
MAX_BATCH = 500

Batch = list[tuple[ApplyMany, Any, asyncio.Future]]


class WriterClosed(RuntimeError):
    """A write was submitted after the writer stopped."""


def _each(conn: sqlite3.Connection, ops: list[WriteOp]) -> list[Any]:
    return [op(conn) for op in ops]


class Writer:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._pending: Batch = []
        self._wakeup = asyncio.Event()
        self._lazy_timer: asyncio.TimerHandle | None = None
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._run())
        self.commits = 0
        self.changes = 0

    def enqueue(self, apply: ApplyMany, item: Any, *, urgent: bool = True) -> asyncio.Future:
        """Queue ``item`` for ``apply`` in the next transaction; the future resolves once committed.

        A change that is not ``urgent`` rides along with the next urgent one, so
        that it costs no commit of its own, or is committed after ``LAZY_SECONDS``
        if none comes (``hurry`` commits it at once).
        """
        if self._stopping:
            raise WriterClosed("the database writer is stopped")
        future = asyncio.get_running_loop().create_future()
        self._pending.append((apply, item, future))
        if urgent:
            self._wakeup.set()
        elif self._lazy_timer is None:
            self._lazy_timer = asyncio.get_running_loop().call_later(LAZY_SECONDS, self.hurry)
        return future

    def hurry(self) -> None:
        """Commit what is queued now, lazy changes included."""
        self._wakeup.set()

    async def submit(self, apply: ApplyMany, item: Any) -> Any:
        """``enqueue`` and wait for the commit."""
        return await self.enqueue(apply, item)

    async def run(self, op: WriteOp) -> Any:
        """Run a one-off ``op(conn)`` in the next transaction."""
        return await self.submit(_each, op)

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
            results = await self._in_thread(batch)
        except Exception as error:
            # Errors go to the callers, who decide whether they are worth a log line.
            if len(batch) == 1:
                _settle(batch[0][2], error=error)
                return
            log.info("a batch of %d writes failed; retrying each on its own", len(batch))
            for entry in batch:
                try:
                    (result,) = await self._in_thread([entry])
                except Exception as op_error:  # reported to that caller only
                    _settle(entry[2], error=op_error)
                else:
                    _settle(entry[2], result=result)
            return
        self.commits += 1
        self.changes += len(batch)
        for (_, _, future), result in zip(batch, results):
            _settle(future, result=result)

    async def _in_thread(self, batch: Batch) -> list[Any]:
        # aiosqlite runs every call on its connection's own thread; _execute is the
        # entry point its public methods use, taken here to run a whole transaction
        # in one round trip instead of one per statement.
        return await self._conn._execute(_transaction, self._conn._conn, [(apply, item) for apply, item, _ in batch])


def _transaction(conn: sqlite3.Connection, batch: list[tuple[ApplyMany, Any]]) -> list[Any]:
    """Runs on the writer thread: every change of the batch, then COMMIT, or nothing."""
    groups: dict[ApplyMany, list[int]] = {}
    for index, (apply, _) in enumerate(batch):
        groups.setdefault(apply, []).append(index)
    results: list[Any] = [None] * len(batch)
    conn.execute("BEGIN IMMEDIATE")
    try:
        for apply, indexes in groups.items():
            for index, outcome in zip(indexes, apply(conn, [batch[i][1] for i in indexes])):
                results[index] = outcome
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return results


def _settle(future: asyncio.Future, *, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():  # the caller went away; the write stands regardless
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
