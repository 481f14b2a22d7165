"""A long-poll answer lost on the way costs nothing: the client resumes with last_id."""
from __future__ import annotations

import asyncio
import random
from urllib.parse import urlsplit

import pytest
import ujson

from conftest import text


async def poll_raw(api, path_and_query: str, drop_after: int | None) -> dict | None:
    """One GET; with ``drop_after`` the socket is closed after that many bytes of the answer."""
    parts = urlsplit(api.base_url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(f"GET {path_and_query} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
    await writer.drain()
    try:
        if drop_after is not None:
            await reader.readexactly(drop_after)  # the server has started to answer...
            return None  # ...and the client is gone
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        return ujson.loads(await reader.readexactly(length))
    finally:
        writer.close()


@pytest.mark.gen_test(timeout=30)
async def test_client_dropping_answers_at_random_misses_nothing_and_sees_nothing_twice(api, customer, radar_user):
    rng = random.Random(7)
    sent: list[int] = []
    sending_done = asyncio.Event()

    async def radar_user_sends() -> None:
        for n in range(60):
            body = await api.radar_send(radar_user, customer.id, text(f"m{n}"))
            sent.append(body["data"]["id"])
            await asyncio.sleep(rng.uniform(0, 0.02))
        sending_done.set()

    seen: list[int] = []
    last_id = 0
    drops = 0
    sender = asyncio.ensure_future(radar_user_sends())
    while not (sending_done.is_set() and seen and seen[-1] == sent[-1]):
        url = api.url("/zhugeleida/gongzhonghao/chat/getmsg/0", customer,
                      {"u_id": radar_user.id, "wait": 1, "last_id": last_id})
        drop = rng.random() < 0.4
        answer = await poll_raw(api, url[len(api.base_url):], drop_after=rng.randint(1, 60) if drop else None)
        if answer is None:
            drops += 1
            continue
        ids = [item["id"] for item in answer["data"]["ret_data"]]
        seen += ids
        if ids:
            last_id = ids[-1]
    await sender
    assert drops >= 5
    assert seen == sent  # all of them, in order, none twice


@pytest.mark.gen_test(timeout=30)
async def test_without_last_id_an_answer_dropped_before_it_is_written_marks_nothing(api, store, customer, radar_user):
    url = api.url("/zhugeleida/gongzhonghao/chat/getmsg/0", customer, {"u_id": radar_user.id, "wait": 10})
    parts = urlsplit(api.base_url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(f"GET {url[len(api.base_url):]} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()  # gone while held, before any answer exists
    await asyncio.sleep(0.1)
    await api.radar_send(radar_user, customer.id, text("for later"))
    assert await api.customer_unread(customer, radar_user.id) == 1
    body = await api.customer_getmsg(customer, radar_user.id)
    assert [item["msg"] for item in body["data"]["ret_data"]] == ["for later"]
