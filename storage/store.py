"""ChatStore: the rules of accounts, conversations, messages and read positions, on either backend.

What is unread, what a read position means, idempotent sends and what a
waiter is handed live here, once. The SQL and the transactions are the
backend's: ``storage/sqlite.py`` (the embedded default, one process) or
``storage/postgres.py`` (several processes and hosts on one PostgreSQL).
Every change goes through the one ``Writer`` of this process; a committed
message then wakes the waiters of its conversation in this process, and the
backend wakes those of every other process. Nothing here knows about HTTP.

The reads below are written once, in SQL both engines speak; the PostgreSQL
backend numbers their ``?`` placeholders and drops SQLite's join-order pin.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import ujson

from . import accounts, customer_data, media, recall, retention
from .accounts import AccountCache
from .metrics import MESSAGES_FROM_CUSTOMERS, MESSAGES_FROM_RADAR_USERS, count_error
from .outbox import Outbox, message_time
from .outgoing import Outgoing
from .records import (
    CUSTOMER_FIELDS,
    FROM_CUSTOMER,
    FROM_RADAR_USER,
    RADAR_USER_FIELDS,
    RECALL_NOTICE,
    TEXT,
    TIP,
    AccountKind,
    AccountMissing,
    AccountRowInvalid,
    Attachment,
    Contact,
    Customer,
    HistoryPage,
    Message,
    RadarUser,
    RecallRefused,
    SendReceipt,
    Side,
    account_key,
    side_name,
)
from .waiters import Committed, Waiters
from .writer import Change, Changes, StorageFailing, Writer

log = logging.getLogger("leida_chat.storage")


_MESSAGE_COLUMNS = """
    m.id, m.customer_id, m.user_id, m.send_type, m.content, m.created_at,
    m.id = c.first_message_id, m.id <= c.customer_read_id, m.id <= c.user_read_id,
    cu.username, cu.headimgurl, COALESCE(NULLIF(u.mingpian_avatar, ''), u.avatar), m.recalled_by IS NOT NULL
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

_ACCOUNT_VERSION = "SELECT version FROM account_change"

#: how ``--db`` and ``database.url`` name a PostgreSQL database
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
SQLITE_SCHEME = "sqlite:///"


def local_timestamp() -> str:
    """Local server time as the original API wrote it: 2018-09-21T15:18:01.548."""
    return datetime.now().isoformat(timespec="milliseconds")


def new_token() -> str:
    return secrets.token_hex(16)


def is_postgres(location: str | Path) -> bool:
    """Whether a database location (``--db``, ``database.url``) names PostgreSQL rather than a SQLite file."""
    return str(location).startswith(POSTGRES_SCHEMES)


def sqlite_path(location: str | Path) -> Path:
    """The file of a SQLite location: a plain path, or ``sqlite:///path``."""
    text = str(location)
    return Path(text[len(SQLITE_SCHEME) - 1:] if text.startswith(SQLITE_SCHEME) else text)


def _message(row: Sequence[Any]) -> Message:
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
        recalled=bool(row[12]),
    )


