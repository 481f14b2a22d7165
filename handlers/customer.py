"""The customer side (公众号): an H5 page talking to one radar user's card.

Signed by the customer; ``u_id`` names the radar user, who must exist.
"""
from __future__ import annotations

from storage import Customer, RadarUser, Side

from .base import SignedHandler
from .content import CUSTOMER_INFO_TYPES
from .errors import InvalidParams
from .items import customer_history_item, customer_item
from .longpoll import LongPollHandler
from .media import UploadHandler as MediaUploadHandler
from .params import Params
from .recall import RecallMessageHandler, TypingHandler
from .sending import SendMessageHandler


class CustomerHandler(SignedHandler):
    signer: Customer

    async def find_signer(self, account_id: int) -> Customer | None:
        return await self.store.customer(account_id)

    def read_radar_user_id(self, params: Params) -> int:
        """``u_id``, plus the old clients' ``customer_id``, which may only name the signer."""
        user_id = params.account_id("u_id", required=True)
        claimed = params.account_id("customer_id")
        if claimed is not None and claimed != self.signer.id:
            params.fail("customer_id", "customer_id must be the signed user_id", "mismatch")
        return user_id

    async def require_radar_user(self, user_id: int) -> RadarUser:
        user = await self.store.radar_user(user_id)
        if user is None:
            raise InvalidParams.one("u_id", f"radar user {user_id} does not exist", "does_not_exist")
        return user


class SendHandler(CustomerHandler, SendMessageHandler):
    """POST /zhugeleida/gongzhonghao/chat/send_msg/{o_id}"""

    side = Side.CUSTOMER
    info_types = CUSTOMER_INFO_TYPES
    success_msg = "send msg successful"

    async def post(self, _o_id: str) -> None:
        form = self.form()
        user_id = self.read_radar_user_id(form)
        content, client_msg_id = self.read_message(form)
        await self.require_radar_user(user_id)
        await self.store_and_reply(self.signer.id, user_id, content, client_msg_id)


class UploadHandler(CustomerHandler, MediaUploadHandler):
    """POST /zhugeleida/gongzhonghao/chat/upload/{o_id}: a picture or video for the radar user ``u_id``."""

    side = Side.CUSTOMER

    async def read_conversation(self, query: Params) -> tuple[int, int]:
        user_id = self.read_radar_user_id(query)
        query.check()
        await self.require_radar_user(user_id)
        return self.signer.id, user_id


class RecallHandler(CustomerHandler, RecallMessageHandler):
    """POST /zhugeleida/gongzhonghao/chat/recall/{o_id}: take back one of the customer's messages."""

    side = Side.CUSTOMER

    async def post(self, _o_id: str) -> None:
        form = self.form()
        user_id = self.read_radar_user_id(form)
        message_id = form.integer("message_id", required=True, minimum=1)
        form.check()
        await self.require_radar_user(user_id)
        assert message_id is not None  # required: check() refused its absence
        await self.recall_and_reply(self.signer.id, user_id, message_id)


class TypingNowHandler(CustomerHandler, TypingHandler):
    """POST /zhugeleida/gongzhonghao/chat/typing/{o_id}: the customer is typing to the radar user ``u_id``."""

    side = Side.CUSTOMER

    async def post(self, _o_id: str) -> None:
        form = self.form()
        user_id = self.read_radar_user_id(form)
        form.check()
        await self.require_radar_user(user_id)
        self.announce_typing(self.signer.id, user_id)


class GetMsgHandler(CustomerHandler, LongPollHandler):
    """GET /zhugeleida/gongzhonghao/chat/getmsg/{o_id}: the long-poll."""

    async def get(self, _o_id: str) -> None:
        query = self.query()
        user_id = self.read_radar_user_id(query)
        wait, last_id = self.read_poll(query)
        typing = self.read_typing(query)
        query.check()
        await self.require_radar_user(user_id)
        links = self.attachment_links()
        await self.answer_getmsg(Side.CUSTOMER, user_id, self.signer.id, last_id, wait,
                                 lambda message: customer_item(message, links), typing=typing)


class HistoryHandler(CustomerHandler):
    """GET /zhugeleida/gongzhonghao/chat: one page of the conversation."""

    async def get(self) -> None:
        query = self.query()
        user_id = self.read_radar_user_id(query)
        offset, limit = query.page(max_length=self.api.history_max_length)
        query.check()
        user = await self.require_radar_user(user_id)
        page = await self.store.read_history(Side.CUSTOMER, self.signer.id, user_id, offset, limit)
        links = self.attachment_links()
        self.reply(
            "分页获取-全部聊天消息成功",
            {
                "ret_data": [customer_history_item(message, links) for message in page.messages],
                "mingpian_phone": user.card_phone,
                "wechat": user.wechat_id,
                "data_count": page.total,
            },
        )


class UnreadCountHandler(CustomerHandler):
    """GET /zhugeleida/gongzhonghao/chat/query_num/{o_id}"""

    async def get(self, _o_id: str) -> None:
        query = self.query()
        user_id = self.read_radar_user_id(query)
        query.check()
        await self.require_radar_user(user_id)
        count = await self.store.unread_count(Side.CUSTOMER, user_id, self.signer.id)
        self.reply("查询成功", {"chatinfo_count": count})
