"""Who is calling the server API: bearer keys, checked in constant time, and the audit line.

Keys are configured as ``server_api.keys`` (``LEIDA_SERVER_API_KEYS``), a
comma-separated list of ``name:secret``. The name is what the audit log shows
for every call made with the key, so that two systems (the CRM, a one-off
import) can be told apart and one of them rotated without the other: add the
new key, move the caller over, remove the old one.

Only SHA-256 digests of the secrets are kept after start. A presented key is
hashed and compared with ``hmac.compare_digest`` against every configured key,
with no early exit, so neither which key matched nor how much of a secret was
right shows in the time an answer takes.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

audit_log = logging.getLogger("leida_chat.audit")

#: what a key's name may be: it goes into every audit line as it is
KEY_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: the shortest secret accepted (16 characters of a random alphabet are beyond guessing)
MIN_SECRET_CHARS = 16
#: a secret travels in an HTTP header: visible ASCII, and no comma (the list's separator)
_SECRET = re.compile(r"[\x21-\x2b\x2d-\x7e]+")
#: query parameters that look like a key: refused, and redacted from the access log (handlers/base.py)
KEY_QUERY_PARAMS = frozenset({"key", "api_key", "access_token", "token"})


class KeysInvalid(ValueError):
    """``server_api.keys`` cannot be read; the message names the entry by position, never its text."""


@dataclass(frozen=True, slots=True)
class ServerApiKey:
    """A configured key: its name and the SHA-256 digest of its secret (the secret itself is not kept)."""

    name: str
    digest: bytes

    def __repr__(self) -> str:
        return f"ServerApiKey({self.name!r})"


def parse_keys(setting: str) -> tuple[ServerApiKey, ...]:
    """The keys of ``server_api.keys``; empty means the server API is off.

    Raises KeysInvalid for anything else than ``name:secret`` entries with a valid name,
    a secret of MIN_SECRET_CHARS or more, distinct names and distinct secrets.
    """
    keys: list[ServerApiKey] = []
    entries = [entry.strip() for entry in setting.split(",") if entry.strip()]
    for position, entry in enumerate(entries, start=1):
        where = f"entry {position} of {len(entries)}"
        name, colon, secret = entry.partition(":")
        if not colon:
            raise KeysInvalid(f"{where} is not name:secret")
        if not KEY_NAME.fullmatch(name):
            raise KeysInvalid(f"{where}: the name must be 1 to 64 letters, digits, '_', '.' or '-'")
        if len(secret) < MIN_SECRET_CHARS:
            raise KeysInvalid(f"{where} ({name}): the secret must be at least {MIN_SECRET_CHARS} characters")
        if not _SECRET.fullmatch(secret):
            raise KeysInvalid(f"{where} ({name}): the secret must be visible ASCII characters other than ','")
        digest = hashlib.sha256(secret.encode("ascii")).digest()
        if any(key.name == name for key in keys):
            raise KeysInvalid(f"{where}: the name {name} is given twice")
        if any(key.digest == digest for key in keys):
            raise KeysInvalid(f"{where} ({name}): the same secret as another key")
        keys.append(ServerApiKey(name, digest))
    return tuple(keys)


def bearer_secret(authorization: str | None) -> str | None:
    """The credentials of an ``Authorization: Bearer <secret>`` header, else None."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not credentials:
        return None
    return credentials


def caller(keys: Iterable[ServerApiKey], authorization: str | None) -> str | None:
    """The name of the key the header presents, or None; compared against every key, always."""
    secret = bearer_secret(authorization)
    given = hashlib.sha256((secret or "").encode("utf-8", "surrogatepass")).digest()
    found: str | None = None
    for key in keys:
        if hmac.compare_digest(given, key.digest) and found is None and secret is not None:
            found = key.name
    return found


def key_in_query(arguments: Mapping[str, Any]) -> bool:
    """Whether a query string carries something named like a key (which must go in the header)."""
    return any(name.lower() in KEY_QUERY_PARAMS for name in arguments)


def audit(key_name: str | None, operation: str, status: int, ids: Mapping[str, Any] | None = None,
          counts: Mapping[str, int] | None = None) -> None:
    """One line per call on ``leida_chat.audit``: who, what, on which ids, how many, and the status.

    Never a secret, a token or a message's text: callers pass ids and counts only.
    """
    parts = [f"key={key_name or '-'}", f"op={operation}"]
    parts += [f"{name}={_ids(value)}" for name, value in (ids or {}).items()]
    parts += [f"{name}={value}" for name, value in (counts or {}).items()]
    parts.append(f"status={status}")
    audit_log.info("%s", " ".join(parts))


def _ids(value: Any) -> str:
    """An id, or a list of ids as runs (``1-1000,1005``) so that a bulk call's line stays short but complete."""
    if not isinstance(value, (list, tuple)):
        return str(value)
    ordered = sorted(set(value))
    if not ordered:
        return "-"
    runs: list[str] = []
    start = previous = ordered[0]
    for number in [*ordered[1:], None]:
        if number is not None and number == previous + 1:
            previous = number
            continue
        runs.append(str(start) if start == previous else f"{start}-{previous}")
        if number is not None:
            start = previous = number
    return ",".join(runs)
