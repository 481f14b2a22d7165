"""Holding a getmsg until its conversation has something new.

The shape is tornado's chat demo: the waiting future is kept on the handler
and cancelled in ``on_connection_close``. Unlike the demo's one global
condition, a handler registers only under its own conversation (or inbox) key,
so a message wakes only the requests that care about it, and every wait ends
by its deadline. The waiter is registered *before* the first read, so a message
committed between that read and the wait still wakes it.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from storage import Message, WaitKey

from .base import SignedHandler


class LongPollHandler(SignedHandler):
    _waiting: asyncio.Future | None = None

    async def hold_until_new(
        self, keys: tuple[WaitKey, ...], fetch: Callable[[], Awaitable[list[Message]]], wait: float
    ) -> list[Message] | None:
        """What ``fetch`` finds as soon as it finds something, or [] once ``wait`` passes.

        None means the client went away: the caller must then mark nothing read.
        """
        waiters = self.store.waiters
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            future = self._waiting = waiters.register(keys)
            try:
                messages = await fetch()
                remaining = deadline - loop.time()
                if messages or remaining <= 0 or waiters.closed:
                    break
                await asyncio.wait((future,), timeout=remaining)
                if future.cancelled():
                    return None
            finally:
                waiters.discard(keys, future)
                self._waiting = None
        if self.client_gone():
            return None
        return messages

    def client_gone(self) -> bool:
        stream = self.request.connection.stream  # type: ignore[attr-defined]
        return stream is None or stream.closed()

    def on_connection_close(self) -> None:
        if self._waiting is not None:
            self._waiting.cancel()
        super().on_connection_close()
