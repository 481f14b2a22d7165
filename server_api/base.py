"""The base handler of the server API: the key check, JSON in and out, problems, and the audit line.

Every request is checked in ``prepare()`` before its body is read: the API
off (404), a key in the query string (400), no valid bearer key (401). Only
then is the body streamed in, up to MAX_BODY_BYTES. Every answer, refused or
not, ends with one audit line (server_api/auth.py) and, unless turned off,
one access-log line with secret query values redacted as on the public port.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from tornado import httputil
from tornado.web import HTTPError, RequestHandler, stream_request_body

from handlers.base import redact_uri
from handlers.params import INT64_MAX
from media import Media
from storage import ChatStore, StorageFailing

from .auth import ServerApiKey, audit, caller, key_in_query
from .problems import PROBLEM_CONTENT_TYPE, FieldError, InvalidInput, Problem, problem_body

access_log = logging.getLogger("leida_chat.server_api.access")
app_log = logging.getLogger("leida_chat.server_api")

#: the largest body taken: a bulk of 1,000 rows with long URLs and names is well under it
MAX_BODY_BYTES = 8 * 1024 * 1024
#: what a 503 (the database out of reach, a full disk) tells the caller to wait before retrying
RETRY_AFTER_SECONDS = 5
API_OFF = "the server API is off: set server_api.keys"
_JSON = "application/json; charset=UTF-8"


@dataclass(frozen=True, slots=True)
class ServerApiSettings:
    """What the server API's handlers read besides the store: the keys and the chat's text limit."""

    keys: tuple[ServerApiKey, ...] = ()
    #: a tip's text may be as long as a chat message (limits.msg_max_chars)
    msg_max_chars: int = 5000


def parse_id(value: str, field: str = "id") -> int:
    """An account id from the path: 1 to 2^63-1, or a 422 naming the field."""
    if not (value.isascii() and value.isdigit() and len(value) <= 19) or not 1 <= int(value) <= INT64_MAX:
        raise InvalidInput.one(field, f"{field} must be an integer from 1 to {INT64_MAX}")
    return int(value)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


@stream_request_body
class ServerApiHandler(RequestHandler):
    """Checks the caller, reads JSON bodies, renders answers and problems, audits every call."""

    SUPPORTED_METHODS = ("GET", "PUT", "POST", "DELETE")
    #: false for the API document: read without a key
    needs_key = True

    def initialize(self, store: ChatStore, media: Media | None, settings: ServerApiSettings, **route: Any) -> None:
        self.store = store
        self.media = media
        self.api = settings
        self.route = route
        self.key_name: str | None = None
        self.audit_ids: dict[str, Any] = {}
        self.audit_counts: dict[str, int] = {}
        self._audited = False
        self._body = bytearray()
        self._body_too_large = False

    @property
    def operation(self) -> str:
        """The audit's name of this call, e.g. ``customer.put``."""
        return "unrouted"

    def clear(self) -> None:
        super().clear()
        self.set_header("Content-Type", _JSON)
        self.set_header("Cache-Control", "no-store")

    def prepare(self) -> None:
        if not self.api.keys:
            raise Problem(404, API_OFF)
        if key_in_query(self.request.query_arguments):
            raise Problem(400, "keys go in the Authorization header (Authorization: Bearer <key>), "
                               "never in the query string", [FieldError("query", "a key-like parameter was given")])
        if self.needs_key:
            self.key_name = caller(self.api.keys, self.request.headers.get("Authorization"))
            if self.key_name is None:
                raise Problem(401, "a valid key is needed: Authorization: Bearer <key> (server_api.keys)",
                              headers={"WWW-Authenticate": 'Bearer realm="leida-chat server API"'})
        declared = self.request.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise Problem(413, f"the body may be at most {MAX_BODY_BYTES} bytes")

    def data_received(self, chunk: bytes) -> None:
        if self._body_too_large:
            return
        self._body += chunk
        if len(self._body) > MAX_BODY_BYTES:
            self._body_too_large = True
            self._body = bytearray()

    # -- input ---------------------------------------------------------------

    def json_body(self) -> Any:
        """The body as JSON, or None when there is none; 400 naming ``body`` when it is not JSON."""
        if self._body_too_large:
            raise Problem(413, f"the body may be at most {MAX_BODY_BYTES} bytes")
        if not self._body.strip():
            return None
        try:
            return json.loads(self._body.decode("utf-8"), parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise Problem(400, "the body is not a JSON document in UTF-8",
                          [FieldError("body", "not a JSON document in UTF-8")]) from None

    def json_object(self, required: bool = True) -> dict[str, Any]:
        """The body as a JSON object ({} when there is none and it is not ``required``)."""
        body = self.json_body()
        if body is None and not required:
            return {}
        if not isinstance(body, dict):
            raise InvalidInput.one("body", "the body must be a JSON object")
        return body

    def flag(self, name: str) -> bool:
        """A yes/no query parameter: 1/true or 0/false; absent is false."""
        value = self.get_query_argument(name, None)
        if value is None:
            return False
        if value.lower() in ("1", "true"):
            return True
        if value.lower() in ("0", "false", ""):
            return False
        raise InvalidInput.one(name, f"{name} must be 1 or 0")

    # -- output --------------------------------------------------------------

    def answer(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(body, ensure_ascii=False, separators=(",", ":")))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        errors: list[FieldError] = []
        if isinstance(error, Problem):
            detail, errors = error.detail, error.errors
            for name, value in error.headers.items():
                self.set_header(name, value)
        elif isinstance(error, StorageFailing):  # a full disk, or the database out of reach: nothing was stored
            status_code, detail = 503, f"{error}: retry later"
            self.set_header("Retry-After", RETRY_AFTER_SECONDS)
        elif isinstance(error, HTTPError):
            detail = error.reason or httputil.responses.get(status_code, "Unknown")
            if status_code == 405:
                detail = f"{self.request.method} is not allowed here"
        else:
            detail = "an unexpected error; nothing more is said here (see the server's log)"
        self.set_status(status_code)
        self.set_header("Content-Type", PROBLEM_CONTENT_TYPE)
        self.finish(json.dumps(problem_body(status_code, detail, errors), ensure_ascii=False))

    def _request_summary(self) -> str:
        return f"{self.request.method} {redact_uri(self.request.uri or '')} ({self.request.remote_ip})"

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        """Tornado's default logs repr(request), headers and all: here only the redacted URI."""
        if isinstance(value, (HTTPError, StorageFailing)):
            return
        app_log.error("Uncaught exception %s", self._request_summary(), exc_info=(typ, value, tb))

    # -- audit ---------------------------------------------------------------

    def on_finish(self) -> None:
        self._audit()

    def on_connection_close(self) -> None:
        """A caller that hung up mid-answer (an export) is audited too, as interrupted."""
        if not self._finished:
            self.audit_counts["interrupted"] = 1
            self._audit()

    def _audit(self) -> None:
        if not self._audited:
            self._audited = True
            audit(self.key_name, self.operation, self.get_status(), self.audit_ids, self.audit_counts)


class NoRouteHandler(ServerApiHandler):
    """Any other path: 404 as a problem, after the key check (a caller without a key learns no routes)."""

    def prepare(self) -> None:
        super().prepare()
        raise Problem(404, "no such route: the server API's routes are listed at /api/v1/openapi.json")


def log_call(handler: RequestHandler) -> None:
    """The access-log line of a server-API call, with secret query values redacted."""
    status = handler.get_status()
    request = handler.request
    log = access_log.info if status < 400 else access_log.warning if status < 500 else access_log.error
    log("%d %s %s (%s) %.2fms", status, request.method, redact_uri(request.uri or ""), request.remote_ip,
        1000.0 * request.request_time())
