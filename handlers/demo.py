"""Demo mode: the two demo pages and the accounts they sign with.

Only routed when ``demo = true`` (the shipped local config; never in
production), and ``/demo/accounts.json`` answers only requests from this
machine: it hands out tokens, which is the whole point of a demo and exactly
what must never happen on a public server.
"""
from __future__ import annotations

import ipaddress

from tornado.web import HTTPError

from .base import ApiHandler

#: customers listed for the demo pages to choose from
DEMO_CUSTOMERS = 20


def from_this_machine(remote_ip: str | None) -> bool:
    try:
        return ipaddress.ip_address(remote_ip or "").is_loopback
    except ValueError:
        return False


class DemoAccountsHandler(ApiHandler):
    """GET /demo/accounts.json: the first radar user and customers, with their tokens."""

    def prepare(self) -> None:
        super().prepare()
        if not from_this_machine(self.request.remote_ip):
            raise HTTPError(404)

    async def get(self) -> None:
        user, customers = await self.store.first_accounts(DEMO_CUSTOMERS)
        if user is None:
            raise HTTPError(404, "no radar user: run `python leida_chat.py demo`")
        self.finish({
            "radar_user": {"id": user.id, "token": user.token, "name": user.username, "avatar": user.card_avatar},
            "customers": [
                {"id": c.id, "token": c.token, "name": c.username, "avatar": c.headimgurl} for c in customers
            ],
        })
