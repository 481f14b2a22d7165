"""The radar-user side (企业微信 console): one rep, all of their customers.

Signed by the radar user; ``customer_id`` names the customer, who must exist.
"""
from __future__ import annotations

from storage import Customer, RadarUser, Side

from .base import SignedHandler
from .content import RADAR_USER_INFO_TYPES
from .errors import InvalidParams
from .items import contact_item, radar_item
from .longpoll import LongPollHandler
from .media import UploadHandler as MediaUploadHandler
from .params import Params
from .recall import RecallMessageHandler, TypingHandler
from .sending import SendMessageHandler


class RadarUserHandler(SignedHandler):
    signer: RadarUser

    async def find_signer(self, account_id: int) -> RadarUser | None:
        return await self.store.radar_user(account_id)

    async def require_customer(self, customer_id: int | None) -> Customer | None:
        if customer_id is None:
            return None
        customer = await self.store.customer(customer_id)
        if customer is None:
            raise InvalidParams.one(
                "customer_id", f"customer {customer_id} does not exist", "does_not_exist"
            )
        return customer


class SendHandler(RadarUserHandler, SendMessageHandler):
    """POST /zhugeleida/qiyeweixin/chat/send_msg/{o_id}"""

    side = Side.RADAR_USER
    info_types = RADAR_USER_INFO_TYPES
    success_msg = "发送成功"

    async def post(self, _o_id: str) -> None:
        form = self.form()
        customer_id = form.account_id("customer_id", required=True)
        content, client_msg_id = self.read_message(form)
        await self.require_customer(customer_id)
        await self.store_and_reply(customer_id, self.signer.id, content, client_msg_id)


class UploadHandler(RadarUserHandler, MediaUploadHandler):
    """POST /zhugeleida/qiyeweixin/chat/upload/{o_id}: a picture or video for the customer ``customer_id``."""

    side = Side.RADAR_USER

    async def read_conversation(self, query: Params) -> tuple[int, int]:
        customer_id = query.account_id("customer_id", required=True)
        query.check()
        await self.require_customer(customer_id)
        return customer_id, self.signer.id


class RecallHandler(RadarUserHandler, RecallMessageHandler):
    """POST /zhugeleida/qiyeweixin/chat/recall/{o_id}: take back one of the radar user's messages."""

    side = Side.RADAR_USER

    async def post(self, _o_id: str) -> None:
        form = self.form()
        customer_id = form.account_id("customer_id", required=True)
        message_id = form.integer("message_id", required=True, minimum=1)
        form.check()
        await self.require_customer(customer_id)
        assert message_id is not None  # required: check() refused its absence
        await self.recall_and_reply(customer_id, self.signer.id, message_id)


class TypingNowHandler(RadarUserHandler, TypingHandler):
    """POST /zhugeleida/qiyeweixin/chat/typing/{o_id}: the radar user is typing to the customer ``customer_id``."""

    side = Side.RADAR_USER

    async def post(self, _o_id: str) -> None:
        form = self.form()
        customer_id = form.account_id("customer_id", required=True)
        form.check()
        await self.require_customer(customer_id)
        self.announce_typing(customer_id, self.signer.id)


class GetMsgHandler(RadarUserHandler, LongPollHandler):
    """GET /zhugeleida/qiyeweixin/chat/getmsg/{o_id}: one conversation, or the whole inbox."""

    async def get(self, _o_id: str) -> None:
        query = self.query()
        customer_id = query.account_id("customer_id")
        wait, last_id = self.read_poll(query)
        typing = self.read_typing(query)
        query.check()
        await self.require_customer(customer_id)
        links = self.attachment_links()
        await self.answer_getmsg(Side.RADAR_USER, self.signer.id, customer_id, last_id, wait,
                                 lambda message: radar_item(message, links), typing=typing)


class HistoryHandler(RadarUserHandler):
    """GET /zhugeleida/qiyeweixin/chat: one page of one conversation."""

    async def get(self) -> None:
        query = self.query()
        customer_id = query.account_id("customer_id", required=True)
        offset, limit = query.page(max_length=self.api.history_max_length)
        query.check()
        await self.require_customer(customer_id)
        page = await self.store.read_history(Side.RADAR_USER, customer_id, self.signer.id, offset, limit)
        links = self.attachment_links()
        self.reply(
            "分页获取-全部聊天消息成功",
            {"ret_data": [radar_item(message, links) for message in page.messages], "data_count": page.total},
        )


class UnreadCountHandler(RadarUserHandler):
    """GET /zhugeleida/qiyeweixin/chat/query_num/{o_id}"""

    async def get(self, _o_id: str) -> None:
        query = self.query()
        customer_id = query.account_id("customer_id")
        query.check()
        await self.require_customer(customer_id)
        count = await self.store.unread_count(Side.RADAR_USER, self.signer.id, customer_id)
        self.reply("查询成功", {"chatinfo_count": count})


class ContactHandler(RadarUserHandler):
    """GET /zhugeleida/qiyeweixin/contact: conversations, most recent first."""

    async def get(self) -> None:
        query = self.query()
        offset, limit = query.page(max_length=self.api.history_max_length)
        query.check()
        contacts, total = await self.store.contacts(self.signer.id, offset, limit)
        links = self.attachment_links()
        self.reply(
            "查询成功",
            {"ret_data": [contact_item(contact, links) for contact in contacts], "data_count": total},
        )
