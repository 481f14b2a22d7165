"""Storage: everything leida-chat keeps, and the waking of held requests.

``ChatStore`` is the only entry point; handlers never see SQL.
"""
from .records import (
    FROM_CUSTOMER,
    FROM_RADAR_USER,
    Contact,
    Customer,
    HistoryPage,
    Message,
    RadarUser,
    SendReceipt,
    Side,
)
from .store import ChatStore, local_timestamp
from .waiters import SUPERSEDED, Handed, Waiters, WaitKey, conversation_key, inbox_key
from .writer import DatabaseLocked, StorageFailing, WriterClosed

__all__ = [
    "FROM_CUSTOMER", "FROM_RADAR_USER", "ChatStore", "Contact", "Customer", "DatabaseLocked", "Handed", "HistoryPage",
    "Message", "RadarUser", "SUPERSEDED", "SendReceipt", "Side", "StorageFailing", "WaitKey", "Waiters", "WriterClosed",
    "conversation_key", "inbox_key", "local_timestamp",
]
