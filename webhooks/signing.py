"""Standard Webhooks signatures (standardwebhooks.com): HMAC-SHA256 over ``id.timestamp.body``.

A secret is written ``whsec_<base64 key>``. Several secrets may be configured at
once, for rotation: every request carries one signature per secret, space
separated, so a receiver holding either the old or the new secret accepts it.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

PREFIX = "whsec_"


class SecretError(ValueError):
    """A secret is not in the ``whsec_<base64>`` form. The message never contains the secret."""


def parse_secrets(setting: str) -> list[bytes]:
    """The keys of ``webhook.secret``: one or more ``whsec_...`` separated by spaces or commas."""
    keys = []
    for number, secret in enumerate(setting.replace(",", " ").split(), start=1):
        if not secret.startswith(PREFIX):
            raise SecretError(f"secret {number} does not start with {PREFIX}")
        try:
            key = base64.b64decode(secret[len(PREFIX):], validate=True)
        except (binascii.Error, ValueError):
            raise SecretError(f"secret {number} is not {PREFIX} followed by base64") from None
        if len(key) < 16:
            raise SecretError(f"secret {number} is shorter than 16 bytes once decoded")
        keys.append(key)
    return keys


def signature_header(keys: list[bytes], event_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,<base64>`` per key, space separated."""
    signed = f"{event_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode() for key in keys
    )
