"""ChatStore: accounts, conversations, messages and read positions in SQLite.

Every change goes through the single ``Writer`` (its COMMIT runs on
aiosqlite's thread, off the event loop: a commit waits for fsync); a committed
message then wakes the waiters of its conversation. Reads run on the event loop itself, on their own connection:
they are short indexed queries that WAL lets see every committed change without
ever waiting for the writer, and one costs about 4 µs here where handing it to
a thread and back costs 40-110 µs (bench/README.md). Nothing here knows about
HTTP.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import aiosqlite
import ujson

from .accounts import AccountCache
from .metrics import MESSAGES_FROM_CUSTOMERS, MESSAGES_FROM_RADAR_USERS, count_error
from .records import (
    FROM_CUSTOMER,
    FROM_RADAR_USER,
    Contact,
    Customer,
    HistoryPage,
    Message,
    RadarUser,
    SendReceipt,
    Side,
)
from .schema import migrate
from .waiters import Waiters
from .writer import StorageFailing, Writer

log = logging.getLogger("leida_chat.storage")


_MESSAGE_COLUMNS = """
    m.id, m.customer_id, m.user_id, m.send_type, m.content, m.created_at,
    m.id = c.first_message_id, m.id <= c.customer_read_id, m.id <= c.user_read_id,
    cu.username, cu.headimgurl, COALESCE(NULLIF(u.mingpian_avatar, ''), u.avatar)
"""
# CROSS JOIN pins SQLite's join order: start from the conversation (its read
# positions bound the message range), whatever the statistics say.
_MESSAGE_FROM = """
    FROM conversation c
    CROSS JOIN message m ON m.customer_id = c.customer_id AND m.user_id = c.user_id
    JOIN customer cu ON cu.id = c.customer_id
    JOIN radar_user u ON u.id = c.user_id
"""
# A radar user's inbox after a cursor is bounded by the cursor instead: start
# from the messages.
_MESSAGE_FROM_CURSOR = """
    FROM message m
    CROSS JOIN conversation c ON c.customer_id = m.customer_id AND c.user_id = m.user_id
    JOIN customer cu ON cu.id = c.customer_id
    JOIN radar_user u ON u.id = c.user_id
