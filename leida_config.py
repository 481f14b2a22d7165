"""Configuration: every setting, its default, and where it may come from.

Settings come from ``config.toml``, then ``LEIDA_<SECTION>_<KEY>`` environment
variables, then command-line flags (applied by leida_chat.py), each overriding
the one before. Unknown keys and wrong types stop the server with a message
that names the setting: a typo must not be taken silently for a default.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from server_api.auth import KeysInvalid, ServerApiKey, parse_keys
from storage.store import SQLITE_SCHEME, is_postgres, sqlite_path
from webhooks import SecretError, WebhookSettings, parse_secrets

#: the file a checkout ships, used when the working directory has no config.toml of its own
SHIPPED_CONFIG = Path(__file__).resolve().parent / "config.toml"

Config = dict[str, dict[str, Any]]

#: Every setting and its default; the config file and environment may set only these.
DEFAULTS: Config = {
    # top-level keys (no [section]); demo = true serves /demo/ pages and hands out the
    # demo-seeded accounts' tokens to this machine: `leida_chat.py demo` turns it on
    "": {"demo": False},
    "server": {
        "host": "127.0.0.1",
        "port": 8000,
        "max_body_bytes": 64 * 1024,
        "max_header_bytes": 16 * 1024,
        "idle_connection_timeout": 120.0,
        # seconds a request's whole header may take from its first byte (slow-header clients)
        "header_timeout": 10.0,
        # connections open without a complete request header; past it the oldest is closed. 0: a quarter
        # of the open-file limit
        "max_unfinished_connections": 0,
        "body_timeout": 30.0,
        "shutdown_grace_seconds": 5.0,
        "event_loop": "auto",
        "cors_origins": "*",
        "trusted_proxies": "",
        # worker processes sharing the port (pre-fork); 0 = one per core. More than one needs PostgreSQL.
        "processes": 1,
    },
    # url (postgresql://user@host:port/db) wins over path (a SQLite file); pool_size is PostgreSQL's
    # connections per process, synchronous is SQLite's
    "database": {"path": "data/leida_chat.db", "url": "", "synchronous": "FULL", "pool_size": 10},
    "auth": {"max_skew_seconds": 900.0, "account_cache_seconds": 5.0},
    "longpoll": {"timeout": 25.0, "max_timeout": 55.0, "max_items": 200, "max_waiters": 10000,
                 "max_waiters_per_account": 8},
    "limits": {"msg_max_chars": 5000, "content_max_bytes": 16 * 1024, "history_max_length": 100},
    # recall (撤回): how long after its sending a message can be taken back (WeChat's two minutes); 0: off
    "chat": {"recall_seconds": 120.0},
    "log": {"level": "INFO", "access": True},
    # Prometheus metrics, on a listener of their own (never the public port): 9480 sits in
    # the range Prometheus exporters use (9100-9999), clear of the ports its wiki lists as
    # taken, and fixed so that a scrape config is written once; 0 takes any free port (logged).
    "metrics": {"host": "127.0.0.1", "port": 9480},
    # The CRM's API (server_api/), on a listener of its own: never the public port. 9481 sits beside
    # the metrics port; 0 takes any free port (logged). keys: comma-separated name:secret (secrets of
    # 16 characters or more; prefer LEIDA_SERVER_API_KEYS); empty: the API is off (404 problems).
    "server_api": {"host": "127.0.0.1", "port": 9481, "keys": ""},
    # offline notifications: url empty = off; secret is whsec_<base64> (several, space-separated, to rotate)
    # pictures and videos (media/): where they are kept, what is accepted, how long their URLs work
    # directory empty: media/ beside the SQLite file (data/media by default), or data/media on PostgreSQL
    "media": {"store": "local", "directory": "", "max_image_bytes": 10 * 1024 * 1024,
              "max_video_bytes": 50 * 1024 * 1024, "max_image_pixels": 50_000_000, "max_frames": 500,
              "workers": 2, "url_ttl_seconds": 7 * 24 * 3600, "unclaimed_hours": 24.0, "upload_timeout": 600.0,
              "base_url": "", "s3_endpoint": "", "s3_bucket": "", "s3_region": "us-east-1",
              "s3_presign_seconds": 90},
    "webhook": {"url": "", "secret": "", "unread_after_seconds": 60.0, "timeout_seconds": 10.0,
                "retry_seconds": "0,5,300,1800,7200,18000,36000,36000",
                "retention_days": 7.0, "failed_retention_days": 30.0},
    # what stops being kept (storage/retention.py): messages older than message_days (0: forever)
    "retention": {"message_days": 0.0},
}


class ConfigError(ValueError):
    """A setting is unknown or has the wrong type; the message names it."""


def env_name(section: str, key: str) -> str:
    return f"LEIDA_{section}_{key}".upper() if section else f"LEIDA_{key}".upper()


def _coerce(name: str, value: Any, default: Any) -> Any:
    """``value`` as the type of ``default``, accepting strings (from the environment)."""
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            word = str(value).strip().lower()
            if word in ("1", "true", "yes", "on"):
                return True
            if word in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, int):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if isinstance(value, list):  # a TOML array for a comma-separated setting
            if not all(isinstance(item, (str, int, float)) and not isinstance(item, bool) for item in value):
                raise ValueError
            return ",".join(str(item) for item in value)
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError):
        wanted = "list of numbers or strings, or a comma-separated string" if isinstance(value, list) and isinstance(default, str) \
            else type(default).__name__
        raise ConfigError(f"{name} must be a {wanted}, got {value!r}") from None


def load_config(path: Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Defaults, overlaid by the TOML file at ``path`` (if any), then by the environment."""
    environ = os.environ if environ is None else environ
    config = {section: dict(values) for section, values in DEFAULTS.items()}
    if path is not None:
        try:
            with open(path, "rb") as file:
                loaded = tomllib.load(file)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"config file {path}: {error}") from None
        top_level = {key: value for key, value in loaded.items() if not isinstance(value, dict)}
        for section, values in [("", top_level), *((k, v) for k, v in loaded.items() if isinstance(v, dict))]:
            if section not in DEFAULTS:
                raise ConfigError(f"unknown config section [{section}] in {path}")
            for key, value in values.items():
                name = f"{section}.{key}" if section else key
                if key not in DEFAULTS[section]:
                    raise ConfigError(f"unknown setting {name} in {path}")
                config[section][key] = _coerce(name, value, DEFAULTS[section][key])
    for section, values in DEFAULTS.items():
        for key, default in values.items():
            name = env_name(section, key)
            if name in environ:
                config[section][key] = _coerce(name, environ[name], default)
    check(config)
    return config


