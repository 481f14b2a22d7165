#!/usr/bin/env python3
"""The yardstick: a bare Tornado app answering a fixed envelope to GET and POST.

bench/throughput.py runs it beside leida-chat with the same load tool, so that
leida-chat's rates are read as a fraction of what Tornado itself does here.
"""
from __future__ import annotations

import asyncio
import sys

import tornado.web

BODY = b'{"code":200,"msg":"ok","data":{}}'


class Bare(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.write(BODY)

    def post(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.write(BODY)


async def main(port: int) -> None:
    app = tornado.web.Application([(r"/.*", Bare)], log_function=lambda handler: None)
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
