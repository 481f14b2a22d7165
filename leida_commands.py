"""The leida-chat command line: its parser, and every command but serving.

``leida_chat.py`` parses with ``parse_args``, loads the configuration with
``config_for`` and runs the server itself (``serve`` and ``demo``); every
other command (``add-user``, ``add-customer``, ``demo-accounts``, ``backup``,
``webhooks``, ``media``, ``export-customer`` and ``erase-customer``) is run by
``run_command``, which opens the store, does its one job, closes the store, and
prints its answer as JSON on stdout.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from handlers.items import signed_links
from leida_config import Config, check, config_file, database_location, load_config, media_directory
from media import KEY_NAME as MEDIA_URL_KEY
from media import Media, MediaSettings
from storage import FROM_RADAR_USER, ChatStore, is_postgres, sqlite_path
from storage.backup import backup
from storage.customer_data import EXPORT_LINK_SECONDS
from storage.outbox import iso_utc
from storage.schema import SchemaTooNew

#: how messages name the command: ``leida_chat.py`` in a checkout, ``leida-chat`` installed
PROGRAM = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "leida-chat"
#: the first line of ``--help``
DESCRIPTION = "leida-chat: a long-polling chat server for WeChat H5 customers and radar sales reps."


async def open_store(config: Config) -> ChatStore:
    database = config["database"]
    return await ChatStore.open(
        database_location(config), database["synchronous"], config["auth"]["account_cache_seconds"],
        pool_size=database["pool_size"],
    )


def unreachable_errors() -> tuple[type[BaseException], ...]:
    """The errors that mean "the database could not be opened" (asyncpg's only once it is loaded)."""
    errors: tuple[type[BaseException], ...] = (OSError, sqlite3.Error, SchemaTooNew)
    postgres = sys.modules.get("storage.postgres")
    if postgres is not None:
        import asyncpg

        errors += (postgres.DatabaseUnreachable, asyncpg.PostgresError)
    return errors


# -- demo -----------------------------------------------------------------------

DEMO_DATABASE = "data/demo.db"
DEMO_GREETING = "您好，我是王经理，很高兴为您服务。有什么可以帮您的吗？"


async def seed_demo(config: Config) -> None:
    """A radar user and three customers, each greeted once, unless the demo seeded them already.

    They are marked ``seeded_by_demo``: those are the only accounts whose tokens
    the demo pages are handed.
    """
    store = await open_store(config)
    try:
        user, _ = await store.demo_seeded_accounts(1)
        if user is not None:
            return
        user_id, _ = await store.save_radar_user(
            None, seeded_by_demo=True, username="王经理", avatar="/static/demo/avatars/rep.svg",
            mingpian_avatar="/static/demo/avatars/rep.svg", mingpian_phone="18900000000", wechat="wang_demo",
        )
        for number, name in enumerate(("小明", "李华", "张伟"), start=1):
            customer_id, _ = await store.save_customer(
                None, seeded_by_demo=True, username=name, headimgurl=f"/static/demo/avatars/{number}.svg"
            )
            await store.send(customer_id, user_id, FROM_RADAR_USER, {"info_type": 1, "msg": DEMO_GREETING})
    finally:
        await store.close()


# -- webhooks -----------------------------------------------------------------


async def list_webhooks(config: Config, statuses: tuple[str, ...]) -> dict[str, Any]:
    """How many events are in each state, and the events in ``statuses``, oldest first."""
    store = await open_store(config)
    try:
        counts = await store.outbox.counts()
        events = [event for status in statuses for event in await store.outbox.events(status)]
    finally:
        await store.close()
    return {"counts": counts, "events": [
        {"id": event.id, "type": event.type, "status": event.status, "attempts": event.attempts,
         "created_at": iso_utc(event.created_at), "last_error": event.last_error,
         "next_attempt_at": None if event.next_attempt_at is None else iso_utc(event.next_attempt_at),
         "user_id": event.user_id, "customer_id": event.customer_id}
        for event in events]}


async def webhooks_command(config: Config, args: argparse.Namespace) -> dict[str, Any]:
    if args.action == "list":
        if args.ids or args.failed:
            raise ValueError("IDs and --failed go with `webhooks retry`")
        return await list_webhooks(config, ("pending", "failed", "delivered") if args.all else ("pending", "failed"))
    if bool(args.ids) == args.failed:
        raise ValueError("webhooks retry takes event ids or --failed (one of the two)")
    return await retry_webhooks(config, None if args.failed else args.ids)


async def retry_webhooks(config: Config, event_ids: list[str] | None) -> dict[str, Any]:
    """Queue events again from their first attempt: those named, or (None) every failed one.
    A running server sends them at its next look (within a second)."""
    store = await open_store(config)
    try:
        queued = await store.outbox.requeue(event_ids, time.time())
    finally:
        await store.close()
    unknown = sorted(set(event_ids or ()) - set(queued))
    if unknown:
        raise ValueError(f"no webhook event {', '.join(unknown)}")
    return {"queued": queued}


# -- media --------------------------------------------------------------------


async def media_usage(config: Config) -> dict[str, Any]:
    """Uploads by kind: count and bytes (thumbnails included), and how many no message has claimed yet."""
    store = await open_store(config)
    try:
        usage = await store.attachment_usage()
    finally:
        await store.close()
    return {"store": config["media"]["store"], "by_type": usage,
            "total": {key: sum(figures[key] for figures in usage.values()) for key in usage["image"]}}


# -- a customer's data ----------------------------------------------------------


async def open_media_room(config: Config, store: ChatStore) -> Media:
    """The media store the server uses, with the URL key every process shares."""
    settings = MediaSettings.from_config({**config["media"], "directory": media_directory(config)})
    return await Media.open(settings, await store.server_key(MEDIA_URL_KEY))


async def export_customer(config: Config, customer_id: int, out: Path | None) -> dict[str, Any] | None:
    """The customer's data as the server API's export gives it (one JSON document, its picture
    and video URLs signed for a day), written a piece at a time to ``out`` or to stdout; None
    if there is no such customer (nothing is written)."""
    store = await open_store(config)
    media = None
    try:
        export = await store.customer_export(customer_id)
        if export is None:
            return None
        media = await open_media_room(config, store)
        links = signed_links(media, None, EXPORT_LINK_SECONDS)
        written = 0
        target = open(out, "wb") if out is not None else sys.stdout.buffer
        try:
            async for chunk in export.json_chunks(links):
                data = chunk.encode("utf-8")
                target.write(data)
                written += len(data)
            target.flush()
        finally:
            if out is not None:
                target.close()
    finally:
        if media is not None:
            await media.close()
        await store.close()
    return {"customer_id": customer_id, "out": str(out), "bytes": written}


async def erase_customer(config: Config, customer_id: int) -> dict[str, Any]:
    """Everything kept about the customer removed, files too, as the server API's erasure does;
    what went, counted (all zeros for a customer who is not there)."""
    store = await open_store(config)
    try:
        media = await open_media_room(config, store)
        try:
            removed = await store.erase_customer(customer_id, media.delete)
        finally:
            await media.close()
    finally:
        await store.close()
    return {"customer_id": customer_id, "removed": removed}


# -- accounts -----------------------------------------------------------------


async def add_account(config: Config, kind: str, account_id: int | None, fields: dict[str, Any]) -> dict[str, Any]:
    store = await open_store(config)
    try:
        save = store.save_radar_user if kind == "user" else store.save_customer
        saved_id, token = await save(account_id, **fields)
    finally:
        await store.close()
    return {"id": saved_id, "token": token}


async def demo_accounts(config: Config, users: int, customers: int) -> dict[str, Any]:
    store = await open_store(config)
    try:
        user_tokens, customer_tokens = await store.add_demo_accounts(users, customers)
    finally:
        await store.close()
    return {
        "users": {str(i): token for i, token in user_tokens.items()},
        "customers": {str(i): token for i, token in customer_tokens.items()},
    }


# -- running a command ----------------------------------------------------------


def run_command(args: argparse.Namespace, config: Config) -> int:
    """Every command but ``serve`` and ``demo``: its answer on stdout, and the exit status.

    A ValueError (e.g. a new account without --name) and the errors of
    ``unreachable_errors`` are the caller's to report.
    """
    if args.command == "backup":
        location = database_location(config)
        if is_postgres(location):
            print(f"{PROGRAM} backup: copies a SQLite file; for PostgreSQL use pg_dump "
                  f"(pg_dump --format=custom --file=OUT 'URL'; README.md, Backups)", file=sys.stderr)
            return 2
        print(json.dumps(backup(sqlite_path(location), args.out)))
        return 0
    if args.command == "export-customer":
        exported = asyncio.run(export_customer(config, args.id, args.out))
        if exported is None:
            print(f"{PROGRAM} export-customer: no customer with id {args.id}", file=sys.stderr)
            return 1
        if args.out is not None:
            print(json.dumps(exported, ensure_ascii=False))
        return 0
    if args.command == "erase-customer":
        print(json.dumps(asyncio.run(erase_customer(config, args.id))))
        return 0
    if args.command == "media":
        print(json.dumps(asyncio.run(media_usage(config))))
        return 0
    if args.command == "webhooks":
        print(json.dumps(asyncio.run(webhooks_command(config, args)), ensure_ascii=False))
        return 0
    if args.command == "demo-accounts":
        result = asyncio.run(demo_accounts(config, args.users, args.customers))
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result))
        print(json.dumps({"users": len(result["users"]), "customers": len(result["customers"]), "json": str(args.json)}))
        return 0
    if args.command == "add-user":
        fields = {
            "username": args.name, "token": args.token, "avatar": args.avatar,
            "mingpian_avatar": args.mingpian_avatar, "mingpian_phone": args.mingpian_phone,
            "wechat": args.wechat, "wechat_phone": args.wechat_phone,
        }
        kind = "user"
    else:
        fields = {"username": args.name, "token": args.token, "headimgurl": args.headimgurl}
        kind = "customer"
    print(json.dumps(asyncio.run(add_account(config, kind, args.id, fields)), ensure_ascii=False))
    return 0