def check(config: Config) -> None:
    server, longpoll, limits = config["server"], config["longpoll"], config["limits"]
    for name, port in (("server.port", server["port"]), ("metrics.port", config["metrics"]["port"]),
                       ("server_api.port", config["server_api"]["port"])):
        if not 0 <= port <= 65535:
            raise ConfigError(f"{name} must be between 0 and 65535")
    if longpoll["timeout"] < 0 or longpoll["max_timeout"] <= 0:
        raise ConfigError("longpoll.timeout and longpoll.max_timeout must be positive")
    if config["auth"]["max_skew_seconds"] < 0:
        raise ConfigError("auth.max_skew_seconds must be 0 (off) or positive")
    if config["auth"]["account_cache_seconds"] < 0:
        raise ConfigError("auth.account_cache_seconds must be 0 (no cache) or positive")
    for name in ("idle_connection_timeout", "header_timeout", "body_timeout"):
        if server[name] <= 0:  # a deadline of 0 or less would close every connection at once
            raise ConfigError(f"server.{name} must be positive")
    if server["max_unfinished_connections"] < 0:
        raise ConfigError("server.max_unfinished_connections must be 0 (a quarter of the open-file limit) or more")
    if server["shutdown_grace_seconds"] < 0:
        raise ConfigError("server.shutdown_grace_seconds must be 0 or positive")
    for name, value in [("server.max_body_bytes", server["max_body_bytes"]),
                        ("server.max_header_bytes", server["max_header_bytes"]), ("longpoll.max_items", longpoll["max_items"]),
                        ("longpoll.max_waiters", longpoll["max_waiters"]),
                        ("longpoll.max_waiters_per_account", longpoll["max_waiters_per_account"]),
                        *((f"limits.{key}", value) for key, value in limits.items())]:
        if value < 1:
            raise ConfigError(f"{name} must be at least 1")
    for origin in cors_origins(server["cors_origins"]):
        if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
            raise ConfigError(f"server.cors_origins: {origin!r} is not * or an origin like https://h5.example.com")
    for proxy in comma_list(server["trusted_proxies"]):
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ConfigError(f"server.trusted_proxies: {proxy!r} is not an address or a CIDR network") from None
    if server["event_loop"] not in ("auto", "asyncio", "uvloop"):
        raise ConfigError("server.event_loop must be auto, asyncio or uvloop")
    check_database(config)
    check_media(config)
    check_retention(config)
    if not 0 <= config["chat"]["recall_seconds"] <= 86400:
        raise ConfigError("chat.recall_seconds must be between 0 (recall off) and 86400")
    webhook_settings(config)
    server_api_keys(config)
    if not isinstance(logging.getLevelName(config["log"]["level"].upper()), int):
        raise ConfigError("log.level must be DEBUG, INFO, WARNING or ERROR")


