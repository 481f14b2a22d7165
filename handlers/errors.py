"""Application outcomes that travel in the envelope's ``code`` with HTTP 200.

Deployed clients read ``code``, not the HTTP status, so these are raised as
HTTPError(200) and rendered by the base handler's ``write_error``.
"""
from __future__ import annotations

from typing import Any

from tornado.web import HTTPError

SIGNATURE_REJECTED = 400
INVALID_PARAMS = 402


class ApiFailure(HTTPError):
    def __init__(self, code: int, msg: str, data: Any = None) -> None:
        super().__init__(200)
        self.code = code
        self.msg = msg
        self.data = {} if data is None else data


class SignatureRejected(ApiFailure):
    def __init__(self) -> None:
        super().__init__(SIGNATURE_REJECTED, "token异常")


class InvalidParams(ApiFailure):
    def __init__(self, errors: dict[str, list[dict[str, str]]]) -> None:
        super().__init__(INVALID_PARAMS, "请求异常", errors)

    @classmethod
    def one(cls, field: str, message: str, code: str = "invalid") -> InvalidParams:
        return cls({field: [{"message": message, "code": code}]})
