"""An upload's body, received as it streams: the ``file`` part goes to a temporary file.

The body is never held whole in memory: each chunk tornado hands over is parsed
(python-multipart) and the file part's bytes are written out at once, so twenty
50 MB uploads cost a few buffers. The size limit applies while the bytes arrive:
the video limit until the first bytes show a picture, the picture limit after.
Temporary files are named after this host and process, so that the next start
can delete what a killed process left without touching a live one's uploads.
"""
from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from pathlib import Path
from typing import BinaryIO

from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header

from .processing import sniff_kind
from .stores import full_disk_as_no_space

log = logging.getLogger("leida_chat.media")

#: the multipart part that carries the file
FILE_FIELD = "file"
#: what the other (text) fields of an upload form may add up to
MAX_FIELD_BYTES = 8 * 1024
#: how many bytes decide whether the file is a picture (and so which limit applies)
SNIFF_BYTES = 64
#: temporaries older than this are deleted at start whoever made them (a host that is gone)
STALE_SECONDS = 24 * 3600
SUFFIX = ".upload"


class UploadRefused(ValueError):
    """The body is not one usable file upload; ``field`` is what the 402 names."""

    def __init__(self, field: str, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.field = field
        self.code = code


class UploadTooLarge(Exception):
    """The file passed its limit while streaming in (a 413)."""


def temporary_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(8)}{SUFFIX}"


class UploadReceiver:
    """One request body: ``feed`` each chunk, then ``finish``; ``discard`` on any way out."""

    def __init__(self, content_type: str, directory: Path, max_video_bytes: int, max_image_bytes: int) -> None:
        self.path = directory / temporary_name()
        self.fields: dict[str, list[bytes]] = {}
        self.file_parts = 0
        self.size = 0
        self._max_video_bytes = max_video_bytes
        self._max_image_bytes = max_image_bytes
        self._limit = max_video_bytes
        self._head = b""
        self._file: BinaryIO | None = None
        self._parser: MultipartParser | None = None
        self._problem: UploadRefused | None = None
        self._ended = False
        self._field_bytes = 0
        self._part_name: str | None = None
        self._part_is_file = False
        self._header_field = b""
        self._header_value = b""
        self._part_headers: dict[bytes, bytes] = {}
        media_type, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if media_type != b"multipart/form-data" or not boundary:
            self._problem = UploadRefused(FILE_FIELD, "the body must be multipart/form-data with a file part", "required")
            return
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin, "on_header_field": self._header_field_data,
            "on_header_value": self._header_value_data, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_end": self._end,
        })

    def feed(self, chunk: bytes) -> None:
        if self._parser is None or self._problem is not None:
            return  # the answer is decided; the rest of the body is read and dropped
        try:
            with full_disk_as_no_space():
                self._parser.write(chunk)
        except (UploadTooLarge, OSError):
            raise
        except Exception as error:  # python-multipart's own parse errors
            log.debug("upload body not parsed: %s", error)
            self._problem = UploadRefused(FILE_FIELD, "the body is not a readable multipart form", "invalid")

    def finish(self) -> Path:
        """The temporary file, once the whole body was one readable form with exactly one file."""
        self._close_file()
        if self._problem is not None:
            raise self._problem
        if not self._ended:
            raise UploadRefused(FILE_FIELD, "the multipart body ended before its closing boundary", "invalid")
        if self.file_parts == 0:
            raise UploadRefused(FILE_FIELD, "a file part named 'file' is required", "required")
        if self.file_parts > 1:
            raise UploadRefused(FILE_FIELD, "send one file per upload", "too_many")
        if self.size == 0:
            raise UploadRefused(FILE_FIELD, "the file is empty", "empty")
        return self.path

    def discard(self) -> None:
        self._close_file()
        self.path.unlink(missing_ok=True)

    # -- python-multipart's callbacks ----------------------------------------------

    def _part_begin(self) -> None:
        self._part_headers = {}
        self._part_name = None
        self._part_is_file = False

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._part_headers[self._header_field.strip().lower()] = self._header_value.strip()
        self._header_field = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._part_headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        self._part_name = name
        self._part_is_file = name == FILE_FIELD
        if self._part_is_file:
            self.file_parts += 1
            if self.file_parts == 1:
                self._file = open(self.path, "xb")
        elif b"filename" in options:
            self._part_name = None  # a file under another name: dropped, and "file" is still missing
        else:
            self.fields.setdefault(name, []).append(b"")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        piece = data[start:end]
        if self._part_is_file:
            if self.file_parts == 1:  # a second file is refused at finish; nothing of it is kept
                self._file_data(piece)
            return
        if self._part_name is None:
            return
        self._field_bytes += len(piece)
        if self._field_bytes > MAX_FIELD_BYTES:
            self._problem = UploadRefused(self._part_name or "form", "the form's other fields are too long",
                                          "max_length")
            return
        self.fields[self._part_name][-1] += piece

    def _file_data(self, piece: bytes) -> None:
        assert self._file is not None
        self.size += len(piece)
        if len(self._head) < SNIFF_BYTES:
            self._head += piece[:SNIFF_BYTES - len(self._head)]
            if len(self._head) == SNIFF_BYTES:
                self._choose_limit()
        if self.size > self._limit:
            raise UploadTooLarge()
        self._file.write(piece)

    def _choose_limit(self) -> None:
        if sniff_kind(self._head) == "image":
            self._limit = self._max_image_bytes

    def _end(self) -> None:
        self._ended = True
        if len(self._head) < SNIFF_BYTES:
            self._choose_limit()

    def _close_file(self) -> None:
        if self._file is not None:
            try:
                with full_disk_as_no_space():
                    self._file.close()
            finally:
                self._file = None


def clean_temporaries(directory: Path, now: float | None = None) -> int:
    """Delete what uploads of a process no longer running on this host left behind (a SIGKILL
    mid-upload), and anything older than STALE_SECONDS; returns how many files went."""
    now = time.time() if now is None else now
    host = socket.gethostname()
    removed = 0
    for path in directory.glob(f"*{SUFFIX}*"):  # uploads, and the files processing made beside them
        made_by = path.name.rpartition(SUFFIX)[0].rsplit("-", 2)  # host, pid, random
        ours = len(made_by) == 3 and made_by[0] == host
        pid_text = made_by[1] if ours else ""
        try:
            stale = now - path.stat().st_mtime > STALE_SECONDS
        except FileNotFoundError:
            continue
        if stale or (ours and not (pid_text.isdigit() and _alive(int(pid_text)))):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
