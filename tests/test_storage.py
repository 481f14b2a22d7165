"""The schema is versioned: an old database is brought forward, a newer one refused.
Another process holding the write lock delays sends without freezing the server."""
from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from conftest import text
from storage import ChatStore
from storage import sqlite as sqlite_backend
from storage.schema import MIGRATIONS, SCHEMA_VERSION, SchemaTooNew


def make_version_1(path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[1])
    conn.execute("INSERT INTO radar_user (id, username, token) VALUES (1, 'u', 't')")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()


def test_a_version_1_database_is_migrated_and_keeps_its_data(io_loop, tmp_path):
    path = tmp_path / "old.db"
    make_version_1(path)
    store = io_loop.run_sync(lambda: ChatStore.open(path))
    try:
        assert io_loop.run_sync(lambda: store.radar_user(1)).username == "u"
    finally:
        io_loop.run_sync(store.close)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "conversation_unread_by_user" in indexes
    assert conn.execute("SELECT version FROM account_change").fetchone()[0] >= 0
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.gen_test(timeout=20)
async def test_an_account_changed_by_another_process_applies_within_the_recheck_time(tmp_path):
    store = await ChatStore.open(tmp_path / "chat.db", account_cache_seconds=0.3)
    try:
        user_id, token = await store.save_radar_user(None, username="王经理")
        customer_id, _ = await store.save_customer(None, username="小明")
        assert (await store.radar_user(user_id)).token == token  # now cached
        assert (await store.customer(customer_id)).username == "小明"
        other = sqlite3.connect(tmp_path / "chat.db")  # the CLI, say
        other.execute("UPDATE radar_user SET token = 'rotated' WHERE id = ?", (user_id,))
        other.execute("DELETE FROM customer WHERE id = ?", (customer_id,))
        other.commit()
        other.close()
        await asyncio.sleep(0.4)
        assert (await store.radar_user(user_id)).token == "rotated"
        assert await store.customer(customer_id) is None
    finally:
        await store.close()


def test_a_database_from_a_newer_release_is_refused(io_loop, tmp_path):
    path = tmp_path / "new.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaTooNew):
        io_loop.run_sync(lambda: ChatStore.open(path))


@pytest.mark.gen_test(timeout=20)
@pytest.mark.sqlite_only
async def test_a_send_waits_for_another_process_holding_the_write_lock_and_the_server_keeps_answering(
    api, db_path, radar_user, customer
):
    other = sqlite3.connect(db_path, isolation_level=None)  # e.g. `leida_chat.py add-user` mid-write
    other.execute("BEGIN IMMEDIATE")
    try:
        send = asyncio.ensure_future(api.customer_send(customer, radar_user.id, text("after the lock")))
        await asyncio.sleep(0.5)
        assert not send.done()
        started = time.monotonic()
        body = await api.radar_getmsg(radar_user, wait=0)  # reads go on meanwhile
        assert body["code"] == 200 and body["data"]["ret_data"] == []
        assert time.monotonic() - started < 0.5
    finally:
        other.execute("COMMIT")
        other.close()
    body = await send
    assert body["code"] == 200, body
    items = (await api.radar_getmsg(radar_user, wait=0))["data"]["ret_data"]
    assert [item["id"] for item in items] == [body["data"]["id"]]
    assert items[0]["msg"] == "after the lock"


@pytest.mark.gen_test(timeout=20)
@pytest.mark.sqlite_only
async def test_a_write_lock_held_too_long_is_a_503_that_stores_nothing(
    api, db_path, radar_user, customer, monkeypatch
):
    monkeypatch.setattr(sqlite_backend, "LOCK_WAIT_MS", 200)
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        response = await api.raw(
            "POST", api.url(f"{api.CUSTOMER}/chat/send_msg/0", customer),
            f"u_id={radar_user.id}&content=%7B%22info_type%22%3A1%2C%22msg%22%3A%22x%22%7D",
        )
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert response.code == 503
    assert response.headers["Retry-After"] == "2"
    assert (await api.radar_getmsg(radar_user, wait=0))["data"]["ret_data"] == []
    body = await api.customer_send(customer, radar_user.id, text("later"))  # and the writer goes on
    assert body["code"] == 200, body
