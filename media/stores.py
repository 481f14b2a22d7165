"""Where attachment bytes live: one interface, a local directory or an S3-compatible bucket.

The rest of the server cannot tell the two apart (Zulip's ``upload/local.py``
and ``upload/s3.py`` are the model). A store is handed a finished temporary
file and a key made by the server (random hex, never a client's name), and
answers where a GET should be served from: a path on this host, or a short
presigned URL.
"""
from __future__ import annotations

import asyncio
import errno
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

#: how keys look: an attachment id (32 lowercase hex digits), or its thumbnail's ("<id>.thumb")
KEY = re.compile(r"[0-9a-f]{32}(\.thumb)?")


class NoSpace(OSError):
    """The disk holding uploads (temporary or kept) is full: a 503, and nothing was kept."""


@contextmanager
def full_disk_as_no_space() -> Iterator[None]:
    """An ENOSPC or EDQUOT from the disk as NoSpace; every other OSError as it is."""
    try:
        yield
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT) and not isinstance(error, NoSpace):
            raise NoSpace(error.errno, "storage is full") from None
        raise


@dataclass(frozen=True, slots=True)
class Served:
    """Where a stored object is served from: a file on this host, or a URL to redirect to."""

    path: Path | None = None
    url: str | None = None


class MediaStore(Protocol):
    """What the upload and download handlers need of a store."""

    #: "local" or "s3", for logs and ``leida-chat media``
    name: str

    def describe(self) -> str:
        """Where the bytes are, for the startup line (a directory, or endpoint and bucket)."""

    async def put(self, key: str, source: Path, content_type: str) -> None:
        """Store the file at ``source`` under ``key``, durably once this returns. ``source`` is
        consumed: moved into place or uploaded, and gone afterwards either way."""

    async def serve(self, key: str, *, content_type: str, content_disposition: str) -> Served:
        """Where a GET of ``key`` is answered from; the headers are for a presigned URL's answer."""

    async def read(self, key: str) -> bytes:
        """The whole object (tests, exports); FileNotFoundError if there is none."""

    async def delete(self, key: str) -> None:
        """Remove ``key``; a key that is already gone is not an error."""

    async def close(self) -> None: ...


def check_key(key: str) -> str:
    """Keys are made by the server; anything else reaching a store is a bug, never a path."""
    if not KEY.fullmatch(key):
        raise ValueError(f"not a media key: {key!r}")
    return key


class LocalMediaStore:
    """Files under one directory (``media.directory``): ``ab/cd/<key>``, fanned out by the key's
    first hex digits so that no directory holds millions of entries.

    A file reaches its real name only by a rename after its bytes were fsynced, and
    the directory is fsynced after the rename: a crash leaves a whole file or none.
    Several processes on one host may share the directory; several hosts need a shared
    mount or the S3 store.
    """

    name = "local"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def describe(self) -> str:
        return str(self.directory.resolve())

    def path(self, key: str) -> Path:
        check_key(key)
        return self.directory / key[:2] / key[2:4] / key

    async def put(self, key: str, source: Path, content_type: str) -> None:
        with full_disk_as_no_space():
            await asyncio.get_running_loop().run_in_executor(None, self._put, key, source)

    def _put(self, key: str, source: Path) -> None:
        target = self.path(key)
        try:
            self._make_directories(target.parent)
            fsync_file(source)
            try:
                os.replace(source, target)
            except OSError as error:
                if error.errno != errno.EXDEV:
                    raise
                staged = target.with_name(target.name + ".part")  # another file system: copy, then rename
                try:
                    shutil.copyfile(source, staged)
                    fsync_file(staged)
                    os.replace(staged, target)
                finally:
                    staged.unlink(missing_ok=True)
            fsync_directory(target.parent)
        finally:
            source.unlink(missing_ok=True)

    def _make_directories(self, directory: Path) -> None:
        """The fan-out directories, each made durable in its parent (a new ``ab/`` is an entry of the root)."""
        if directory.is_dir():
            return
        self._make_directories(directory.parent)
        directory.mkdir(exist_ok=True)
        fsync_directory(directory.parent)

    async def serve(self, key: str, *, content_type: str, content_disposition: str) -> Served:
        return Served(path=self.path(key))

    async def read(self, key: str) -> bytes:
        return await asyncio.get_running_loop().run_in_executor(None, self.path(key).read_bytes)

    async def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    async def close(self) -> None:
        """Nothing held open."""


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(path: Path) -> None:
    """The rename itself is durable only once its directory is."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
