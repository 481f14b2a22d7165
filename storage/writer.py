"""The one writer that owns the SQLite write connection.

SQLite allows one writer at a time, so rather than let every request contend
for the write lock, every change is queued here and applied by a single task.
The task takes whatever has queued up while the previous commit ran and
applies it in one transaction: under load many sends share one commit, and a
lone send still commits at once because nothing waits for a batch to fill.
Each caller's future resolves only after COMMIT returns, which is what lets a
handler answer 200 only once its message is durable.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiosqlite

log = logging.getLogger("leida_chat.storage")

T = TypeVar("T")
WriteOp = Callable[[aiosqlite.Connection], Awaitable[Any]]


class WriterClosed(RuntimeError):
    """A write was submitted after the writer stopped."""


class Writer:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._pending: list[tuple[WriteOp, asyncio.Future]] = []
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._run())
        self.commits = 0

    async def submit(self, op: WriteOp) -> Any:
        """Run ``op`` inside the next transaction; return its result once committed."""
        if self._stopping:
            raise WriterClosed("the database writer is stopped")
        future = asyncio.get_running_loop().create_future()
        self._pending.append((op, future))
        self._wakeup.set()
        return await future

    async def stop(self) -> None:
        """Apply everything already queued, then end the task."""
        self._stopping = True
        self._wakeup.set()
        await self._task

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            batch, self._pending = self._pending, []
            if batch:
                await self._apply(batch)
            elif self._stopping:
                return

    async def _apply(self, batch: list[tuple[WriteOp, asyncio.Future]]) -> None:
        try:
            results = await self._transaction([op for op, _ in batch])
        except Exception as error:
            # Errors go to the callers, who decide whether they are worth a log line.
            if len(batch) == 1:
                _settle(batch[0][1], error=error)
                return
            log.info("a batch of %d writes failed; retrying each on its own", len(batch))
            for op, future in batch:
                try:
                    (result,) = await self._transaction([op])
                except Exception as op_error:  # reported to that caller only
                    _settle(future, error=op_error)
                else:
                    _settle(future, result=result)
            return
        for (_, future), result in zip(batch, results):
            _settle(future, result=result)

    async def _transaction(self, ops: list[WriteOp]) -> list[Any]:
        await self._conn.execute("BEGIN IMMEDIATE")
        try:
            results = [await op(self._conn) for op in ops]
            await self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                await self._conn.execute("ROLLBACK")
            raise
        self.commits += 1
        return results


def _settle(future: asyncio.Future, *, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():  # the caller went away; the write stands regardless
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
