"""What a send stores, and how a batch of sends becomes rows: the same on every backend.

A backend reads what the database already holds for a batch (which
conversations exist, which client keys were used before) and hands out new
message ids; ``plan_sends`` then decides, once for both backends, which sends
are repeats of an earlier ``client_msg_id``, which message opens its
conversation, and what each table receives.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from .records import FROM_CUSTOMER, FROM_RADAR_USER, SendReceipt

#: (send_type, sender id, client_msg_id): idempotency keys are per sender
SenderKey = tuple[int, int, str]
Pair = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Outgoing:
    customer_id: int
    user_id: int
    send_type: int
    content_json: str
    created_at: str
    client_msg_id: str | None
    content: dict[str, Any]  # what waiters are handed; only content_json is stored
    #: the upload this message claims (content info_type 4 or 5), in the send's own transaction
    attachment_id: str | None = None
    #: the message this one (a recall notice) takes back, in the same transaction
    recalls: int | None = None

    @property
    def sender_id(self) -> int:
        return self.customer_id if self.send_type == FROM_CUSTOMER else self.user_id  # a tip: its radar user's

    @property
    def sender_key(self) -> SenderKey | None:
        if self.client_msg_id is None:
            return None
        return (self.send_type, self.sender_id, self.client_msg_id)


class SendRows(NamedTuple):
    """What one batch of sends writes, and what each sender is told."""

    #: (receipt, is_first_info) per send, in the batch's order
    results: list[tuple[SendReceipt, bool]]
    #: (id, customer_id, user_id, send_type, content, created_at)
    messages: list[tuple]
    #: (customer_id, user_id, first_message_id, last_message_id, last_customer_message_id), one per message
    conversations: list[tuple]
    #: (send_type, sender_id, client_msg_id, message_id)
    client_keys: list[tuple]
    #: (attachment_id, message_id, send_type, sender_id, customer_id, user_id): uploads claimed
    attachments: list[tuple]
    #: (notice_id, recalled_id): messages taken back, each by its new notice
    recalls: list[tuple[int, int]]


def pairs_and_keys(batch: list[Outgoing]) -> tuple[list[Pair], list[SenderKey]]:
    """The conversations and the client keys a batch touches, each once."""
    pairs = list({(sent.customer_id, sent.user_id) for sent in batch})
    keys = list({key for sent in batch if (key := sent.sender_key) is not None})
    return pairs, keys


def plan_sends(
    batch: list[Outgoing], conversations: set[Pair], earlier: dict[SenderKey, SendReceipt], new_ids: Iterator[int]
) -> SendRows:
    """A send whose key was used before (in the database or earlier in the batch) is
    answered with the first one's receipt and stores nothing; every other takes
    the next of ``new_ids``, which must rise."""
    conversations = set(conversations)
    earlier = dict(earlier)
    rows = SendRows([], [], [], [], [], [])
    for sent in batch:
        key = sent.sender_key
        if key is not None and key in earlier:
            rows.results.append((earlier[key], False))
            continue
        message_id = next(new_ids)
        pair = (sent.customer_id, sent.user_id)
        is_first_info = pair not in conversations
        conversations.add(pair)
        if key is not None:
            earlier[key] = SendReceipt(message_id, sent.created_at, duplicate=True)
            rows.client_keys.append((*key, message_id))
        rows.results.append((SendReceipt(message_id, sent.created_at), is_first_info))
        if sent.recalls is not None:
            rows.recalls.append((message_id, sent.recalls))
        if sent.attachment_id is not None:
            rows.attachments.append(
                (sent.attachment_id, message_id, sent.send_type, sent.sender_id, sent.customer_id, sent.user_id))
        rows.messages.append(
            (message_id, sent.customer_id, sent.user_id, sent.send_type, sent.content_json, sent.created_at)
        )
        rows.conversations.append((
            sent.customer_id, sent.user_id, message_id, message_id,
            message_id if sent.send_type != FROM_RADAR_USER else 0,  # the customer's, or a tip
        ))
    return rows
