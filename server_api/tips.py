"""POST /api/v1/tips: a system tip into a conversation, from the CRM.

A tip is a line the deployment shows in a conversation (an order shipped, an
appointment booked) that neither side wrote. Both sides see it in getmsg and
history with ``send_type`` 3, and held requests of both are woken; what a tip
is beyond that (it counts as unread for nobody) is storage's rule
(ChatStore.send_tip). The text is checked here as a chat message's is: 1 to
``limits.msg_max_chars`` characters.
"""
from __future__ import annotations

from typing import Any

from handlers.sending import CLIENT_MSG_ID_MAX_CHARS
from storage.records import TIP, AccountMissing

from .accounts import ID_MAX, check_text
from .base import ServerApiHandler
from .problems import FieldError, InvalidInput, Problem

MEMBERS = ("customer_id", "user_id", "text", "client_msg_id")
#: which member names the account storage found missing
MISSING_MEMBER = {"customer": "customer_id", "radar_user": "user_id"}


class TipHandler(ServerApiHandler):
    """POST /api/v1/tips ``{"customer_id", "user_id", "text", "client_msg_id"?}``."""

    @property
    def operation(self) -> str:
        return "tip.post"

    async def post(self) -> None:
        body = self.json_object()
        customer_id, user_id, text, client_msg_id = self.read_tip(body)
        self.audit_ids.update(customer_id=customer_id, user_id=user_id)
        try:
            receipt = await self.store.send_tip(customer_id, user_id, text, client_msg_id=client_msg_id)
        except AccountMissing as error:
            member = MISSING_MEMBER.get(error.kind, error.kind)
            account_id = customer_id if member == "customer_id" else user_id
            raise Problem(404, f"no {error.kind} with id {account_id}",
                          [FieldError(member, f"no {error.kind} with this id")]) from None
        self.audit_ids["message_id"] = receipt.id
        if receipt.duplicate:
            self.audit_counts["duplicate"] = 1
        self.answer({"id": receipt.id, "created_at": receipt.created_at, "customer_id": customer_id,
                     "user_id": user_id, "send_type": TIP})

    def read_tip(self, body: dict[str, Any]) -> tuple[int, int, str, str | None]:
        """The checked members, or a 422 naming every bad one."""
        errors = [FieldError(name, f"{name} is not a member of a tip; it takes {', '.join(MEMBERS)}")
                  for name in body if name not in MEMBERS]
        for name in ("customer_id", "user_id"):
            value = body.get(name)
            if name not in body:
                errors.append(FieldError(name, f"{name} is required"))
            elif isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= ID_MAX:
                errors.append(FieldError(name, f"{name} must be an integer from 1 to {ID_MAX}"))
        if "text" not in body:
            errors.append(FieldError("text", "text is required"))
        else:
            check_text("text", body["text"], self.api.msg_max_chars, errors, None, allow_empty=False,
                       controls_allowed=True)
        client_msg_id = body.get("client_msg_id")
        if client_msg_id is not None:
            check_text("client_msg_id", client_msg_id, CLIENT_MSG_ID_MAX_CHARS, errors, None, allow_empty=False)
        if errors:
            raise InvalidInput(errors)
        return body["customer_id"], body["user_id"], body["text"], client_msg_id
