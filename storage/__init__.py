"""Storage: everything leida-chat keeps, and the waking of held requests.

``ChatStore`` is the only entry point; handlers never see SQL. It holds the
rules once; ``storage/sqlite.py`` and ``storage/postgres.py`` hold the SQL.
"""
from .records import (
    FROM_CUSTOMER,
    FROM_RADAR_USER,
    TIP,
    AccountMissing,
    AccountNeedsName,
    AccountRowInvalid,
    Attachment,
    AttachmentUnavailable,
    Contact,
    Customer,
    HistoryPage,
    Message,
    RadarUser,
    RecallRefused,
    SendReceipt,
    Side,
)
from .sqlite import DatabaseLocked
from .store import ChatStore, is_postgres, local_timestamp, sqlite_path
from .waiters import (
    ACCOUNT_ENDED,
    SUPERSEDED,
    Handed,
    Typing,
    Waiters,
    WaitKey,
    conversation_key,
    inbox_key,
    typing_keys,
)
from .writer import StorageFailing, WriterClosed

__all__ = [
    "ACCOUNT_ENDED", "TIP", "RecallRefused", "Typing", "typing_keys", "AccountMissing", "AccountRowInvalid", "FROM_CUSTOMER", "FROM_RADAR_USER", "AccountNeedsName", "Attachment", "AttachmentUnavailable", "ChatStore",
    "Contact", "Customer", "DatabaseLocked", "Handed",
    "HistoryPage", "Message", "RadarUser", "SUPERSEDED", "SendReceipt", "Side", "StorageFailing", "WaitKey",
    "Waiters", "WriterClosed", "conversation_key", "inbox_key", "is_postgres", "local_timestamp", "sqlite_path",
]
