"""What storage hands back: plain records, free of SQL and of HTTP."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, Literal

#: send_type values, as the original API numbers them.
FROM_RADAR_USER = 1
FROM_CUSTOMER = 2
#: the server's own words in a conversation ("客户正在查看您的名片"), shown to both sides, unread for neither
TIP = 3

#: the two kinds of account, by their tables' names
AccountKind = Literal["customer", "radar_user"]
#: what can be set on each kind of account (the CLI's flags and the server API's fields)
CUSTOMER_FIELDS = ("username", "headimgurl", "token")
RADAR_USER_FIELDS = ("username", "avatar", "mingpian_avatar", "mingpian_phone", "wechat", "wechat_phone", "token")
ACCOUNT_FIELDS: dict[str, tuple[str, ...]] = {"customer": CUSTOMER_FIELDS, "radar_user": RADAR_USER_FIELDS}

#: content.info_type values, as the original API numbers them.
TEXT, PRODUCT, CONTACT_REQUEST, IMAGE, VIDEO, SHOP_LINK = 1, 2, 3, 4, 5, 6
#: the info_type of a recall notice (a tip, send_type 3): ``recalled_id`` names the message taken back
RECALL_NOTICE = 7
#: what a recall notice says, to the side that recalled and to the other side
RECALLED_BY_YOU, RECALLED_BY_THEM = "你撤回了一条消息", "对方撤回了一条消息"


#: (attachment_id, has a thumbnail) -> (url, thumbnail_url): the signed URLs of an upload (media/links.py)
AttachmentLinks = Callable[[str, bool], tuple[str, str | None]]
#: the content key a sent upload keeps to say whether it has a thumbnail; every rendering
#: replaces it with ``thumbnail_url``
HAS_THUMBNAIL = "thumbnail"


def attachment_urls(content: dict[str, Any], links: AttachmentLinks) -> tuple[str, str | None]:
    """(url, thumbnail_url) of the upload a message's content names (``attachment_id``)."""
    return links(content["attachment_id"], bool(content.get(HAS_THUMBNAIL)))


def info_type_number(value: Any) -> int | None:
    """``content.info_type`` as a number; old clients sometimes send it as a digit string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 3:
        return int(value)
    return None


class AccountNeedsName(ValueError):
    """A new account was asked for without a name."""

    def __init__(self) -> None:
        super().__init__("a new account needs a name")


class AccountRowInvalid(ValueError):
    """A row of a bulk account change cannot be written; nothing of the call was."""

    def __init__(self, row: int, field: str, message: str) -> None:
        super().__init__(f"row {row}: {field}: {message}")
        self.row = row
        self.field = field
        self.message = message


class RecallRefused(ValueError):
    """A recall that may not be made (``code``: not_yours, too_late, off); nothing was changed."""

    def __init__(self, message_id: int, code: str, reason: str) -> None:
        super().__init__(reason)
        self.message_id = message_id
        self.code = code


class AccountMissing(LookupError):
    """An account a change names does not exist (``kind``: "customer" or "radar_user")."""

    def __init__(self, kind: AccountKind, account_id: int) -> None:
        super().__init__(f"{kind} {account_id} does not exist")
        self.kind = kind
        self.account_id = account_id


def account_key(kind: AccountKind, account_id: int) -> tuple[str, int]:
    """An account as one key across both kinds: what held requests are counted and ended by."""
    return (kind, account_id)


class Side(Enum):
    """A side of a conversation, each with its own read position (the value is its column)."""

    CUSTOMER = "customer_read_id"
    RADAR_USER = "user_read_id"

    @property
    def send_type(self) -> int:
        """The send_type of the messages this side sends."""
        return FROM_CUSTOMER if self is Side.CUSTOMER else FROM_RADAR_USER


def side_name(side: Side) -> str:
    """A side as the wire and the notices name it: "customer" or "radar_user"."""
    return "customer" if side is Side.CUSTOMER else "radar_user"


@dataclass(frozen=True, slots=True)
class Customer:
    kind: ClassVar[AccountKind] = "customer"

    id: int
    username: str
    headimgurl: str
    token: str
    #: a disabled account's requests are refused as with a bad signature (the server API)
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class RadarUser:
    kind: ClassVar[AccountKind] = "radar_user"

    id: int
    username: str
    avatar: str
    mingpian_avatar: str
    mingpian_phone: str
    wechat: str
    wechat_phone: str
    token: str
    disabled: bool = False

    @property
    def card_avatar(self) -> str:
        """The photo on the business card, which is what customers see."""
        return self.mingpian_avatar or self.avatar

    @property
    def card_phone(self) -> str:
        return self.mingpian_phone or self.wechat_phone

    @property
    def wechat_id(self) -> str:
        return self.wechat or self.wechat_phone


@dataclass(frozen=True, slots=True)
class Message:
    """One stored message with what every rendering of it needs.

    The customer's name and avatar and the radar user's card avatar come
    joined in, so that a page of messages renders without further lookups.
    """

    id: int
    customer_id: int
    user_id: int
    send_type: int
    content: dict[str, Any]
    created_at: str
    is_first_info: bool
    read_by_customer: bool
    read_by_user: bool
    customer_name: str
    customer_headimgurl: str
    user_avatar: str
    #: taken back by its sender: id, time and sender kept, content gone
    recalled: bool = False

    def read_by(self, side: Side) -> bool:
        return self.read_by_customer if side is Side.CUSTOMER else self.read_by_user


@dataclass(frozen=True, slots=True)
class SendReceipt:
    """What the sender is told once its message is durable."""

    id: int
    created_at: str
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Contact:
    """One conversation as the radar user's contact list shows it."""

    customer_id: int
    customer_name: str
    customer_headimgurl: str
    unread_count: int
    last_message: Message


@dataclass(frozen=True, slots=True)
class HistoryPage:
    messages: list[Message]
    total: int


@dataclass(frozen=True, slots=True)
class Attachment:
    """An uploaded picture or video: who may use it, where, and what the server made of it."""

    id: str
    send_type: int  # the uploader's side, as the messages it may go in
    uploader_id: int
    customer_id: int
    user_id: int
    kind: str  # "image" or "video"
    content_type: str
    size: int
    width: int | None
    height: int | None
    duration: float | None
    sha256: str
    storage_key: str
    thumbnail_key: str | None
    thumbnail_size: int
    message_id: int | None
    created_at: float

    @property
    def sender_id(self) -> int:
        return self.customer_id if self.send_type == FROM_CUSTOMER else self.user_id


class AttachmentUnavailable(ValueError):
    """A send named an attachment it may not use (another's, another conversation's, gone, or
    used by another message); nothing of the send was stored."""

    def __init__(self, attachment_id: str, reason: str = "the attachment is gone or was used by another message") -> None:
        super().__init__(reason)
        self.attachment_id = attachment_id
