"""The PostgreSQL backend: several processes and hosts share one database.

A pool (asyncpg) serves the reads and this process's writer. Three things
differ from SQLite, and they are why this module exists:

- **Wake-ups across processes.** The transaction that inserts messages also
  sends ``NOTIFY leida_chat`` naming their conversations, so PostgreSQL
  delivers it only on COMMIT. Each process LISTENs on a connection of its own
  (storage/doorbell.py), outside the pool (a listener on a pooled connection
  is lost when that connection goes back), and wakes only its local waiters
  of those keys, with the messages the doorbell names, read once for all of
  them. A notification is a doorbell, never the message.
  When that connection drops, the process reconnects with backoff, LISTENs
  again, and wakes every local waiter to read again: notifications sent while
  it was away are gone.
- **Ids in commit order.** With several writers, a sequence hands out ids in
  the order transactions ask, not the order they commit, and a client
  resuming from ``last_id=102`` would never see a 101 committed later. Every
  write transaction therefore locks the rows of the radar users it touches
  (in id order, so that two cannot deadlock) before it takes ids: one radar
  user's messages, and so each of its conversations, are numbered and
  committed in the same order, which is what both cursors (per conversation
  and per inbox) rely on.
- **Hand-offs in commit order.** After COMMIT, a process hands its new messages
  to its own waiters, which then answer without reading. Another process's
  earlier commit (message 101) may not have rung here yet when this one's (102)
  returns: handing 102 at once would send a client past 101 for good. So the
  hand-off waits until this commit's own doorbell comes back to the listener.
  PostgreSQL delivers notifications in commit order, so by then every earlier
  doorbell has woken its waiters, and they read for themselves. The other way
  round matters as much: the doorbell can come back before the writer's result
  has crossed back to this loop, and another process's later commit (103) must
  not be handed before this one's. So a doorbell's turn also waits for its
  commit's hand-off, which every commit that stored messages makes, even with
  nobody waiting here.
- **Outages.** A database out of reach is a ``StorageFailing`` (503 with
  Retry-After), for reads as for writes; the pool reconnects by itself.

Reads go through the pool on the event loop. The writer's transactions run on
a thread of their own, with an event loop and a connection of their own
(``WriterThread``): a transaction is five round trips, and on the busy main
loop each round trip's answer waited for a whole turn of the loop (at 1,000
messages/s, 30 requests' worth of work), which made a batch take 22 ms instead
of 4 (bench/README.md, "Backends"). On its own loop, an answer waits at most
for the GIL (``sys.setswitchinterval``, 1 ms), and only the result crosses back.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from .doorbell import (
    CHANNEL,
    CONNECT_TIMEOUT_SECONDS,
    TYPING_CHANNEL,
    AccountChanged,
    Listener,
    MessagesBetween,
    _reason,
    doorbells,
    to_read_back,
)
from .media import CLAIM_ATTACHMENT
from .metrics import count_error
from .outbox import WATCH_UNREAD_ON_CONFLICT, Script, run_script_async, unread_watches
from .outgoing import Outgoing, Pair, SenderKey, pairs_and_keys, plan_sends
from .recall import DROP_RECALLED_ATTACHMENTS, EMPTY_RECALLED, RecallRaced
from .records import AccountNeedsName, AttachmentUnavailable, SendReceipt, Side
from .schema import migrate_postgres
from .waiters import Committed, Waiters
from .writer import Change, Changes, StorageFailing, by_kind

log = logging.getLogger("leida_chat.storage")

#: a connection of the pool (the writer's and the reads') or of its own (the listener's)
Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy
Op = Callable[[Conn], Awaitable[Any]]
NumberedRows = Callable[[int], list[tuple[int, str, str]]]

#: SQLSTATE classes and codes that mean "the database, not the change": class 08 is a lost connection,
#: 57P0x a server shutting down or starting, 53 out of resources (53100: disk full), 58030 an I/O error
_UNAVAILABLE_STATES = ("08", "57P01", "57P02", "57P03", "53300")


class DatabaseUnreachable(RuntimeError):
    """The database could not be reached at start; the message names it (without its password)."""


def without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}" if user else netloc))


def storage_failure(error: BaseException) -> StorageFailing | None:
    """The error as a StorageFailing, if the database rather than the change is at fault."""
    state = getattr(error, "sqlstate", None)
    if isinstance(error, asyncpg.PostgresError) and state:
        if state == "53100":
            return StorageFailing("storage is full", "storage_full")
        if state == "58030":
            return StorageFailing("storage is failing (I/O error)", "storage_io")
        if state.startswith(_UNAVAILABLE_STATES):
            return StorageFailing("database unavailable", "database_unavailable")
        return None
    if isinstance(error, (OSError, TimeoutError, asyncpg.InterfaceError)):
        # refused, reset or timed out; InterfaceError: the connection closed under a query
        return StorageFailing("database unavailable", "database_unavailable")
    return None


@functools.lru_cache(maxsize=512)
def as_postgres(sql: str) -> str:
    """A read written once for both engines, in PostgreSQL's dialect: ``?`` numbered
    ``$1, $2, ...``, and SQLite's join-order pin (``CROSS JOIN ... ON``) a plain JOIN."""
    numbers = iter(range(1, sql.count("?") + 1))
    return re.sub(r"\?", lambda _: f"${next(numbers)}", sql).replace("CROSS JOIN", "JOIN")


