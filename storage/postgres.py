"""The PostgreSQL backend: several processes and hosts share one database.

A pool (asyncpg) serves the reads and this process's writer. Three things
differ from SQLite, and they are why this module exists:

- **Wake-ups across processes.** The transaction that inserts messages also
  sends ``NOTIFY leida_chat`` naming their conversations, so PostgreSQL
  delivers it only on COMMIT. Each process LISTENs on a connection of its own,
  outside the pool (a listener on a pooled connection is lost when that
  connection goes back), and wakes only its local waiters of those keys, with
  the messages the doorbell names, read once for all of them. A notification
  is a doorbell, never the message.
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
import collections
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

from .media import CLAIM_ATTACHMENT
from .metrics import count_error
from .outbox import WATCH_UNREAD_ON_CONFLICT, Script, run_script_async, unread_watches
from .outgoing import Outgoing, Pair, SenderKey, pairs_and_keys, plan_sends
from .records import AccountNeedsName, AttachmentUnavailable, Message, SendReceipt, Side
from .schema import migrate_postgres
from .waiters import Committed, Waiters
from .writer import Change, Changes, StorageFailing, by_kind

log = logging.getLogger("leida_chat.storage")

#: the one channel every process LISTENs on
CHANNEL = "leida_chat"
#: PostgreSQL refuses a NOTIFY payload of 8000 bytes or more
MAX_PAYLOAD_BYTES = 7900
#: how long a connection attempt may take before the database counts as out of reach
CONNECT_TIMEOUT_SECONDS = 5.0
#: the listener's reconnection backoff: first delay, doubling up to the last
RECONNECT_FIRST_SECONDS = 0.1
RECONNECT_MAX_SECONDS = 1.0
#: how often the listener checks that its connection still answers (a silent network loss sends no FIN)
LISTENER_CHECK_SECONDS = 10.0
#: how long a hand-off waits for its own doorbell before its waiters read for themselves instead
HAND_OFF_MAX_SECONDS = 1.0

#: a connection of the pool (the writer's and the reads') or of its own (the listener's)
Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy
Op = Callable[[Conn], Awaitable[Any]]
NumberedRows = Callable[[int], list[tuple[int, str, str]]]
#: the read the listener makes for a doorbell: every message with an id from first to last
MessagesBetween = Callable[[int, int], Awaitable[list[Message]]]

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

    async def watch(self, waiters: Waiters, messages_between: MessagesBetween) -> None:
        self.listener = Listener(self.url, self.origin, waiters, messages_between)
        await self.listener.start()

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


#: what a doorbell names per conversation: its (customer_id, user_id) and the ids of its new messages, first and last
Span = tuple[Pair, int, int]


def doorbells(ringer: str, spans: dict[Pair, tuple[int, int]]) -> list[str]:
    """NOTIFY payloads naming each conversation and its new messages' ids, first and last:
    ``"<ringer> customer:user:first:last,..."``, each under 8000 bytes. The ringer is
    ``<origin>/<transaction number>``: the process and its commit."""
    payloads: list[str] = []
    current: list[str] = []
    size = len(ringer) + 1
    for (customer_id, user_id), (first_id, last_id) in sorted(spans.items()):
        key = f"{customer_id}:{user_id}:{first_id}:{last_id}"
        if current and size + len(key) + 1 > MAX_PAYLOAD_BYTES:
            payloads.append(f"{ringer} {','.join(current)}")
            current, size = [], len(ringer) + 1
        current.append(key)
        size += len(key) + 1
    if current:
        payloads.append(f"{ringer} {','.join(current)}")
    return payloads


def rung(payload: str) -> tuple[str, list[Span]]:
    """The ringer and the conversations (with their new messages' ids) of a doorbell payload."""
    ringer, _, keys = payload.partition(" ")
    spans = []
    for key in keys.split(","):
        fields = key.split(":")
        if len(fields) == 4 and all(field.isdigit() for field in fields):
            customer_id, user_id, first_id, last_id = map(int, fields)
            spans.append(((customer_id, user_id), first_id, last_id))
    return ringer, spans


def to_read_back(committed: list[Committed]) -> list[Committed]:
    """The same wake-ups without the messages: each waiter reads what is new for itself."""
    return [(customer_id, user_id, None) for customer_id, user_id, _ in committed]


async def _keep_session(_conn: Conn) -> None:
    """What a connection going back to the pool needs besides the rollback of an open
    transaction, which asyncpg does first: nothing. asyncpg's default reset (unlock
    advisory locks, close cursors, UNLISTEN, RESET ALL) is one more round trip per
    read and per commit, 0.34 ms here, and undoes what this code never does: its
    advisory locks are transaction-scoped, and only the Listener, outside the pool, LISTENs."""


def _reason(error: BaseException) -> str:
    """What went wrong, in words (an OSError by its errno: asyncio and uvloop word the rest differently)."""
    if isinstance(error, OSError) and error.errno:
        return os.strerror(error.errno)
    return str(error) or type(error).__name__


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


# -- LISTEN ---------------------------------------------------------------------------


class Listener:
    """This process's own connection for LISTEN, outside the pool, and its reconnection;
    and the wake-ups it brings, handed over strictly in commit order.

    A doorbell from another process is read once for every local waiter it wakes
    (``messages_between``: its messages' ids), not once per waiter: per waiter, the
    reads queued for the pool and took most of the cross-process delivery time
    (bench/README.md, "Backends"). A doorbell of this process's own hands over the
    messages its commit holds back (``hand_off``). Either waits its turn behind the
    reads of earlier doorbells, so nothing is handed before what was committed first.
    """

    def __init__(self, url: str, origin: str, waiters: Waiters, messages_between: MessagesBetween) -> None:
        self.url = url
        self.origin = origin
        self.waiters = waiters
        self._messages_between = messages_between
        self._conn: Conn | None = None
        self._closing = False
        self._task: asyncio.Task | None = None
        self._lost = asyncio.Event()
        #: the number of this process's last transaction whose doorbell's turn is over
        self._back = 0
        #: the number of this process's last transaction whose hand-off the writer made
        self._last_handed = 0
        #: hand-offs waiting for their doorbell, oldest first: (transaction number, held since, committed)
        self._held: collections.deque[tuple[int, float, list[Committed]]] = collections.deque()
        #: doorbells of this process's that came back before their hand-off: number -> their turn's
        #: wait, and the timer that gives up on it
        self._awaiting: dict[int, tuple[asyncio.Future, asyncio.TimerHandle]] = {}
        self._overdue_timer: asyncio.TimerHandle | None = None
        #: doorbells in the order they rang, each with what its turn waits for (a read, or its own hand-off;
        #: None: nothing) and what to do then
        self._turns: collections.deque[tuple[asyncio.Future | None, Callable[[Any], None]]] = collections.deque()

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def start(self) -> None:
        """Connect and LISTEN now (a failure here stops the start); from then on, stay connected."""
        await self._connect()
        self._task = asyncio.get_running_loop().create_task(self._stay_connected())

    async def close(self) -> None:
        self._closing = True
        if self._overdue_timer is not None:
            self._overdue_timer.cancel()
        for _, give_up in self._awaiting.values():
            give_up.cancel()
        self._awaiting.clear()
        for read, _ in self._turns:
            if read is not None:
                read.cancel()
        self._turns.clear()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close(timeout=CONNECT_TIMEOUT_SECONDS)

    async def _connect(self) -> None:
        conn = await asyncpg.connect(self.url, timeout=CONNECT_TIMEOUT_SECONDS)
        await conn.add_listener(CHANNEL, self._rung)
        conn.add_termination_listener(lambda _conn: self._lost.set())
        self._lost.clear()
        self._conn = conn

    def hand_off(self, number: int, committed: list[Committed]) -> None:
        """Hand ``committed``, of this process's transaction ``number``, in its doorbell's turn.

        The writer calls this for every commit that stored messages, even with
        nobody waiting (``committed`` empty): the doorbell's turn waits for it."""
        self._last_handed = max(self._last_handed, number)
        awaiting = self._awaiting.pop(number, None)
        if awaiting is not None:  # its doorbell is back, and its turn waits for this
            waiting, give_up = awaiting
            give_up.cancel()
            if not waiting.done():
                waiting.set_result(committed)
            return
        if number <= self._back or not self.connected:
            # its turn gave up waiting (HAND_OFF_MAX_SECONDS), or no doorbell will come: read back
            self.waiters.notify(to_read_back(committed))
            return
        loop = asyncio.get_running_loop()
        self._held.append((number, loop.time(), committed))
        if self._overdue_timer is None:
            self._overdue_timer = loop.call_later(HAND_OFF_MAX_SECONDS, self._hand_over_overdue)

    def _rung(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        ringer, spans = rung(str(payload))
        origin, _, number = ringer.partition("/")
        if origin == self.origin:  # this process's own commit: its waiters get the messages in hand
            own = int(number) if number.isdigit() else 0
            self._in_turn(self._own_hand_off(own), lambda committed: self._came_back(own, committed))
            return
        awaited = [span for span in spans if self.waiters.awaited(*span[0])]
        if awaited:
            claimed = self.waiters.claim(pair for pair, _, _ in awaited)
            read = asyncio.get_running_loop().create_task(self._read(awaited))
            self._in_turn(read, lambda committed: self.waiters.hand(claimed, committed))

    def _in_turn(self, read: asyncio.Future | None, then: Callable[[Any], None]) -> None:
        self._turns.append((read, then))
        if read is not None:
            read.add_done_callback(lambda _: self._take_turns())
        self._take_turns()

    def _take_turns(self) -> None:
        while self._turns and (self._turns[0][0] is None or self._turns[0][0].done()):
            read, then = self._turns.popleft()
            if read is None:
                then(None)
            elif not read.cancelled():
                then(read.result())

    async def _read(self, spans: list[Span]) -> list[Committed]:
        """The new messages of ``spans``, each under its conversation; read back by each waiter if the read fails."""
        wanted = {pair: (first_id, last_id) for pair, first_id, last_id in spans}
        try:
            async with asyncio.timeout(HAND_OFF_MAX_SECONDS):
                messages = await self._messages_between(
                    min(first for _, first, _ in spans), max(last for _, _, last in spans))
        except Exception as error:  # slow, or going away: each waiter reads for itself
            log.debug("a doorbell's read failed: %s", _reason(error))
            return [(*pair, None) for pair in wanted]
        committed: list[Committed] = []
        for message in messages:
            span = wanted.get((message.customer_id, message.user_id))
            if span is not None and span[0] <= message.id <= span[1]:
                committed.append((message.customer_id, message.user_id, message))
        return committed

    def _own_hand_off(self, number: int) -> asyncio.Future | None:
        """What the turn of this process's doorbell ``number`` waits for: None if the writer's
        hand-off is in already (held until now), else a future that it resolves.

        The doorbell can come back before the writer's result crosses back to this
        loop. Another process's later commit, handed in between, would send a
        client past this one's messages for good (tests/test_scale_out.py, eight
        senders: 6 runs in 18 missed a message so). If no hand-off comes within
        HAND_OFF_MAX_SECONDS (the writer lost the connection at COMMIT), every
        held request reads for itself."""
        if number <= self._last_handed or number <= self._back or number in self._awaiting:
            return None  # held already, or another payload of a doorbell whose turn waits
        loop = asyncio.get_running_loop()
        waiting = loop.create_future()
        self._awaiting[number] = (waiting, loop.call_later(HAND_OFF_MAX_SECONDS, self._stop_waiting, number))
        return waiting

    def _stop_waiting(self, number: int | None = None) -> None:
        """No hand-off will come for ``number`` (None: for any doorbell back so far): its turn
        hands nothing, and every held request reads for itself, which is always right."""
        for waited in [number] if number is not None else list(self._awaiting):
            waiting, give_up = self._awaiting.pop(waited)
            give_up.cancel()
            if not waiting.done():
                waiting.set_result([])
        self.waiters.wake_all()

    def _came_back(self, number: int, committed: list[Committed] | None = None) -> None:
        """This process's commit ``number`` rang: hand over every commit before it, then it."""
        self._back = max(self._back, number)
        while self._held and self._held[0][0] <= self._back:
            self.waiters.notify(self._held.popleft()[2])
        if committed:
            self.waiters.notify(committed)

    def _hand_over_overdue(self) -> None:
        """A doorbell that did not come back in HAND_OFF_MAX_SECONDS (a connection lost without
        a word): its waiters read for themselves, which is always right, only slower."""
        self._overdue_timer = None
        loop = asyncio.get_running_loop()
        while self._held and self._held[0][1] <= loop.time() - HAND_OFF_MAX_SECONDS:
            self.waiters.notify(to_read_back(self._held.popleft()[2]))
        if self._held:
            self._overdue_timer = loop.call_at(self._held[0][1] + HAND_OFF_MAX_SECONDS, self._hand_over_overdue)

    async def _stay_connected(self) -> None:
        """Once the connection is lost (or stops answering the check made every
        LISTENER_CHECK_SECONDS: a silent network loss sends no FIN), reconnect with
        backoff, LISTEN again, and wake every local waiter to read again."""
        while not self._closing:
            try:
                await asyncio.wait_for(self._lost.wait(), LISTENER_CHECK_SECONDS)
            except TimeoutError:
                if await self._answers():
                    continue
            if self._conn is not None:
                self._conn.terminate()
                self._conn = None
            count_error("listener")
            log.warning("database listener lost its connection; reconnecting")
            delay = RECONNECT_FIRST_SECONDS
            while not self._closing:
                try:
                    await self._connect()
                    break
                except Exception as error:  # out of reach still: try again later
                    log.debug("listener reconnect failed: %s", _reason(error))
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RECONNECT_MAX_SECONDS)
            log.warning("database listener reconnected: every held request reads again")
            self._held.clear()  # their doorbells are gone with the old connection; everyone reads
            self._stop_waiting()

    async def _answers(self) -> bool:
        assert self._conn is not None
        try:
            await self._conn.execute("SELECT 1", timeout=CONNECT_TIMEOUT_SECONDS)
        except Exception:
            return False
        return True
