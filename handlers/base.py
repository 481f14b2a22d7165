"""The base handlers: the JSON envelope, request signatures and safe logging.

Every endpoint under /zhugeleida answers ``{"code", "msg", "data"}``. The
signature (``rand_str = md5(timestamp + token)``) is checked in ``prepare()``,
before the body is read or any parameter is parsed, so an unsigned request
costs one indexed read and nothing else. Logs never carry ``rand_str`` or a
token: URLs are redacted before tornado's access and error logs see them.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode

import tornado
import ujson
from tornado import httputil
from tornado.util import ObjectDict
from tornado.web import HTTPError, RequestHandler, stream_request_body

from media import Media
from storage import ChatStore, Customer, RadarUser, StorageFailing
from storage.metrics import count_error
from storage.records import account_key

from .errors import ApiFailure, InvalidParams, SignatureRejected
from .items import AttachmentLinks, signed_links
from .params import INT64_MAX, Params
from .settings import ApiSettings

access_log = logging.getLogger("tornado.access")
app_log = logging.getLogger("leida_chat.http")

#: what a 503 (too many held requests) tells the client to wait before polling again
RETRY_AFTER_SECONDS = 2
#: the contract's routes, whose answers pages on other origins may read (CORS)
CROSS_ORIGIN_PREFIX = "/zhugeleida/"
#: how long a browser may cache a preflight's answer (Chromium caps it at 7200)
PREFLIGHT_MAX_AGE_SECONDS = 7200
#: query values never logged: signatures, tokens, a media URL's HMAC (it grants the file for days), and
#: anything named like a key (the server API refuses keys in the query string: server_api/auth.py)
SECRET_PARAMS = frozenset({"rand_str", "token", "s", "key", "api_key", "access_token"})
_DIGITS = re.compile(r"[0-9]{1,19}")
_MD5_HEX = re.compile(r"[0-9a-fA-F]{32}")


_SERVER = f"TornadoServer/{tornado.version}"
_JSON = "application/json; charset=UTF-8"
_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    global _date_cache
    second = int(time.time())
    if second != _date_cache[0]:
        _date_cache = (second, httputil.format_timestamp(second))
    return _date_cache[1]


def redact_uri(uri: str) -> str:
    """The URI with every secret query value replaced by ``***``."""
    path, sep, query = uri.partition("?")
    if not sep:
        return uri
    pairs = parse_qsl(query, keep_blank_values=True)
    return path + "?" + urlencode(
        [(name, "***" if name.lower() in SECRET_PARAMS else value) for name, value in pairs],
        safe="*",
    )


def log_request(handler: RequestHandler) -> None:
    """The access log line, as tornado's but with secrets redacted."""
    status = handler.get_status()
    code = getattr(handler, "envelope_code", status)
    log = access_log.info if code < 400 else access_log.warning if status < 500 else access_log.error
    request = handler.request
    log(
        "%d %s %s %s (%s) %.2fms",
        status,
        f"code={code}",
        request.method,
        redact_uri(request.uri or ""),
        request.remote_ip,
        1000.0 * request.request_time(),
    )