class Database(Protocol):
    """What a backend provides: its SQL, its transactions, and its wake-ups from other processes."""

    name: str

    def describe(self) -> str:
        """Where the data is, for the startup line (a path, or a URL without its password)."""

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        """The rows of a read written with ``?`` placeholders."""

    async def transact(self, changes: Changes) -> list[Any]:
        """Every change, then COMMIT, or nothing; one result per change."""

    def storage_failure(self, error: BaseException) -> StorageFailing | None:
        """The error as a StorageFailing, if the storage rather than the change is at fault."""

    def names_a_missing_account(self, error: BaseException) -> bool:
        """Whether a write failed because an account it refers to is gone (erased meanwhile)."""

    def announce_typing(self, customer_id: int, user_id: int, side: str) -> None:
        """Tell every other process that ``side`` is typing in this conversation (nothing kept)."""

    async def reachability_problem(self) -> str | None:
        """Why the database cannot be read now, or None."""

    async def watch(self, waiters: Waiters, messages_between: Callable[[int, int], Awaitable[list[Message]]],
                    account_changed: Callable[[str, int], None]) -> None:
        """Start waking ``waiters`` for messages other processes commit (``messages_between``:
        the read of every message with an id from first to last), and calling ``account_changed``
        for accounts other processes disable, erase or give a new token."""

    def hand_off(self, waiters: Waiters, committed: list[Committed]) -> None:
        """Hand what this process just committed to its ``waiters``, once nothing committed
        earlier (by another process) can still be on its way to them."""

    async def close(self) -> None: ...

    def save_account(
        self, table: str, account_id: int | None, given: dict[str, str], new_row: dict[str, Any] | None
    ) -> Any: ...

    def add_numbered_accounts(self, tables: list[tuple[str, Any]]) -> Any: ...

    def probe_write(self) -> Any: ...

    #: seconds after which an unread message raises a webhook event; None: nothing is watched
    unread_after: float | None

    def scripted(self, script: Any) -> Any:
        """An outbox script (storage/outbox.py) as a one-off write for the writer."""


