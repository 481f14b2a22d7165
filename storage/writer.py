"""The one writer that owns the SQLite write connection.

SQLite allows one writer at a time, so rather than let every request contend
for the write lock, every change is queued here and applied by a single task.
The task takes whatever has queued up while the previous commit ran and
applies it in one transaction: under load many sends share one commit, and a
lone send still commits at once because nothing waits for a batch to fill.
Changes of one kind queued together reach their ``apply`` function as one
list, so it can write them with one ``executemany``.

Where each part runs is chosen by measurement (bench/README.md). BEGIN and the
statements run on the event loop: they take tens of microseconds of CPU, and
every SQLite call made from another thread gives up the GIL and must win it
back from the busy loop, which under load cost more than the SQL itself. COMMIT
(the write-out and fsync) runs on the aiosqlite connection's thread, so the
loop never waits for the disk. Each caller's future resolves only after COMMIT
returns, which is what lets a handler answer 200 only once its message is
durable. When another process holds the write lock (a CLI command), the whole
transaction waits for it on the thread instead of on the loop.
"""
from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import aiosqlite

from .metrics import COMMIT_BATCH_SIZE, COMMIT_DURATION, count_error

log = logging.getLogger("leida_chat.storage")

#: apply(conn, items) -> one result per item, in order
ApplyMany = Callable[[sqlite3.Connection, list[Any]], list[Any]]
WriteOp = Callable[[sqlite3.Connection], Any]
#: after_commit([(apply, item, result), ...]) runs on the loop once a transaction is durable
AfterCommit = Callable[[list[tuple[ApplyMany, Any, Any]]], None]

#: longest a change that is not urgent waits for company before it is committed alone
LAZY_SECONDS = 0.05
#: most changes in one transaction (SQLite caps a statement's parameters at 32766)
MAX_BATCH = 500
#: how long a transaction waits on the thread for another process's write lock
LOCK_WAIT_MS = 5000

Batch = list[tuple[ApplyMany, Any, asyncio.Future]]


class WriterClosed(RuntimeError):
    """A write was submitted after the writer stopped."""


class DatabaseLocked(RuntimeError):
    """Another process held the write lock for longer than ``LOCK_WAIT_MS``; nothing was written."""


class StorageFailing(RuntimeError):
    """The disk is full (SQLITE_FULL) or failing (SQLITE_IOERR): nothing of the transaction was written.

    It says nothing about the request, so callers answer it as "try again later";
    the writer logs it, at most once every ``STORAGE_WARNING_SECONDS``.
    """

    def __init__(self, full: bool) -> None:
        super().__init__("storage is full" if full else "storage is failing (I/O error)")
        self.full = full


#: how often a full or failing disk is logged while it lasts (a line per failed commit would flood the log)
STORAGE_WARNING_SECONDS = 60.0
_STORAGE_ERRORS = {sqlite3.SQLITE_FULL: True, sqlite3.SQLITE_IOERR: False}


