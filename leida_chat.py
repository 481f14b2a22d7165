#!/usr/bin/env python3
"""leida-chat: a long-polling chat server for WeChat H5 customers and radar sales reps.

This module wires configuration (leida_config.py) to the store, the store to
the app and the app to a server, and holds the command line: ``serve`` (the
default), ``demo``, ``add-user``, ``add-customer``, ``demo-accounts``,
``backup``, ``webhooks`` and ``media``. Installed, the same command line is the ``leida-chat`` command.
``serve --processes N`` forks N workers onto one port (PostgreSQL only).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import resource
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.ioloop import PeriodicCallback
from tornado.netutil import bind_sockets
from tornado.process import fork_processes

from handlers import ApiSettings, ChatHTTPServer, make_app, metrics_app
from handlers.items import signed_links
from leida_config import (
    Config,
    ConfigError,
    check,
    comma_list,
    config_file,
    cors_origins,
    database_location,
    load_config,
    media_directory,
    webhook_settings,
    worker_count,
)
from media import KEY_NAME as MEDIA_URL_KEY
from media import SWEEP_SECONDS, Media, MediaSettings
from storage import FROM_RADAR_USER, ChatStore, is_postgres, sqlite_path
from storage.backup import backup
from storage.outbox import iso_utc
from storage.schema import SchemaTooNew
from webhooks import WebhookSender

log = logging.getLogger("leida_chat")

#: how messages name the command: ``leida_chat.py`` in a checkout, ``leida-chat`` installed
PROGRAM = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "leida-chat"

#: how long a running thread keeps the GIL from a waiting one (CPython's default is 5 ms)
GIL_SWITCH_SECONDS = 0.001
#: sockets and files the server holds besides its held requests (listeners, database, sends in flight)
FILES_BESIDES_WAITERS = 256
#: pending connections the kernel queues for us: thousands of pages reconnect at once after a restart
LISTEN_BACKLOG = 4096
#: how often the full garbage collection runs (CPython's own trigger is switched off: see below)
FULL_COLLECTION_SECONDS = 600

def api_settings(config: Config) -> ApiSettings:
    return ApiSettings(
        max_skew_seconds=config["auth"]["max_skew_seconds"],
        longpoll_timeout=config["longpoll"]["timeout"],
        longpoll_max_timeout=config["longpoll"]["max_timeout"],
        getmsg_max_items=config["longpoll"]["max_items"],
        max_waiters=config["longpoll"]["max_waiters"],
        max_waiters_per_account=config["longpoll"]["max_waiters_per_account"],
        msg_max_chars=config["limits"]["msg_max_chars"],
        content_max_bytes=config["limits"]["content_max_bytes"],
        history_max_length=config["limits"]["history_max_length"],
        max_body_bytes=config["server"]["max_body_bytes"],
        cors_origins=cors_origins(config["server"]["cors_origins"]),
    )


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


def raise_open_file_limit() -> int:
    """Each held request is an open socket: allow as many as the hard limit does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


# -- serve --------------------------------------------------------------------


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed ("auto") or asked for; it roughly halves the loop's own
    overhead per request (bench/README.md). None means asyncio's default loop."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("server.event_loop = uvloop, but uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


def collect_fully_on_a_timer() -> PeriodicCallback:
    """A full garbage collection walks every held request: at 10,000 held it
    stops the server for ~0.7 s, and CPython starts one whenever a quarter of
    the long-lived objects are new, which held requests turning over make every
    few seconds (bench/README.md: 15 in 25 s, 40 % of the time). Young
    generations are still collected as usual; the full collection runs every
    FULL_COLLECTION_SECONDS, so cyclic garbage that outlived a held request is
    freed then. What exists at start-up is frozen out of every collection.
    """
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 1_000_000_000)
    full = PeriodicCallback(collect_fully, FULL_COLLECTION_SECONDS * 1000)
    full.start()
    return full


def listen_for_scrapes(metrics_config: dict[str, Any], worker: int | None = None) -> HTTPServer:
    """The Prometheus listener, apart from the public port (a proxy in front never reaches it).

    Worker N of ``--processes`` listens on ``metrics.port + N`` (each worker's own
    figures: Prometheus sums them across the targets), or on a free port of its own when 0.
    """
    metrics_server = HTTPServer(metrics_app())
    host, port = metrics_config["host"], metrics_config["port"]
    if worker is not None and port:
        port += worker
    try:
        metrics_server.listen(port, host)
    except OSError as error:
        raise SystemExit(f"cannot listen for metrics on {host}:{port}: {error.strerror} "
                         f"(metrics.host / LEIDA_METRICS_HOST, metrics.port / LEIDA_METRICS_PORT; port 0 takes any free one)") from None
    port = next(iter(metrics_server._sockets.values())).getsockname()[1]
    log.info("%smetrics on http://%s:%d/metrics", _worker_prefix(worker), host, port)
    return metrics_server