class ChatStore:
    """The one object handlers talk to for anything stored."""

    def __init__(self, database: Database, account_cache_seconds: float) -> None:
        self.database = database
        self._writer = Writer(database.transact, database.storage_failure, after_commit=self._wake_waiters)
        self._customers: AccountCache[Customer] = AccountCache(enabled=account_cache_seconds > 0)
        self._radar_users: AccountCache[RadarUser] = AccountCache(enabled=account_cache_seconds > 0)
        self._account_recheck_seconds = account_cache_seconds
        self._accounts_recheck_at = 0.0
        self._account_version: int | None = None
        #: queued read-position moves not yet committed, under each radar user id and each (customer_id, user_id)
        self._unsettled_marks: dict[int | tuple[int, int], set[asyncio.Future]] = {}
        self.waiters = Waiters()
        #: the webhook events' table; its unread stretches are watched only once ``watch_unread`` is called
        self.outbox = Outbox(self._run_script, database.fetch, database.name == "postgresql")

    def watch_unread(self, unread_after_seconds: float) -> None:
        """From now on, every send also watches the unread stretch it starts (webhooks
        are on): ``unread_after_seconds`` later, the outbox looks whether it was read."""
        self.database.unread_after = unread_after_seconds

    def _run_script(self, script: Any) -> Any:
        return self._writer.run(self.database.scripted(script))

    @classmethod
    async def open(
        cls, location: str | Path, synchronous: str = "FULL", account_cache_seconds: float = 5.0,
        pool_size: int = 10,
    ) -> ChatStore:
        """Open (creating and migrating if needed) the database at ``location``: a SQLite
        path (or ``sqlite:///path``) or a ``postgresql://`` URL."""
        database: Database
        if is_postgres(location):
            from .postgres import PostgresDatabase  # asyncpg is needed only here

            database = await PostgresDatabase.open(str(location), pool_size=pool_size)
        else:
            from .sqlite import SQLiteDatabase

            database = await SQLiteDatabase.open(sqlite_path(location), synchronous)
        store = cls(database, account_cache_seconds)
        try:
            await database.watch(store.waiters, store.messages_between, store.account_changed)
        except BaseException:
            await store.close()
            raise
        return store

    @property
    def commits(self) -> int:
        return self._writer.commits

    @property
    def changes(self) -> int:
        return self._writer.changes

    async def close(self) -> None:
        """Finish queued writes, then close the database."""
        self.waiters.close()
        await self._writer.stop()
        await self.database.close()

    async def readiness_problem(self) -> str | None:
        """Why a send could not succeed now, or None when it could.

        While the storage is failing, each probe tries a write as large as the
        largest send, so that readiness comes back as soon as it recovers, even
        before the next send.
        """
        problem = await self.database.reachability_problem()
        if problem is not None:
            return problem
        if not self._writer.running:
            return "database writer stopped"
        if self._writer.storage_failing is not None:
            try:
                await self._writer.run(self.database.probe_write())
            except StorageFailing as error:
                return str(error)
        return None

    # -- reading -----------------------------------------------------------

    async def _all(self, sql: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        return await self.database.fetch(sql, params)

    async def _one(self, sql: str, params: Sequence[Any]) -> Sequence[Any] | None:
        rows = await self._all(sql, params)
        return rows[0] if rows else None

    async def _aggregate(self, sql: str, params: Sequence[Any]) -> Sequence[Any]:
        """The row of a query that aggregates (count, max): it always has exactly one."""
        (row,) = await self._all(sql, params)
        return row

    async def _messages(
        self, where: str, params: Sequence[Any], source: str = _MESSAGE_FROM
    ) -> list[Message]:
        rows = await self._all(f"SELECT {_MESSAGE_COLUMNS} {source} WHERE {where}", params)
        return [_message(row) for row in rows]

    # -- accounts ------------------------------------------------------------

    async def customer(self, customer_id: int) -> Customer | None:
        return await self._account(self._customers, "customer", customer_id)

    async def radar_user(self, user_id: int) -> RadarUser | None:
        return await self._account(self._radar_users, "radar_user", user_id)

    async def _account(self, cache: AccountCache, kind: AccountKind, account_id: int) -> Any:
        if self._account_recheck_seconds > 0 and time.monotonic() >= self._accounts_recheck_at:
            await self._recheck_accounts()
        account = cache.get(account_id)
        if account is None:
            account = await self.account(kind, account_id)
            if account is not None:
                cache.put(account_id, account)
        return account

    async def account(self, kind: AccountKind, account_id: int) -> Customer | RadarUser | None:
        """The account as the database has it now (no cache), disabled or not."""
        row = await self._one(accounts.select_account(kind), (account_id,))
        return None if row is None else accounts.account_record(kind, row)

    def account_changed(self, kind: str, account_id: int) -> None:
        """An account was disabled, erased or given a new token, here or by another process:
        forget it, and answer its held requests (they were signed by what is no longer valid)."""
        cache = self._customers if kind == "customer" else self._radar_users
        cache.drop(account_id)
        self.waiters.end_account(account_key(kind, account_id))  # type: ignore[arg-type]

    async def _recheck_accounts(self) -> None:
        """Empty the account caches if any account changed since the last look (see accounts.py)."""
        self._accounts_recheck_at = time.monotonic() + self._account_recheck_seconds
        (version,) = await self._aggregate(_ACCOUNT_VERSION, ())
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
            f"SELECT id, {', '.join(CUSTOMER_FIELDS)} FROM customer WHERE seeded_by_demo = 1 ORDER BY id LIMIT ?",
            (customers,),
        )
        return user, [Customer(*row) for row in rows]

    async def save_customer(
        self, customer_id: int | None = None, *, seeded_by_demo: bool = False, **fields: str | None
    ) -> tuple[int, str]:
        """Create a customer, or update the given fields of an existing one.

        ``seeded_by_demo`` marks a new account as the demo's own (see ``demo_seeded_accounts``).
        """
        saved = await self._save_account("customer", CUSTOMER_FIELDS, customer_id, fields, seeded_by_demo)
        self._customers.drop(saved[0])
        return saved

    async def save_radar_user(
        self, user_id: int | None = None, *, seeded_by_demo: bool = False, **fields: str | None
    ) -> tuple[int, str]:
        """Create a radar user, or update the given fields of an existing one.

        ``seeded_by_demo`` marks a new account as the demo's own (see ``demo_seeded_accounts``).
        """
        saved = await self._save_account("radar_user", RADAR_USER_FIELDS, user_id, fields, seeded_by_demo)
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
        new_row: dict[str, Any] | None = None
        if "username" in given:  # a new account needs a name
            new_row = {"token": new_token(), **given}
            if seeded_by_demo:
                new_row["seeded_by_demo"] = 1
        return await self._writer.run(self.database.save_account(table, account_id, given, new_row))

    async def add_demo_accounts(self, users: int, customers: int) -> tuple[dict[int, str], dict[int, str]]:
        """Create numbered radar users and customers in one transaction, after the largest ids so far."""

        def numbered(count: int, name: str) -> Any:
            def rows(start: int) -> list[tuple[int, str, str]]:
                return [(start + n, f"{name}{start + n}", new_token()) for n in range(1, count + 1)]
            return rows

        made_users, made_customers = await self._writer.run(self.database.add_numbered_accounts(
            [("radar_user", numbered(users, "雷达用户")), ("customer", numbered(customers, "客户"))]
        ))
        return ({account_id: token for account_id, _, token in made_users},
                {account_id: token for account_id, _, token in made_customers})

    # -- accounts, as the server API changes them ----------------------------------

    async def save_accounts(self, kind: AccountKind, rows: list[dict[str, Any]]) -> list[Customer | RadarUser]:
        """Create or update every row's account (``{"id": ..., <fields>}``) in one transaction.

        A row's fields are set on an existing account and the rest left as they are; a new
        account needs a username and gets a random token unless one is given. Nothing is
        written unless every row can be (AccountRowInvalid names the first that cannot).
        """
        allowed = set(CUSTOMER_FIELDS if kind == "customer" else RADAR_USER_FIELDS)
        planned: list[accounts.AccountRow] = []
        for index, row in enumerate(rows):
            unknown = sorted(set(row) - allowed - {"id"})
            if unknown:
                raise AccountRowInvalid(index, unknown[0], "not a field of this kind of account")
            account_id = row.get("id")
            if not isinstance(account_id, int) or isinstance(account_id, bool) or account_id < 1:
                raise AccountRowInvalid(index, "id", "an account id is a positive integer")
            given = {name: value for name, value in row.items() if name != "id" and value is not None}
            planned.append((account_id, given, {"token": new_token(), **given} if "username" in given else None))
        saved = await self._run_script(accounts.save_accounts(kind, planned))
        cache = self._customers if kind == "customer" else self._radar_users
        for account_id, _, _ in planned:
            cache.drop(account_id)
        return saved

    async def rotate_token(self, kind: AccountKind, account_id: int, token: str | None = None) -> str | None:
        """A new token (random unless given), or None if there is no such account. Requests
        held with the old one are answered, on every process."""
        token = token or new_token()
        if not await self._run_script(accounts.set_token(kind, account_id, token, self._postgres)):
            return None
        self.account_changed(kind, account_id)
        return token

    async def set_disabled(self, kind: AccountKind, account_id: int, disabled: bool) -> Customer | RadarUser | None:
        """Disable (its requests are refused, its held ones answered on every process) or enable
        an account; None if there is no such account."""
        account = await self._run_script(accounts.set_disabled(kind, account_id, disabled, self._postgres))
        if account is not None:
            self.account_changed(kind, account_id)
        return account

    @property
    def _postgres(self) -> bool:
        return self.database.name == "postgresql"

    # -- tips ----------------------------------------------------------------------

    async def send_tip(
        self, customer_id: int, user_id: int, text: str, client_msg_id: str | None = None
    ) -> SendReceipt:
        """The server's own words in a conversation (send_type 3): stored and delivered to both
        sides like any message, but unread for neither and never the cause of a webhook.
        AccountMissing if the customer or the radar user does not exist."""
        if await self.customer(customer_id) is None:
            raise AccountMissing("customer", customer_id)
        if await self.radar_user(user_id) is None:
            raise AccountMissing("radar_user", user_id)
        return await self.send(customer_id, user_id, TIP, {"info_type": TEXT, "msg": text}, client_msg_id)

    # -- recall and typing ----------------------------------------------------------------

    async def recall(
        self, side: Side, customer_id: int, user_id: int, message_id: int, window_seconds: float,
        delete_files: Callable[[list[str]], Awaitable[None]],
    ) -> SendReceipt:
        """Take back ``side``'s message ``message_id`` of this conversation (storage/recall.py): its
        content goes, its attachment too, and a notice is appended; the notice's receipt. Within
        ``window_seconds`` of its sending only (0: recall is off); a message recalled before
        answers with its first notice. RecallRefused if it is not the sender's or is too old.
        """
        row = await self._one(recall.RECALLABLE, (message_id,))
        if row is None or (row[0], row[1], row[2]) != (customer_id, user_id, side.send_type):
            raise RecallRefused(message_id, "not_yours", "no message of yours in this conversation has this id")
        if row[4] is None:
            if window_seconds <= 0:
                raise RecallRefused(message_id, "off", "recall is turned off on this server (chat.recall_seconds = 0)")
            age = (datetime.now() - datetime.fromisoformat(row[3])).total_seconds()
            if age > window_seconds:
                raise RecallRefused(message_id, "too_late",
                                    f"a message can be recalled within {window_seconds:g} seconds of its sending; "
                                    f"this one was sent {age:.0f} seconds ago")
        files = [key for pair in await self._all(recall.ATTACHMENT_FILES, (message_id,)) for key in pair if key]
        notice = {"info_type": RECALL_NOTICE, "recalled_id": message_id, "recalled_by": side_name(side)}
        try:
            receipt = await self.send(customer_id, user_id, TIP, notice, recall.notice_key(message_id),
                                      recalls=message_id)
        except recall.RecallRaced:  # deleted (erasure, retention) between the check and the transaction
            raise RecallRefused(message_id, "not_yours", "no message of yours in this conversation has this id") from None
        if not receipt.duplicate:
            await self._run_script(recall.redact_previews(customer_id, user_id, message_id, message_time(row[3]) - 1))
            if files:
                await delete_files(files)
        return receipt

    def typing(self, customer_id: int, user_id: int, side: Side) -> None:
        """``side`` is typing in this conversation: the other side's held requests that asked for it
        are answered, here and (PostgreSQL) on every process. At most once a second per
        conversation and side: the rest cost a dictionary look-up and are dropped."""
        if self.waiters.typing(customer_id, user_id, side_name(side)):
            self.database.announce_typing(customer_id, user_id, side_name(side))

    # -- a customer's data: a copy, and erasure ---------------------------------------

    async def customer_export(self, customer_id: int) -> customer_data.CustomerExport | None:
        """Everything kept about a customer, to be read page by page; None if there is no such customer."""
        customer = await self.account("customer", customer_id)
        if not isinstance(customer, Customer):
            return None
        return customer_data.CustomerExport(self.database.fetch, customer)

    async def erase_customer(
        self, customer_id: int, delete_files: Callable[[list[str]], Awaitable[None]]
    ) -> dict[str, int]:
        """Remove everything kept about a customer, and the account; how many of each went.

        The account is disabled first (its held requests answered, on every process), then its
        messages go in batches sized by ``customer_data.Batches``, each its own transaction, so
        that sends keep committing in between; the last transaction takes the rest and the
        account. Files go from the media store once the records naming them are gone. Erasing
        a customer who is not there removes nothing and is no error.
        """
        removed = dict.fromkeys(customer_data.ERASED, 0)
        if await self._run_script(customer_data.disable(customer_id, self._postgres)):
            self.account_changed("customer", customer_id)
        batches = customer_data.Batches()
        while True:
            size, started = batches.size, time.perf_counter()
            batch = await self._run_script(customer_data.erase_messages(customer_id, size))
            batches.took(time.perf_counter() - started)
            await self._forget_files(batch, removed, delete_files)
            if batch.removed["messages"] < size:
                break
        for attempt in range(customer_data.FINAL_ATTEMPTS):
            try:
                rest = await self._run_script(customer_data.erase_rest(customer_id, self._postgres))
                break
            except Exception as error:  # a send of theirs committed a new conversation meanwhile: again
                if attempt + 1 == customer_data.FINAL_ATTEMPTS or not self.database.names_a_missing_account(error):
                    raise
        await self._forget_files(rest, removed, delete_files)
        self.account_changed("customer", customer_id)
        return removed

    @staticmethod
    async def _forget_files(
        erased: customer_data.Erased, removed: dict[str, int], delete_files: Callable[[list[str]], Awaitable[None]]
    ) -> None:
        for name, count in erased.removed.items():
            removed[name] += count
        if erased.files:
            await delete_files(erased.files)
            removed["files"] += len(erased.files)

    # -- retention -------------------------------------------------------------------

    async def expire_messages(self, created_before: str, limit: int) -> retention.Expired:
        """Delete up to ``limit`` of the oldest messages created before ``created_before`` (a local
        timestamp, as messages keep them) with their idempotency keys and attachment records."""
        expired: retention.Expired = await self._run_script(retention.expire_messages(created_before, limit))
        return expired

    async def expire_webhook_events(self, status: str, finished_before: float, limit: int) -> int:
        """Delete up to ``limit`` webhook events that ended (delivered or failed) before ``finished_before``."""
        count: int = await self._run_script(retention.expire_webhook_events(status, finished_before, limit))
        return count

    # -- sending ---------------------------------------------------------------

    async def send(
        self,
        customer_id: int,
        user_id: int,
        send_type: int,
        content: dict[str, Any],
        client_msg_id: str | None = None,
        attachment_id: str | None = None,
        recalls: int | None = None,
    ) -> SendReceipt:
        """Store a message durably; its conversation's waiters are woken once it is.

        A repeated ``client_msg_id`` from the same sender stores nothing and
        returns the receipt of the first send, so a client can retry blindly.
        ``attachment_id`` is claimed by the message in the same transaction:
        AttachmentUnavailable if it is not the sender's unclaimed upload for this
        conversation (a retry of a send that claimed it is a repeat, not a refusal).
        """
        outgoing = Outgoing(
            customer_id, user_id, send_type, ujson.dumps(content, ensure_ascii=False), local_timestamp(),
            client_msg_id, content, attachment_id, recalls,
        )
        try:
            receipt, _ = await self._writer.submit(Change.SEND, outgoing)
        except Exception as error:
            if self.database.names_a_missing_account(error):  # erased meanwhile
                raise AccountMissing("customer", customer_id) from None
            raise
        return receipt

    def _wake_waiters(self, changes: list[tuple[Change, Any, Any]]) -> None:
        """Right after COMMIT: hand the new messages to whoever waits for them in this
        process (as soon as the backend says nothing earlier can overtake them), so
        that a woken request need not read them back."""
        stored = [(sent, result) for kind, sent, result in changes
                  if kind is Change.SEND and not result[0].duplicate]
        from_customers = sum(1 for sent, _ in stored if sent.send_type == FROM_CUSTOMER)
        from_radar_users = sum(1 for sent, _ in stored if sent.send_type == FROM_RADAR_USER)
        if from_customers:  # one increment per commit and side, not per message
            MESSAGES_FROM_CUSTOMERS.inc(from_customers)
        if from_radar_users:
            MESSAGES_FROM_RADAR_USERS.inc(from_radar_users)
        handed = [(sent.customer_id, sent.user_id, self._as_message(sent, *result))
                  for sent, result in stored if self.waiters.awaited(sent.customer_id, sent.user_id)]
        if stored:  # even with nobody waiting here: on PostgreSQL the commit's doorbell waits for this
            self.database.hand_off(self.waiters, handed)

    def _as_message(self, sent: Outgoing, receipt: SendReceipt, is_first_info: bool) -> Message | None:
        """The just-committed message as a read would return it, from the cached accounts
        (the send's handler has just looked both up); None if one is not cached: the
        woken request then reads the message back."""
        customer = self._customers.get(sent.customer_id)
        user = self._radar_users.get(sent.user_id)
        if customer is None or user is None:
            return None
        return Message(
            id=receipt.id, customer_id=sent.customer_id, user_id=sent.user_id, send_type=sent.send_type,
            content=sent.content, created_at=receipt.created_at, is_first_info=is_first_info,
            read_by_customer=False, read_by_user=False, customer_name=customer.username,
            customer_headimgurl=customer.headimgurl, user_avatar=user.card_avatar,
        )

    # -- attachments -------------------------------------------------------------

    async def save_attachment(self, record: Attachment) -> None:
        """Record an upload, unclaimed, once its bytes are in the media store."""
        await self._run_script(media.save(record))

    async def attachment(self, attachment_id: str) -> Attachment | None:
        row = await self._one(media.ATTACHMENT_BY_ID, (attachment_id,))
        return None if row is None else media.attachment(row)

    async def server_key(self, name: str) -> str:
        """A secret made once for the whole deployment and kept in the database, so that every
        process and host shares it (the media URL key)."""
        row = await self._one(media.SERVER_KEY, (name,))  # every start but the first: a read, no commit
        if row is not None:
            return str(row[0])
        result: str = await self._run_script(media.server_key(name, secrets.token_hex(32)))
        return result

    async def take_unclaimed_attachments(self, created_before: float, limit: int) -> list[tuple[str, str | None]]:
        """Delete the records of up to ``limit`` old unclaimed uploads; their store keys, to delete next."""
        taken: list[tuple[str, str | None]] = await self._run_script(
            media.take_unclaimed(created_before, limit, self.database.name == "postgresql"))
        return taken

    async def attachment_usage(self) -> dict[str, dict[str, int]]:
        """Per kind (image, video): count and bytes of every upload, and of the unclaimed ones."""
        usage = {kind: {"count": 0, "bytes": 0, "unclaimed_count": 0, "unclaimed_bytes": 0} for kind in media.KINDS}
        for kind, claimed, count, size in await self._all(media.USAGE, ()):
            figures = usage[kind]
            figures["count"] += count
            figures["bytes"] += int(size)
            if not claimed:
                figures["unclaimed_count"] += count
                figures["unclaimed_bytes"] += int(size)
        return usage

    # -- messages ------------------------------------------------------------

    async def unread_messages(
        self, side: Side, user_id: int, customer_id: int | None, limit: int
    ) -> list[Message]:
        """The messages ``side`` has not yet received, oldest first.

        The customer receives both directions (its own sends echo back, as the
        original did); the radar user receives only the customer's messages.
        ``customer_id=None`` means the radar user's whole inbox.
        """
        await self._marks_settled(user_id, customer_id)
        if side is Side.CUSTOMER:
            return await self._messages(
                "c.customer_id = ? AND c.user_id = ? AND m.id > c.customer_read_id ORDER BY m.id LIMIT ?",
                (customer_id, user_id, limit),
            )
        where, params = self._radar_unread_filter(user_id, customer_id, delivered=True)
        return await self._messages(f"{where} ORDER BY m.id LIMIT ?", (*params, limit))

    async def messages_after(
        self, after_id: int, user_id: int, customer_id: int | None, limit: int
    ) -> list[Message]:
        """Every message after a client's resume cursor, whatever its read state."""
        await self._marks_settled(user_id, customer_id)
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

    async def messages_between(self, first_id: int, last_id: int) -> list[Message]:
        """Every message with an id from ``first_id`` to ``last_id``: what another process's
        commit rang for, read once for all the waiters it wakes here."""
        return await self._messages("m.id BETWEEN ? AND ? ORDER BY m.id", (first_id, last_id),
                                    source=_MESSAGE_FROM_CURSOR)

    async def unread_count(self, side: Side, user_id: int, customer_id: int | None) -> int:
        """How many of the other side's messages ``side`` has not read."""
        await self._marks_settled(user_id, customer_id)
        if side is Side.CUSTOMER:
            where = ("c.customer_id = ? AND c.user_id = ? AND m.id > c.customer_read_id AND m.send_type = ?"
                     " AND m.recalled_by IS NULL")
            params: tuple = (customer_id, user_id, FROM_RADAR_USER)
        else:
            where, params = self._radar_unread_filter(user_id, customer_id)
        (count,) = await self._aggregate(f"SELECT count(*) {_MESSAGE_FROM} WHERE {where}", params)
        return count

    @staticmethod
    def _radar_unread_filter(user_id: int, customer_id: int | None, delivered: bool = False) -> tuple[str, tuple]:
        """The radar user's unread messages: the customer's; ``delivered``: tips too, which are
        delivered to both sides but counted as unread by neither (nor is a recalled message)."""
        where = (
            "c.user_id = ? AND c.last_customer_message_id > c.user_read_id"
            f" AND m.id > c.user_read_id AND m.send_type {'<>' if delivered else '='} ?"
            + ("" if delivered else " AND m.recalled_by IS NULL")
        )
        params: tuple = (user_id, FROM_RADAR_USER if delivered else FROM_CUSTOMER)
        if customer_id is not None:
            where += " AND c.customer_id = ?"
            params += (customer_id,)
        return where, params

    def mark_delivered(self, side: Side, messages: list[Message]) -> None:
        """Delivered messages become read for ``side``: move its read positions past them.

        The write is queued, not awaited, and rides along with the next send's
        commit, so that a delivery neither waits for nor pays for a commit of
        its own; every read that depends on read positions has the queued marks
        it depends on committed first (``_marks_settled``), so nobody can
        observe the position before the move. A mark lost in a crash only means
        a message is delivered again.
        """
        positions: dict[tuple[int, int], int] = {}
        for message in messages:  # oldest first, so the last unread one per conversation wins
            if not message.read_by(side):
                positions[(message.customer_id, message.user_id)] = message.id
        if positions:
            self._queue_read_positions(side, positions)

    def _queue_read_positions(self, side: Side, positions: dict[tuple[int, int], int]) -> asyncio.Future:
        """Positions only move forward, so a late or repeated mark is harmless."""
        mark = self._writer.enqueue(Change.READ_POSITIONS, (side, positions), urgent=False)
        keys: list[int | tuple[int, int]] = [*positions, *{user_id for _, user_id in positions}]
        for key in keys:
            self._unsettled_marks.setdefault(key, set()).add(mark)

        def settled(done: asyncio.Future) -> None:
            for key in keys:
                marks = self._unsettled_marks.get(key)
                if marks is not None:
                    marks.discard(done)
                    if not marks:
                        del self._unsettled_marks[key]
            error = None if done.cancelled() else done.exception()
            if error is not None and not isinstance(error, StorageFailing):  # that one the writer logs
                count_error("read_positions")
                log.error("could not save read positions", exc_info=error)

        mark.add_done_callback(settled)
        return mark

    async def _marks_settled(self, user_id: int, customer_id: int | None = None) -> None:
        """Wait until every queued read-position move that a read of this conversation (or,
        without ``customer_id``, of the radar user's whole inbox) depends on is committed.

        Per conversation, not per radar user: a rep with thousands of customers has a
        mark queued almost always, and a customer's getmsg would otherwise wait for a
        commit every time (bench/README.md: cross-process p50 11.6 ms -> see the figures).
        """
        marks = self._unsettled_marks.get(user_id if customer_id is None else (customer_id, user_id))
        if marks:
            self._writer.hurry()
            await asyncio.wait(list(marks))

    async def read_history(
        self, side: Side, customer_id: int, user_id: int, offset: int, limit: int
    ) -> HistoryPage:
        """One page of a conversation, cut newest-first and returned oldest-first.

        Opening the history marks the whole conversation read for ``side``.
        """
        await self._marks_settled(user_id, customer_id)
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
            "  AND x.user_id = c.user_id AND x.id > c.user_read_id AND x.send_type = ? AND x.recalled_by IS NULL)"
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
