"""Reading request parameters, and answering 402 for every field that is wrong.

All of a request's bad fields are collected before answering so that a client
sees every mistake in one response, in the original server's form-error shape:
``{field: [{"message": str, "code": str}]}``.
"""
from __future__ import annotations

import re
from typing import Literal, overload

from .errors import InvalidParams

_INTEGER = re.compile(r"[+-]?[0-9]{1,19}")
_DECIMAL = re.compile(r"[0-9]{1,9}(\.[0-9]{1,6})?")
INT64_MAX = 2**63 - 1


class Params:
    def __init__(self, arguments: dict[str, list[bytes]]) -> None:
        self._arguments = arguments
        self.errors: dict[str, list[dict[str, str]]] = {}

    def fail(self, name: str, message: str, code: str = "invalid") -> None:
        self.errors.setdefault(name, []).append({"message": message, "code": code})

    def check(self) -> None:
        """Raise a 402 naming every bad field seen so far."""
        if self.errors:
            raise InvalidParams(self.errors)

    def raw(self, name: str) -> str | None:
        """The last value given for ``name``; empty counts as not given."""
        values = self._arguments.get(name)
        if not values or values[-1] == b"":
            return None
        try:
            return values[-1].decode("utf-8")
        except UnicodeDecodeError:
            self.fail(name, f"{name} is not valid UTF-8")
            return None

    @overload
    def text(self, name: str, *, required: Literal[True], max_length: int | None = None) -> str: ...
    @overload
    def text(self, name: str, *, required: bool = False, max_length: int | None = None) -> str | None: ...

    def text(self, name: str, *, required: bool = False, max_length: int | None = None) -> str | None:
        """A required field that is missing or bad reads as "" (its failure recorded): check() raises
        before a handler can use it, and the handler's types need no None it will never see."""
        value = self.raw(name)
        if value is None:
            if required and name not in self.errors:
                self.fail(name, f"{name} is required", "required")
            return "" if required else None
        if "\x00" in value:
            self.fail(name, f"{name} must not contain NUL characters")
            return "" if required else None
        if max_length is not None and len(value) > max_length:
            self.fail(name, f"{name} must be at most {max_length} characters", "max_length")
            return "" if required else None
        return value

    def integer(
        self,
        name: str,
        *,
        required: bool = False,
        default: int | None = None,
        minimum: int | None = None,
        maximum: int = INT64_MAX,
    ) -> int | None:
        value = self.text(name, required=required)
        if not value:  # None: not given; "": required and its failure already recorded
            return default
        if not _INTEGER.fullmatch(value.strip()) or abs(int(value)) > INT64_MAX:
            self.fail(name, f"{name} must be an integer")
            return None
        number = int(value)
        if minimum is not None and number < minimum:
            self.fail(name, f"{name} must be at least {minimum}", "min_value")
            return None
        if number > maximum:
            self.fail(name, f"{name} must be at most {maximum}", "max_value")
            return None
        return number

    @overload
    def account_id(self, name: str, *, required: Literal[True]) -> int: ...
    @overload
    def account_id(self, name: str, *, required: bool = False) -> int | None: ...

    def account_id(self, name: str, *, required: bool = False) -> int | None:
        """A required id that is missing or bad reads as 0, never an account (see ``text``)."""
        value = self.integer(name, required=required, minimum=1)
        return 0 if value is None and required else value

    def seconds(self, name: str, *, default: float, cap: float) -> float:
        """A non-negative duration, silently capped (the contract caps ``wait``)."""
        value = self.text(name)
        if value is None:
            return min(default, cap)
        if not _DECIMAL.fullmatch(value.strip()):
            self.fail(name, f"{name} must be a non-negative number of seconds")
            return 0.0
        return min(float(value), cap)

    def page(self, *, max_length: int) -> tuple[int, int]:
        """(offset, limit) from ``current_page`` and ``length``; length 0 = up to the cap."""
        current_page = self.integer("current_page", default=1, minimum=1, maximum=10**9)
        length = self.integer("length", default=20, minimum=0, maximum=max_length)
        if current_page is None or length is None:
            return 0, 0
        limit = length or max_length
        return (current_page - 1) * limit, limit
