"""GET /healthz and GET /readyz: unsigned probes for supervisors and load balancers.

``/healthz`` answers 200 as long as the process answers at all. ``/readyz``
answers 200 only when a send could succeed now: the database reads, the writer
runs, and the disk took the last commit; otherwise 503, with the reason in
``data``, so a balancer sends traffic elsewhere until it is ready again. Out
of file descriptors it is not ready either, until none has been refused for a
few seconds (handlers/accepting.py): new connections wait in the kernel's
backlog meanwhile, and a probe that gets through (on a kept-alive connection,
or when a descriptor was free) hears why.
"""
from __future__ import annotations

from .accepting import DESCRIPTOR_SHORTAGE
from .base import ApiHandler


class HealthHandler(ApiHandler):
    """GET /healthz: alive."""

    def get(self) -> None:
        self.reply("ok", {})


class ReadyHandler(ApiHandler):
    """GET /readyz: ready for sends, or 503 and why not."""

    async def get(self) -> None:
        problem = DESCRIPTOR_SHORTAGE.problem() or await self.store.readiness_problem()
        if problem is not None:
            self.set_header("Retry-After", 2)
            self.set_status(503)
            self.reply("not ready", {"reason": problem}, code=503)
            return
        self.reply("ready", {})