def check_database(config: Config) -> None:
    database, processes = config["database"], config["server"]["processes"]
    if database["synchronous"].upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise ConfigError("database.synchronous must be OFF, NORMAL, FULL or EXTRA")
    if database["url"] and not (is_postgres(database["url"]) or database["url"].startswith(SQLITE_SCHEME)):
        raise ConfigError("database.url must be postgresql://user@host:port/database or sqlite:///path")
    if database["pool_size"] < 1:
        raise ConfigError("database.pool_size must be at least 1")
    if processes < 0:
        raise ConfigError("server.processes must be 0 (one per core) or more")
    if worker_count(config) > 1 and not is_postgres(database_location(config)):
        raise ConfigError(
            f"server.processes = {processes} means {worker_count(config)} processes, and a SQLite file has one "
            "writer: serve it with one process, or use PostgreSQL for several "
            "(database.url / LEIDA_DATABASE_URL / --db postgresql://user@host:port/database)"
        )


def check_media(config: Config) -> None:
    media = config["media"]
    if media["store"] not in ("local", "s3"):
        raise ConfigError("media.store must be local or s3")
    if media["store"] == "s3" and not (media["s3_endpoint"] and media["s3_bucket"]):
        raise ConfigError("media.store = s3 needs media.s3_endpoint and media.s3_bucket "
                          "(LEIDA_MEDIA_S3_ENDPOINT, LEIDA_MEDIA_S3_BUCKET)")
    for key in ("max_image_bytes", "max_video_bytes", "max_image_pixels", "max_frames", "workers", "url_ttl_seconds"):
        if media[key] < 1:
            raise ConfigError(f"media.{key} must be at least 1")
    if not 30 <= media["s3_presign_seconds"] <= 3600:
        raise ConfigError("media.s3_presign_seconds must be between 30 and 3600")
    for key in ("unclaimed_hours", "upload_timeout"):
        if media[key] <= 0:
            raise ConfigError(f"media.{key} must be positive")
    base = media["base_url"]
    if base and not re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", base):
        raise ConfigError("media.base_url must be empty or an http(s) URL like https://chat.example.com")


