"""Recall (撤回) and "typing…" (对方正在输入): what a page sends besides messages.

A recall takes back one of the signer's own messages within
``chat.recall_seconds`` (storage/recall.py holds the rule and appends the
notice every client reads). Typing is ephemeral: nothing is stored, the other
side's held getmsg that asked for it (``typing=1``) answers at once, and a
conversation wakes its peer at most once a second however often a page posts.
Both sides share these handlers; customer.py and radar.py say whose
conversation a request names.
"""
from __future__ import annotations

from storage import RecallRefused, Side

from .base import SignedHandler
from .errors import InvalidParams


class RecallMessageHandler(SignedHandler):
    """POST …/chat/recall/{o_id}: ``message_id``, one of the signer's own messages in this conversation."""

    side: Side

    async def recall_and_reply(self, customer_id: int, user_id: int, message_id: int) -> None:
        delete_files = self.media.delete if self.media is not None else _no_files
        try:
            notice = await self.store.recall(self.side, customer_id, user_id, message_id,
                                             self.api.recall_seconds, delete_files)
        except RecallRefused as refused:
            raise InvalidParams.one("message_id", str(refused), refused.code) from None
        self.reply("撤回成功", {"id": notice.id, "recalled_id": message_id, "dateTime": notice.created_at})


async def _no_files(_keys: list[str]) -> None:
    """Without a media room there are no files to delete."""


class TypingHandler(SignedHandler):
    """POST …/chat/typing/{o_id}: the signer is typing to the peer the request names."""

    side: Side

    def announce_typing(self, customer_id: int, user_id: int) -> None:
        self.store.typing(customer_id, user_id, self.side)
        self.reply("ok", {})