def _worker_prefix(worker: int | None) -> str:
    return "" if worker is None else f"worker {worker}: "


def collect_fully() -> None:
    gc.collect()


async def serve(config: Config, sockets: list | None = None, worker: int | None = None,
                stop_fd: int | None = None) -> None:
    """Run until SIGINT or SIGTERM, then answer held requests, let sends finish, and close.

    A worker of ``serve_in_processes`` is given the shared ``sockets``, its number, and
    ``stop_fd``: the read end of a pipe whose end of file (the parent closed it, or died) also stops it.
    """
    server_config = config["server"]
    # The writer thread needs the GIL back after every commit; by default a busy
    # event loop keeps it for up to 5 ms, which would sit in every send's latency.
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    collect_fully_on_a_timer()
    open_files = raise_open_file_limit()
    needed = config["longpoll"]["max_waiters"] + FILES_BESIDES_WAITERS
    if open_files < needed:
        log.warning(
            "open-file limit %d is below the %d that longpoll.max_waiters = %d needs: raise `ulimit -n` "
            "(hard limit) or lower max_waiters", open_files, needed, config["longpoll"]["max_waiters"],
        )
    store = await open_store(config)
    try:
        media = await open_media(config, store)
    except BaseException:
        await store.close()
        raise
    webhooks = webhook_settings(config)
    sender = None
    store.outbox.attachment_links = signed_links(media, None)
    if webhooks is not None:
        store.watch_unread(webhooks.unread_after_seconds)
        sender = WebhookSender(store.outbox, webhooks)
    demo = config[""]["demo"]
    app = make_app(store, api_settings(config), access_log=config["log"]["access"], demo=demo, media=media)
    server = ChatHTTPServer(
        app,
        idle_connection_timeout=server_config["idle_connection_timeout"],
        max_header_size=server_config["max_header_bytes"],
        body_timeout=server_config["body_timeout"],
        trusted_proxies=comma_list(server_config["trusted_proxies"]),
        upload_timeout=config["media"]["upload_timeout"],
    )
    try:
        if sockets is None:
            server.listen(server_config["port"], server_config["host"], backlog=LISTEN_BACKLOG)
        else:
            server.add_sockets(sockets)
    except OSError as error:
        await media.close()
        await store.close()
        raise SystemExit(f"cannot listen on {server_config['host']}:{server_config['port']}: {error.strerror}") from None
    port = next(iter(server._sockets.values())).getsockname()[1]  # the real one when port = 0
    try:
        metrics_server = listen_for_scrapes(config["metrics"], worker)
    except SystemExit:
        server.stop()
        await media.close()
        await store.close()
        raise
    log.info(
        "%sleida-chat listening on http://%s:%d, database %s (open-file limit %d, %s loop)",
        _worker_prefix(worker), server_config["host"], port, store.database.describe(), open_files,
        type(asyncio.get_running_loop()).__module__.split(".")[0],
    )
    if sender is not None:
        sender.start()
    sweep = sweep_unclaimed_uploads(media, store)
    if demo:
        customer_page, radar_page = demo_urls(server_config["host"], port)
        log.warning("demo mode: /demo/accounts.json hands out the demo accounts' tokens to this machine; "
                    "never in production")
        print(f"\nDemo mode is on (demo = true). Open these two pages side by side:\n"
              f"  customer (H5 chat):   {customer_page}\n"
              f"  radar user (console): {radar_page}\n", flush=True)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    if stop_fd is not None:
        loop.add_reader(stop_fd, stopping.set)
    await stopping.wait()

    log.info("%sstopping: answering held requests and finishing in-flight sends", _worker_prefix(worker))
    server.stop()
    metrics_server.stop()
    app.settings["inflight"].stopping = True
    store.waiters.close()
    if not await app.settings["inflight"].drained(server_config["shutdown_grace_seconds"]):
        log.warning("%d requests still open after the grace period", app.settings["inflight"].count)
    await server.close_all_connections()
    if sender is not None:
        await sender.stop()
    sweep.stop()
    await media.close()
    await store.close()
    log.info("%sstopped after %d commits of %d changes", _worker_prefix(worker), store.commits, store.changes)


