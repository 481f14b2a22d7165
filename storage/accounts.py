"""Accounts kept in memory until one changes.

Every request is signed, so without this each one would begin with a database
read for the signer's token, and most with a second for the account it names;
and on a database that commits all the time such a read is never cheap (each
commit empties the reading connection's page cache). Changes made through this
process drop their entry at once. Changes made by another process (the CLI
syncing accounts) move the ``account_change`` counter that the schema's
triggers keep; the store looks at that counter at most once every
``auth.account_cache_seconds`` and empties the cache when it has moved, so
such a change takes effect within that time (0: nothing is cached). Unknown ids are never cached, so a new account
works on its first request. An account the server API disables, erases or gives a
new token is announced to every process at once (``ACCOUNT_CHANNEL``).

The server API's account changes are below, written once for both backends.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from .outbox import Script
from .records import ACCOUNT_FIELDS, AccountKind, AccountRowInvalid, Customer, RadarUser

Account = TypeVar("Account")


class AccountCache(Generic[Account]):
    def __init__(self, enabled: bool = True, max_entries: int = 100_000) -> None:
        self.enabled = enabled
        self.max_entries = max_entries
        self._entries: dict[int, Account] = {}

    def get(self, account_id: int) -> Account | None:
        return self._entries.get(account_id)

    def put(self, account_id: int, account: Account) -> None:
        if not self.enabled:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # crude, but bounded; entries come back on the next read
        self._entries[account_id] = account

    def drop(self, account_id: int) -> None:
        self._entries.pop(account_id, None)

    def clear(self) -> None:
        self._entries.clear()


# -- changes made through the server API ------------------------------------------------
# Outbox-style scripts (storage/outbox.py): ``?`` placeholders, run in one of the
# writer's transactions on either backend. ``kind`` is a table name from
# ACCOUNT_FIELDS, never a client's string.

#: where every process hears of an account that was disabled, erased or given a new token
#: (PostgreSQL: storage/doorbell.py LISTENs on it; SQLite serves one process and needs none)
ACCOUNT_CHANNEL = "leida_account"


def account_columns(kind: AccountKind) -> str:
    return ", ".join(("id", *ACCOUNT_FIELDS[kind], "disabled"))


def select_account(kind: AccountKind) -> str:
    return f"SELECT {account_columns(kind)} FROM {_table(kind)} WHERE id = ?"


def account_record(kind: AccountKind, row: Sequence[Any]) -> Customer | RadarUser:
    """A row of ``account_columns`` as its record."""
    values: list[Any] = [*row[:-1], bool(row[-1])]
    return Customer(*values) if kind == "customer" else RadarUser(*values)


def _table(kind: str) -> str:
    if kind not in ACCOUNT_FIELDS:
        raise ValueError(f"no kind of account {kind!r}")
    return kind


def announce(kind: AccountKind, account_id: int, postgres: bool) -> Script[None]:
    """Tell every other process, at COMMIT, to forget the account and end its held requests."""
    if postgres:
        yield ("SELECT pg_notify(?, ?)", (ACCOUNT_CHANNEL, f"{kind}:{account_id}"))


#: one row of a bulk change: (id, the fields to set, the whole row if it is new (None: no username))
AccountRow = tuple[int, dict[str, str], "dict[str, str] | None"]


def save_accounts(kind: AccountKind, rows: list[AccountRow]) -> Script[list[Customer | RadarUser]]:
    """Each row updates its account's given fields, or makes the account; all or nothing.

    An id that exists keeps whatever the row leaves out (its token too), so the same
    call twice leaves the same accounts behind.
    """
    table = _table(kind)
    for index, (account_id, given, new_row) in enumerate(rows):
        existing = yield (f"SELECT 1 FROM {table} WHERE id = ?", (account_id,))
        if existing:
            if given:
                assignments = ", ".join(f"{name} = ?" for name in given)
                yield (f"UPDATE {table} SET {assignments} WHERE id = ?", (*given.values(), account_id))
            continue
        if new_row is None:
            raise AccountRowInvalid(index, "username", f"{kind} {account_id} does not exist, and a new account needs a username")
        row = {"id": account_id, **new_row}
        yield (f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
    saved: dict[int, Customer | RadarUser] = {}
    ids = list(dict.fromkeys(account_id for account_id, _, _ in rows))
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        found = yield (f"SELECT {account_columns(kind)} FROM {table} WHERE id IN ({', '.join('?' * len(chunk))})",
                       tuple(chunk))
        saved.update((row[0], account_record(kind, row)) for row in found)
    return [saved[account_id] for account_id, _, _ in rows]


def set_disabled(kind: AccountKind, account_id: int, disabled: bool, postgres: bool) -> Script[Customer | RadarUser | None]:
    found = yield (f"UPDATE {_table(kind)} SET disabled = ? WHERE id = ? RETURNING {account_columns(kind)}",
                   (int(disabled), account_id))
    if not found:
        return None
    yield from announce(kind, account_id, postgres)
    return account_record(kind, found[0])


def set_token(kind: AccountKind, account_id: int, token: str, postgres: bool) -> Script[bool]:
    found = yield (f"UPDATE {_table(kind)} SET token = ? WHERE id = ? RETURNING id", (token, account_id))
    if not found:
        return False
    yield from announce(kind, account_id, postgres)
    return True
