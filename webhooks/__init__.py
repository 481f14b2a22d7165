"""Webhooks: telling a deployment's own system about messages nobody read.

The events themselves are decided and kept in the database (storage/outbox.py).
This package sends them: signed as Standard Webhooks (``signing``), by a sender
in each serving process that leases due events, POSTs them without blocking the
event loop, and records each attempt (``sender``). Delivery is at least once: a
receiver must expect the same ``webhook-id`` more than once, and drop repeats.
"""
from .sender import WebhookSender, WebhookSettings
from .signing import SecretError, parse_secrets, signature_header

__all__ = ["SecretError", "WebhookSender", "WebhookSettings", "parse_secrets", "signature_header"]