"""

_CUSTOMER_FIELDS = ("username", "headimgurl", "token")
_RADAR_USER_FIELDS = (
    "username", "avatar", "mingpian_avatar", "mingpian_phone", "wechat", "wechat_phone", "token",
)

_CUSTOMER_BY_ID = f"SELECT id, {', '.join(_CUSTOMER_FIELDS)} FROM customer WHERE id = ?"
_RADAR_USER_BY_ID = f"SELECT id, {', '.join(_RADAR_USER_FIELDS)} FROM radar_user WHERE id = ?"
_ACCOUNT_VERSION = "SELECT version FROM account_change"

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")


def local_timestamp() -> str:
    """Local server time as the original API wrote it: 2018-09-21T15:18:01.548."""
    return datetime.now().isoformat(timespec="milliseconds")


def new_token() -> str:
    return secrets.token_hex(16)


def _message(row: tuple) -> Message:
    return Message(
        id=row[0],
        customer_id=row[1],
        user_id=row[2],
        send_type=row[3],
        content=ujson.loads(row[4]),
        created_at=row[5],
        is_first_info=bool(row[6]),
        read_by_customer=bool(row[7]),
        read_by_user=bool(row[8]),
        customer_name=row[9],
        customer_headimgurl=row[10],
        user_avatar=row[11],
    )


class ChatStore:
    """The one object handlers talk to for anything stored."""

    def __init__(
        self, write_conn: aiosqlite.Connection, read_conn: sqlite3.Connection, account_cache_seconds: float
    ) -> None:
        self._write_conn = write_conn
        self._read_conn = read_conn
        self._writer = Writer(write_conn, after_commit=self._wake_waiters)
        self._customers: AccountCache[Customer] = AccountCache(enabled=account_cache_seconds > 0)
        self._radar_users: AccountCache[RadarUser] = AccountCache(enabled=account_cache_seconds > 0)
        self._account_recheck_seconds = account_cache_seconds
        self._accounts_recheck_at = 0.0
        self._account_version: int | None = None
        self._unsettled_marks: dict[int, set[asyncio.Future]] = {}
        self.waiters = Waiters()

    @classmethod
    async def open(
        cls, path: str | Path, synchronous: str = "FULL", account_cache_seconds: float = 5.0
    ) -> ChatStore:
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
            await write_conn.execute("PRAGMA foreign_keys = ON")
            await migrate(write_conn)
            # From here the writer waits for a lock only on its thread, never on the loop.
            await write_conn.execute("PRAGMA busy_timeout = 0")
            read_conn = sqlite3.connect(path, isolation_level=None)
        except BaseException:
            await write_conn.close()
            raise
        # WAL readers wait only in rare cases (recovery after a crash); never block the loop long.
        read_conn.execute("PRAGMA busy_timeout = 1000")
        read_conn.execute("PRAGMA query_only = 1")
        return cls(write_conn, read_conn, account_cache_seconds)

    @property
    def commits(self) -> int:
        return self._writer.commits

    @property
    def changes(self) -> int:
        return self._writer.changes

    async def close(self) -> None:
        """Finish queued writes, then close both connections."""
        self.waiters.close()
        await self._writer.stop()
        self._read_conn.close()
        await self._write_conn.close()

    async def readiness_problem(self) -> str | None:
        """Why a send could not succeed now, or None when it could.

        While the disk is failing, each probe tries a one-row write, so that
        readiness comes back as soon as space does, even before the next send.
        """
        try:
            self._read_conn.execute(_ACCOUNT_VERSION).fetchone()
        except sqlite3.Error as error:
            return f"database not readable: {error}"
        if not self._writer.running:
            return "database writer stopped"
        if self._writer.storage_failing is not None:
            try:
                await self._writer.run(_probe_write)
            except StorageFailing as error:
                return str(error)
        return None

    # -- reading -----------------------------------------------------------

    async def _all(self, sql: str, params: Iterable[Any]) -> list[tuple]:
        return self._read_conn.execute(sql, tuple(params)).fetchall()

    async def _one(self, sql: str, params: Iterable[Any]) -> tuple | None:
        rows = await self._all(sql, params)
        return rows[0] if rows else None

    async def _aggregate(self, sql: str, params: Iterable[Any]) -> tuple:
        """The row of a query that aggregates (count, max): it always has exactly one."""
        (row,) = await self._all(sql, params)
        return row

    async def _messages(
        self, where: str, params: Iterable[Any], source: str = _MESSAGE_FROM
    ) -> list[Message]:
        rows = await self._all(f"SELECT {_MESSAGE_COLUMNS} {source} WHERE {where}", params)
        return [_message(row) for row in rows]

    # -- accounts ------------------------------------------------------------

    async def customer(self, customer_id: int) -> Customer | None:
        return self._customer_now(customer_id)

    async def radar_user(self, user_id: int) -> RadarUser | None:
        return self._radar_user_now(user_id)

    def _customer_now(self, customer_id: int) -> Customer | None:
        return self._account(self._customers, _CUSTOMER_BY_ID, Customer, customer_id)

    def _radar_user_now(self, user_id: int) -> RadarUser | None:
        return self._account(self._radar_users, _RADAR_USER_BY_ID, RadarUser, user_id)

    def _account(self, cache: AccountCache, sql: str, record: type, account_id: int) -> Any:
        if self._account_recheck_seconds > 0 and time.monotonic() >= self._accounts_recheck_at:
            self._recheck_accounts()
        account = cache.get(account_id)
        if account is None:
            rows = self._read_conn.execute(sql, (account_id,)).fetchall()
            if rows:
                account = record(*rows[0])
                cache.put(account_id, account)
        return account

    def _recheck_accounts(self) -> None:
        """Empty the account caches if any account changed since the last look (see accounts.py)."""
        self._accounts_recheck_at = time.monotonic() + self._account_recheck_seconds
        (version,) = self._read_conn.execute(_ACCOUNT_VERSION).fetchone()
        if version != self._account_version:
            self._account_version = version
            self._customers.clear()
            self._radar_users.clear()

    async def demo_seeded_accounts(self, customers: int) -> tuple[RadarUser | None, list[Customer]]:
        """The radar user and customers the demo seeded (what the demo pages sign with).

        Only accounts marked ``seeded_by_demo`` are ever returned: the demo page
        hands their tokens out, so an account a deployment made must never be among them.
        """
        row = await self._one("SELECT MIN(id) FROM radar_user WHERE seeded_by_demo = 1", ())
        user = await self.radar_user(row[0]) if row and row[0] is not None else None
        rows = await self._all(
            f"SELECT id, {', '.join(_CUSTOMER_FIELDS)} FROM customer WHERE seeded_by_demo = 1 ORDER BY id LIMIT ?",
            (customers,),
        )
        return user, [Customer(*row) for row in rows]

    async def save_customer(
        self, customer_id: int | None = None, *, seeded_by_demo: bool = False, **fields: str | None
    ) -> tuple[int, str]:
        """Create a customer, or update the given fields of an existing one.

        ``seeded_by_demo`` marks a new account as the demo's own (see ``demo_seeded_accounts``).
        """
        saved = await self._save_account("customer", _CUSTOMER_FIELDS, customer_id, fields, seeded_by_demo)
        self._customers.drop(saved[0])
        return saved

    async def save_radar_user(
        self, user_id: int | None = None, *, seeded_by_demo: bool = False, **fields: str | None
    ) -> tuple[int, str]:
        """Create a radar user, or update the given fields of an existing one.

        ``seeded_by_demo`` marks a new account as the demo's own (see ``demo_seeded_accounts``).
        """
        saved = await self._save_account("radar_user", _RADAR_USER_FIELDS, user_id, fields, seeded_by_demo)
        self._radar_users.drop(saved[0])
        return saved

    async def _save_account(
        self, table: str, allowed: tuple[str, ...], account_id: int | None, fields: dict[str, str | None],
        seeded_by_demo: bool = False,
    ) -> tuple[int, str]:
        unknown = set(fields) - set(allowed)
        if unknown:
            raise TypeError(f"unknown {table} fields: {sorted(unknown)}")
        given = {name: value for name, value in fields.items() if value is not None}

        def op(conn: sqlite3.Connection) -> tuple[int, str]:
            if account_id is not None:
                existing = conn.execute(f"SELECT token FROM {table} WHERE id = ?", (account_id,)).fetchone()
                if existing is not None:
                    if given:
                        assignments = ", ".join(f"{name} = ?" for name in given)
                        conn.execute(f"UPDATE {table} SET {assignments} WHERE id = ?", (*given.values(), account_id))
                    return account_id, given.get("token", existing[0])
            row: dict[str, Any] = {"token": new_token(), **given}
            if "username" not in row:
                raise ValueError("a new account needs a name")
            if seeded_by_demo:
                row["seeded_by_demo"] = 1
            if account_id is not None:
                row["id"] = account_id
            placeholders = ", ".join("?" for _ in row)
            cur = conn.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({placeholders})", tuple(row.values()))
            return cast(int, cur.lastrowid), row["token"]  # an INSERT always sets lastrowid

        return await self._writer.run(op)

    async def add_demo_accounts(self, users: int, customers: int) -> tuple[dict[int, str], dict[int, str]]:
        """Create numbered radar users and customers in one transaction."""

        def op(conn: sqlite3.Connection) -> tuple[dict[int, str], dict[int, str]]:
            made: list[dict[int, str]] = []
            for table, count, name in (("radar_user", users, "雷达用户"), ("customer", customers, "客户")):
                (start,) = conn.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchone()
                tokens = {start + n: new_token() for n in range(1, count + 1)}
                conn.executemany(
                    f"INSERT INTO {table} (id, username, token) VALUES (?, ?, ?)",
                    [(account_id, f"{name}{account_id}", token) for account_id, token in tokens.items()],
                )
                made.append(tokens)
            return made[0], made[1]

        return await self._writer.run(op)

    # -- sending ---------------------------------------------------------------

    async def send(
        self,
        customer_id: int,
        user_id: int,
        send_type: int,
        content: dict[str, Any],
        client_msg_id: str | None = None,
    ) -> SendReceipt:
        """Store a message durably; its conversation's waiters are woken once it is.

        A repeated ``client_msg_id`` from the same sender stores nothing and
        returns the receipt of the first send, so a client can retry blindly.
        """
        outgoing = _Outgoing(
            customer_id, user_id, send_type, ujson.dumps(content, ensure_ascii=False), local_timestamp(),
            client_msg_id, content,
        )
        receipt, _ = await self._writer.submit(_insert_messages, outgoing)
        return receipt

    def _wake_waiters(self, committed: list[tuple[Any, Any, Any]]) -> None:
        """Right after COMMIT: hand the new messages to whoever waits for them,
        so that a woken request need not read them back."""
        stored = [(sent, result) for apply, sent, result in committed
                  if apply is _insert_messages and not result[0].duplicate]
        from_customers = sum(1 for sent, _ in stored if sent.send_type == FROM_CUSTOMER)
        if from_customers:  # one increment per commit and side, not per message
            MESSAGES_FROM_CUSTOMERS.inc(from_customers)
        if len(stored) > from_customers:
            MESSAGES_FROM_RADAR_USERS.inc(len(stored) - from_customers)
        self.waiters.notify(
            (sent.customer_id, sent.user_id, self._as_message(sent, *result))
            for sent, result in stored
            if self.waiters.awaited(sent.customer_id, sent.user_id)
        )

    def _as_message(self, sent: _Outgoing, receipt: SendReceipt, is_first_info: bool) -> Message | None:
        """The just-committed message as a read would return it (None if its accounts vanished)."""
        customer = self._customer_now(sent.customer_id)
        user = self._radar_user_now(sent.user_id)
        if customer is None or user is None:
            return None
        return Message(
            id=receipt.id, customer_id=sent.customer_id, user_id=sent.user_id, send_type=sent.send_type,
            content=sent.content, created_at=receipt.created_at, is_first_info=is_first_info,
            read_by_customer=False, read_by_user=False, customer_name=customer.username,
            customer_headimgurl=customer.headimgurl, user_avatar=user.card_avatar,
        )

    # -- messages ------------------------------------------------------------

    async def unread_messages(
        self, side: Side, user_id: int, customer_id: int | None, limit: int
    ) -> list[Message]:
        """The messages ``side`` has not yet received, oldest first.

        The customer receives both directions (its own sends echo back, as the
        original did); the radar user receives only the customer's messages.
        ``customer_id=None`` means the radar user's whole inbox.
        """
        await self._marks_settled(user_id)
        if side is Side.CUSTOMER:
            return await self._messages(
                "c.customer_id = ? AND c.user_id = ? AND m.id > c.customer_read_id ORDER BY m.id LIMIT ?",
                (customer_id, user_id, limit),
            )
        where, params = self._radar_unread_filter(user_id, customer_id)
        return await self._messages(f"{where} ORDER BY m.id LIMIT ?", (*params, limit))

    async def messages_after(
        self, after_id: int, user_id: int, customer_id: int | None, limit: int
    ) -> list[Message]:
        """Every message after a client's resume cursor, whatever its read state."""
        await self._marks_settled(user_id)
        if customer_id is None:
            return await self._messages(
                "m.user_id = ? AND m.id > ? ORDER BY m.id LIMIT ?",
                (user_id, after_id, limit),
                source=_MESSAGE_FROM_CURSOR,
            )
        return await self._messages(
            "c.customer_id = ? AND c.user_id = ? AND m.id > ? ORDER BY m.id LIMIT ?",
            (customer_id, user_id, after_id, limit),
        )

    async def unread_count(self, side: Side, user_id: int, customer_id: int | None) -> int:
        """How many of the other side's messages ``side`` has not read."""
        await self._marks_settled(user_id)
        if side is Side.CUSTOMER:
            where = "c.customer_id = ? AND c.user_id = ? AND m.id > c.customer_read_id AND m.send_type = ?"
            params: tuple = (customer_id, user_id, FROM_RADAR_USER)
        else:
            where, params = self._radar_unread_filter(user_id, customer_id)
        (count,) = await self._aggregate(f"SELECT count(*) {_MESSAGE_FROM} WHERE {where}", params)
        return count

    @staticmethod
    def _radar_unread_filter(user_id: int, customer_id: int | None) -> tuple[str, tuple]:
        where = (
            "c.user_id = ? AND c.last_customer_message_id > c.user_read_id"
            " AND m.id > c.user_read_id AND m.send_type = ?"
        )
        params: tuple = (user_id, FROM_CUSTOMER)
        if customer_id is not None:
            where += " AND c.customer_id = ?"
            params += (customer_id,)
        return where, params

    def mark_delivered(self, side: Side, messages: list[Message]) -> None:
        """Delivered messages become read for ``side``: move its read positions past them.

        The write is queued, not awaited, and rides along with the next send's
        commit, so that a delivery neither waits for nor pays for a commit of
        its own; every read that depends on read positions has the radar user's
        queued marks committed first (``_marks_settled``), so nobody can observe
        the position before the move. A mark lost in a crash only means a
        message is delivered again.
        """
        positions: dict[tuple[int, int], int] = {}
        for message in messages:  # oldest first, so the last unread one per conversation wins
            if not message.read_by(side):
                positions[(message.customer_id, message.user_id)] = message.id
        if positions:
            self._queue_read_positions(side, positions)

    def _queue_read_positions(self, side: Side, positions: dict[tuple[int, int], int]) -> asyncio.Future:
        """Positions only move forward, so a late or repeated mark is harmless."""
        mark = self._writer.enqueue(_move_read_positions, (side, positions), urgent=False)
        user_ids = {user_id for _, user_id in positions}
        for user_id in user_ids:
            self._unsettled_marks.setdefault(user_id, set()).add(mark)

        def settled(done: asyncio.Future) -> None:
            for user_id in user_ids:
                marks = self._unsettled_marks.get(user_id)
                if marks is not None:
                    marks.discard(done)
                    if not marks:
                        del self._unsettled_marks[user_id]
            error = None if done.cancelled() else done.exception()
            if error is not None and not isinstance(error, StorageFailing):  # that one the writer logs
                count_error("read_positions")
                log.error("could not save read positions", exc_info=error)

        mark.add_done_callback(settled)
        return mark

    async def _marks_settled(self, user_id: int) -> None:
        """Wait until every queued read-position move of this radar user's conversations is committed."""
        marks = self._unsettled_marks.get(user_id)
        if marks:
            self._writer.hurry()
            await asyncio.wait(list(marks))

    async def read_history(
        self, side: Side, customer_id: int, user_id: int, offset: int, limit: int
    ) -> HistoryPage:
        """One page of a conversation, cut newest-first and returned oldest-first.

        Opening the history marks the whole conversation read for ``side``.
        """
        await self._marks_settled(user_id)
        row = await self._aggregate(
            f"SELECT count(*), COALESCE(MAX(id), 0), "
            f"(SELECT {side.value} FROM conversation WHERE customer_id = ? AND user_id = ?)"
            " FROM message WHERE customer_id = ? AND user_id = ?",
            (customer_id, user_id, customer_id, user_id),
        )
        total, newest_id, read_position = row
        messages: list[Message] = []
        if total and offset < total:
            messages = await self._messages(
                "c.customer_id = ? AND c.user_id = ? ORDER BY m.id DESC LIMIT ? OFFSET ?",
                (customer_id, user_id, limit, offset),
            )
            messages.reverse()
        if total and read_position < newest_id:
            self._queue_read_positions(side, {(customer_id, user_id): newest_id})
        return HistoryPage(messages=messages, total=total)

    async def contacts(self, user_id: int, offset: int, limit: int) -> tuple[list[Contact], int]:
        """The radar user's conversations, most recent activity first."""
        await self._marks_settled(user_id)
        (total,) = await self._aggregate("SELECT count(*) FROM conversation WHERE user_id = ?", (user_id,))
        rows = await self._all(
            f"SELECT {_MESSAGE_COLUMNS},"
            " (SELECT count(*) FROM message x WHERE x.customer_id = c.customer_id"
            "  AND x.user_id = c.user_id AND x.id > c.user_read_id AND x.send_type = ?)"
            f" {_MESSAGE_FROM}"
            " WHERE c.user_id = ? AND m.id = c.last_message_id"
            " ORDER BY c.last_message_id DESC LIMIT ? OFFSET ?",
            (FROM_CUSTOMER, user_id, limit, offset),
        )
        contacts = []
        for row in rows:
            last = _message(row)
            contacts.append(
                Contact(
                    customer_id=last.customer_id,
                    customer_name=last.customer_name,
                    customer_headimgurl=last.customer_headimgurl,
                    unread_count=row[-1],
                    last_message=last,
                )
            )
        return contacts, total


