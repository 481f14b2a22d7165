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
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tornado.web import HTTPError

from storage import (
    ACCOUNT_ENDED,
    FROM_RADAR_USER,
    SUPERSEDED,
    Handed,
    Message,
    Side,
    StorageFailing,
    Typing,
    WaitKey,
    conversation_key,
    inbox_key,
    typing_keys,
)
from storage.records import side_name

from .base import SignedHandler
from .errors import SignatureRejected
from .metrics import DELIVERY_LATENCY, count_error
from .params import Params


class LongPollHandler(SignedHandler):
    """getmsg, for either side: hold, deliver, mark delivered messages read."""

    _waiting: asyncio.Future | None = None
    #: when the messages that woke this request were committed (perf_counter), if a commit woke it
    _committed_at: float | None = None
    #: who was typing, if that is what answered this request (it asked with ``typing=1``)
    _typing: Typing | None = None

    def read_poll(self, query: Params) -> tuple[float, int | None]:
        """``wait`` (capped) and the ``last_id`` resume cursor."""
        wait = query.seconds("wait", default=self.api.longpoll_timeout, cap=self.api.longpoll_max_timeout)
        return wait, query.integer("last_id", minimum=0)

    def read_typing(self, query: Params) -> bool:
        """``typing=1``: answer at once, with no messages, when the other side types. Old pages do
        not ask, and are never woken for it."""
        return query.integer("typing", default=0, minimum=0, maximum=1) == 1

    async def answer_getmsg(
        self,
        side: Side,
        user_id: int,
        customer_id: int | None,
        last_id: int | None,
        wait: float,
        render: Callable[[Message], dict[str, Any]],
        typing: bool = False,
    ) -> None:
        """Without ``last_id`` the side's read position decides what is new; with it, the client.

        ``customer_id=None`` is the radar user's whole inbox. ``typing``: the other side's typing
        answers the request too, with no messages and ``typing`` beside ``ret_data``.
        """
        limit = self.api.getmsg_max_items
        key = inbox_key(user_id) if customer_id is None else conversation_key(customer_id, user_id)
        keys = (key, *typing_keys(customer_id, user_id, side_name(side))) if typing else (key,)

        def fetch() -> Awaitable[list[Message]]:
            if last_id is None:
                return self.store.unread_messages(side, user_id, customer_id, limit)
            return self.store.messages_after(last_id, user_id, customer_id, limit)

        def wanted(message: Message) -> bool:
            if last_id is not None:
                return message.id > last_id
            # without a cursor the radar user receives the customer's messages and tips, not their own
            return side is Side.CUSTOMER or message.send_type != FROM_RADAR_USER

        messages = await self.hold_until_new(keys, fetch, wanted, wait)
        if messages is None:
            return
        del messages[limit:]
        self.store.mark_delivered(side, messages)
        data: dict[str, Any] = {"ret_data": [render(message) for message in messages], "data_count": len(messages)}
        if self._typing is not None:
            data["typing"] = self._typing._asdict()
        self.reply("实时获取-最新聊天信息成功" if messages else "没有得到实时聊天信息", data)
        if messages and self._committed_at is not None:
            DELIVERY_LATENCY.observe(time.perf_counter() - self._committed_at)

    async def hold_until_new(
        self,
        keys: tuple[WaitKey, ...],
        fetch: Callable[[], Awaitable[list[Message]]],
        wanted: Callable[[Message], bool],
        wait: float,
    ) -> list[Message] | None:
        """What ``fetch`` finds as soon as it finds something, or [] once ``wait`` passes.

        A woken request takes the ``wanted`` messages it was handed instead of
        reading them back. None means the client went away: the caller must
        then mark nothing read. A read that fails once the request was held
        (the database restarting) answers it with nothing new: the client polls
        again with its cursor, and loses nothing.
        """
        waiters = self.store.waiters
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        held = False
        while True:
            future = self._waiting = waiters.register(keys)
            try:
                try:
                    messages = await fetch()
                except StorageFailing:
                    if not held:
                        raise  # nothing was held yet: a 503, and the client tries again
                    messages = []  # the database went away while this was held: "nothing new", never an error
                    break
                remaining = deadline - loop.time()
                if messages or remaining <= 0 or waiters.closed:
                    break
                if len(waiters) > self.api.max_waiters:
                    count_error("overloaded")
                    raise HTTPError(503, "longpoll.max_waiters reached")
                waiters.hold(self.account_key, future, self.api.max_waiters_per_account)
                held = True
                # Awaited directly (not through asyncio.wait): one loop iteration
                # fewer between the commit and the answer.
                timer = loop.call_later(remaining, _look_again, future)
                try:
                    handed = await future
                finally:
                    timer.cancel()
                if handed is CLIENT_GONE:
                    return None
                if handed is ACCOUNT_ENDED:  # disabled, erased or given a new token meanwhile
                    raise SignatureRejected()
                if handed is SUPERSEDED:
                    messages = []
                    break
                if isinstance(handed, Typing):
                    self._typing = handed
                    messages = []
                    break
                if isinstance(handed, Handed):
                    self._committed_at = handed.committed_at
                    if handed.messages is not None:
                        messages = [message for message in handed.messages if wanted(message)]
                        if messages:
                            break
            finally:
                waiters.discard(keys, future, self.account_key)
                self._waiting = None
        if self.client_gone():
            return None
        return messages

    def client_gone(self) -> bool:
        stream = getattr(self.request.connection, "stream", None)  # an HTTP1Connection's; None once detached
        return stream is None or stream.closed()

    def on_connection_close(self) -> None:
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_result(CLIENT_GONE)
        super().on_connection_close()


#: what a held wait is handed when its client disconnects
CLIENT_GONE = "client gone"


def _look_again(future: asyncio.Future) -> None:
    """The wait is over: the request reads once more, then answers with whatever it finds."""
    if not future.done():
        future.set_result(None)