# -- command line -------------------------------------------------------------


def _token(value: str) -> str:
    if not value or len(value) > 128 or not value.isprintable() or value.strip() != value:
        raise argparse.ArgumentTypeError("a token is 1 to 128 printable characters without surrounding spaces")
    return value


def _integer(value: str, minimum: int, maximum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if not minimum <= number <= maximum:
        raise argparse.ArgumentTypeError(f"must be between {minimum} and {maximum}")
    return number


def _account_id(value: str) -> int:
    return _integer(value, 1, 2**63 - 1)


def _count(value: str) -> int:
    return _integer(value, 0, 1_000_000)


def _name(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("a name must not be empty")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--config", type=Path, help="TOML config file (default: ./config.toml, else the checkout's, else built-in defaults)")
        sub.add_argument("--db", help="SQLite database path, or a postgresql://user@host:port/database URL "
                                       "(overrides database.path and database.url)")
        return sub

    serve_parser = command("serve", "run the chat server (the default command)")
    serve_parser.add_argument("--host", help="address to listen on (overrides server.host)")
    serve_parser.add_argument("--port", type=int, help="port to listen on (overrides server.port)")
    serve_parser.add_argument("--processes", type=lambda value: _integer(value, 0, 1024),
                              help="worker processes on the one port; 0 = one per core; more than one "
                                   "needs PostgreSQL (overrides server.processes)")

    demo = command("demo", f"run the demo: a demo database ({DEMO_DATABASE}), a radar user, three "
                           "customers, and the two demo pages; prints their addresses")
    demo.add_argument("--host", help="address to listen on (overrides server.host)")
    demo.add_argument("--port", type=int, help="port to listen on (overrides server.port)")

    user = command("add-user", "create or update a radar user; prints {\"id\", \"token\"}")
    user.add_argument("--name", type=_name, help="display name (required for a new user)")
    user.add_argument("--id", type=_account_id, help="account id; an existing id is updated")
    user.add_argument("--token", type=_token, help="secret token (default: random 32 hex digits)")
    for flag in ("avatar", "mingpian-avatar", "mingpian-phone", "wechat", "wechat-phone"):
        user.add_argument(f"--{flag}")

    customer = command("add-customer", "create or update a customer; prints {\"id\", \"token\"}")
    customer.add_argument("--name", type=_name, help="display name (required for a new customer)")
    customer.add_argument("--id", type=_account_id, help="account id; an existing id is updated")
    customer.add_argument("--token", type=_token, help="secret token (default: random 32 hex digits)")
    customer.add_argument("--headimgurl", help="avatar URL")

    copy = command("backup", "write a consistent copy of the database to OUT, while the server serves; "
                             "prints {\"backup\", \"messages\", \"bytes\"}")
    copy.add_argument("out", type=Path, metavar="OUT", help="file to write the copy to (replaced if it exists)")

    hooks = command("webhooks", "list pending and failed webhook events (--all: delivered too), or "
                                "`webhooks retry ID... | --failed` to queue them again; prints JSON")
    hooks.add_argument("action", nargs="?", choices=("list", "retry"), default="list")
    hooks.add_argument("ids", nargs="*", metavar="ID", help="event ids (webhook-id) to retry")
    hooks.add_argument("--failed", action="store_true", help="with retry: every failed event")
    hooks.add_argument("--all", action="store_true", help="with list: delivered events too")

    command("media", "uploads (pictures and videos) by type: count and bytes, and those no message claimed; "
                     "prints JSON")

    export = command("export-customer", "write everything kept about a customer as one JSON document to stdout "
                                         "(or --out FILE, then prints {\"customer_id\", \"out\", \"bytes\"})")
    export.add_argument("id", type=_account_id, metavar="ID", help="the customer's id")
    export.add_argument("--out", type=Path, help="file to write the document to (replaced if it exists)")
    erase = command("erase-customer", "remove a customer and everything kept about them (messages, "
                                      "conversations, files); prints {\"customer_id\", \"removed\": {counts}}")
    erase.add_argument("id", type=_account_id, metavar="ID", help="the customer's id")

    numbered = command("demo-accounts", "create numbered radar users and customers in one transaction")
    numbered.add_argument("--users", type=_count, required=True)
    numbered.add_argument("--customers", type=_count, required=True)
    numbered.add_argument("--json", type=Path, required=True, help="file to write the ids and tokens to")
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["serve", *argv]
    return build_parser().parse_args(argv)


def config_for(args: argparse.Namespace) -> Config:
    config = load_config(config_file(args.config))
    if args.db:
        if is_postgres(args.db):
            config["database"]["url"] = args.db
        else:
            config["database"]["url"], config["database"]["path"] = "", args.db
    if getattr(args, "processes", None) is not None:
        config["server"]["processes"] = args.processes
    if getattr(args, "host", None):
        config["server"]["host"] = args.host
    if getattr(args, "port", None) is not None:
        config["server"]["port"] = args.port
    check(config)
    return config
