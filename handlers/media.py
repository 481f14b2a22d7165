"""Uploads and downloads of pictures and videos: thin handlers over the media room (media/).

``UploadHandler`` is signed like every other route and streams the body into a
temporary file as it arrives (never whole in memory), refusing it with 413 the
moment it passes its limit; the file is then checked and converted on the media
room's processes, stored, and recorded as an unclaimed attachment of the
conversation, for a ``send_msg`` to use. ``MediaFileHandler`` serves
``/media/<id>`` and its thumbnail to anyone holding a URL the server signed (an
``<img>`` tag cannot sign a request): a bad or expired signature is a 403 before
anything is looked up; a signed id that no longer exists is a 404.
"""
from __future__ import annotations

import secrets
import time
from typing import Any
from urllib.parse import quote

import ujson
from tornado.web import HTTPError, StaticFileHandler

from media import ACCEPTED, Media, NoSpace, Processed, Refused, UploadReceiver, UploadRefused, UploadTooLarge
from media.metrics import UPLOAD_BYTES, count_upload
from storage import Attachment, Side, StorageFailing

from .base import SignedHandler, app_log
from .errors import InvalidParams
from .params import Params

#: file name extensions of what is served, for Content-Disposition (never a client's name)
EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/webp": "webp",
              "video/mp4": "mp4", "video/quicktime": "mov", "video/webm": "webm"}


class UploadHandler(SignedHandler):
    """POST …/chat/upload/{o_id}, for either side: one ``file`` part, answered with the attachment."""

    side: Side
    media: Media
    _receiver: UploadReceiver | None = None
    _outcome_counted = False

    async def read_conversation(self, query: Params) -> tuple[int, int]:
        """(customer_id, user_id) of the conversation the upload is for, its peer checked."""
        raise NotImplementedError

    async def prepare(self) -> None:
        if self.media is None:
            raise HTTPError(404)
        await super().prepare()
        if self.request.method != "POST" or self._finished:
            return
        self.request.connection.set_max_body_size(self.media.settings.max_upload_bytes)  # type: ignore[union-attr]
        self.conversation = await self.read_conversation(self.query())
        self._receiver = self.media.receiver(self.request.headers.get("Content-Type", ""))

    def reject_declared_oversized_body(self) -> None:
        declared = self.request.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > self.media.settings.max_upload_bytes:
            self._count("unknown", "too_large")
            raise HTTPError(413, reason=self._too_large_reason())

    def data_received(self, chunk: bytes) -> None:
        if self._receiver is None or self._body_rejected:
            return
        try:
            self._receiver.feed(chunk)
        except UploadTooLarge:
            self._refuse_body(413, self._too_large_reason(), "too_large")
        except NoSpace:
            self._refuse_body(503, "storage is full: retry later", "no_space")

    def _refuse_body(self, status: int, reason: str, outcome: str) -> None:
        """Answer now, while the body still streams in: tornado reads and drops the rest,
        then closes the connection; nothing of the file is kept."""
        self._body_rejected = True
        self._discard()
        self._count("unknown", outcome)
        self.send_error(status, reason=reason)  # a 503 gets its Retry-After in write_error

    def _too_large_reason(self) -> str:
        settings = self.media.settings
        return (f"the file is too large: pictures may be at most {settings.max_image_bytes} bytes, "
                f"videos at most {settings.max_video_bytes}")

    async def post(self, _o_id: str) -> None:
        if self._body_rejected or self._finished or self._receiver is None:
            return
        customer_id, user_id = self.conversation
        processed: Processed | None = None
        try:
            try:
                upload = self._receiver.finish()
                processed = await self.media.process(upload)
            except UploadRefused as error:
                self._count("unknown", "refused")
                raise InvalidParams.one(error.field, str(error), error.code) from None
            except Refused as error:
                self._count("unknown", "too_large" if error.code == "max_size" else "refused")
                raise InvalidParams.one("file", str(error), error.code) from None
            attachment = await self._keep(processed, customer_id, user_id)
        except NoSpace:
            self._count("unknown" if processed is None else processed.kind, "no_space")
            raise StorageFailing("storage is full", "storage_full") from None
        finally:
            self._discard(processed)
        self._count(attachment.kind, "stored")
        UPLOAD_BYTES.inc(attachment.size)
        links = self.attachment_links()
        assert links is not None
        url, thumbnail_url = links(attachment.id, attachment.thumbnail_key is not None)
        self.reply("上传成功", {
            "attachment_id": attachment.id, "kind": attachment.kind, "url": url, "thumbnail_url": thumbnail_url,
            "content_type": attachment.content_type, "size": attachment.size, "width": attachment.width,
            "height": attachment.height, "duration": attachment.duration,
        })

    async def _keep(self, processed: Processed, customer_id: int, user_id: int) -> Attachment:
        attachment_id = secrets.token_hex(16)
        storage_key, thumbnail_key = await self.media.keep(processed, attachment_id)
        record = Attachment(
            id=attachment_id, send_type=self.side.send_type, uploader_id=self.signer.id, customer_id=customer_id,
            user_id=user_id, kind=processed.kind, content_type=processed.content_type, size=processed.size,
            width=processed.width, height=processed.height, duration=processed.duration, sha256=processed.sha256,
            storage_key=storage_key, thumbnail_key=thumbnail_key, thumbnail_size=processed.thumbnail_size,
            message_id=None, created_at=time.time(),
        )
        try:
            await self.store.save_attachment(record)
        except BaseException:
            await self.media.delete([key for key in (storage_key, thumbnail_key) if key is not None])
            raise
        return record

    def _discard(self, processed: Processed | None = None) -> None:
        if self._receiver is not None:
            self._receiver.discard()
        if processed is not None:
            for leftover in (processed.file, processed.thumbnail):
                if leftover is not None:
                    leftover.unlink(missing_ok=True)

    def _count(self, kind: str, outcome: str) -> None:
        if not self._outcome_counted:
            self._outcome_counted = True
            count_upload(kind, outcome)

    def on_connection_close(self) -> None:
        """A body cut off mid-file: the temporary file goes with the connection."""
        if not self._finished:
            self._count("unknown", "aborted")
        self._discard()
        super().on_connection_close()

    def on_finish(self) -> None:
        self._discard()
        super().on_finish()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 500:
            self._count("unknown", "failed")
        super().write_error(status_code, **kwargs)


