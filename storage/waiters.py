"""Who is waiting for which conversation, and handing them what was committed.

A held getmsg registers a future under one key: its conversation, or a radar
user's whole inbox. A committed message resolves only the futures under its own
two keys, so a send costs the same whether ten or ten thousand other requests
are held. The future's result is a ``Handed``: the messages of that key
committed in one transaction (the writer hands them over as soon as COMMIT
returns, before it answers the senders), so a woken request need not read them
back, and when they were committed, for the delivery-latency metric. ``None``
means "look for yourself" (the server is stopping, or the wait timed out).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .records import Message

WaitKey = tuple
#: a message committed in one transaction, under its conversation: (customer_id, user_id, message);
#: message None means "read it back" (it could not be built, or it may have been overtaken)
Committed = tuple[int, int, "Message | None"]

#: what a held request is handed when a newer one of the same account took its place
SUPERSEDED = "superseded"
#: what a held request is handed when its account was disabled, erased or given a new token
ACCOUNT_ENDED = "account ended"
#: a conversation and side wake the other side's typing waiters at most this often
TYPING_SECONDS = 1.0
#: how many conversations' last typing wake-ups are remembered before the stale ones are forgotten
TYPING_REMEMBERED = 10_000


class Typing(NamedTuple):
    """What a held request that asked for typing (``typing=1``) is handed: who is typing where."""

    customer_id: int
    user_id: int
    #: the side that is typing: "customer" or "radar_user"
    side: str


def typing_keys(customer_id: int | None, user_id: int, listener: str) -> tuple[WaitKey, ...]:
    """The keys a held request that wants to know when the other side types registers under:
    its conversation's, for its own side (``listener``), or a radar user's whole inbox."""
    if customer_id is None:
        return (("typing-inbox", user_id),)
    return (("typing", customer_id, user_id, listener),)


class Handed(NamedTuple):
    """What a commit hands a held request."""

    #: ``time.perf_counter()`` just after COMMIT returned
    committed_at: float
    #: the new messages of the request's key; None if one could not be built (read them instead)
    messages: list[Message] | None


def conversation_key(customer_id: int, user_id: int) -> WaitKey:
    return ("conversation", customer_id, user_id)


def inbox_key(user_id: int) -> WaitKey:
    return ("inbox", user_id)


class Waiters:
    def __init__(self) -> None:
        self._by_key: dict[WaitKey, set[asyncio.Future]] = {}
        self._held_by: dict[object, dict[asyncio.Future, None]] = {}  # account -> its held waits, oldest first
        self._count = 0
        self.closed = False
        #: (customer_id, user_id, side) -> when it last woke anyone (loop time)
        self._typed_at: dict[tuple[int, int, str], float] = {}

    def __len__(self) -> int:
        """How many requests are held right now."""
        return self._count

    def register(self, keys: Iterable[WaitKey]) -> asyncio.Future:
        """A future resolved by the next messages under any of ``keys``.

        Every register is paired with one ``discard`` once the wait is over.
        """
        future = asyncio.get_running_loop().create_future()
        self._count += 1
        if self.closed:
            future.set_result(None)
            return future
        for key in keys:
            self._by_key.setdefault(key, set()).add(future)
        return future

    def hold(self, account: object, future: asyncio.Future, limit: int) -> None:
        """``future`` is about to be waited on for ``account``. Past ``limit`` held
        waits of one account (tabs, devices, a runaway loop), the oldest is answered
        now with ``SUPERSEDED`` rather than refusing the newest: the newest is the
        page the person is looking at."""
        held = self._held_by.setdefault(account, {})
        held[future] = None
        while len(held) > limit:
            oldest = next(iter(held))
            del held[oldest]
            if not oldest.done():
                oldest.set_result(SUPERSEDED)

    def end_account(self, account: object) -> int:
        """Answer every held wait of ``account`` with ``ACCOUNT_ENDED``; how many there were."""
        ended = 0
        for future in list(self._held_by.get(account, ())):
            if not future.done():
                future.set_result(ACCOUNT_ENDED)
                ended += 1
        return ended

    def discard(self, keys: Iterable[WaitKey], future: asyncio.Future, account: object = None) -> None:
        """The wait on ``future`` is over, whatever ended it."""
        held = self._held_by.get(account)
        if held is not None:
            held.pop(future, None)
            if not held:
                del self._held_by[account]
        self._count -= 1
        for key in keys:
            futures = self._by_key.get(key)
            if futures is not None:
                futures.discard(future)
                if not futures:
                    del self._by_key[key]

    def awaited(self, customer_id: int, user_id: int) -> bool:
        """Whether anyone waits for this conversation (itself or its radar user's inbox)."""
        return conversation_key(customer_id, user_id) in self._by_key or inbox_key(user_id) in self._by_key

    def notify(self, committed: Iterable[Committed]) -> None:
        """Messages (customer_id, user_id, message) were committed together: wake the
        waiters of their conversations and of their radar users' inboxes."""
        committed = list(committed)
        self.hand(self.claim((customer_id, user_id) for customer_id, user_id, _ in committed), committed)

    def claim(self, pairs: Iterable[tuple[int, int]]) -> dict[WaitKey, list[asyncio.Future]]:
        """Who waits now for these conversations, or for their radar users' inboxes. A
        read started after this is handed to them only: a request that registers
        later reads for itself, and sees at least as much."""
        claimed: dict[WaitKey, list[asyncio.Future]] = {}
        for customer_id, user_id in pairs:
            for key in (conversation_key(customer_id, user_id), inbox_key(user_id)):
                if key not in claimed and key in self._by_key:
                    claimed[key] = list(self._by_key[key])
        return claimed

    def hand(self, claimed: dict[WaitKey, list[asyncio.Future]], committed: Iterable[Committed]) -> None:
        """Wake each claimed waiter with the messages of its key (read back if one is None)."""
        news: dict[WaitKey, list[Message | None]] = {key: [] for key in claimed}
        for customer_id, user_id, message in committed:
            for key in (conversation_key(customer_id, user_id), inbox_key(user_id)):
                if key in news:
                    news[key].append(message)
        committed_at = time.perf_counter()
        for key, futures in claimed.items():
            messages = news[key]
            built = [message for message in messages if message is not None]
            payload = Handed(committed_at, built if len(built) == len(messages) else None)
            for future in futures:
                if not future.done():
                    future.set_result(payload)

    def typing(self, customer_id: int, user_id: int, side: str) -> bool:
        """``side`` types in this conversation: answer the other side's typing waiters (its held
        request for the conversation, and a radar user's inbox request). False, and nothing
        done, if this conversation and side did so less than TYPING_SECONDS ago."""
        now = asyncio.get_running_loop().time()
        key = (customer_id, user_id, side)
        if now - self._typed_at.get(key, -TYPING_SECONDS) < TYPING_SECONDS:
            return False
        if len(self._typed_at) >= TYPING_REMEMBERED:
            self._typed_at = {seen: at for seen, at in self._typed_at.items() if now - at < TYPING_SECONDS}
        self._typed_at[key] = now
        listener = "radar_user" if side == "customer" else "customer"
        keys = list(typing_keys(customer_id, user_id, listener))
        if side == "customer":
            keys += typing_keys(None, user_id, listener)
        news = Typing(customer_id, user_id, side)
        for wait_key in keys:
            for future in self._by_key.get(wait_key, ()):
                if not future.done():
                    future.set_result(news)
        return True

    def wake_all(self) -> None:
        """Every held request reads again: what woke them may have been missed."""
        for futures in self._by_key.values():
            for future in futures:
                if not future.done():
                    future.set_result(None)
        self._by_key.clear()

    def close(self) -> None:
        """Wake everyone and refuse new waits: the server is stopping."""
        self.closed = True
        self.wake_all()
