"""The knobs the HTTP layer reads, with the contract's defaults."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ApiSettings:
    #: seconds a signed timestamp may differ from server time; 0 = no window
    max_skew_seconds: float = 900
    #: seconds a getmsg is held when the client gives no ``wait``
    longpoll_timeout: float = 25
    #: upper bound on any ``wait``: below what proxies cut idle connections at
    longpoll_max_timeout: float = 55
    #: most messages one getmsg answer carries; the rest come on the next poll
    getmsg_max_items: int = 200
    #: held getmsg requests at once; past it a getmsg that would wait gets 503 + Retry-After
    max_waiters: int = 10000
    #: held getmsg requests of one account; past it the oldest is answered at once (empty)
    max_waiters_per_account: int = 8
    msg_max_chars: int = 5000
    content_max_bytes: int = 16 * 1024
    history_max_length: int = 100
    max_body_bytes: int = 64 * 1024
    #: how long after its sending a message may be recalled (撤回), in seconds; 0: recall is off
    recall_seconds: float = 120
    #: origins whose pages may call /zhugeleida/ (CORS); "*" is every origin, as the original server
    cors_origins: tuple[str, ...] = ("*",)
