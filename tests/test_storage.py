"""The schema is versioned: an old database is brought forward, a newer one refused."""
from __future__ import annotations

import sqlite3

import pytest

from storage import ChatStore
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
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_database_from_a_newer_release_is_refused(io_loop, tmp_path):
    path = tmp_path / "new.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaTooNew):
        io_loop.run_sync(lambda: ChatStore.open(path))
