"""The radar-user side (企业微信 console): one rep, all of their customers.

Signed by the radar user; ``customer_id`` names the customer, who must exist.
"""
from __future__ import annotations

from collections.abc import Awaitable

from storage import FROM_RADAR_USER, Customer, Message, RadarUser, Side, conversation_key, inbox_key

from .base import SignedHandler
from .content import RADAR_USER_INFO_TYPES, parse_content
from .customer import CLIENT_MSG_ID_MAX_CHARS
from .errors import InvalidParams
from .items import contact_item, radar_item
from .longpoll import LongPollHandler
from .params import Params


class RadarUserHandler(SignedHandler):
    signer: RadarUser

    async def find_signer(self, account_id: int) -> RadarUser | None:
        return await self.store.radar_user(account_id)

    @staticmethod
    def read_customer_id(params: Params, *, required: bool) -> int | None:
        return params.account_id("customer_id", required=required)

    async def require_customer(self, customer_id: int | None) -> Customer | None:
        if customer_id is None:
            return None
        customer = await self.store.customer(customer_id)
        if customer is None:
            raise InvalidParams.one(
                "customer_id", f"customer {customer_id} does not exist", "does_not_exist"
            )
        return customer


class SendHandler(RadarUserHandler):
    """POST /zhugeleida/qiyeweixin/chat/send_msg/{o_id}"""

    async def post(self, _o_id: str) -> None:
        form = self.form()
        customer_id = self.read_customer_id(form, required=True)
        raw_content = form.text("content", required=True)
        send_type = form.integer("send_type")
        if send_type is not None and send_type != FROM_RADAR_USER:
            form.fail("send_type", f"send_type must be {FROM_RADAR_USER} on the radar-user side")
        client_msg_id = form.text("client_msg_id", max_length=CLIENT_MSG_ID_MAX_CHARS)
        form.check()
        content = parse_content(
            raw_content,
            allowed_info_types=RADAR_USER_INFO_TYPES,
            msg_max_chars=self.api.msg_max_chars,
            content_max_bytes=self.api.content_max_bytes,
        )
        await self.require_customer(customer_id)
        receipt = await self.store.send(customer_id, self.signer.id, FROM_RADAR_USER, content, client_msg_id)
        self.reply("发送成功", {"id": receipt.id, "dateTime": receipt.created_at})


class GetMsgHandler(RadarUserHandler, LongPollHandler):
    """GET /zhugeleida/qiyeweixin/chat/getmsg/{o_id}: one conversation, or the whole inbox."""

    async def get(self, _o_id: str) -> None:
        query = self.query()
        customer_id = self.read_customer_id(query, required=False)
        wait = query.seconds("wait", default=self.api.longpoll_timeout, cap=self.api.longpoll_max_timeout)
        last_id = query.integer("last_id", minimum=0)
        query.check()
        await self.require_customer(customer_id)
        user_id = self.signer.id
        limit = self.api.getmsg_max_items
        key = inbox_key(user_id) if customer_id is None else conversation_key(customer_id, user_id)

        def fetch() -> Awaitable[list[Message]]:
            if last_id is None:
                return self.store.unread_messages(Side.RADAR_USER, user_id, customer_id, limit)
            return self.store.messages_after(last_id, user_id, customer_id, limit)

        messages = await self.hold_until_new((key,), fetch, wait)
        if messages is None:
            return
        read_up_to = {
            message.customer_id: message.id
            for message in messages
            if not message.read_by_user and message.send_type != FROM_RADAR_USER
        }
        await self.store.mark_read(Side.RADAR_USER, user_id, read_up_to)
        self.reply(
            "实时获取-最新聊天信息成功" if messages else "没有得到实时聊天信息",
            {"ret_data": [radar_item(message) for message in messages], "data_count": len(messages)},
        )


class HistoryHandler(RadarUserHandler):
    """GET /zhugeleida/qiyeweixin/chat: one page of one conversation."""

    async def get(self) -> None:
        query = self.query()
        customer_id = self.read_customer_id(query, required=True)
        offset, limit = query.page(max_length=self.api.history_max_length)
        query.check()
        await self.require_customer(customer_id)
        page = await self.store.read_history(Side.RADAR_USER, customer_id, self.signer.id, offset, limit)
        self.reply(
            "分页获取-全部聊天消息成功",
            {"ret_data": [radar_item(message) for message in page.messages], "data_count": page.total},
        )


class UnreadCountHandler(RadarUserHandler):
    """GET /zhugeleida/qiyeweixin/chat/query_num/{o_id}"""

    async def get(self, _o_id: str) -> None:
        query = self.query()
        customer_id = self.read_customer_id(query, required=False)
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
        self.reply(
            "查询成功",
            {"ret_data": [contact_item(contact) for contact in contacts], "data_count": total},
        )
