#!/usr/bin/env python3
"""The yardstick: a bare Tornado app answering a fixed envelope to GET and POST.

bench/throughput.py runs it beside leida-chat with the same load tool, so that
leida-chat's rates are read as a fraction of what Tornado itself does here.
bench/floor.py uses its bare long-poll: ``GET /bare/wait?key=K`` is held until
``POST /bare/send`` with ``key=K`` arrives, then both get the fixed envelope
(no signature, no storage, no parsing beyond Tornado's own): the least a
Tornado server can spend on one delivered message.
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


async def main(port: int) -> None:
    app = tornado.web.Application([(r"/bare/wait", BareWait), (r"/bare/send", BareSend), (r"/.*", Bare)],
                                  log_function=lambda handler: None)
    app.listen(port, "127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    # argv: PORT [asyncio|uvloop] -- the same event loop as the server it is compared with
    loop_factory = None
    if len(sys.argv) > 2 and sys.argv[2] == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main(int(sys.argv[1])))
