"""Signed media URLs: what lets an ``<img>`` tag in WeChat fetch a picture without signing a request.

A URL carries its own authority: ``/media/<id>?e=<expiry>&s=<HMAC>`` (``/media/<id>/thumbnail``
for the thumbnail). The HMAC covers the id, the variant and the expiry, under a key
the server makes once and keeps in the database, so every process and host makes
and accepts the same URLs. Expiries are rounded up to a step of the URL's lifetime,
so that one picture's URL stays the same for a while and browsers and proxies can
cache it.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time

#: the name of the URL key in the database's server_key table
KEY_NAME = "media_url"
#: what a URL may name: the file itself or its thumbnail
VARIANTS = ("file", "thumbnail")
#: the rounding step is this part of the lifetime (a 7-day URL is valid for 7 to 8 days), at most a day
ROUNDING_PARTS = 7
MAX_ROUNDING_SECONDS = 86400


class MediaLinks:
    def __init__(self, key: str, ttl_seconds: int) -> None:
        self._key = key.encode("ascii")
        self.ttl_seconds = ttl_seconds
        self._step = max(1, min(MAX_ROUNDING_SECONDS, ttl_seconds // ROUNDING_PARTS))

    def lasting(self, ttl_seconds: int) -> MediaLinks:
        """The same key's URLs with another lifetime (a customer's data export: a day)."""
        links = MediaLinks("", ttl_seconds)
        links._key = self._key
        return links

    def expiry(self, now: float | None = None) -> int:
        """When a URL made now stops working: at least ``ttl_seconds`` away, on a step boundary."""
        now = time.time() if now is None else now
        return math.ceil((now + self.ttl_seconds) / self._step) * self._step

    def signature(self, attachment_id: str, variant: str, expires: int) -> str:
        digest = hmac.new(self._key, f"{attachment_id}/{variant}/{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:18]).decode("ascii")

    def path(self, attachment_id: str, variant: str = "file", now: float | None = None) -> str:
        """The signed path (and query) of an attachment's file or thumbnail."""
        expires = self.expiry(now)
        suffix = "" if variant == "file" else "/" + variant
        return f"/media/{attachment_id}{suffix}?e={expires}&s={self.signature(attachment_id, variant, expires)}"

    def verify(self, attachment_id: str, variant: str, expires: str | None, signature: str | None,
               now: float | None = None) -> bool:
        """Whether the URL was made by this deployment and has not expired. Constant time in the
        signature; whether the id exists is not looked at (that is a 404, after this)."""
        if not expires or not signature or not expires.isdigit() or len(expires) > 12:
            return False
        expected = self.signature(attachment_id, variant, int(expires))
        if not hmac.compare_digest(expected.encode("ascii"), signature.encode("ascii", "replace")):
            return False
        return int(expires) >= (time.time() if now is None else now)
