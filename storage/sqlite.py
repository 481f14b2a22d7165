"""The SQLite backend: one file, one writer connection, one reading connection.

Where each part runs is chosen by measurement (bench/README.md). Reads run on
the event loop itself, on their own connection: they are short indexed
queries that WAL lets see every committed change without ever waiting for the
writer, and one costs about 4 µs here where handing it to a thread and back
costs 40-110 µs. BEGIN and the writer's statements run on the loop too: they
take tens of microseconds of CPU, and every SQLite call made from another
thread gives up the GIL and must win it back from the busy loop, which under
load cost more than the SQL itself. COMMIT (the write-out and fsync) runs on
the aiosqlite connection's thread, so the loop never waits for the disk. When
another process holds the write lock (a CLI command), the whole transaction
waits for it on the thread instead of on the loop.

SQLite allows one writing process, so this backend serves one process only.
"""
from __future__ import annotations

import itertools
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import aiosqlite

from .media import CLAIM_ATTACHMENT
from .metrics import count_error
from .outbox import WATCH_UNREAD, Script, run_script, unread_watches
from .outgoing import Outgoing, Pair, SenderKey, SendRows, pairs_and_keys, plan_sends
from .recall import DROP_RECALLED_ATTACHMENTS, EMPTY_RECALLED, RecallRaced
from .records import AccountNeedsName, AttachmentUnavailable, SendReceipt, Side
from .schema import migrate
from .waiters import Committed, Waiters
from .writer import Change, Changes, StorageFailing, by_kind

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")

#: how long a transaction waits on the thread for another process's write lock
LOCK_WAIT_MS = 5000

#: what the readiness probe writes while the disk is failing: the default server.max_body_bytes,
#: more than any one send stores. A one-page write fits in space a send does not (a captured run:
#: /readyz said ready while every 3 KB send got 503, and the log flapped between full and writable).
PROBE_BYTES = 64 * 1024

Op = Callable[[sqlite3.Connection], Any]
#: rows(largest id so far) -> the (id, username, token) of new accounts
NumberedRows = Callable[[int], list[tuple[int, str, str]]]


class DatabaseLocked(RuntimeError):
    """Another process held the write lock for longer than ``LOCK_WAIT_MS``; nothing was written."""


_STORAGE_ERRORS = {sqlite3.SQLITE_FULL: ("storage is full", "storage_full"),
                   sqlite3.SQLITE_IOERR: ("storage is failing (I/O error)", "storage_io")}


