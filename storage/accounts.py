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
works on its first request.
"""
from __future__ import annotations

from typing import Generic, TypeVar

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