# -- batched writes ----------------------------------------------------------------
# Each takes every change of its kind queued for one transaction and writes them
# with a fixed number of statements, whatever their number.


@dataclass(frozen=True, slots=True)
class _Outgoing:
    customer_id: int
    user_id: int
    send_type: int
    content_json: str
    created_at: str
    client_msg_id: str | None
    content: dict[str, Any]  # what waiters are handed; only content_json is stored

    @property
    def sender_key(self) -> tuple[int, int, str] | None:
        """Idempotency keys are per sender: (send_type, sender id, client_msg_id)."""
        if self.client_msg_id is None:
            return None
        sender_id = self.customer_id if self.send_type == FROM_CUSTOMER else self.user_id
        return (self.send_type, sender_id, self.client_msg_id)


def _values(rows: list[tuple], width: int) -> tuple[str, list[Any]]:
    placeholder = "(" + ", ".join("?" * width) + ")"
    return ", ".join(placeholder for _ in rows), [value for row in rows for value in row]


def _insert_messages(conn: sqlite3.Connection, batch: list[_Outgoing]) -> list[tuple[SendReceipt, bool]]:
    """(receipt, is_first_info) per send. One query learns the next message id,
    which conversations exist and which client keys were used before; then one
    executemany each inserts the messages, upserts their conversations and
    records the new client keys."""
    pairs = list({(sent.customer_id, sent.user_id) for sent in batch})
    keys = list({key for sent in batch if (key := sent.sender_key) is not None})
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
    conversations: set[tuple[int, int]] = set()
    earlier: dict[tuple[int, int, str], SendReceipt] = {}
    for kind, a, b, c, message_id, created_at in conn.execute(" UNION ALL ".join(parts), params):
        if kind == 0:
            last_id = a
        elif kind == 1:
            conversations.add((a, b))
        else:
            earlier[(a, b, c)] = SendReceipt(message_id, created_at, duplicate=True)

    results: list[tuple[SendReceipt, bool]] = []
    message_rows, conversation_rows, key_rows = [], [], []
    for sent in batch:
        key = sent.sender_key
        if key is not None and key in earlier:
            results.append((earlier[key], False))
            continue
        last_id += 1
        pair = (sent.customer_id, sent.user_id)
        is_first_info = pair not in conversations
        conversations.add(pair)
        receipt = SendReceipt(last_id, sent.created_at)
        if key is not None:
            earlier[key] = SendReceipt(last_id, sent.created_at, duplicate=True)
            key_rows.append((*key, last_id))
        results.append((receipt, is_first_info))
        message_rows.append((last_id, sent.customer_id, sent.user_id, sent.send_type, sent.content_json, sent.created_at))
        conversation_rows.append(
            (sent.customer_id, sent.user_id, last_id, last_id, last_id if sent.send_type == FROM_CUSTOMER else 0)
        )
    if message_rows:
        conn.executemany(
            "INSERT INTO message (id, customer_id, user_id, send_type, content, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            message_rows,
        )
        conn.executemany(
            "INSERT INTO conversation (customer_id, user_id, first_message_id, last_message_id,"
            " last_customer_message_id) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (customer_id, user_id) DO UPDATE SET"
            " last_message_id = excluded.last_message_id,"
            " last_customer_message_id = MAX(last_customer_message_id, excluded.last_customer_message_id)",
            conversation_rows,
        )
    if key_rows:
        conn.executemany(
            "INSERT INTO client_message (send_type, sender_id, client_msg_id, message_id) VALUES (?, ?, ?, ?)",
            key_rows,
        )
    return results


#: what the readiness probe writes while the disk is failing: the default server.max_body_bytes,
#: more than any one send stores. A one-page write fits in space a send does not (a captured run:
#: /readyz said ready while every 3 KB send got 503, and the log flapped between full and writable).
PROBE_BYTES = 64 * 1024


def _probe_write(conn: sqlite3.Connection) -> None:
    """A write as large as the largest send (readiness while the disk is failing)."""
    conn.execute("INSERT OR REPLACE INTO disk_probe (id, filler) VALUES (1, randomblob(?))", (PROBE_BYTES,))


def _move_read_positions(
    conn: sqlite3.Connection, batch: list[tuple[Side, dict[tuple[int, int], int]]]
) -> list[None]:
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