async def open_media(config: Config, store: ChatStore) -> Media:
    """The media room on the store ``media.store`` names, with the URL key every process shares."""
    settings = MediaSettings.from_config({**config["media"], "directory": media_directory(config)})
    media = await Media.open(settings, await store.server_key(MEDIA_URL_KEY))
    log.info("media: %s store at %s", media.store.name, media.store.describe())
    return media


def sweep_unclaimed_uploads(media: Media, store: ChatStore) -> PeriodicCallback:
    """Now and every SWEEP_SECONDS: uploads no message claimed within media.unclaimed_hours go."""
    running: list[asyncio.Task] = []

    def sweep() -> None:
        if running and not running[-1].done():
            return
        running[:] = [asyncio.get_running_loop().create_task(_sweep(media, store))]

    periodic = PeriodicCallback(sweep, SWEEP_SECONDS * 1000)
    periodic.start()
    sweep()
    return periodic


async def _sweep(media: Media, store: ChatStore) -> None:
    try:
        await media.sweep_unclaimed(store)
    except Exception:  # the database or the store out of reach: the next sweep tries again
        log.warning("sweeping unclaimed uploads failed", exc_info=True)


def serve_in_processes(config: Config, count: int) -> int:
    """``count`` workers on one port, by tornado's pre-fork: the sockets are bound here,
    then each forked worker serves them with a loop, a store and a LISTEN connection of
    its own. SIGTERM or SIGINT to this parent stops every worker as ``serve`` stops one
    (held requests answered, sends finished), and the parent exits 0 once all have; a
    worker that crashes is started again. The schema is brought up to date once, here,
    so that a database out of reach stops the start with one message.
    """
    server_config = config["server"]
    asyncio.run(_check_database(config))
    try:
        sockets = bind_sockets(server_config["port"], server_config["host"], backlog=LISTEN_BACKLOG)
    except OSError as error:
        raise SystemExit(f"cannot listen on {server_config['host']}:{server_config['port']}: {error.strerror}") from None
    stop_read, stop_write = os.pipe()
    parent = os.getpid()
    stop_sent: list[bool] = []

    def stop_workers(_signum: int, _frame: Any) -> None:
        """Every worker watches the pipe: closing its write end stops them all at once."""
        if os.getpid() == parent and not stop_sent:  # (a worker not yet serving runs this too: not its job)
            stop_sent.append(True)
            os.close(stop_write)

    signal.signal(signal.SIGTERM, stop_workers)
    signal.signal(signal.SIGINT, stop_workers)
    log.info("starting %d worker processes on %s:%d", count, server_config["host"], sockets[0].getsockname()[1])
    worker = fork_processes(count, max_restarts=MAX_WORKER_RESTARTS)  # only workers return; the parent exits
    os.close(stop_write)
    with asyncio.Runner(loop_factory=event_loop_factory(server_config["event_loop"])) as runner:
        runner.run(serve(config, sockets, worker, stop_read))
    return 0


#: how many times crashed workers are started again before the parent gives up
MAX_WORKER_RESTARTS = 20


async def _check_database(config: Config) -> None:
    store = await open_store(config)
    await store.close()


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


def demo_urls(host: str, port: int) -> list[str]:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return [f"http://{shown}:{port}/demo/customer.html", f"http://{shown}:{port}/demo/radar.html"]


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
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.splitlines()[0])
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = config_for(args)
    except ConfigError as error:
        print(f"{PROGRAM}: configuration error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config["log"]["level"].upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "demo":
            config[""]["demo"] = True
            if not args.db:
                config["database"]["url"], config["database"]["path"] = "", DEMO_DATABASE
            asyncio.run(seed_demo(config))
        if args.command in (None, "serve", "demo"):
            workers = worker_count(config)
            if workers > 1:
                return serve_in_processes(config, workers)
            with asyncio.Runner(loop_factory=event_loop_factory(config["server"]["event_loop"])) as runner:
                runner.run(serve(config))
            return 0
        if args.command == "backup":
            location = database_location(config)
            if is_postgres(location):
                print(f"{PROGRAM} backup: copies a SQLite file; for PostgreSQL use pg_dump "
                      f"(pg_dump --format=custom --file=OUT 'URL'; README.md, Backups)", file=sys.stderr)
                return 2
            print(json.dumps(backup(sqlite_path(location), args.out)))
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
    except ValueError as error:  # e.g. a new account without --name
        print(f"{PROGRAM} {args.command}: {error}", file=sys.stderr)
        return 2
    except unreachable_errors() as error:  # e.g. a database that cannot be opened or reached
        print(f"{PROGRAM} {args.command or 'serve'}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