class InFlight:
    """Requests begun and not yet answered, so that shutdown can let them finish.

    Once ``stopping``, requests that arrive on still-open keep-alive connections
    get 503 and every answer closes its connection, so the count can reach zero.
    """

    def __init__(self) -> None:
        self.count = 0
        self.stopping = False
        self._idle = asyncio.Event()
        self._idle.set()

    def begin(self) -> None:
        self.count += 1
        self._idle.clear()

    def end(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def drained(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


@stream_request_body
class ApiHandler(RequestHandler):
    """Renders the envelope for success and for every failure.

    Bodies are streamed, and dropped unless a subclass keeps them: tornado
    would otherwise buffer and parse every body before the handler runs (and
    answer a malformed one with a bare 400 of its own).
    """

    def __init__(self, application: Any, request: httputil.HTTPServerRequest, **kwargs: Any) -> None:
        """Tornado's own set-up without its template namespace (``self.ui``: one dict and
        one module namespace per request, in a reference cycle through the handler, for
        templates that no route here renders). send_msg's CPU per request: median 442 →
        396 µs in 4 interleaved throughput.py pairs (bench/README.md, "Hot path")."""
        self.application = application
        self.request = request
        self._headers_written = False
        self._finished = False
        self._auto_finish = True
        self._prepared_future = None
        self.ui = ObjectDict()  # empty: what templates would see, were there any
        self.clear()
        request.connection.set_close_callback(self.on_connection_close)  # type: ignore[union-attr]
        self.initialize(**kwargs)

    def initialize(self, store: ChatStore, settings: ApiSettings, inflight: InFlight, media: Media | None = None) -> None:
        self.store = store
        self.media = media
        self.api = settings
        self._inflight: InFlight | None = inflight
        self._requests = inflight
        self._arrived_while_stopping = inflight.stopping
        inflight.begin()

    def prepare(self) -> Any:
        self.allow_cross_origin()
        if self._arrived_while_stopping:
            raise HTTPError(503)

    # -- cross-origin pages (CORS) -------------------------------------------

    def allow_cross_origin(self) -> None:
        """H5 pages are served from other domains than the API: under /zhugeleida/
        every answer, errors included, lets an allowed origin read it. A page of
        an origin not allowed is refused with 403 before anything is stored (a
        form POST needs no preflight, so the browser alone would not stop it)."""
        if not self.request.path.startswith(CROSS_ORIGIN_PREFIX):
            return
        self._set_cross_origin_headers()
        origin = self.request.headers.get("Origin")
        if origin is not None and not self._origin_allowed(origin):
            raise HTTPError(403, reason="origin not allowed")

    def _set_cross_origin_headers(self) -> None:
        self.set_header("Vary", "Origin")
        allowed = self.api.cors_origins
        origin = self.request.headers.get("Origin")
        if "*" in allowed:
            self.set_header("Access-Control-Allow-Origin", "*")
        elif origin is not None and origin in allowed:
            self.set_header("Access-Control-Allow-Origin", origin)

    def _origin_allowed(self, origin: str) -> bool:
        allowed = self.api.cors_origins
        same_origin = origin == f"{self.request.protocol}://{self.request.host}"
        return "*" in allowed or origin in allowed or same_origin

    def attachment_links(self) -> AttachmentLinks | None:
        """The signer of upload URLs for this answer's items (handlers/items.py)."""
        return signed_links(self.media, f"{self.request.protocol}://{self.request.host}")

    def _end_inflight(self) -> None:
        if self._inflight is not None:
            self._inflight.end()
            self._inflight = None

    def on_finish(self) -> None:
        self._end_inflight()

    def on_connection_close(self) -> None:
        self._end_inflight()

    def data_received(self, chunk: bytes) -> None:
        """Bodies are not read unless a subclass says so (SignedHandler does)."""

    def clear(self) -> None:
        """Tornado's reset, with our fixed headers set at once and the Date header
        formatted once a second rather than once a request (a hot path: bench/README.md)."""
        self._headers = httputil.HTTPHeaders({
            "Server": _SERVER, "Content-Type": _JSON, "Cache-Control": "no-store", "Date": _http_date(),
        })
        self.set_default_headers()
        self._write_buffer = []
        self._status_code = 200
        self._reason = "OK"

    def compute_etag(self) -> None:
        """Every answer is fresh (no-store): hashing each body for an ETag is wasted work."""
        return None

    def check_etag_header(self) -> bool:
        """No ETags are sent, so no If-None-Match can match one."""
        return False

    def reply(self, msg: str, data: Any, code: int = 200) -> None:
        self.envelope_code = code
        if self._requests.stopping:  # let keep-alive connections end with this answer
            self.set_header("Connection", "close")
        self.finish(ujson.dumps({"code": code, "msg": msg, "data": data}, ensure_ascii=False))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if self.request.path.startswith(CROSS_ORIGIN_PREFIX):  # send_error cleared the headers
            self._set_cross_origin_headers()
        if isinstance(error, ApiFailure):
            self.reply(error.msg, error.data, code=error.code)
            return
        if isinstance(error, StorageFailing):  # a full disk, or the database out of reach: nothing was stored
            status_code = 503
            self.set_status(503, reason=f"{error}: retry later")
            error = HTTPError(503, reason=f"{error}: retry later")
        if status_code == 503:
            self.set_header("Retry-After", RETRY_AFTER_SECONDS)
        reason = (error.reason if isinstance(error, HTTPError) and error.reason else None) or self._reason or \
            httputil.responses.get(status_code, "Unknown")
        self.reply(reason, {}, code=status_code)

    def _request_summary(self) -> str:
        return f"{self.request.method} {redact_uri(self.request.uri or '')} ({self.request.remote_ip})"

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        """Tornado's default also logs repr(request), whose URI carries rand_str."""
        if isinstance(value, (ApiFailure, StorageFailing)):  # the writer logs storage, once a minute
            return
        if isinstance(value, HTTPError):
            if value.log_message:
                app_log.warning("%d %s: %s", value.status_code, self._request_summary(), value.log_message)
            return
        count_error("internal")
        app_log.error("Uncaught exception %s", self._request_summary(), exc_info=(typ, value, tb))


class NotFoundHandler(ApiHandler):
    """Unknown routes get the envelope too, with a real 404."""

    def prepare(self) -> None:
        super().prepare()
        raise HTTPError(404)


class SignedHandler(ApiHandler):
    """A handler whose caller is proven by the request signature.

    The body is streamed so that an oversized one is refused with 413 from its
    Content-Length, or as soon as it grows past the limit, never buffered whole.
    Subclasses say whose tokens sign their routes by ``find_signer``.
    """

    SUPPORTED_METHODS = ("GET", "POST", "OPTIONS")

    signer: Customer | RadarUser
    # Class defaults until a body arrives: a held GET never sets them, and its
    # instance dict stays at its first size (832 B per held request, tracemalloc:
    # bench/held_memory.py).
    _body_chunks: list[bytes] | tuple[()] = ()
    _body_size = 0
    _body_rejected = False

    async def find_signer(self, account_id: int) -> Customer | RadarUser | None:
        raise NotImplementedError

    @property
    def account_key(self) -> tuple[str, int]:
        """The signer, as a key unique across both kinds of account (what the server API ends held requests by)."""
        return account_key(self.signer.kind, self.signer.id)

    async def prepare(self) -> None:
        super().prepare()
        if self.request.method == "OPTIONS":
            return  # a preflight carries no signature; options() answers it
        self.reject_unimplemented_method()
        self.reject_declared_oversized_body()
        self.signer = await self.verify_signature()

    def options(self, *args: Any) -> None:
        """The CORS preflight: which methods and headers a page on another origin may use."""
        methods = [name for name in ("GET", "POST")
                   if getattr(type(self), name.lower()) is not getattr(RequestHandler, name.lower())]
        self.set_header("Access-Control-Allow-Methods", ", ".join(methods))
        self.set_header("Access-Control-Allow-Headers", "Content-Type, X-Requested-With")
        self.set_header("Access-Control-Max-Age", PREFLIGHT_MAX_AGE_SECONDS)
        self.set_status(204)
        self.envelope_code = 204
        self.finish()

    def reject_unimplemented_method(self) -> None:
        method = self.request.method.lower()
        if getattr(type(self), method) is getattr(RequestHandler, method):
            raise HTTPError(405)

    def reject_declared_oversized_body(self) -> None:
        declared = self.request.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > self.api.max_body_bytes:
            raise HTTPError(413)

    def data_received(self, chunk: bytes) -> None:
        if self._body_rejected:
            return
        self._body_size += len(chunk)
        if self._body_size > self.api.max_body_bytes:
            self._body_rejected = True
            self._body_chunks = ()
            self.send_error(413)
            return
        if not self._body_chunks:
            self._body_chunks = []
        self._body_chunks.append(chunk)

    async def verify_signature(self) -> Customer | RadarUser:
        query = self.request.query_arguments
        account_id = _last_ascii(query.get("user_id"))
        timestamp = _last_ascii(query.get("timestamp"))
        rand_str = _last_ascii(query.get("rand_str"))
        if not (account_id and timestamp and rand_str):
            raise SignatureRejected()
        if not (_DIGITS.fullmatch(account_id) and _DIGITS.fullmatch(timestamp) and _MD5_HEX.fullmatch(rand_str)):
            raise SignatureRejected()
        if self.api.max_skew_seconds and abs(time.time() * 1000 - int(timestamp)) > self.api.max_skew_seconds * 1000:
            raise SignatureRejected()
        if int(account_id) > INT64_MAX:  # no such account can exist; SQLite would overflow
            raise SignatureRejected()
        account = await self.find_signer(int(account_id))
        if account is None or account.disabled:  # a disabled account is refused as a bad signature is
            raise SignatureRejected()
        expected = hashlib.md5((timestamp + account.token).encode("utf-8")).hexdigest()
        if not hmac.compare_digest(expected, rand_str.lower()):
            raise SignatureRejected()
        return account

    # -- parameters --------------------------------------------------------

    def query(self) -> Params:
        self._stop_if_body_rejected()
        return Params(self.request.query_arguments)

    def form(self) -> Params:
        """The form body (urlencoded or multipart), with query values beneath it."""
        self._stop_if_body_rejected()
        arguments: dict[str, list[bytes]] = {name: list(values) for name, values in self.request.query_arguments.items()}
        body_arguments: dict[str, list[bytes]] = {}
        files: dict[str, list[httputil.HTTPFile]] = {}
        body = b"".join(self._body_chunks)
        if body:
            try:
                httputil.parse_body_arguments(
                    self.request.headers.get("Content-Type", ""), body, body_arguments, files, self.request.headers
                )
            except httputil.HTTPInputError:
                raise InvalidParams.one(
                    "form", "the body is not a readable urlencoded or multipart form", "invalid"
                ) from None
        for name, values in body_arguments.items():
            arguments.setdefault(name, []).extend(values)
        return Params(arguments)

    def _stop_if_body_rejected(self) -> None:
        """The 413 went out while the body streamed in; tornado still calls the
        method afterwards, and an HTTPError raised after finish is dropped quietly."""
        if self._body_rejected:
            raise HTTPError(413)


def _last_ascii(values: list[bytes] | None) -> str | None:
    if not values:
        return None
    try:
        return values[-1].decode("ascii")
    except UnicodeDecodeError:
        return None
