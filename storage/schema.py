"""The database schema and its migrations.

The schema version lives in ``PRAGMA user_version`` so that a database made by
an older release is brought forward at start, one numbered step at a time, and
a database from a newer release is refused instead of being misread.

Conversations are keyed by (customer_id, user_id) and carry each side's read
position: a message is read by a side when its id is at or below that side's
position. ``last_customer_message_id`` (the last message the radar user
receives: the customer's, or a tip) lets unread scans skip conversations with
nothing new for the radar user without touching the message table.
"""
from __future__ import annotations

from typing import Any

import aiosqlite

MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE radar_user (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL,
        avatar TEXT NOT NULL DEFAULT '',
        mingpian_avatar TEXT NOT NULL DEFAULT '',
        mingpian_phone TEXT NOT NULL DEFAULT '',
        wechat TEXT NOT NULL DEFAULT '',
        wechat_phone TEXT NOT NULL DEFAULT '',
        token TEXT NOT NULL
    );
    CREATE TABLE customer (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL,
        headimgurl TEXT NOT NULL DEFAULT '',
        token TEXT NOT NULL
    );
    CREATE TABLE conversation (
        customer_id INTEGER NOT NULL REFERENCES customer(id),
        user_id INTEGER NOT NULL REFERENCES radar_user(id),
        first_message_id INTEGER NOT NULL,
        last_message_id INTEGER NOT NULL,
        last_customer_message_id INTEGER NOT NULL DEFAULT 0,
        customer_read_id INTEGER NOT NULL DEFAULT 0,
        user_read_id INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (customer_id, user_id)
    ) WITHOUT ROWID;
    -- contact list (most recent first) and the radar user's inbox scans
    CREATE INDEX conversation_by_user_activity ON conversation (user_id, last_message_id);
    CREATE TABLE message (
        id INTEGER PRIMARY KEY,
        customer_id INTEGER NOT NULL,
        user_id INTEGER NOT NULL,
        send_type INTEGER NOT NULL CHECK (send_type IN (1, 2)),
        content TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    -- one conversation's messages in id order: getmsg, history, unread counts
    CREATE INDEX message_by_conversation ON message (customer_id, user_id, id);
    -- a radar user's whole inbox after a resume cursor
    CREATE INDEX message_by_user ON message (user_id, id);
    -- idempotent sends: (sender side, sender id, client key) -> message
    CREATE TABLE client_message (
        send_type INTEGER NOT NULL,
        sender_id INTEGER NOT NULL,
        client_msg_id TEXT NOT NULL,
        message_id INTEGER NOT NULL REFERENCES message(id),
        PRIMARY KEY (send_type, sender_id, client_msg_id)
    ) WITHOUT ROWID;
    """,
    2: """
    -- a radar user's unread conversations: inbox getmsg and query_num without
    -- scanning every conversation the user has ever had
    CREATE INDEX conversation_unread_by_user ON conversation (user_id)
        WHERE last_customer_message_id > user_read_id;
    """,
    3: """
    -- bumped by every change to an account, by this server or by any other
    -- process (the CLI): the server keeps accounts cached until it moves
    CREATE TABLE account_change (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        version INTEGER NOT NULL
    );
    INSERT INTO account_change (id, version) VALUES (1, 0);
    CREATE TRIGGER customer_insert AFTER INSERT ON customer
        BEGIN UPDATE account_change SET version = version + 1; END;
    CREATE TRIGGER customer_update AFTER UPDATE ON customer
        BEGIN UPDATE account_change SET version = version + 1; END;
    CREATE TRIGGER customer_delete AFTER DELETE ON customer
        BEGIN UPDATE account_change SET version = version + 1; END;
    CREATE TRIGGER radar_user_insert AFTER INSERT ON radar_user
        BEGIN UPDATE account_change SET version = version + 1; END;
    CREATE TRIGGER radar_user_update AFTER UPDATE ON radar_user
        BEGIN UPDATE account_change SET version = version + 1; END;
    CREATE TRIGGER radar_user_delete AFTER DELETE ON radar_user
        BEGIN UPDATE account_change SET version = version + 1; END;
    """,
    4: """
    -- accounts the demo seeded itself: the only ones /demo/accounts.json may
    -- ever hand out; every account made by the CLI or a deployment stays 0
    ALTER TABLE radar_user ADD COLUMN seeded_by_demo INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE customer ADD COLUMN seeded_by_demo INTEGER NOT NULL DEFAULT 0;
    """,
    5: """
    -- one row that /readyz rewrites while the disk is full: as large as the largest
    -- send, so that "ready" means a send fits, not merely a one-page write
    CREATE TABLE disk_probe (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        filler BLOB NOT NULL
    );
    """,
    6: """
    -- Offline notifications (storage/outbox.py). Per conversation and direction
    -- (send_type: whose messages), the unread stretch being watched: due_at is
    -- when its oldest message turns webhook.unread_after_seconds old (NULL:
    -- nothing to look at); announced_read_id is the reader's read position when
    -- the last event fired (NULL: never), announced_up_to the last message id it
    -- announced. Written in the send's own transaction.
    CREATE TABLE unread_watch (
        customer_id INTEGER NOT NULL,
        user_id INTEGER NOT NULL,
        send_type INTEGER NOT NULL,
        due_at REAL,
        announced_read_id INTEGER,
        announced_up_to INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (customer_id, user_id, send_type)
    ) WITHOUT ROWID;
    CREATE INDEX unread_watch_due ON unread_watch (due_at) WHERE due_at IS NOT NULL;
    -- the outbox: one row per webhook event, its body fixed when it was made, so
    -- that every attempt sends the same bytes under the same webhook-id
    CREATE TABLE webhook_event (
        id TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        user_id INTEGER NOT NULL,
        customer_id INTEGER NOT NULL,
        body TEXT NOT NULL,
        created_at REAL NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL,
        last_error TEXT NOT NULL DEFAULT '',
        finished_at REAL
    );
    CREATE INDEX webhook_event_due ON webhook_event (next_attempt_at) WHERE status = 'pending';
    CREATE INDEX webhook_event_by_status ON webhook_event (status, created_at);
    """,
    7: """
    -- Pictures and videos (media/). One row per upload: who uploaded it, for which
    -- conversation, what the server made of it (type, size, dimensions, SHA-256 of the
    -- stored bytes) and where the media store keeps it. message_id is NULL until a
    -- message claims it, in the send's own transaction; unclaimed rows older than
    -- media.unclaimed_hours are deleted with their files.
    CREATE TABLE attachment (
        id TEXT PRIMARY KEY,
        send_type INTEGER NOT NULL CHECK (send_type IN (1, 2)),
        uploader_id INTEGER NOT NULL,
        customer_id INTEGER NOT NULL,
        user_id INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('image', 'video')),
        content_type TEXT NOT NULL,
        size INTEGER NOT NULL,
        width INTEGER,
        height INTEGER,
        duration REAL,
        sha256 TEXT NOT NULL,
        storage_key TEXT NOT NULL,
        thumbnail_key TEXT,
        thumbnail_size INTEGER NOT NULL DEFAULT 0,
        message_id INTEGER,
        created_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX attachment_unclaimed ON attachment (created_at) WHERE message_id IS NULL;
    CREATE INDEX attachment_by_conversation ON attachment (customer_id, user_id);
    -- secrets the server makes once and every process and host shares (the media URL key)
    CREATE TABLE server_key (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;
    """,
    8: """
    -- The server API (server_api/). A disabled account's requests are refused as with a
    -- bad signature, and it can be enabled again.
    ALTER TABLE radar_user ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE customer ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0;
    -- send_type 3: the server's own words (tips). SQLite cannot alter a CHECK, so the
    -- table is made again (sqlite.org/lang_altertable.html, "other kinds of table schema
    -- changes"); foreign keys are off while migrations run (storage/sqlite.py).
    CREATE TABLE message_v8 (
        id INTEGER PRIMARY KEY,
        customer_id INTEGER NOT NULL,
        user_id INTEGER NOT NULL,
        send_type INTEGER NOT NULL CHECK (send_type IN (1, 2, 3)),
        content TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    INSERT INTO message_v8 (id, customer_id, user_id, send_type, content, created_at)
        SELECT id, customer_id, user_id, send_type, content, created_at FROM message;
    DROP TABLE message;
    ALTER TABLE message_v8 RENAME TO message;
    CREATE INDEX message_by_conversation ON message (customer_id, user_id, id);
    CREATE INDEX message_by_user ON message (user_id, id);
    -- erasure and retention delete messages by id: their idempotency keys, attachments
    -- and a customer's webhook events are found without a scan
    CREATE INDEX client_message_by_message ON client_message (message_id);
    CREATE INDEX attachment_by_message ON attachment (message_id) WHERE message_id IS NOT NULL;
    CREATE INDEX webhook_event_by_customer ON webhook_event (customer_id);
    """,
    9: """
    -- Recall (撤回): a recalled message keeps its id, time and sender, loses its content
    -- ('{}'), and names the notice that recalled it (a send_type 3 message, info_type 7).
    -- NULL: not recalled.
    ALTER TABLE message ADD COLUMN recalled_by INTEGER;
    """,
}

SCHEMA_VERSION = max(MIGRATIONS)


class SchemaTooNew(RuntimeError):
    """The database was written by a newer leida-chat than this one."""


async def migrate(conn: aiosqlite.Connection) -> int:
    """Bring the database to SCHEMA_VERSION; each step commits on its own."""
    async with conn.execute("PRAGMA user_version") as cursor:
        (version,) = await cursor.fetchone() or (0,)  # a PRAGMA always answers one row
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"database schema version {version} is newer than this server's {SCHEMA_VERSION}"
        )
    for step in range(version + 1, SCHEMA_VERSION + 1):
        # executescript commits first; the whole step then runs in one transaction.
        await conn.executescript(
            f"BEGIN IMMEDIATE;\n{MIGRATIONS[step]}\nPRAGMA user_version = {step};\nCOMMIT;"
        )
    return SCHEMA_VERSION


# -- PostgreSQL ---------------------------------------------------------------------
# The same tables and indexes, numbered on the same scale: step 5 is everything
# SQLite's steps 1 to 5 make, so a step added later is written once per backend
# under one number. The version lives in ``schema_version``. Every table is
# keyed or indexed by the radar user (``user_id``) it belongs to, except the
# accounts themselves and client_message (keyed by sender): see docs/scaling.md.

POSTGRES_MIGRATIONS: dict[int, str] = {
    5: """
    CREATE TABLE radar_user (
        id BIGINT PRIMARY KEY,
        username TEXT NOT NULL,
        avatar TEXT NOT NULL DEFAULT '',
        mingpian_avatar TEXT NOT NULL DEFAULT '',
        mingpian_phone TEXT NOT NULL DEFAULT '',
        wechat TEXT NOT NULL DEFAULT '',
        wechat_phone TEXT NOT NULL DEFAULT '',
        token TEXT NOT NULL,
        seeded_by_demo INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE customer (
        id BIGINT PRIMARY KEY,
        username TEXT NOT NULL,
        headimgurl TEXT NOT NULL DEFAULT '',
        token TEXT NOT NULL,
        seeded_by_demo INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE conversation (
        customer_id BIGINT NOT NULL REFERENCES customer(id),
        user_id BIGINT NOT NULL REFERENCES radar_user(id),
        first_message_id BIGINT NOT NULL,
        last_message_id BIGINT NOT NULL,
        last_customer_message_id BIGINT NOT NULL DEFAULT 0,
        customer_read_id BIGINT NOT NULL DEFAULT 0,
        user_read_id BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (customer_id, user_id)
    );
    CREATE INDEX conversation_by_user_activity ON conversation (user_id, last_message_id);
    CREATE INDEX conversation_unread_by_user ON conversation (user_id)
        WHERE last_customer_message_id > user_read_id;
    -- ids are taken while the radar user's row is locked (storage/postgres.py), so one
    -- inbox's ids are numbered and committed in the same order
    CREATE SEQUENCE message_id_seq;
    CREATE TABLE message (
        id BIGINT PRIMARY KEY,
        customer_id BIGINT NOT NULL,
        user_id BIGINT NOT NULL,
        send_type INTEGER NOT NULL CHECK (send_type IN (1, 2)),
        content TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX message_by_conversation ON message (customer_id, user_id, id);
    CREATE INDEX message_by_user ON message (user_id, id);
    CREATE TABLE client_message (
        send_type INTEGER NOT NULL,
        sender_id BIGINT NOT NULL,
        client_msg_id TEXT NOT NULL,
        message_id BIGINT NOT NULL REFERENCES message(id),
        PRIMARY KEY (send_type, sender_id, client_msg_id)
    );
    CREATE TABLE account_change (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        version BIGINT NOT NULL
    );
    INSERT INTO account_change (id, version) VALUES (1, 0);
    CREATE FUNCTION account_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN UPDATE account_change SET version = version + 1; RETURN NULL; END $$;
    CREATE TRIGGER customer_change AFTER INSERT OR UPDATE OR DELETE ON customer
        FOR EACH STATEMENT EXECUTE FUNCTION account_changed();
    CREATE TRIGGER radar_user_change AFTER INSERT OR UPDATE OR DELETE ON radar_user
        FOR EACH STATEMENT EXECUTE FUNCTION account_changed();
    -- What a batch of sends needs to know, in one round trip (storage/postgres.py): lock the
    -- radar users' rows in id order, then read, in a statement of its own and so with a
    -- snapshot taken after the locks were granted (a plpgsql function's statements each take
    -- one), which conversations exist, which client keys were used, and new message ids.
    CREATE FUNCTION send_context(locked_users BIGINT[], pair_customers BIGINT[], pair_users BIGINT[],
                                 key_types INTEGER[], key_senders BIGINT[], key_ids TEXT[], id_count INTEGER)
    RETURNS TABLE (row_kind INTEGER, v1 BIGINT, v2 BIGINT, v3 TEXT, v4 TEXT) LANGUAGE plpgsql AS $$
    #variable_conflict use_column
    BEGIN
        PERFORM 1 FROM radar_user WHERE id = ANY(locked_users) ORDER BY id FOR UPDATE;
        RETURN QUERY
            SELECT 0, c.customer_id, c.user_id, '', ''
            FROM unnest(pair_customers, pair_users) AS v(customer_id, user_id)
            JOIN conversation c USING (customer_id, user_id)
            UNION ALL
            SELECT 1, k.send_type::BIGINT, k.sender_id, k.client_msg_id, m.id::TEXT || ' ' || m.created_at
            FROM unnest(key_types, key_senders, key_ids) AS v(send_type, sender_id, client_msg_id)
            JOIN client_message k USING (send_type, sender_id, client_msg_id)
            JOIN message m ON m.id = k.message_id
            UNION ALL
            SELECT 2, nextval('message_id_seq'), 0::BIGINT, '', '' FROM generate_series(1, id_count);
    END $$;
    """,
    6: """
    CREATE TABLE unread_watch (
        customer_id BIGINT NOT NULL,
        user_id BIGINT NOT NULL,
        send_type INTEGER NOT NULL,
        due_at DOUBLE PRECISION,
        announced_read_id BIGINT,
        announced_up_to BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (customer_id, user_id, send_type)
    );
    CREATE INDEX unread_watch_due ON unread_watch (due_at) WHERE due_at IS NOT NULL;
    CREATE TABLE webhook_event (
        id TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        user_id BIGINT NOT NULL,
        customer_id BIGINT NOT NULL,
        body TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at DOUBLE PRECISION,
        last_error TEXT NOT NULL DEFAULT '',
        finished_at DOUBLE PRECISION
    );
    CREATE INDEX webhook_event_due ON webhook_event (next_attempt_at) WHERE status = 'pending';
    CREATE INDEX webhook_event_by_status ON webhook_event (status, created_at);
    """,
    7: """
    CREATE TABLE attachment (
        id TEXT PRIMARY KEY,
        send_type INTEGER NOT NULL CHECK (send_type IN (1, 2)),
        uploader_id BIGINT NOT NULL,
        customer_id BIGINT NOT NULL,
        user_id BIGINT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('image', 'video')),
        content_type TEXT NOT NULL,
        size BIGINT NOT NULL,
        width INTEGER,
        height INTEGER,
        duration DOUBLE PRECISION,
        sha256 TEXT NOT NULL,
        storage_key TEXT NOT NULL,
        thumbnail_key TEXT,
        thumbnail_size BIGINT NOT NULL DEFAULT 0,
        message_id BIGINT,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX attachment_unclaimed ON attachment (created_at) WHERE message_id IS NULL;
    CREATE INDEX attachment_by_conversation ON attachment (customer_id, user_id);
    CREATE TABLE server_key (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    8: """
    ALTER TABLE radar_user ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE customer ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE message DROP CONSTRAINT message_send_type_check;
    ALTER TABLE message ADD CONSTRAINT message_send_type_check CHECK (send_type IN (1, 2, 3));
    CREATE INDEX client_message_by_message ON client_message (message_id);
    CREATE INDEX attachment_by_message ON attachment (message_id) WHERE message_id IS NOT NULL;
    CREATE INDEX webhook_event_by_customer ON webhook_event (customer_id);
    """,
    9: """
    ALTER TABLE message ADD COLUMN recalled_by BIGINT;
    """,
}

#: any number, the same in every process: migrations across processes starting at once take turns
POSTGRES_MIGRATION_LOCK = 0x1E1DA


async def migrate_postgres(conn: Any) -> int:
    """Bring a PostgreSQL database (an asyncpg connection) to SCHEMA_VERSION, each step in one transaction."""
    await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    for step in sorted(POSTGRES_MIGRATIONS):
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", POSTGRES_MIGRATION_LOCK)
            version = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"database schema version {version} is newer than this server's {SCHEMA_VERSION}"
                )
            if version >= step:
                continue
            await conn.execute(POSTGRES_MIGRATIONS[step])
            await conn.execute("DELETE FROM schema_version")
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", step)
    return SCHEMA_VERSION
