"""Prometheus metrics of storage: commits, messages sent, and what went wrong.

They live in prometheus_client's default registry, which the metrics listener
(handlers/metrics.py) serves. Counting is an increment of a label child looked
up once, so the hot path pays well under a microsecond per message
(bench/README.md has the figures with and without).
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

# the *_created samples (when each series began) double every scrape and no dashboard reads them
disable_created_metrics()

COMMIT_BATCH_SIZE = Histogram(
    "leida_commit_batch_size", "Changes (sends, read positions, accounts) committed in one transaction",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
)
COMMIT_DURATION = Histogram(
    "leida_commit_duration_seconds", "From BEGIN to the end of COMMIT (fsync included) of one transaction",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
MESSAGES_SENT = Counter(
    "leida_messages_sent", "Messages stored (a repeated client_msg_id is not counted again), by the side that sent",
    ["side"],
)
ERRORS = Counter(
    "leida_errors", "Failures by kind: storage_full, storage_io, database_unavailable, database_locked, "
    "after_commit, read_positions, listener, overloaded, internal", ["kind"],
)

RETENTION_DELETED = Counter(
    "leida_retention_deleted", "Rows deleted by retention (storage/retention.py), by kind: messages, attachments, "
    "webhook_events, unclaimed_uploads", ["kind"],
)
RETENTION_LAST_RUN = Gauge(
    "leida_retention_last_run_timestamp_seconds", "When the retention task last finished a run (Unix time)",
)

#: label children, looked up once: ``labels()`` costs more than the increment itself
MESSAGES_FROM_CUSTOMERS = MESSAGES_SENT.labels(side="customer")
MESSAGES_FROM_RADAR_USERS = MESSAGES_SENT.labels(side="radar_user")


def count_error(kind: str) -> None:
    ERRORS.labels(kind=kind).inc()


for _kind in ("storage_full", "storage_io", "database_unavailable", "database_locked", "after_commit",
              "read_positions", "listener", "overloaded", "internal"):
    ERRORS.labels(kind=_kind)  # every kind is exported from the start, at 0, so a rate() has a base
