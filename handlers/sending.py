"""send_msg, for either side: read the form, check the content, store durably, answer."""
from __future__ import annotations

from typing import Any

from tornado.web import HTTPError

from storage import DatabaseLocked, Side

from .base import SignedHandler
from .content import parse_content
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
        try:
            receipt = await self.store.send(customer_id, user_id, self.side.send_type, content, client_msg_id)
        except DatabaseLocked as error:
            raise HTTPError(503, str(error)) from None
        self.reply(self.success_msg, {"id": receipt.id, "dateTime": receipt.created_at})
