#!/usr/bin/env python3
"""leida-chat: a long-polling chat server for WeChat H5 customers and radar sales reps.

This module wires configuration (leida_config.py) to the store, the store to
the app and the app to a server, and is the command line's entry point:
``serve`` (the default) and ``demo`` run the server here; ``add-user``,
``add-customer``, ``demo-accounts``, ``backup``, ``webhooks`` and ``media``,
and the parser itself, are leida_commands.py's. Installed, the same command
line is the ``leida-chat`` command.
``serve --processes N`` forks N workers onto one port (PostgreSQL only).
Besides the public port it listens for Prometheus (``metrics``) and for the
CRM's server API (``server_api``, server_api/), each on a port of its own.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import resource
import signal
import sys
from collections.abc import Callable
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.ioloop import PeriodicCallback
from tornado.netutil import bind_sockets
from tornado.process import fork_processes

from handlers import ApiSettings, ChatHTTPServer, make_app, metrics_app
from handlers.accepting import PausingHTTPServer
from handlers.items import signed_links
from leida_commands import (
    DEMO_DATABASE,
    PROGRAM,
    config_for,
    open_store,
    parse_args,
    run_command,
    seed_demo,
    unreachable_errors,
)
from leida_config import (
    Config,
    ConfigError,
    comma_list,
    cors_origins,
    media_directory,
    server_api_keys,
    webhook_settings,
    worker_count,
)
from media import KEY_NAME as MEDIA_URL_KEY
from media import Media, MediaSettings
from server_api import make_server_api_app
from storage import ChatStore
from storage.retention import Retention, RetentionSettings
from webhooks import WebhookSender

log = logging.getLogger("leida_chat")

#: how long a running thread keeps the GIL from a waiting one (CPython's default is 5 ms)
GIL_SWITCH_SECONDS = 0.001
#: sockets and files the server holds besides its held requests (listeners, database, sends in flight)
FILES_BESIDES_WAITERS = 256
#: pending connections the kernel queues for us: thousands of pages reconnect at once after a restart,
#: and while descriptors run out, accepting pauses and connects wait here (handlers/accepting.py)
LISTEN_BACKLOG = 4096
#: server.max_unfinished_connections = 0 means the open-file limit divided by this: connections that have
#: not sent a complete header never take more than a quarter of the descriptors
UNFINISHED_SHARE_OF_FILES = 4
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
        recall_seconds=config["chat"]["recall_seconds"],
        max_body_bytes=config["server"]["max_body_bytes"],
        cors_origins=cors_origins(config["server"]["cors_origins"]),
    )


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


def unfinished_connections_cap(setting: int, open_files: int) -> int:
    """``server.max_unfinished_connections``, with 0 read as a share of the open-file limit."""
    return setting or max(1, open_files // UNFINISHED_SHARE_OF_FILES)


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
    metrics_server = PausingHTTPServer(metrics_app(), listener="metrics")
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


def listen_for_the_crm(config: Config, store: ChatStore, media: Media, sockets: list | None = None,
                       worker: int | None = None) -> HTTPServer:
    """The server API's listener (server_api/), apart from the public port: the CRM's network is
    not the public's, and a port of its own is never reached through the public proxy by a routing
    mistake and can be bound to a private interface. It listens even with no keys (the API is off
    and says so). Workers of ``--processes`` share the ``sockets`` their parent bound, one port.
    """
    section = config["server_api"]
    keys = server_api_keys(config)
    app = make_server_api_app(store, media, keys, msg_max_chars=config["limits"]["msg_max_chars"],
                              access_log=config["log"]["access"])
    server = PausingHTTPServer(app, idle_connection_timeout=config["server"]["idle_connection_timeout"],
                               body_timeout=config["server"]["body_timeout"], listener="server_api")
    try:
        if sockets is None:
            server.listen(section["port"], section["host"])
        else:
            server.add_sockets(sockets)
    except OSError as error:
        raise SystemExit(_cannot_listen_for_the_crm(section, error)) from None
    port = next(iter(server._sockets.values())).getsockname()[1]
    if keys:
        log.info("%sserver API on http://%s:%d/api/v1/ (keys: %s)", _worker_prefix(worker), section["host"], port,
                 ", ".join(key.name for key in keys))
    else:
        log.info("%sserver API on http://%s:%d/api/v1/ is off: no server_api.keys", _worker_prefix(worker),
                 section["host"], port)
    return server


def _cannot_listen_for_the_crm(section: dict[str, Any], error: OSError) -> str:
    return (f"cannot listen for the server API on {section['host']}:{section['port']}: {error.strerror} "
            "(server_api.host / LEIDA_SERVER_API_HOST, server_api.port / LEIDA_SERVER_API_PORT; port 0 takes any free one)")


def _worker_prefix(worker: int | None) -> str:
    return "" if worker is None else f"worker {worker}: "


def collect_fully() -> None:
    gc.collect()


async def serve(config: Config, sockets: list | None = None, worker: int | None = None,
                stop_fd: int | None = None, server_api_sockets: list | None = None) -> None:
    """Run until SIGINT or SIGTERM, then answer held requests, let sends finish, and close.

    A worker of ``serve_in_processes`` is given the shared ``sockets`` (and ``server_api_sockets``),
    its number, and ``stop_fd``: the read end of a pipe whose end of file (the parent closed it, or
    died) also stops it.
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
    max_unfinished = unfinished_connections_cap(server_config["max_unfinished_connections"], open_files)
    server = ChatHTTPServer(
        app,
        idle_connection_timeout=server_config["idle_connection_timeout"],
        header_timeout=server_config["header_timeout"],
        max_unfinished_connections=max_unfinished,
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
    try:
        crm_server = listen_for_the_crm(config, store, media, server_api_sockets, worker)
    except SystemExit:
        server.stop()
        metrics_server.stop()
        await media.close()
        await store.close()
        raise
    log.info(
        "%sleida-chat listening on http://%s:%d, database %s (open-file limit %d, at most %d unfinished "
        "connections, %s loop)",
        _worker_prefix(worker), server_config["host"], port, store.database.describe(), open_files, max_unfinished,
        type(asyncio.get_running_loop()).__module__.split(".")[0],
    )
    if sender is not None:
        sender.start()
    retention = keep_retention(config, media, store)
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
    crm_server.stop()
    app.settings["inflight"].stopping = True
    store.waiters.close()
    if not await app.settings["inflight"].drained(server_config["shutdown_grace_seconds"]):
        log.warning("%d requests still open after the grace period", app.settings["inflight"].count)
    await server.close_all_connections()
    await crm_server.close_all_connections()
    if sender is not None:
        await sender.stop()
    await retention.stop()
    await media.close()
    await store.close()
    log.info("%sstopped after %d commits of %d changes", _worker_prefix(worker), store.commits, store.changes)


async def open_media(config: Config, store: ChatStore) -> Media:
    """The media room on the store ``media.store`` names, with the URL key every process shares."""
    settings = MediaSettings.from_config({**config["media"], "directory": media_directory(config)})
    media = await Media.open(settings, await store.server_key(MEDIA_URL_KEY))
    log.info("media: %s store at %s", media.store.name, media.store.describe())
    return media


def keep_retention(config: Config, media: Media, store: ChatStore) -> Retention:
    """Now and every ten minutes: old messages (retention.message_days), ended webhook events
    and uploads no message claimed within media.unclaimed_hours are deleted (storage/retention.py)."""
    retention = Retention(store, RetentionSettings.from_config(config), media.delete,
                          lambda: media.sweep_unclaimed(store))
    retention.start()
    return retention


def serve_in_processes(config: Config, count: int) -> int:
    """``count`` workers on one port, by tornado's pre-fork: the sockets are bound here,
    then each forked worker serves them with a loop, a store and a LISTEN connection of
    its own. SIGTERM or SIGINT to this parent stops every worker as ``serve`` stops one
    (held requests answered, sends finished), and the parent exits 0 once all have; a
    worker that crashes is started again. The schema is brought up to date once, here,
    so that a database out of reach stops the start with one message. The server API's
    socket is bound here too, so that every worker answers the CRM on one port.
    """
    server_config = config["server"]
    asyncio.run(_check_database(config))
    try:
        sockets = bind_sockets(server_config["port"], server_config["host"], backlog=LISTEN_BACKLOG)
    except OSError as error:
        raise SystemExit(f"cannot listen on {server_config['host']}:{server_config['port']}: {error.strerror}") from None
    try:
        server_api_sockets = bind_sockets(config["server_api"]["port"], config["server_api"]["host"])
    except OSError as error:
        raise SystemExit(_cannot_listen_for_the_crm(config["server_api"], error)) from None
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
        runner.run(serve(config, sockets, worker, stop_read, server_api_sockets))
    return 0


#: how many times crashed workers are started again before the parent gives up
MAX_WORKER_RESTARTS = 20


async def _check_database(config: Config) -> None:
    store = await open_store(config)
    await store.close()


def demo_urls(host: str, port: int) -> list[str]:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return [f"http://{shown}:{port}/demo/customer.html", f"http://{shown}:{port}/demo/radar.html"]


# -- command line -------------------------------------------------------------


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
        return run_command(args, config)
    except ValueError as error:  # e.g. a new account without --name
        print(f"{PROGRAM} {args.command}: {error}", file=sys.stderr)
        return 2
    except unreachable_errors() as error:  # e.g. a database that cannot be opened or reached
        print(f"{PROGRAM} {args.command or 'serve'}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