class PostgresDatabase:
    """The SQL, the transactions and the cross-process wake-ups of the PostgreSQL backend."""

    name = "postgresql"
    #: seconds after which an unread message raises a webhook event (None: webhooks off, nothing watched)
    unread_after: float | None = None

    def __init__(self, url: str, pool: asyncpg.Pool) -> None:
        self.url = url
        self._pool = pool
        self._writer_thread = WriterThread(url)
        #: names this process in its doorbells: its own tell it when its commits may be handed over
        self.origin = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.listener: Listener | None = None
        #: the number of the last transaction that rang (set on the writer's thread, read after its COMMIT)
        self._rang = 0
        #: typing NOTIFYs on their way (kept so that none is collected before it runs)
        self._typing_notices: set[asyncio.Task] = set()

    @classmethod
    async def open(cls, url: str, pool_size: int = 10) -> PostgresDatabase:
        """Connect a pool to ``url`` and bring the schema up to date; ``DatabaseUnreachable`` if it cannot."""
        try:
            # min_size 0: connections open on demand. With a floor, asyncpg's pool reconnects by
            # itself during an outage and logs a traceback for every attempt that fails.
            pool = await asyncpg.create_pool(
                url, min_size=0, max_size=pool_size, timeout=CONNECT_TIMEOUT_SECONDS, reset=_keep_session,
            )
            await pool.execute("SELECT 1")  # reach the database now: a wrong URL stops the start
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            raise DatabaseUnreachable(f"cannot connect to {without_password(url)}: {_reason(error)}") from None
        try:
            async with pool.acquire() as conn:
                await migrate_postgres(conn)
        except BaseException:
            await pool.close()
            raise
        return cls(url, pool)

    def describe(self) -> str:
        return without_password(self.url)

    async def watch(self, waiters: Waiters, messages_between: MessagesBetween,
                    account_changed: AccountChanged | None = None) -> None:
        self.listener = Listener(self.url, self.origin, waiters, messages_between, account_changed)
        await self.listener.start()

    def announce_typing(self, customer_id: int, user_id: int, side: str) -> None:
        """NOTIFY on TYPING_CHANNEL, never the doorbells' (typing takes no turn in their order).
        Not awaited: typing is best effort, and a typist's request need not wait for it."""
        task = asyncio.get_running_loop().create_task(self._notify_typing(f"{customer_id}:{user_id}:{side}"))
        self._typing_notices.add(task)
        task.add_done_callback(self._typing_notices.discard)

    async def _notify_typing(self, payload: str) -> None:
        try:
            await self._pool.execute("SELECT pg_notify($1, $2)", TYPING_CHANNEL, payload)
        except Exception:  # the database out of reach: the peer misses one "typing…"
            count_error("typing")

    def hand_off(self, waiters: Waiters, committed: list[Committed]) -> None:
        """In this commit's doorbell's turn (see the module docstring). Without a listener
        to bring the doorbell back, the waiters read for themselves at once."""
        if self.listener is None:
            waiters.notify(to_read_back(committed))
        else:
            self.listener.hand_off(self._rang, committed)

    async def close(self) -> None:
        if self.listener is not None:
            await self.listener.close()
        await self._writer_thread.stop()
        await self._pool.close()

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        try:
            return cast(list[Sequence[Any]], await self._pool.fetch(as_postgres(sql), *params))
        except Exception as error:
            failing = storage_failure(error)
            if failing is None:
                raise
            count_error(failing.kind)
            raise failing from None

    async def reachability_problem(self) -> str | None:
        try:
            await self._pool.fetchval("SELECT version FROM account_change", timeout=CONNECT_TIMEOUT_SECONDS)
        except Exception as error:
            if storage_failure(error) is None:
                raise
            return f"database not reachable: {_reason(error)}"
        if self.listener is not None and not self.listener.connected:
            return "database listener reconnecting"
        return None

    storage_failure = staticmethod(storage_failure)

    @staticmethod
    def names_a_missing_account(error: BaseException) -> bool:
        """A conversation's row refers to its customer and radar user: one erased meanwhile fails it."""
        return isinstance(error, asyncpg.ForeignKeyViolationError)

    # -- transactions ----------------------------------------------------------

    async def transact(self, changes: Changes) -> list[Any]:
        """Every change, then COMMIT, or nothing: on the writer's thread (see the module docstring)."""
        return await self._writer_thread.run(self.transact_on, changes)

    async def transact_on(self, conn: Conn, changes: Changes) -> list[Any]:
        """The radar users' rows locked first; then the sends, with the read positions in
        the same statement, or the read positions alone; then the one-offs."""
        results: list[Any] = [None] * len(changes)
        groups = by_kind(changes)
        sends = [changes[i][1] for i in groups.get(Change.SEND, ())]
        reads = _read_positions([changes[i][1] for i in groups.get(Change.READ_POSITIONS, ())])
        users = sorted({sent.user_id for sent in sends} | {user_id for _, user_id in reads})
        async with conn.transaction():
            if sends:
                self._rang += 1
                for index, outcome in zip(groups[Change.SEND], await _insert_messages(
                        conn, sends, users, reads, f"{self.origin}/{self._rang}", self.unread_after), strict=True):
                    results[index] = outcome
            elif reads:
                await conn.execute(_LOCK_RADAR_USERS, users)
                await conn.execute(_MOVE_READ_POSITIONS, *_read_columns(reads))
            for index in groups.get(Change.ONE_OFF, ()):
                results[index] = await changes[index][1](conn)
        return results

    # -- one-off writes (run by the writer: ``writer.run(op)``) ---------------------

    def save_account(
        self, table: str, account_id: int | None, given: dict[str, str], new_row: dict[str, Any] | None
    ) -> Op:
        """Update ``given`` on an existing account, else insert ``new_row`` (with ``account_id`` if set;
        None: the fields given cannot make a new account)."""

        async def op(conn: Conn) -> tuple[int, str]:
            if account_id is not None:
                existing = await conn.fetchval(f"SELECT token FROM {table} WHERE id = $1", account_id)
                if existing is not None:
                    if given:
                        assignments = ", ".join(f"{name} = ${n}" for n, name in enumerate(given, start=2))
                        await conn.execute(f"UPDATE {table} SET {assignments} WHERE id = $1", account_id, *given.values())
                    return account_id, given.get("token", existing)
            if new_row is None:
                raise AccountNeedsName()
            row = dict(new_row)
            # new ids follow the largest so far, as SQLite's rowids do; the lock lets no other insert in between
            await conn.execute(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE")
            row["id"] = account_id if account_id is not None else await conn.fetchval(
                f"SELECT COALESCE(MAX(id), 0) + 1 FROM {table}")
            placeholders = ", ".join(f"${n}" for n in range(1, len(row) + 1))
            await conn.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({placeholders})", *row.values())
            return row["id"], row["token"]

        return op

    def add_numbered_accounts(self, tables: list[tuple[str, NumberedRows]]) -> Op:
        """Per table, insert ``rows(largest id so far)``: (id, username, token) each; all in one transaction."""

        async def op(conn: Conn) -> list[list[tuple[int, str, str]]]:
            made = []
            for table, rows in tables:
                await conn.execute(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE")
                made.append(rows(await conn.fetchval(f"SELECT COALESCE(MAX(id), 0) FROM {table}")))
                await conn.copy_records_to_table(table, records=made[-1], columns=("id", "username", "token"))
            return made

        return op

    def scripted(self, script: Script[Any]) -> Op:
        """``script`` (storage/outbox.py) as a one-off write."""

        async def op(conn: Conn) -> Any:
            async def fetch(sql: str, params: Sequence[Any]) -> list[Sequence[Any]]:
                return cast(list[Sequence[Any]], await conn.fetch(as_postgres(sql), *params))

            return await run_script_async(script, fetch)

        return op

    def probe_write(self) -> Op:
        """PostgreSQL manages its own disk: the probe only asks whether a transaction goes through."""

        async def op(conn: Conn) -> None:
            await conn.execute("SELECT 1")

        return op


# -- each kind of change, applied as one list ------------------------------------------


#: the rows of the radar users a transaction writes for, locked in id order (send_context does it for sends)
_LOCK_RADAR_USERS = "SELECT 1 FROM radar_user WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE"

def _move_read_positions(first: int) -> str:
    """Read positions, moved forward only: one row per conversation, both sides at once (0:
    not moved), from four arrays that are parameters ``first`` to ``first + 3``."""
    a, b, c, d = (f"${n}" for n in range(first, first + 4))
    return (
        "UPDATE conversation c SET customer_read_id = GREATEST(c.customer_read_id, v.customer_up_to),"
        " user_read_id = GREATEST(c.user_read_id, v.user_up_to)"
        f" FROM unnest({a}::bigint[], {b}::bigint[], {c}::bigint[], {d}::bigint[])"
        " AS v(customer_id, user_id, customer_up_to, user_up_to)"
        " WHERE c.customer_id = v.customer_id AND c.user_id = v.user_id"
        " AND (c.customer_read_id < v.customer_up_to OR c.user_read_id < v.user_up_to)"
    )


_MOVE_READ_POSITIONS = _move_read_positions(1)


def _read_positions(marks: list[tuple[Side, dict[Pair, int]]]) -> dict[Pair, list[int]]:
    """Each conversation's furthest marks, [customer's, radar user's]: an UPDATE may touch a row once."""
    reads: dict[Pair, list[int]] = {}
    for side, positions in marks:
        column = 0 if side is Side.CUSTOMER else 1
        for pair, up_to in positions.items():
            furthest = reads.setdefault(pair, [0, 0])
            furthest[column] = max(furthest[column], up_to)
    return reads


def _read_columns(reads: dict[Pair, list[int]]) -> list[list[int]]:
    return [[pair[0] for pair in reads], [pair[1] for pair in reads],
            [up_to[0] for up_to in reads.values()], [up_to[1] for up_to in reads.values()]]


async def _insert_messages(
    conn: Conn, batch: list[Outgoing], users: list[int], reads: dict[Pair, list[int]], ringer: str,
    unread_after: float | None,
) -> list[tuple[SendReceipt, bool]]:
    """Two statements, whatever the batch's size: under load each round trip waits for
    the GIL, and costs more than the SQL (bench/README.md, "Backends"). The first
    (``send_context``, schema.py) locks ``users`` and reads which conversations exist,
    which client keys were used before, and new message ids; the second writes the
    messages, their client keys, their conversations, the read positions ``reads``,
    the unread stretches they start (``unread_after`` set: webhooks on; outbox.py)
    and rings the doorbell as ``ringer``."""
    pairs, keys = pairs_and_keys(batch)
    conversations: set[Pair] = set()
    earlier: dict[SenderKey, SendReceipt] = {}
    ids: list[int] = []
    # one id per send, a repeat's left unused; taken under the locks (see the module docstring)
    for kind, a, b, c, created_at in await conn.fetch(
        "SELECT * FROM send_context($1, $2, $3, $4, $5, $6, $7)",
        users, [pair[0] for pair in pairs], [pair[1] for pair in pairs],
        [key[0] for key in keys], [key[1] for key in keys], [key[2] for key in keys], len(batch),
    ):
        if kind == 0:
            conversations.add((a, b))
        elif kind == 1:
            message_id, _, created = created_at.partition(" ")
            earlier[(a, b, c)] = SendReceipt(int(message_id), created, duplicate=True)
        else:
            ids.append(a)
    planned = plan_sends(batch, conversations, earlier, iter(sorted(ids)))
    if planned.attachments:
        await _claim_attachments(conn, planned.attachments)
    for notice_id, recalled_id in planned.recalls:
        if await conn.execute(as_postgres(EMPTY_RECALLED), notice_id, recalled_id) != "UPDATE 1":
            raise RecallRaced()
        await conn.execute(as_postgres(DROP_RECALLED_ATTACHMENTS), recalled_id)
    # one row per conversation: a statement may touch a row once. A conversation that gets a
    # message has its read positions moved by the upsert; the others by the UPDATE.
    spans: dict[Pair, list[int]] = {}
    for customer_id, user_id, first_id, last_id, last_customer_id in planned.conversations:
        span = spans.setdefault((customer_id, user_id), [first_id, last_id, last_customer_id, 0, 0])
        span[1], span[2] = last_id, max(span[2], last_customer_id)
    for pair, (customer_up_to, user_up_to) in list(reads.items()):
        if pair in spans:
            spans[pair][3], spans[pair][4] = customer_up_to, user_up_to
            del reads[pair]
    messages = list(zip(*planned.messages, strict=True)) or [(), (), (), (), (), ()]
    keys_written = list(zip(*planned.client_keys, strict=True)) or [(), (), (), ()]
    watches = unread_watches(planned.messages, time.time() + unread_after) if unread_after is not None else []
    await conn.execute(
        "WITH new_message AS (INSERT INTO message (id, customer_id, user_id, send_type, content, created_at)"
        "  SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::integer[], $5::text[], $6::text[])),"
        " new_key AS (INSERT INTO client_message (send_type, sender_id, client_msg_id, message_id)"
        "  SELECT * FROM unnest($7::integer[], $8::bigint[], $9::text[], $10::bigint[])),"
        " touched AS (INSERT INTO conversation (customer_id, user_id, first_message_id, last_message_id,"
        "  last_customer_message_id, customer_read_id, user_read_id)"
        "  SELECT * FROM unnest($11::bigint[], $12::bigint[], $13::bigint[], $14::bigint[], $15::bigint[],"
        "  $16::bigint[], $17::bigint[])"
        "  ON CONFLICT (customer_id, user_id) DO UPDATE SET last_message_id = EXCLUDED.last_message_id,"
        "  last_customer_message_id = GREATEST(conversation.last_customer_message_id,"
        "  EXCLUDED.last_customer_message_id),"
        "  customer_read_id = GREATEST(conversation.customer_read_id, EXCLUDED.customer_read_id),"
        "  user_read_id = GREATEST(conversation.user_read_id, EXCLUDED.user_read_id)),"
        f" moved AS ({_move_read_positions(20)}),"
        " watched AS (INSERT INTO unread_watch (customer_id, user_id, send_type, due_at)"
        "  SELECT * FROM unnest($24::bigint[], $25::bigint[], $26::integer[], $27::float8[])"
        f"  {WATCH_UNREAD_ON_CONFLICT})"
        " SELECT count(pg_notify($18, payload)) FROM unnest($19::text[]) AS payload",
        *messages, *keys_written,
        [pair[0] for pair in spans], [pair[1] for pair in spans],
        *(list(zip(*spans.values(), strict=True)) or [(), (), (), (), ()]),
        CHANNEL, doorbells(ringer, {pair: (span[0], span[1]) for pair, span in spans.items()}),
        *_read_columns(reads),
        *(list(zip(*watches, strict=True)) or [(), (), (), ()]),
    )
    return planned.results


async def _claim_attachments(conn: Conn, claims: list[tuple]) -> None:
    """Each upload a new message uses, claimed by it in the send's transaction, or the
    whole transaction refused (the writer then retries each send alone, so only the
    send at fault fails)."""
    for attachment_id, message_id, *owner in claims:
        if await conn.fetchval(as_postgres(CLAIM_ATTACHMENT) + " RETURNING 1", message_id, attachment_id, *owner) is None:
            raise AttachmentUnavailable(attachment_id)


async def _keep_session(_conn: Conn) -> None:
    """What a connection going back to the pool needs besides the rollback of an open
    transaction, which asyncpg does first: nothing. asyncpg's default reset (unlock
    advisory locks, close cursors, UNLISTEN, RESET ALL) is one more round trip per
    read and per commit, 0.34 ms here, and undoes what this code never does: its
    advisory locks are transaction-scoped, and only the Listener, outside the pool, LISTENs."""


# -- the writer's thread ------------------------------------------------------------------


class WriterThread:
    """A thread with an event loop and one connection of its own, for the writer's transactions.

    ``run(transaction, *args)`` runs ``transaction(conn, *args)`` there and hands its
    result (or error) back to the caller's loop. The connection is opened on first
    use and again after it is lost, so an outage costs the transactions tried during
    it (StorageFailing) and nothing after.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._loop = asyncio.new_event_loop()
        self._conn: Conn | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="leida-writer", daemon=True)
        self._thread.start()

    async def run(self, transaction: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._run(transaction, *args), self._loop))

    async def _run(self, transaction: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self.url, timeout=CONNECT_TIMEOUT_SECONDS)
        try:
            return await transaction(self._conn, *args)
        except Exception as error:
            if storage_failure(error) is not None and not self._conn.is_closed():
                self._conn.terminate()  # its state is unknown: the next transaction connects afresh
            raise

    async def stop(self) -> None:
        """Close the connection, then end the thread (the writer has applied everything by now)."""
        async def close() -> None:
            if self._conn is not None and not self._conn.is_closed():
                await self._conn.close(timeout=CONNECT_TIMEOUT_SECONDS)

        try:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(close(), self._loop))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
            self._loop.close()
