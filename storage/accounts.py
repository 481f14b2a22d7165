"""Recently read accounts, kept for a few seconds.

Every request is signed, so without this each one would begin with a database
read for the signer's token, and most with a second for the account it names.
Changes made through this process drop the entry at once; changes made by
another process (the CLI syncing accounts) take effect within ``ttl`` seconds.
Unknown ids are never cached, so a new account works on its first request.
"""
from __future__ import annotations

import time
from typing import Generic, TypeVar

Account = TypeVar("Account")


class AccountCache(Generic[Account]):
    def __init__(self, ttl: float, max_entries: int = 100_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[int, tuple[float, Account]] = {}

    def get(self, account_id: int) -> Account | None:
        entry = self._entries.get(account_id)
        if entry is None:
            return None
        expires, account = entry
        if expires < time.monotonic():
            del self._entries[account_id]
            return None
        return account

    def put(self, account_id: int, account: Account) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # crude, but bounded; entries come back on the next read
        self._entries[account_id] = (time.monotonic() + self.ttl, account)

    def drop(self, account_id: int) -> None:
        self._entries.pop(account_id, None)
