"""How a stored message looks on the wire, for each side.

The key names are the original API's, misspellings included (``user_avator``
in customer getmsg items): deployed H5 pages read them as they are. Content
keys are merged after the server's keys and can never overwrite them, so a
message cannot pose as another id, sender or conversation.

A picture or video sent as an upload (content ``attachment_id``) gets its
``url`` and ``thumbnail_url`` here, at each rendering, because they are signed
and expire (media/links.py); what else the server knows of it (type, size,
dimensions) was put into the content when it was sent.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from storage import Contact, Message
from storage.records import (
    HAS_THUMBNAIL,
    RECALL_NOTICE,
    RECALLED_BY_THEM,
    RECALLED_BY_YOU,
    AttachmentLinks,
    attachment_urls,
)

if TYPE_CHECKING:
    from media import Media


def signed_links(media: Media | None, base: str | None, valid_seconds: int | None = None) -> AttachmentLinks | None:
    """The signer of upload URLs for the items of one answer: absolute URLs (the pages live on
    other origins), starting with ``media.base_url``, else ``base`` (the request's own scheme
    and host; None, as for webhook events: paths from the server's root). They work for
    ``media.url_ttl_seconds``, or ``valid_seconds`` (a customer's data export: a day)."""
    if media is None:
        return None
    prefix = media.settings.base_url.rstrip("/") or base or ""
    links = media.links if valid_seconds is None else media.links.lasting(valid_seconds)

    def sign(attachment_id: str, has_thumbnail: bool) -> tuple[str, str | None]:
        thumbnail = prefix + links.path(attachment_id, "thumbnail") if has_thumbnail else None
        return prefix + links.path(attachment_id), thumbnail

    return sign


def _with_content(item: dict[str, Any], message: Message, links: AttachmentLinks | None, viewer: str) -> dict[str, Any]:
    """The item with its content's keys merged in. A recalled message is a tombstone: ``recalled``
    and no content. A recall notice says, in ``msg``, who took the message back, as ``viewer``
    ("customer" or "radar_user") reads it, so that a page that only shows ``msg`` shows the line."""
    content = message.content
    if message.recalled:
        item["recalled"] = True
        return item
    if content.get("info_type") == RECALL_NOTICE:
        item["msg"] = RECALLED_BY_YOU if content.get("recalled_by") == viewer else RECALLED_BY_THEM
    if "attachment_id" in content and links is not None:
        item["url"], item["thumbnail_url"] = attachment_urls(content, links)
        for key, value in content.items():
            if key != HAS_THUMBNAIL:
                item.setdefault(key, value)
        return item
    for key, value in content.items():
        item.setdefault(key, value)
    return item


def customer_item(message: Message, links: AttachmentLinks | None = None) -> dict[str, Any]:
    """An item of the customer's getmsg. The avatar goes under both spellings: the seed's
    ``user_avator`` and the ``user_avatar`` of the original's later versions (CONTRACT.md)."""
    return _with_content(
        {
            "id": message.id,
            "customer_id": message.customer_id,
            "user_id": message.user_id,
            "user_avator": message.user_avatar,
            "user_avatar": message.user_avatar,
            "customer_headimgurl": message.customer_headimgurl,
            "customer": message.customer_name,
            "dateTime": message.created_at,
            "send_type": message.send_type,
            "is_first_info": message.is_first_info,
        },
        message,
        links,
        "customer",
    )


def customer_history_item(message: Message, links: AttachmentLinks | None = None) -> dict[str, Any]:
    """An item of the customer's history: a getmsg item plus the seed's history keys."""
    item = customer_item(message, links)
    item["from_user_name"] = message.customer_name
    return item


def radar_item(message: Message, links: AttachmentLinks | None = None) -> dict[str, Any]:
    """An item of the radar user's getmsg, history and contact list."""
    read = int(message.read_by_customer)
    return _with_content(
        {
            "id": message.id,
            "customer_id": message.customer_id,
            "customer_avatar": message.customer_headimgurl,
            "user_id": message.user_id,
            "src": message.customer_headimgurl,
            "name": message.customer_name,
            "dateTime": message.created_at,
            "send_type": message.send_type,
            "is_customer_already_read": read,
            "is_customer_already_read_text": "已读" if read else "未读",
        },
        message,
        links,
        "radar_user",
    )


def contact_item(contact: Contact, links: AttachmentLinks | None = None) -> dict[str, Any]:
    return {
        "customer_id": contact.customer_id,
        "customer": contact.customer_name,
        "customer_headimgurl": contact.customer_headimgurl,
        "unread_count": contact.unread_count,
        "last_msg": radar_item(contact.last_message, links),
    }
