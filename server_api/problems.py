"""Failures of the server API as RFC 9457 problem details.

The CRM is a program, not an H5 page: it reads HTTP status codes, so every
failure here has its real status (unlike the chat contract's envelope, which
answers 200 with a ``code``), and a body of ``application/problem+json`` with
``type``, ``title``, ``status`` and ``detail``. Invalid input also lists what
was wrong in ``errors``: ``[{"field", "row" (bulk calls only), "message"}]``,
so that a sync job can report the exact row and field of a rejected batch.

``type`` is ``about:blank`` throughout: the status says what kind of failure
it is, ``detail`` says which, and ``errors`` says where.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tornado import httputil
from tornado.web import HTTPError

PROBLEM_CONTENT_TYPE = "application/problem+json"
#: how many field errors one answer lists at most (a bulk of 1,000 bad rows is still one small answer)
MAX_LISTED_ERRORS = 100


@dataclass(frozen=True, slots=True)
class FieldError:
    """One wrong field: its name (dotted for a nested one), the bulk row's index if any, and why."""

    field: str
    message: str
    row: int | None = None

    def as_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"field": self.field}
        if self.row is not None:
            shown["row"] = self.row
        shown["message"] = self.message
        return shown


class Problem(HTTPError):
    """A failure to answer as problem details; raised anywhere in a handler."""

    def __init__(self, status: int, detail: str, errors: list[FieldError] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status, reason=httputil.responses.get(status, "Unknown"))
        self.detail = detail
        self.errors = list(errors or ())
        self.headers = dict(headers or {})


class InvalidInput(Problem):
    """422: the request was well-formed JSON that says something the API cannot take."""

    def __init__(self, errors: list[FieldError], detail: str | None = None) -> None:
        if detail is None:
            where = {error.row for error in errors if error.row is not None}
            detail = (f"{len(errors)} invalid field{'s' if len(errors) != 1 else ''}"
                      + (f" in {len(where)} row{'s' if len(where) != 1 else ''}; nothing was written" if where else ""))
        super().__init__(422, detail, errors[:MAX_LISTED_ERRORS])

    @classmethod
    def one(cls, field: str, message: str, row: int | None = None) -> InvalidInput:
        return cls([FieldError(field, message, row)], detail=message if row is None else f"row {row}: {message}")


def problem_body(status: int, detail: str, errors: list[FieldError] | None = None) -> dict[str, Any]:
    """The problem details document of a failure."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": httputil.responses.get(status, "Unknown"),
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = [error.as_json() for error in errors]
    return body