def storage_failure(error: BaseException) -> StorageFailing | None:
    """The error as a StorageFailing, if the disk rather than the change is at fault."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is None:
        return None
    full = _STORAGE_ERRORS.get(code & 0xFF)  # extended codes (SQLITE_IOERR_WRITE, ...) keep the primary in the low byte
    return None if full is None else StorageFailing(full)


def _each(conn: sqlite3.Connection, ops: list[WriteOp]) -> list[Any]:
    return [op(conn) for op in ops]


class Writer:
    def __init__(self, conn: aiosqlite.Connection, after_commit: AfterCommit | None = None) -> None:
        """``after_commit`` sees every committed change before any caller's future
        resolves: it is where committed messages wake their waiters, without a
        trip through each sender's task first."""
        self._conn = conn
        self._after_commit = after_commit
        self._pending: Batch = []
        self._wakeup = asyncio.Event()
        self._lazy_timer: asyncio.TimerHandle | None = None
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._run())
        self.commits = 0
        self.changes = 0
        #: the last transaction failed for the disk's sake, and none has committed since
        self.storage_failing: StorageFailing | None = None
        self._storage_failures = 0
        self._storage_warned_at: float | None = None

    @property
    def running(self) -> bool:
        return not self._task.done() and not self._stopping

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
            results = await self._transaction(batch)
        except Exception as error:
            failing = storage_failure(error)
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
                    _settle(entry[2], error=op_error)
                else:
                    self._committed([entry], [result])
            return
        self._committed(batch, results)

    def _storage_failed(self, failing: StorageFailing) -> None:
        """One warning when the disk starts failing, then one a minute while it lasts."""
        self.storage_failing = failing
        count_error("storage_full" if failing.full else "storage_io")
        self._storage_failures += 1
        now = asyncio.get_running_loop().time()
        if self._storage_warned_at is None or now - self._storage_warned_at >= STORAGE_WARNING_SECONDS:
            log.warning("%s: %d transaction(s) refused since the last warning; sends get 503 until space returns",
                        failing, self._storage_failures)
            self._storage_warned_at = now
            self._storage_failures = 0

    def _committed(self, batch: Batch, results: list[Any]) -> None:
        if self.storage_failing is not None:
            # the warning's minute is kept: a disk on the edge must not log a line per commit
            log.warning("storage writable again: commits succeed")
            self.storage_failing = None
            self._storage_failures = 0
        self.commits += 1
        self.changes += len(batch)
        if self._after_commit is not None:
            try:
                self._after_commit([(apply, item, result) for (apply, item, _), result in zip(batch, results, strict=True)])
            except Exception:  # the changes are durable whatever a listener does
                count_error("after_commit")
                log.exception("after-commit handling failed")
        for (_, _, future), result in zip(batch, results, strict=True):
            _settle(future, result=result)

    async def _transaction(self, batch: Batch) -> list[Any]:
        """Every change of ``batch``, then COMMIT, or nothing."""
        started = time.perf_counter()
        conn = self._conn._conn
        changes = [(apply, item) for apply, item, _ in batch]
        if _begin_without_waiting(conn):
            results = _apply_or_roll_back(conn, changes)
            await self._in_thread(_commit, conn)
        else:
            results = await self._in_thread(_locked_transaction, conn, changes)
        COMMIT_DURATION.observe(time.perf_counter() - started)
        COMMIT_BATCH_SIZE.observe(len(batch))
        return results

    async def _in_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        # aiosqlite runs every call on its connection's own thread; _execute is the
        # entry point its public methods use, taken here to run our own functions
        # (COMMIT, or a whole transaction) there in one round trip.
        return await self._conn._execute(function, *args)


def _begin_without_waiting(conn: sqlite3.Connection) -> bool:
    """BEGIN IMMEDIATE on the loop, or False at once if another process holds the lock.

    The connection's busy timeout is 0, so this never blocks the loop.
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as error:
        if error.sqlite_errorcode == sqlite3.SQLITE_BUSY:
            return False
        raise
    return True


def _apply_changes(conn: sqlite3.Connection, changes: list[tuple[ApplyMany, Any]]) -> list[Any]:
    """Each kind of change applied as one list; the results in the order queued."""
    groups: dict[ApplyMany, list[int]] = {}
    for index, (apply, _) in enumerate(changes):
        groups.setdefault(apply, []).append(index)
    results: list[Any] = [None] * len(changes)
    for apply, indexes in groups.items():
        for index, outcome in zip(indexes, apply(conn, [changes[i][1] for i in indexes]), strict=True):
            results[index] = outcome
    return results


def _commit(conn: sqlite3.Connection) -> None:
    """Runs on the writer thread: the write-out and fsync happen here."""
    try:
        conn.execute("COMMIT")
    except BaseException:
        _roll_back(conn)
        raise


def _locked_transaction(conn: sqlite3.Connection, changes: list[tuple[ApplyMany, Any]]) -> list[Any]:
    """Runs on the writer thread: wait for another process's write lock, then the whole transaction."""
    conn.execute(f"PRAGMA busy_timeout = {LOCK_WAIT_MS}")
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as error:
        if error.sqlite_errorcode == sqlite3.SQLITE_BUSY:
            count_error("database_locked")
            raise DatabaseLocked(f"another process held the write lock for {LOCK_WAIT_MS} ms") from None
        raise
    finally:
        conn.execute("PRAGMA busy_timeout = 0")
    results = _apply_or_roll_back(conn, changes)
    _commit(conn)
    return results


def _apply_or_roll_back(conn: sqlite3.Connection, changes: list[tuple[ApplyMany, Any]]) -> list[Any]:
    """Inside an open transaction: every change, or a rollback and the error."""
    try:
        return _apply_changes(conn, changes)
    except BaseException:
        _roll_back(conn)
        raise


def _roll_back(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:  # some errors (a full disk) end the transaction themselves
        conn.execute("ROLLBACK")


def _settle(future: asyncio.Future, *, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():  # the caller went away; the write stands regardless
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
