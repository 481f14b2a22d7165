"""Who is waiting for which conversation.

A held getmsg registers a future under the keys it cares about: one
conversation, or a radar user's whole inbox. A committed message resolves only
the futures under its own two keys, so a send costs the same whether ten or
ten thousand other requests are held.
"""
from __future__ import annotations

import asyncio
from collections.abc import Iterable

WaitKey = tuple


def conversation_key(customer_id: int, user_id: int) -> WaitKey:
    return ("conversation", customer_id, user_id)


def inbox_key(user_id: int) -> WaitKey:
    return ("inbox", user_id)


class Waiters:
    def __init__(self) -> None:
        self._by_key: dict[WaitKey, set[asyncio.Future]] = {}
        self.closed = False

    def __len__(self) -> int:
        return sum(len(futures) for futures in self._by_key.values())

    def register(self, keys: Iterable[WaitKey]) -> asyncio.Future:
        """A future resolved by the next message under any of ``keys``."""
        future = asyncio.get_running_loop().create_future()
        if self.closed:
            future.set_result(None)
            return future
        for key in keys:
            self._by_key.setdefault(key, set()).add(future)
        return future

    def discard(self, keys: Iterable[WaitKey], future: asyncio.Future) -> None:
        for key in keys:
            futures = self._by_key.get(key)
            if futures is not None:
                futures.discard(future)
                if not futures:
                    del self._by_key[key]

    def notify(self, customer_id: int, user_id: int) -> None:
        """Wake the waiters of one conversation and of its radar user's inbox."""
        for key in (conversation_key(customer_id, user_id), inbox_key(user_id)):
            for future in self._by_key.pop(key, ()):
                if not future.done():
                    future.set_result(None)

    def close(self) -> None:
        """Wake everyone and refuse new waits: the server is stopping."""
        self.closed = True
        for futures in self._by_key.values():
            for future in futures:
                if not future.done():
                    future.set_result(None)
        self._by_key.clear()
