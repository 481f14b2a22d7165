"""Checking a message's ``content``: a JSON object whose shape its info_type decides.

The keys are stored as given and merged into every item later returned, so
anything a page will render (text, links) is checked here, once, on the way in.
"""
from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import ujson

from storage.records import (
    CONTACT_REQUEST,
    HAS_THUMBNAIL,
    IMAGE,
    PRODUCT,
    SHOP_LINK,
    TEXT,
    VIDEO,
    info_type_number,
)

from .errors import InvalidParams

CUSTOMER_INFO_TYPES = (TEXT, PRODUCT, CONTACT_REQUEST, IMAGE, VIDEO)
RADAR_USER_INFO_TYPES = CUSTOMER_INFO_TYPES + (SHOP_LINK,)

#: key -> info_types that require it (a picture or video needs a url, or the attachment_id of an upload)
_REQUIRED = {"msg": (TEXT,), "product_name": (PRODUCT,), "url": (IMAGE, VIDEO)}
_ATTACHMENT_ID = re.compile(r"[0-9a-f]{32}")
#: what the server fills in from the attachment's record; a client's own values for them are dropped
ATTACHMENT_KEYS = ("url", "thumbnail_url", "content_type", "size", "width", "height", "duration", HAS_THUMBNAIL)
_TEXT_KEYS = ("msg", "product_name")
_URL_KEYS = ("url", "product_cover_url")
_SAFE_URL_SCHEMES = ("", "http", "https")
#: keys only the server writes (a tombstone's and a recall notice's): a client's content may not pose as either
SERVER_ONLY_KEYS = ("recalled", "recalled_id", "recalled_by", "typing")

FIELD = "content"


def _invalid(message: str, code: str = "invalid") -> InvalidParams:
    return InvalidParams.one(FIELD, message, code)


def parse_content(
    raw: str,
    *,
    allowed_info_types: tuple[int, ...],
    msg_max_chars: int,
    content_max_bytes: int,
) -> dict[str, Any]:
    """The validated content object, or a 402 naming ``content`` and the bad key."""
    if len(raw.encode("utf-8", "surrogatepass")) > content_max_bytes:
        raise _invalid(f"content must be at most {content_max_bytes} bytes", "max_length")
    try:
        content = ujson.loads(raw)
    except (ValueError, OverflowError):
        raise _invalid("content must be a JSON object") from None
    if not isinstance(content, dict):
        raise _invalid("content must be a JSON object")
    try:  # lone surrogates (\ud800) cannot be stored as UTF-8; NaN/Infinity are not JSON
        ujson.dumps(content, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        raise _invalid("content contains characters that are not valid Unicode") from None
    except (OverflowError, ValueError):
        raise _invalid("content contains a number JSON cannot carry (NaN, Infinity or too large)") from None

    for key in SERVER_ONLY_KEYS:
        if key in content:
            raise _invalid(f"content.{key} is the server's to write, never a client's", "reserved")
    info_type = info_type_number(content.get("info_type"))
    if info_type not in allowed_info_types:
        allowed = ", ".join(map(str, allowed_info_types))
        raise _invalid(f"content.info_type must be one of {allowed}")

    if "attachment_id" in content:
        if info_type not in (IMAGE, VIDEO):
            raise InvalidParams.one("attachment_id", "content.attachment_id goes only with info_type 4 (picture) "
                                    "or 5 (video)")
        attachment_id = content["attachment_id"]
        if not isinstance(attachment_id, str) or not _ATTACHMENT_ID.fullmatch(attachment_id):
            raise InvalidParams.one("attachment_id", "content.attachment_id must be the attachment_id an upload "
                                    "answered (32 hex digits)")
        for key in ATTACHMENT_KEYS:
            content.pop(key, None)
    for key, needed_by in _REQUIRED.items():
        if key == "url" and "attachment_id" in content:
            continue
        if info_type in needed_by and key not in content:
            also = " (or content.attachment_id, from an upload)" if key == "url" else ""
            raise _invalid(f"content.{key} is required for info_type {info_type}{also}", "required")
    for key in _TEXT_KEYS:
        if key in content:
            _check_text(key, content[key], msg_max_chars, required=info_type in _REQUIRED[key])
    for key in _URL_KEYS:
        if key in content:
            _check_url(key, content[key], required=info_type in _REQUIRED.get(key, ()))
    price = content.get("product_price")
    if price is not None and (isinstance(price, bool) or not isinstance(price, (str, int, float))):
        raise _invalid("content.product_price must be a string or a number")
    return content


def _check_text(key: str, value: Any, max_chars: int, *, required: bool) -> None:
    if not isinstance(value, str):
        raise _invalid(f"content.{key} must be a string")
    if required and not value.strip():
        raise _invalid(f"content.{key} must not be empty", "required")
    if len(value) > max_chars:
        raise _invalid(f"content.{key} must be at most {max_chars} characters", "max_length")


def _check_url(key: str, value: Any, *, required: bool) -> None:
    """Plain web links or relative paths only: a page will put these in src/href."""
    if not isinstance(value, str):
        raise _invalid(f"content.{key} must be a string")
    if required and not value.strip():
        raise _invalid(f"content.{key} must not be empty", "required")
    try:
        scheme = urlsplit(value.strip()).scheme.lower()
    except ValueError:
        raise _invalid(f"content.{key} is not a valid URL") from None
    if scheme not in _SAFE_URL_SCHEMES:
        raise _invalid(f"content.{key} must be an http(s) URL or a relative path")
