"""send_msg, for either side: read the form, check the content, store durably, answer."""
from __future__ import annotations

from typing import Any

from tornado.web import HTTPError

from storage import AccountMissing, AttachmentUnavailable, DatabaseLocked, Side
from storage.records import HAS_THUMBNAIL, IMAGE, info_type_number

from .base import SignedHandler
from .content import parse_content
from .errors import InvalidParams, SignatureRejected
from .params import Params

CLIENT_MSG_ID_MAX_CHARS = 64


class SendMessageHandler(SignedHandler):
    #: the side sending; its send_type is the only one this route accepts
    side: Side
    info_types: tuple[int, ...]
    success_msg: str

    def read_message(self, form: Params) -> tuple[dict[str, Any], str | None]:
        """The checked content and the optional idempotency key; 402 for any bad field."""
        raw_content = form.text("content", required=True)
        send_type = form.integer("send_type")
        if send_type is not None and send_type != self.side.send_type:
            form.fail("send_type", f"send_type must be {self.side.send_type} on this route")
        client_msg_id = form.text("client_msg_id", max_length=CLIENT_MSG_ID_MAX_CHARS)
        form.check()
        content = parse_content(
            raw_content,
            allowed_info_types=self.info_types,
            msg_max_chars=self.api.msg_max_chars,
            content_max_bytes=self.api.content_max_bytes,
        )
        return content, client_msg_id

    async def store_and_reply(
        self, customer_id: int, user_id: int, content: dict[str, Any], client_msg_id: str | None
    ) -> None:
        """Answer only once the message is durable: a 200 is a promise it will not be lost.

        A database locked by another process for too long is a 503 with
        Retry-After, as is storage that is failing (ApiHandler.write_error):
        nothing was stored, and the client may simply send again.
        """
        attachment_id = content.get("attachment_id")
        if attachment_id is not None:
            await self.describe_attachment(content, customer_id, user_id)
        try:
            receipt = await self.store.send(customer_id, user_id, self.side.send_type, content, client_msg_id,
                                            attachment_id=attachment_id)
        except DatabaseLocked as error:
            raise HTTPError(503, str(error)) from None
        except AttachmentUnavailable as error:
            raise _attachment_refused(str(error)) from None
        except AccountMissing:  # erased while this send was on its way: as if the signature had failed
            raise SignatureRejected() from None
        self.reply(self.success_msg, {"id": receipt.id, "dateTime": receipt.created_at})

    async def describe_attachment(self, content: dict[str, Any], customer_id: int, user_id: int) -> None:
        """Fill ``content`` with what the server knows of the upload it names, once the upload
        is shown to be the sender's own, for this conversation, and of the info_type's kind.
        Whether another message claimed it already is decided in the send's transaction, so
        that a retry of the send that claimed it (same client_msg_id) still succeeds."""
        record = await self.store.attachment(content["attachment_id"])
        if record is None or record.send_type != self.side.send_type or record.sender_id != self.signer.id:
            raise _attachment_refused("no upload of yours has this attachment_id")
        if (record.customer_id, record.user_id) != (customer_id, user_id):
            raise _attachment_refused("this upload was made for another conversation")
        wanted = "image" if info_type_number(content.get("info_type")) == IMAGE else "video"
        if record.kind != wanted:
            raise _attachment_refused(f"this upload is {'an image' if record.kind == 'image' else 'a video'}: send it with info_type "
                                      f"{4 if record.kind == 'image' else 5}")
        content.update(content_type=record.content_type, size=record.size, width=record.width,
                       height=record.height)
        content[HAS_THUMBNAIL] = record.thumbnail_key is not None
        if record.duration is not None:
            content["duration"] = record.duration


def _attachment_refused(message: str) -> InvalidParams:
    return InvalidParams.one("attachment_id", message, "unavailable")
