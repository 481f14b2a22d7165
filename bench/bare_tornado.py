#!/usr/bin/env python3
"""The yardstick: a bare Tornado app answering a fixed envelope to GET and POST.

bench/throughput.py runs it beside leida-chat with the same load tool, so that
leida-chat's rates are read as a fraction of what Tornado itself does here.
bench/floor.py uses its bare long-poll: ``GET /bare/wait?key=K`` is held until
``POST /bare/send`` with ``key=K`` arrives, then both get the fixed envelope
(no signature, no storage, no parsing beyond Tornado's own): the least a
Tornado server can spend on one delivered message. With ``durable`` (floor.py
``--durable``) each send is also stored the plainest way a Tornado app can do
it without blocking its loop: one aiosqlite INSERT and commit into a WAL file
with ``synchronous = FULL``, before either answer. That is the floor with the
durable write leida-chat's contract asks for, and none of its other work.
"""
from __future__ import annotations

import asyncio
import sys
from typing import Any

import tornado.web

BODY = b'{"code":200,"msg":"ok","data":{}}'


class Bare(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.write(BODY)

    def post(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.write(BODY)


#: key -> the held request's future
HELD: dict[bytes, asyncio.Future] = {}


class BareWait(tornado.web.RequestHandler):
    async def get(self) -> None:
        key = self.get_query_argument("key").encode()
        future = HELD[key] = asyncio.get_running_loop().create_future()
        await future
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.write(BODY)

    def on_connection_close(self) -> None:
        pass


class BareSend(tornado.web.RequestHandler):
    def post(self) -> None:
        future: Any = HELD.pop(self.get_body_argument("key").encode(), None)
        if future is not None and not future.done():
            future.set_result(None)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.write(BODY)


#: the durable variant's database (aiosqlite), opened by main
DATABASE: Any = None


class DurableSend(BareSend):
    """BareSend, once the send is stored: one INSERT and its commit on aiosqlite's thread."""

    async def post(self) -> None:  # type: ignore[override]
        await DATABASE.execute("INSERT INTO message (key, body) VALUES (?, ?)", (self.get_body_argument("key"), BODY))
        await DATABASE.commit()
        super().post()


async def open_database(path: str) -> Any:
    import aiosqlite

    database = await aiosqlite.connect(path)
    await database.execute("PRAGMA journal_mode = WAL")
    await database.execute("PRAGMA synchronous = FULL")
    await database.execute("CREATE TABLE IF NOT EXISTS message (id INTEGER PRIMARY KEY, key TEXT, body BLOB)")
    await database.commit()
    return database


async def main(port: int, database_path: str | None) -> None:
    global DATABASE
    send: type[BareSend] = BareSend
    if database_path is not None:
        DATABASE, send = await open_database(database_path), DurableSend
    app = tornado.web.Application([(r"/bare/wait", BareWait), (r"/bare/send", send), (r"/.*", Bare)],
                                  log_function=lambda handler: None)
    app.listen(port, "127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    # argv: PORT [asyncio|uvloop [DATABASE]] -- the same event loop as the server it is compared with;
    # a DATABASE file makes every send durable there first
    loop_factory = None
    if len(sys.argv) > 2 and sys.argv[2] == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main(int(sys.argv[1]), sys.argv[3] if len(sys.argv) > 3 else None))