def webhook_settings(config: Config) -> WebhookSettings | None:
    """The webhook sender's settings, or None if ``webhook.url`` is empty (webhooks off).
    Errors name the key, never the secret's value."""
    webhook = config["webhook"]
    try:
        keys = parse_secrets(webhook["secret"])
    except SecretError as error:
        raise ConfigError(f"webhook.secret: {error} (LEIDA_WEBHOOK_SECRET)") from None
    if webhook["unread_after_seconds"] < 0:
        raise ConfigError("webhook.unread_after_seconds must be 0 or more")
    if webhook["timeout_seconds"] <= 0:
        raise ConfigError("webhook.timeout_seconds must be positive")
    try:
        retry_seconds = tuple(float(delay) for delay in comma_list(webhook["retry_seconds"]))
    except ValueError:
        retry_seconds = ()
    if not retry_seconds or any(not 0 <= delay < float("inf") for delay in retry_seconds):
        raise ConfigError("webhook.retry_seconds must be seconds, comma-separated, e.g. 0,5,300 "
                          "(LEIDA_WEBHOOK_RETRY_SECONDS)")
    if not webhook["url"]:
        return None
    url = urlsplit(webhook["url"])
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError("webhook.url must be an http:// or https:// URL (LEIDA_WEBHOOK_URL; empty: webhooks off)")
    if not keys:
        raise ConfigError("webhook.secret is required when webhook.url is set: whsec_ followed by base64 "
                          "(LEIDA_WEBHOOK_SECRET)")
    return WebhookSettings(webhook["url"], keys, webhook["unread_after_seconds"], webhook["timeout_seconds"],
                           retry_seconds)


def server_api_keys(config: Config) -> tuple[ServerApiKey, ...]:
    """The server API's keys (``server_api.keys``); none: the API is off. Errors name the
    setting and the entry's position, never a secret."""
    try:
        return parse_keys(config["server_api"]["keys"])
    except KeysInvalid as error:
        raise ConfigError(f"server_api.keys: {error} (LEIDA_SERVER_API_KEYS: comma-separated name:secret)") from None


def check_retention(config: Config) -> None:
    for name, value in (("retention.message_days", config["retention"]["message_days"]),
                        ("webhook.retention_days", config["webhook"]["retention_days"]),
                        ("webhook.failed_retention_days", config["webhook"]["failed_retention_days"])):
        if not 0 <= value <= 36500:
            raise ConfigError(f"{name} must be between 0 (keep forever) and 36500 days")


def media_directory(config: Config) -> Path:
    """``media.directory``, or else ``media/`` beside the SQLite file (``data/media`` for the
    default database, and on PostgreSQL)."""
    if config["media"]["directory"]:
        return Path(config["media"]["directory"])
    location = database_location(config)
    if is_postgres(location):
        return Path("data/media")
    return sqlite_path(location).parent / "media"


def database_location(config: Config) -> str:
    """``database.url`` if set, else ``database.path``: what the store opens."""
    return config["database"]["url"] or config["database"]["path"]


def worker_count(config: Config) -> int:
    """``server.processes``, with 0 read as one per core."""
    return config["server"]["processes"] or os.cpu_count() or 1


def comma_list(setting: str) -> tuple[str, ...]:
    """A setting that lists values, comma-separated (as the environment can give them)."""
    return tuple(value.strip() for value in setting.split(",") if value.strip())


def cors_origins(setting: str) -> tuple[str, ...]:
    """``server.cors_origins``: origins (scheme://host[:port]), or ``*`` for every one."""
    return tuple(origin.rstrip("/") for origin in comma_list(setting))


def config_file(explicit: Path | None) -> Path | None:
    """``--config``, else ``config.toml`` in the working directory, else the one
    beside this module (a checkout), else none: the defaults, which an installed
    ``leida-chat`` runs on."""
    if explicit is not None:
        return explicit
    for candidate in (Path("config.toml"), SHIPPED_CONFIG):
        if candidate.is_file():
            return candidate
    return None
