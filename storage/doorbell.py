"""The doorbells of the PostgreSQL backend, and the listener that hands them over in commit order.

A transaction that stores messages rings a doorbell: ``NOTIFY leida_chat``
(``doorbells``) naming its conversations and the ids of their new messages,
which PostgreSQL delivers on COMMIT, in commit order. Each process LISTENs on
a connection of its own (``Listener``) and wakes its local waiters of those
conversations, with the messages read once for all of them.

Order is the point. A client handed message 102 resumes from ``last_id=102``
and never asks for 101 again, so nothing may be handed before what was
committed first: the doorbells of other processes and this process's own
hand-offs (``Listener.hand_off``) take their turns in the order the doorbells
rang, each behind the reads of the earlier ones. storage/postgres.py writes
the messages and rings; its module docstring tells the whole story.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from .accounts import ACCOUNT_CHANNEL
from .metrics import count_error
from .outgoing import Pair
from .records import Message
from .waiters import Committed, Waiters

log = logging.getLogger("leida_chat.storage")

#: the channel of message doorbells, which every process LISTENs on
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

#: the read the listener makes for a doorbell: every message with an id from first to last
MessagesBetween = Callable[[int, int], Awaitable[list[Message]]]
#: where "someone is typing" travels between processes (``"customer_id:user_id:side"``): apart from
#: CHANNEL, so that it never takes a turn in the doorbells' order, and nothing of it is stored
TYPING_CHANNEL = "leida_typing"
#: what the listener calls for an account named on ACCOUNT_CHANNEL (``"customer:5"``): every
#: process drops it from its cache and answers its held requests. Apart from CHANNEL, so that
#: it never takes a turn in the doorbells' order.
AccountChanged = Callable[[str, int], None]
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


def _reason(error: BaseException) -> str:
    """What went wrong, in words (an OSError by its errno: asyncio and uvloop word the rest differently)."""
    if isinstance(error, OSError) and error.errno:
        return os.strerror(error.errno)
    return str(error) or type(error).__name__


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

    def __init__(self, url: str, origin: str, waiters: Waiters, messages_between: MessagesBetween,
                 account_changed: AccountChanged | None = None) -> None:
        self.url = url
        self.origin = origin
        self.waiters = waiters
        self._messages_between = messages_between
        self._account_changed = account_changed
        self._conn: asyncpg.Connection | None = None
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
        await conn.add_listener(ACCOUNT_CHANNEL, self._account_named)
        await conn.add_listener(TYPING_CHANNEL, self._typing_named)
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

    def _typing_named(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        customer_id, user_id, side = (str(payload).split(":") + ["", "", ""])[:3]
        if customer_id.isdigit() and user_id.isdigit() and side in ("customer", "radar_user"):
            self.waiters.typing(int(customer_id), int(user_id), side)

    def _account_named(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        kind, _, account_id = str(payload).partition(":")
        if self._account_changed is not None and account_id.isdigit():
            self._account_changed(kind, int(account_id))

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
