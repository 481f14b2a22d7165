"""Demo mode: the two demo pages and the accounts they sign with.

Only routed in demo mode (``leida_chat.py demo``; never in production), and
``/demo/accounts.json`` hands out tokens, which is the whole point of a demo and
exactly what must never happen to a real account. So it lists only the accounts
the demo seeded itself, and answers only a request from this machine that no
proxy forwarded: behind a same-host proxy every request comes from 127.0.0.1.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from tornado.web import HTTPError

from .base import ApiHandler

#: customers listed for the demo pages to choose from
DEMO_CUSTOMERS = 20


#: headers a proxy adds: a request carrying any of them came from elsewhere, whatever its peer address
PROXY_HEADERS = ("X-Forwarded-For", "X-Real-IP", "Forwarded")


def from_this_machine(remote_ip: str | None, headers: Mapping[str, str] | None = None) -> bool:
    if headers is not None and any(name in headers for name in PROXY_HEADERS):
        return False
    try:
        return ipaddress.ip_address(remote_ip or "").is_loopback
    except ValueError:
        return False


class DemoAccountsHandler(ApiHandler):
    """GET /demo/accounts.json: the demo's radar user and customers, with their tokens."""

    def prepare(self) -> None:
        super().prepare()
        if not from_this_machine(self.request.remote_ip, self.request.headers):
            raise HTTPError(404)

    async def get(self) -> None:
        user, customers = await self.store.demo_seeded_accounts(DEMO_CUSTOMERS)
        if user is None:
            raise HTTPError(404, "no demo accounts: run `python leida_chat.py demo`")
        self.finish({
            "radar_user": {"id": user.id, "token": user.token, "name": user.username, "avatar": user.card_avatar},
            "customers": [
                {"id": c.id, "token": c.token, "name": c.username, "avatar": c.headimgurl} for c in customers
            ],
        })
