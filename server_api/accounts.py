"""Accounts, as the CRM keeps them in step: read, create or update, bulk sync, token, disable.

The CRM is the system of record for who the customers and radar users are;
these routes let it push what it knows without a shell on the chat host (the
CLI's add-customer / add-user do the same by hand). Every row is checked here
before storage is called, so that a bad row in a bulk call is named by its
index and field and nothing of the call is written; storage names what only
the database knows (a new id without a username) the same way.

A token is secret: an answer carries it only when asked (``?with_token=1``),
and the audit line never does.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from handlers.params import INT64_MAX
from storage.records import ACCOUNT_FIELDS, AccountKind, AccountRowInvalid, Customer, RadarUser

from .base import ServerApiHandler, parse_id
from .customer_data import erase_customer
from .problems import FieldError, InvalidInput, Problem

#: most rows one bulk call takes (one transaction: a sync job sends its changes in pages of this many)
MAX_BULK_ROWS = 1000
#: the longest value of each kind of field, in characters (phones and WeChat ids are the short ones)
MAX_NAME_CHARS, MAX_URL_CHARS, MAX_SHORT_CHARS, MAX_TOKEN_CHARS = 128, 2048, 64, 128
URL_FIELDS = frozenset({"headimgurl", "avatar", "mingpian_avatar"})
#: the largest id an account may have (both databases' 64-bit integers)
ID_MAX = INT64_MAX


def render_account(account: Customer | RadarUser, with_token: bool) -> dict[str, Any]:
    """The account's fields and ``disabled``; the token only when asked for."""
    shown: dict[str, Any] = {"id": account.id}
    for name in ACCOUNT_FIELDS[account.kind]:
        if name != "token":
            shown[name] = getattr(account, name)
    shown["disabled"] = account.disabled
    if with_token:
        shown["token"] = account.token
    return shown


def check_text(name: str, value: Any, max_chars: int, errors: list[FieldError], row: int | None,
               allow_empty: bool = True, controls_allowed: bool = False) -> None:
    """A string of at most ``max_chars`` that both databases can store and a page can show.

    ``controls_allowed``: line breaks and tabs may be in it (a tip's text); NUL never is
    (PostgreSQL cannot store it).
    """
    if not isinstance(value, str):
        errors.append(FieldError(name, f"{name} must be a string", row))
    elif len(value) > max_chars:
        errors.append(FieldError(name, f"{name} must be at most {max_chars} characters", row))
    elif not allow_empty and not value.strip():
        errors.append(FieldError(name, f"{name} must not be empty", row))
    elif "\x00" in value or (not controls_allowed and any(ord(char) < 32 or ord(char) == 127 for char in value)):
        errors.append(FieldError(name, f"{name} must not contain control characters", row))
    elif not _encodable(value):
        errors.append(FieldError(name, f"{name} is not valid Unicode (a lone surrogate)", row))


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_field(name: str, value: Any, errors: list[FieldError], row: int | None) -> None:
    """The CLI's rules for each field (leida_commands.py), and a length bound for each."""
    before = len(errors)
    if name == "username":
        check_text(name, value, MAX_NAME_CHARS, errors, row, allow_empty=False)
    elif name == "token":
        check_text(name, value, MAX_TOKEN_CHARS, errors, row, allow_empty=False)
        if len(errors) == before and (value.strip() != value or not value.isprintable()):
            errors.append(FieldError(name, "token must be printable characters without surrounding spaces", row))
    elif name in URL_FIELDS:
        check_text(name, value, MAX_URL_CHARS, errors, row)
        if len(errors) == before and value.strip():
            try:
                scheme = urlsplit(value.strip()).scheme.lower()
            except ValueError:
                scheme = "?"
            if scheme not in ("http", "https", ""):
                errors.append(FieldError(name, f"{name} must be an http(s) URL, a relative path, or empty", row))
    else:
        check_text(name, value, MAX_SHORT_CHARS, errors, row)


def check_row(kind: AccountKind, row: Any, index: int | None, path_id: int | None = None) -> tuple[dict[str, Any], list[FieldError]]:
    """A row as storage takes it (``{"id", <fields>}``) and what is wrong with it.

    ``path_id`` is the id of a PUT's path: the body may repeat it, not contradict it.
    """
    if not isinstance(row, dict):
        what = "a row" if index is not None else "the body"
        return {}, [FieldError("row" if index is not None else "body", f"{what} must be a JSON object", index)]
    errors: list[FieldError] = []
    allowed = ACCOUNT_FIELDS[kind]
    account_id = row.get("id", path_id)
    if "id" not in row and path_id is None:
        errors.append(FieldError("id", "id is required", index))
    elif isinstance(account_id, bool) or not isinstance(account_id, int) or not 1 <= account_id <= ID_MAX:
        errors.append(FieldError("id", f"id must be an integer from 1 to {ID_MAX}", index))
    elif path_id is not None and account_id != path_id:
        errors.append(FieldError("id", f"id in the body ({account_id}) is not the path's ({path_id})", index))
    fields: dict[str, Any] = {}
    for name, value in row.items():
        if name == "id":
            continue
        if name not in allowed:
            errors.append(FieldError(name, f"{name} is not a field of a {kind}; the fields are {', '.join(allowed)}", index))
            continue
        check_field(name, value, errors, index)
        fields[name] = value
    return {"id": account_id, **fields}, errors