def storage_failure(error: BaseException) -> StorageFailing | None:
    """The error as a StorageFailing, if the disk rather than the change is at fault."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is None:
        return None
    known = _STORAGE_ERRORS.get(code & 0xFF)  # extended codes (SQLITE_IOERR_WRITE, ...) keep the primary in the low byte
    return None if known is None else StorageFailing(*known)


class SQLiteDatabase:
    """The SQL and the transactions of the SQLite backend (``ChatStore`` holds the rules)."""

    name = "sqlite"
    #: seconds after which an unread message raises a webhook event (None: webhooks off, nothing watched)
    unread_after: float | None = None

    def __init__(self, path: Path, write_conn: aiosqlite.Connection, read_conn: sqlite3.Connection) -> None:
        self.path = path
        self._write_conn = write_conn
        self._read_conn = read_conn

    @classmethod
    async def open(cls, path: str | Path, synchronous: str = "FULL") -> SQLiteDatabase:
        """Open (creating and migrating if needed) the database at ``path``."""
        synchronous = synchronous.upper()
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"database.synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # The writer uses this connection from the loop and from aiosqlite's thread, one at a time.
        write_conn = await aiosqlite.connect(path, isolation_level=None, check_same_thread=False)
        try:
            await write_conn.execute("PRAGMA busy_timeout = 5000")
            await write_conn.execute("PRAGMA journal_mode = WAL")
            await write_conn.execute(f"PRAGMA synchronous = {synchronous}")
            # what is deleted (a recalled message, an erased customer) is overwritten with zeros,
            # not left readable in free pages; it costs I/O on deletes only
            await write_conn.execute("PRAGMA secure_delete = ON")
            # Off while migrating: a step that makes a table again drops the old one first.
            await migrate(write_conn)
            await write_conn.execute("PRAGMA foreign_keys = ON")
            # From here the writer waits for a lock only on its thread, never on the loop.
            await write_conn.execute("PRAGMA busy_timeout = 0")
            read_conn = sqlite3.connect(path, isolation_level=None)
        except BaseException:
            await write_conn.close()
            raise
        # WAL readers wait only in rare cases (recovery after a crash); never block the loop long.
        read_conn.execute("PRAGMA busy_timeout = 1000")
        read_conn.execute("PRAGMA query_only = 1")
        return cls(path, write_conn, read_conn)

    def describe(self) -> str:
        return str(self.path.resolve())

    async def watch(self, waiters: Waiters, messages_between: Any, account_changed: Any = None) -> None:
        """Nothing to watch: only this process writes messages to the file."""

    def announce_typing(self, customer_id: int, user_id: int, side: str) -> None:
        """Nothing to announce: the file has one serving process."""

    def hand_off(self, waiters: Waiters, committed: list[Committed]) -> None:
        """At once: this process's writer is the file's only one, so nothing earlier is still on its way."""
        if committed:
            waiters.notify(committed)

    async def close(self) -> None:
        self._read_conn.close()
        await self._write_conn.close()

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        return self._read_conn.execute(sql, tuple(params)).fetchall()

    async def reachability_problem(self) -> str | None:
        try:
            self._read_conn.execute("SELECT version FROM account_change").fetchone()
        except sqlite3.Error as error:
            return f"database not readable: {error}"
        return None

    storage_failure = staticmethod(storage_failure)

    @staticmethod
    def names_a_missing_account(error: BaseException) -> bool:
        """A conversation's row refers to its customer and radar user: one erased meanwhile fails it."""
        return isinstance(error, sqlite3.IntegrityError) and "FOREIGN KEY" in str(error)

    # -- transactions ----------------------------------------------------------

    async def transact(self, changes: Changes) -> list[Any]:
        """Every change, then COMMIT, or nothing."""
        conn = self._write_conn._conn
        if _begin_without_waiting(conn):
            results = _apply_or_roll_back(conn, changes, self.unread_after)
            await self._in_thread(_commit, conn)
        else:
            results = await self._in_thread(_locked_transaction, conn, changes, self.unread_after)
        return results

    async def _in_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        # aiosqlite runs every call on its connection's own thread; _execute is the
        # entry point its public methods use, taken here to run our own functions
        # (COMMIT, or a whole transaction) there in one round trip.
        return await self._write_conn._execute(function, *args)

    # -- one-off writes (run by the writer: ``writer.run(op)``) ---------------------

    def save_account(
        self, table: str, account_id: int | None, given: dict[str, str], new_row: dict[str, Any] | None
    ) -> Op:
        """Update ``given`` on an existing account, else insert ``new_row`` (with ``account_id`` if set;
        None: the fields given cannot make a new account)."""

        def op(conn: sqlite3.Connection) -> tuple[int, str]:
            if account_id is not None:
                existing = conn.execute(f"SELECT token FROM {table} WHERE id = ?", (account_id,)).fetchone()
                if existing is not None:
                    if given:
                        assignments = ", ".join(f"{name} = ?" for name in given)
                        conn.execute(f"UPDATE {table} SET {assignments} WHERE id = ?", (*given.values(), account_id))
                    return account_id, given.get("token", existing[0])
            if new_row is None:
                raise AccountNeedsName()
            row = dict(new_row) if account_id is None else {**new_row, "id": account_id}
            placeholders = ", ".join("?" for _ in row)
            cur = conn.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({placeholders})", tuple(row.values()))
            return cast(int, cur.lastrowid), row["token"]  # an INSERT always sets lastrowid

        return op

    def add_numbered_accounts(self, tables: list[tuple[str, NumberedRows]]) -> Op:
        """Per table, insert ``rows(largest id so far)``: (id, username, token) each; all in one transaction."""

        def op(conn: sqlite3.Connection) -> list[list[tuple[int, str, str]]]:
            made = []
            for table, rows in tables:
                (start,) = conn.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchone()
                made.append(rows(start))
                conn.executemany(f"INSERT INTO {table} (id, username, token) VALUES (?, ?, ?)", made[-1])
            return made

        return op

    def scripted(self, script: Script[Any]) -> Op:
        """``script`` (storage/outbox.py) as a one-off write."""

        def op(conn: sqlite3.Connection) -> Any:
            return run_script(script, lambda sql, params: conn.execute(sql, tuple(params)).fetchall())

        return op

    def probe_write(self) -> Op:
        """A write as large as the largest send (readiness while the disk is failing)."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO disk_probe (id, filler) VALUES (1, randomblob(?))", (PROBE_BYTES,))

        return op


# -- each kind of change, applied as one list ------------------------------------------


def _insert_messages(
    conn: sqlite3.Connection, batch: list[Outgoing], unread_after: float | None
) -> list[tuple[SendReceipt, bool]]:
    """One query learns the next message id, which conversations exist and which
    client keys were used before; then one executemany each inserts the messages,
    upserts their conversations, records the new client keys and (``unread_after``
    set: webhooks on) watches the unread stretches they start."""
    pairs, keys = pairs_and_keys(batch)
    parts = ["SELECT 0, COALESCE(MAX(id), 0), 0, '', 0, '' FROM message"]
    params: list[Any] = []
    # CROSS JOIN keeps the VALUES list outermost: each pair is one primary-key probe
    # (an IN over row values of two or more rows makes SQLite scan the table).
    pair_values, pair_params = _values(pairs, 2)
    parts.append(
        f"SELECT 1, c.customer_id, c.user_id, '', 0, '' FROM (VALUES {pair_values}) AS v"
        " CROSS JOIN conversation c ON c.customer_id = v.column1 AND c.user_id = v.column2"
    )
    params += pair_params
    if keys:
        key_values, key_params = _values(keys, 3)
        parts.append(
            f"SELECT 2, k.send_type, k.sender_id, k.client_msg_id, m.id, m.created_at FROM (VALUES {key_values}) AS v"
            " CROSS JOIN client_message k ON k.send_type = v.column1 AND k.sender_id = v.column2"
            " AND k.client_msg_id = v.column3"
            " JOIN message m ON m.id = k.message_id"
        )
        params += key_params
    last_id = 0
    conversations: set[Pair] = set()
    earlier: dict[SenderKey, SendReceipt] = {}
    for kind, a, b, c, message_id, created_at in conn.execute(" UNION ALL ".join(parts), params):
        if kind == 0:
            last_id = a
        elif kind == 1:
            conversations.add((a, b))
        else:
            earlier[(a, b, c)] = SendReceipt(message_id, created_at, duplicate=True)
    rows = plan_sends(batch, conversations, earlier, itertools.count(last_id + 1))
    _write_send_rows(conn, rows)
    if unread_after is not None and rows.messages:
        conn.executemany(WATCH_UNREAD, unread_watches(rows.messages, time.time() + unread_after))
    return rows.results


def _write_send_rows(conn: sqlite3.Connection, rows: SendRows) -> None:
    if rows.messages:
        conn.executemany(
            "INSERT INTO message (id, customer_id, user_id, send_type, content, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            rows.messages,
        )
        conn.executemany(
            "INSERT INTO conversation (customer_id, user_id, first_message_id, last_message_id,"
            " last_customer_message_id) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (customer_id, user_id) DO UPDATE SET"
            " last_message_id = excluded.last_message_id,"
            " last_customer_message_id = MAX(last_customer_message_id, excluded.last_customer_message_id)",
            rows.conversations,
        )
    if rows.client_keys:
        conn.executemany(
            "INSERT INTO client_message (send_type, sender_id, client_msg_id, message_id) VALUES (?, ?, ?, ?)",
            rows.client_keys,
        )
    for attachment_id, message_id, *owner in rows.attachments:
        claimed = conn.execute(CLAIM_ATTACHMENT, (message_id, attachment_id, *owner)).rowcount
        if claimed != 1:
            raise AttachmentUnavailable(attachment_id)
    for notice_id, recalled_id in rows.recalls:
        if conn.execute(EMPTY_RECALLED, (notice_id, recalled_id)).rowcount != 1:
            raise RecallRaced()
        conn.execute(DROP_RECALLED_ATTACHMENTS, (recalled_id,))


def _values(rows: list[tuple], width: int) -> tuple[str, list[Any]]:
    placeholder = "(" + ", ".join("?" * width) + ")"
    return ", ".join(placeholder for _ in rows), [value for row in rows for value in row]


def _move_read_positions(
    conn: sqlite3.Connection, batch: list[tuple[Side, dict[Pair, int]]]
) -> list[None]:
    """Positions only move forward, so a late or repeated mark is harmless."""
    for side in Side:
        rows = [
            (up_to, customer_id, user_id, up_to)
            for batch_side, positions in batch if batch_side is side
            for (customer_id, user_id), up_to in positions.items()
        ]
        if rows:
            column = side.value
            conn.executemany(
                f"UPDATE conversation SET {column} = ? WHERE customer_id = ? AND user_id = ? AND {column} < ?",
                rows,
            )
    return [None] * len(batch)


def _one_offs(conn: sqlite3.Connection, ops: list[Op]) -> list[Any]:
    return [op(conn) for op in ops]


#: the other kinds (a send also needs to know whether to watch its unread stretch)
_APPLY: dict[Change, Callable[[sqlite3.Connection, list[Any]], list[Any]]] = {
    Change.READ_POSITIONS: _move_read_positions,
    Change.ONE_OFF: _one_offs,
}


def _apply_changes(conn: sqlite3.Connection, changes: Changes, unread_after: float | None) -> list[Any]:
    """Each kind of change applied as one list; the results in the order queued."""
    results: list[Any] = [None] * len(changes)
    for kind, indexes in by_kind(changes).items():
        items = [changes[i][1] for i in indexes]
        outcomes = _insert_messages(conn, items, unread_after) if kind is Change.SEND else _APPLY[kind](conn, items)
        for index, outcome in zip(indexes, outcomes, strict=True):
            results[index] = outcome
    return results


# -- the transaction itself --------------------------------------------------------


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


def _commit(conn: sqlite3.Connection) -> None:
    """Runs on the writer thread: the write-out and fsync happen here."""
    try:
        conn.execute("COMMIT")
    except BaseException:
        _roll_back(conn)
        raise


def _locked_transaction(conn: sqlite3.Connection, changes: Changes, unread_after: float | None) -> list[Any]:
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
    results = _apply_or_roll_back(conn, changes, unread_after)
    _commit(conn)
    return results


def _apply_or_roll_back(conn: sqlite3.Connection, changes: Changes, unread_after: float | None) -> list[Any]:
    """Inside an open transaction: every change, or a rollback and the error."""
    try:
        return _apply_changes(conn, changes, unread_after)
    except BaseException:
        _roll_back(conn)
        raise


def _roll_back(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:  # some errors (a full disk) end the transaction themselves
        conn.execute("ROLLBACK")

