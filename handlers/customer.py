"""The customer side (公众号): an H5 page talking to one radar user's card.

Signed by the customer; ``u_id`` names the radar user, who must exist.
"""
from __future__ import annotations

from storage import FROM_CUSTOMER, Customer, RadarUser, Side, conversation_key

from .base import SignedHandler
from .content import CUSTOMER_INFO_TYPES, parse_content
from .errors import InvalidParams
from .items import customer_history_item, customer_item
from .longpoll import LongPollHandler
from .params import Params

CLIENT_MSG_ID_MAX_CHARS = 64


class CustomerHandler(SignedHandler):
    signer: Customer

    async def find_signer(self, account_id: int) -> Customer | None:
        return await self.store.customer(account_id)

    def read_radar_user_id(self, params: Params) -> int | None:
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


class SendHandler(CustomerHandler):
    """POST /zhugeleida/gongzhonghao/chat/send_msg/{o_id}"""

    async def post(self, _o_id: str) -> None:
        form = self.form()
        user_id = self.read_radar_user_id(form)
        raw_content = form.text("content", required=True)
        send_type = form.integer("send_type")
        if send_type is not None and send_type != FROM_CUSTOMER:
            form.fail("send_type", f"send_type must be {FROM_CUSTOMER} on the customer side")
        client_msg_id = form.text("client_msg_id", max_length=CLIENT_MSG_ID_MAX_CHARS)
        form.check()
        content = parse_content(
            raw_content,
            allowed_info_types=CUSTOMER_INFO_TYPES,
            msg_max_chars=self.api.msg_max_chars,
            content_max_bytes=self.api.content_max_bytes,
        )
        await self.require_radar_user(user_id)
        receipt = await self.store.send(self.signer.id, user_id, FROM_CUSTOMER, content, client_msg_id)
        self.reply("send msg successful", {"id": receipt.id, "dateTime": receipt.created_at})


class GetMsgHandler(CustomerHandler, LongPollHandler):
    """GET /zhugeleida/gongzhonghao/chat/getmsg/{o_id}: the long-poll."""

    async def get(self, _o_id: str) -> None:
        query = self.query()
        user_id = self.read_radar_user_id(query)
        wait = query.seconds("wait", default=self.api.longpoll_timeout, cap=self.api.longpoll_max_timeout)
        last_id = query.integer("last_id", minimum=0)
        query.check()
        await self.require_radar_user(user_id)
        customer_id = self.signer.id
        limit = self.api.getmsg_max_items

        def fetch():
            if last_id is None:
                return self.store.unread_messages(Side.CUSTOMER, user_id, customer_id, limit)
            return self.store.messages_after(last_id, user_id, customer_id, limit)

        messages = await self.hold_until_new((conversation_key(customer_id, user_id),), fetch, wait)
        if messages is None:
            return
        if any(not message.read_by_customer for message in messages):
            await self.store.mark_read(Side.CUSTOMER, user_id, {customer_id: messages[-1].id})
        self.reply(
            "实时获取-最新聊天信息成功" if messages else "没有得到实时聊天信息",
            {"ret_data": [customer_item(message) for message in messages], "data_count": len(messages)},
        )


class HistoryHandler(CustomerHandler):
    """GET /zhugeleida/gongzhonghao/chat: one page of the conversation."""

    async def get(self) -> None:
        query = self.query()
        user_id = self.read_radar_user_id(query)
        offset, limit = query.page(max_length=self.api.history_max_length)
        query.check()
        user = await self.require_radar_user(user_id)
        page = await self.store.read_history(Side.CUSTOMER, self.signer.id, user_id, offset, limit)
        self.reply(
            "分页获取-全部聊天消息成功",
            {
                "ret_data": [customer_history_item(message) for message in page.messages],
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