class AccountRoute(ServerApiHandler):
    """A route of one kind of account (``kind`` from the route: customer or radar_user)."""

    @property
    def kind(self) -> AccountKind:
        return self.route["kind"]

    def account_id(self, raw: str) -> int:
        account_id = parse_id(raw)
        self.audit_ids[f"{self.kind}_id"] = account_id
        return account_id

    def missing(self, account_id: int) -> Problem:
        return Problem(404, f"no {self.kind} with id {account_id}")

    async def save(self, rows: list[dict[str, Any]], single: bool) -> list[Customer | RadarUser]:
        try:
            return await self.store.save_accounts(self.kind, rows)
        except AccountRowInvalid as error:
            raise InvalidInput([FieldError(error.field, error.message, None if single else error.row)]) from None


class AccountHandler(AccountRoute):
    """GET, PUT /api/v1/{customers|radar_users}/{id}; DELETE /api/v1/customers/{id} erases (customer_data.py)."""

    @property
    def operation(self) -> str:
        verb = {"GET": "get", "PUT": "put", "DELETE": "erase"}.get(self.request.method or "", "unrouted")
        return f"{self.kind}.{verb}"

    async def get(self, raw_id: str) -> None:
        account_id = self.account_id(raw_id)
        with_token = self.flag("with_token")
        account = await self.store.account(self.kind, account_id)
        if account is None:
            raise self.missing(account_id)
        self.answer(render_account(account, with_token))

    async def put(self, raw_id: str) -> None:
        """Create, or update the fields given; the same call twice answers the same."""
        account_id = self.account_id(raw_id)
        with_token = self.flag("with_token")
        row, errors = check_row(self.kind, self.json_object(), None, account_id)
        if errors:
            raise InvalidInput(errors)
        (account,) = await self.save([row], single=True)
        self.audit_counts["fields"] = len(row) - 1
        self.answer(render_account(account, with_token))

    async def delete(self, raw_id: str) -> None:
        if self.kind != "customer":
            raise Problem(405, "only a customer's data is erased by the server API")
        await erase_customer(self, self.account_id(raw_id))


class BulkHandler(AccountRoute):
    """POST /api/v1/customers/bulk ``{"customers": [...]}``, /api/v1/radar_users/bulk ``{"radar_users": [...]}``.

    1 to MAX_BULK_ROWS rows in one transaction: every row is written, or none.
    """

    @property
    def operation(self) -> str:
        return f"{self.member}.bulk"

    @property
    def member(self) -> str:
        return "customers" if self.kind == "customer" else "radar_users"

    async def post(self) -> None:
        with_token = self.flag("with_token")
        body = self.json_object()
        member = self.member
        errors = [FieldError(name, f"{name} is not a member of this call; it takes {member}")
                  for name in body if name != member]
        rows = body.get(member)
        if not isinstance(rows, list):
            raise InvalidInput([FieldError(member, f"{member} must be a list of 1 to {MAX_BULK_ROWS} rows"), *errors])
        if not 1 <= len(rows) <= MAX_BULK_ROWS:
            raise InvalidInput([FieldError(member, f"{member} must have 1 to {MAX_BULK_ROWS} rows, "
                                                   f"not {len(rows)}"), *errors])
        self.audit_counts["rows"] = len(rows)
        checked: list[dict[str, Any]] = []
        first_row_of: dict[int, int] = {}
        for index, row in enumerate(rows):
            saved, row_errors = check_row(self.kind, row, index)
            account_id = saved.get("id")
            if not row_errors and isinstance(account_id, int):
                if account_id in first_row_of:
                    row_errors.append(FieldError("id", f"id {account_id} is also in row {first_row_of[account_id]}",
                                                 index))
                first_row_of.setdefault(account_id, index)
            errors += row_errors
            checked.append(saved)
        if errors:
            raise InvalidInput(errors)
        self.audit_ids["ids"] = [row["id"] for row in checked]
        accounts = await self.save(checked, single=False)
        self.answer({member: [render_account(account, with_token) for account in accounts]})


class TokenHandler(AccountRoute):
    """POST /api/v1/{customers|radar_users}/{id}/token [``{"token"}``]: a new token (given, or random).

    The old token stops working at once, and the account's held requests are answered.
    """

    @property
    def operation(self) -> str:
        return f"{self.kind}.token"

    async def post(self, raw_id: str) -> None:
        account_id = self.account_id(raw_id)
        body = self.json_object(required=False)
        errors = [FieldError(name, f"{name} is not a member of this call; it takes token") for name in body if name != "token"]
        token = body.get("token")
        if "token" in body:
            check_field("token", token, errors, None)
        if errors:
            raise InvalidInput(errors)
        new = await self.store.rotate_token(self.kind, account_id, token)
        if new is None:
            raise self.missing(account_id)
        self.answer({"id": account_id, "token": new})


class DisableHandler(AccountRoute):
    """POST /api/v1/{customers|radar_users}/{id}/disable and /enable.

    A disabled account's chat requests are refused as with a bad signature, and its held
    requests are answered at once, on every process; enabling lets it in again.
    """

    @property
    def operation(self) -> str:
        return f"{self.kind}.{self.route['action']}"

    async def post(self, raw_id: str) -> None:
        account_id = self.account_id(raw_id)
        with_token = self.flag("with_token")
        account = await self.store.set_disabled(self.kind, account_id, self.route["action"] == "disable")
        if account is None:
            raise self.missing(account_id)
        self.answer(render_account(account, with_token))