class MediaFileHandler(StaticFileHandler):
    """GET /media/<id> and /media/<id>/thumbnail, by a signed URL (media/links.py)."""

    attachment: Attachment
    variant: str

    def initialize(self, store: Any, settings: Any, inflight: Any, media: Media | None = None) -> None:  # type: ignore[override]
        if media is None:
            raise HTTPError(404)
        self.store = store
        self.media = media
        super().initialize(path=str(media.settings.directory))

    async def get(  # type: ignore[override]
        self, attachment_id: str, thumbnail: str | None = None, include_body: bool = True,
    ) -> None:
        self.variant = "thumbnail" if thumbnail else "file"
        if not self.media.links.verify(attachment_id, self.variant, self.get_query_argument("e", None),
                                       self.get_query_argument("s", None)):
            raise HTTPError(403, reason="this media URL is invalid or has expired")
        record = await self.store.attachment(attachment_id)
        key = None if record is None else record.storage_key if self.variant == "file" else record.thumbnail_key
        if record is None or key is None:
            raise HTTPError(404)
        self.attachment = record
        served = await self.media.serve(key, self.served_content_type(), self.content_disposition())
        if served.url is not None:
            self.set_header("Cache-Control", "no-store")
            self.redirect(served.url, status=302)
            return
        assert served.path is not None
        await super().get(str(served.path.relative_to(self.media.settings.directory)), include_body)

    async def head(self, attachment_id: str, thumbnail: str | None = None) -> None:
        await self.get(attachment_id, thumbnail, include_body=False)

    def served_content_type(self) -> str:
        return self.attachment.content_type if self.variant == "file" else "image/jpeg"

    def content_disposition(self) -> str:
        """Inline (only accepted types are ever stored), with a name made of the id, never a client's."""
        content_type = self.served_content_type()
        name = f"{self.attachment.id}{'-thumbnail' if self.variant != 'file' else ''}.{EXTENSIONS[content_type]}"
        return f"inline; filename=\"{name}\"; filename*=UTF-8''{quote(name)}"

    def get_content_type(self) -> str:
        return self.served_content_type()

    def compute_etag(self) -> str | None:
        """From the SHA-256 recorded at upload, not by hashing the file again on every request."""
        return f'"{self.attachment.sha256[:32]}{"" if self.variant == "file" else "-t"}"'

    def get_cache_time(self, path: str, modified: Any, mime_type: str) -> int:
        return 0  # Cache-Control is set in set_extra_headers: private, and no longer than the URL lives

    def set_extra_headers(self, path: str) -> None:
        expires = self.get_query_argument("e", "0") or "0"
        max_age = max(0, int(expires) - int(time.time())) if expires.isdigit() else 0
        self.set_header("Cache-Control", f"private, max-age={max_age}")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", "sandbox; default-src 'none'")
        self.set_header("Content-Disposition", self.content_disposition())
        self.set_header("Access-Control-Allow-Origin", "*")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Errors in the API's envelope, without what went wrong inside."""
        self.clear_header("Content-Disposition")
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        error = kwargs.get("exc_info", (None, None, None))[1]
        reason = error.reason if isinstance(error, HTTPError) and error.reason else self._reason
        self.finish(ujson.dumps({"code": status_code, "msg": reason, "data": {}}, ensure_ascii=False))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, HTTPError):
            return
        app_log.error("Uncaught exception serving media %s", self.request.path, exc_info=(typ, value, tb))


__all__ = ["ACCEPTED", "MediaFileHandler", "UploadHandler"]
