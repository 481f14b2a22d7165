"""Prometheus metrics of uploads (served with every other metric on the metrics listener)."""
from __future__ import annotations

from prometheus_client import Counter, Histogram

UPLOADS = Counter("leida_uploads", "Uploads by kind (image, video, unknown) and outcome (stored, refused, "
                  "too_large, no_space, aborted, failed)", ["type", "outcome"])
UPLOAD_BYTES = Counter("leida_upload_bytes", "Bytes of uploaded files stored (after conversion, thumbnails apart)")
UPLOAD_SECONDS = Histogram(
    "leida_upload_processing_seconds", "Checking, converting and thumbnailing one upload, in the worker processes",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


def count_upload(kind: str, outcome: str) -> None:
    UPLOADS.labels(type=kind, outcome=outcome).inc()


for _kind in ("image", "video", "unknown"):
    for _outcome in ("stored", "refused", "too_large", "no_space", "aborted", "failed"):
        UPLOADS.labels(type=_kind, outcome=_outcome)  # exported from the start, at 0, so a rate() has a base
