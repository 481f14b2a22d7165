"""Pictures and videos: the media room.

``Media`` is what the upload and download handlers use: the limits, a media
store (``stores.LocalMediaStore`` or ``s3.S3MediaStore``, the same interface),
the worker processes that check and convert uploads (``processing``), and the
signer of the URLs that pages fetch them by (``links``). Attachment records live
in the database beside the messages (storage/media.py); neither the handlers
nor storage know which store holds the bytes.
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .links import KEY_NAME, MediaLinks
from .metrics import UPLOAD_SECONDS
from .processing import ACCEPTED, Limits, Processed, Refused, process_upload
from .stores import LocalMediaStore, MediaStore, NoSpace, Served
from .uploads import UploadReceiver, UploadRefused, UploadTooLarge, clean_temporaries

log = logging.getLogger("leida_chat.media")

#: how many unclaimed uploads one sweep deletes before looking again
SWEEP_BATCH = 50


@dataclass(frozen=True)
class MediaSettings:
    """The ``[media]`` settings (leida_config.py has their defaults and checks)."""

    store: str = "local"
    directory: Path = Path("data/media")
    max_image_bytes: int = 10 * 1024 * 1024
    max_video_bytes: int = 50 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    max_frames: int = 500
    workers: int = 2
    url_ttl_seconds: int = 7 * 24 * 3600
    unclaimed_hours: float = 24.0
    upload_timeout: float = 600.0
    base_url: str = ""
    s3_endpoint: str = ""
    s3_bucket: str = ""
    s3_region: str = "us-east-1"
    s3_presign_seconds: int = 90

    @classmethod
    def from_config(cls, media: dict[str, Any]) -> MediaSettings:
        return cls(**{**media, "directory": Path(media["directory"])})

    @property
    def limits(self) -> Limits:
        return Limits(self.max_image_bytes, self.max_video_bytes, self.max_image_pixels, self.max_frames)

    @property
    def max_upload_bytes(self) -> int:
        """The largest body an upload may declare: the larger limit, plus room for the form around it."""
        return max(self.max_image_bytes, self.max_video_bytes) + 64 * 1024


class AttachmentRecords(Protocol):
    """What the sweep needs of storage (ChatStore has it)."""

    async def take_unclaimed_attachments(self, created_before: float, limit: int) -> list[tuple[str, str | None]]: ...


class Media:
    def __init__(self, settings: MediaSettings, store: MediaStore, links: MediaLinks) -> None:
        self.settings = settings
        self.store = store
        self.links = links
        self.temporary = settings.directory / "tmp"
        self.temporary.mkdir(parents=True, exist_ok=True)
        self._pool: ProcessPoolExecutor | None = None  # started by the first upload

    @classmethod
    async def open(cls, settings: MediaSettings, url_key: str) -> Media:
        """The store the settings name, and what a killed process left in the temporary directory deleted."""
        store: MediaStore
        if settings.store == "s3":
            from .s3 import S3MediaStore  # aiobotocore is loaded only when used

            store = await S3MediaStore.open(settings.s3_endpoint, settings.s3_bucket, settings.s3_region,
                                            settings.s3_presign_seconds)
        else:
            store = LocalMediaStore(settings.directory)
        media = cls(settings, store, MediaLinks(url_key, settings.url_ttl_seconds))
        removed = clean_temporaries(media.temporary)
        if removed:
            log.info("removed %d temporary upload files left by a stopped process", removed)
        return media

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        await self.store.close()

    def receiver(self, content_type: str) -> UploadReceiver:
        return UploadReceiver(content_type, self.temporary, self.settings.max_video_bytes, self.settings.max_image_bytes)

    async def process(self, upload: Path) -> Processed:
        """Check and convert the upload in a worker process (Refused if it is not acceptable). Processes,
        not threads: a thread decoding a photo beside the event loop made delivery p99 5.9x slower
        (bench/README.md, "Uploads"); they start with the first upload, at a lower CPU priority."""
        started = time.perf_counter()
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.settings.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_start_worker)
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, process_upload, upload, self.settings.limits)
        finally:
            UPLOAD_SECONDS.observe(time.perf_counter() - started)

    async def keep(self, processed: Processed, attachment_id: str) -> tuple[str, str | None]:
        """Put the file and its thumbnail into the store; their keys."""
        thumbnail_key = None
        if processed.thumbnail is not None:
            thumbnail_key = f"{attachment_id}.thumb"
            await self.store.put(thumbnail_key, processed.thumbnail, "image/jpeg")
        await self.store.put(attachment_id, processed.file, processed.content_type)
        return attachment_id, thumbnail_key

    async def serve(self, key: str, content_type: str, content_disposition: str) -> Served:
        return await self.store.serve(key, content_type=content_type, content_disposition=content_disposition)

    async def delete(self, keys: list[str]) -> None:
        for key in keys:
            try:
                await self.store.delete(key)
            except Exception:  # a file left over costs disk, never correctness: the record is gone
                log.warning("could not delete media %s", key, exc_info=True)

    async def sweep_unclaimed(self, records: AttachmentRecords, now: float | None = None) -> int:
        """Delete uploads no message claimed within ``unclaimed_hours``, record first, then file,
        a small batch at a time; returns how many went."""
        cutoff = (time.time() if now is None else now) - self.settings.unclaimed_hours * 3600
        removed = 0
        while True:
            taken = await records.take_unclaimed_attachments(cutoff, SWEEP_BATCH)
            await self.delete([key for pair in taken for key in pair if key is not None])
            removed += len(taken)
            if len(taken) < SWEEP_BATCH:
                break
        if removed:
            log.info("deleted %d unclaimed uploads older than %s hours", removed, self.settings.unclaimed_hours)
        return removed


#: how much lower the media processes' CPU priority is than the chat's (``nice``): decoding a 12 MP
#: photo takes a core for a quarter of a second, and the event loop must win that core whenever
#: it has a delivery to make (bench/README.md, "Uploads")
WORKER_NICENESS = 10


def _start_worker() -> None:
    """Run in each media process as it starts: a lower CPU priority, which the ffprobe and
    ffmpeg it starts inherit; and Ctrl-C left to the server, which stops its workers itself
    (a terminal sends SIGINT to the whole process group)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.nice(WORKER_NICENESS)
    except OSError:
        log.debug("media processes run at the chat's own CPU priority here")
    threading.Thread(target=_exit_with_the_server, args=(os.getppid(),), name="leida-media-watch", daemon=True).start()


def _exit_with_the_server(server_pid: int) -> None:
    """A server killed outright (SIGKILL, the OOM killer) cannot stop its workers: each notices
    that its parent is gone within a second and exits, instead of waiting on a queue for ever."""
    while os.getppid() == server_pid:
        time.sleep(1.0)
    os._exit(0)


__all__ = [
    "ACCEPTED", "KEY_NAME", "Media", "MediaLinks", "MediaSettings", "NoSpace", "Processed", "Refused", "Served",
    "UploadReceiver", "UploadRefused", "UploadTooLarge",
]
