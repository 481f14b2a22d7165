"""Test fixtures: the real app, over real HTTP, on a real database.

Every test that uses the store runs once per backend (the ``backend``
parameter): on a SQLite file in a temp dir, and on a database of its own in a
PostgreSQL cluster the session starts itself (tests/postgres.py). A test
marked ``sqlite_only`` tests what only SQLite has (its file, its write lock).
"""
from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import ujson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from handlers import ApiSettings, ChatHTTPServer, make_app  # noqa: E402
from media import KEY_NAME as MEDIA_URL_KEY  # noqa: E402
from media import Media, MediaSettings  # noqa: E402
from storage import ChatStore  # noqa: E402


@dataclass(frozen=True)
class Account:
    id: int
    token: str


def sign(account: Account, timestamp_ms: int | None = None) -> dict[str, str]:
    """The three signature parameters, exactly as an H5 page computes them."""
    timestamp = str(int(time.time() * 1000) if timestamp_ms is None else timestamp_ms)
    return {
        "user_id": str(account.id),
        "timestamp": timestamp,
        "rand_str": hashlib.md5((timestamp + account.token).encode()).hexdigest(),
    }


class Api:
    """A thin client for the contract's endpoints; every call is signed unless told not to."""

    CUSTOMER = "/zhugeleida/gongzhonghao"
    RADAR = "/zhugeleida/qiyeweixin"

    def __init__(self, http_client: Any, base_url: str) -> None:
        self.http = http_client
        self.base_url = base_url

    def url(self, path: str, account: Account | None, query: dict[str, Any] | None = None) -> str:
        params: dict[str, Any] = dict(sign(account)) if account is not None else {}
        params.update({k: v for k, v in (query or {}).items() if v is not None})
        return f"{self.base_url}{path}?{urlencode(params)}"

    async def raw(self, method: str, url: str, body: bytes | str | None = None, **kwargs: Any):
        if method == "POST" and body is None:
            body = b""
        return await self.http.fetch(url, method=method, body=body, raise_error=False, **kwargs)

    async def get(self, path: str, account: Account | None, request_timeout: float = 60, **query: Any) -> dict:
        response = await self.raw("GET", self.url(path, account, query), request_timeout=request_timeout)
        assert response.headers["Content-Type"].startswith("application/json"), response.body
        return ujson.loads(response.body)

    async def post(self, path: str, account: Account | None, form: dict[str, Any], **query: Any) -> dict:
        body = urlencode({k: v for k, v in form.items() if v is not None})
        response = await self.raw(
            "POST", self.url(path, account, query), body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        return ujson.loads(response.body)

    # -- customer side --------------------------------------------------------

    async def customer_send(self, customer: Account, user_id: int, content: Any, **form: Any) -> dict:
        if not isinstance(content, str):
            content = ujson.dumps(content, ensure_ascii=False)
        return await self.post(f"{self.CUSTOMER}/chat/send_msg/0", customer, {"u_id": user_id, "content": content, **form})

    async def customer_getmsg(self, customer: Account, user_id: int, wait: Any = 0, **query: Any) -> dict:
        return await self.get(f"{self.CUSTOMER}/chat/getmsg/0", customer, u_id=user_id, wait=wait, **query)

    async def customer_history(self, customer: Account, user_id: int, **query: Any) -> dict:
        return await self.get(f"{self.CUSTOMER}/chat", customer, u_id=user_id, **query)

    async def customer_unread(self, customer: Account, user_id: int) -> int:
        body = await self.get(f"{self.CUSTOMER}/chat/query_num/0", customer, u_id=user_id)
        assert body["code"] == 200, body
        return body["data"]["chatinfo_count"]

    async def upload(self, account: Account, body: bytes, content_type: str, *, side: str = "customer",
                     **query: Any) -> tuple[int, dict]:
        """(HTTP status, envelope) of an upload: ``side`` "customer" (query ``u_id``) or "radar" (``customer_id``)."""
        prefix = self.CUSTOMER if side == "customer" else self.RADAR
        response = await self.raw("POST", self.url(f"{prefix}/chat/upload/0", account, query), body,
                                  headers={"Content-Type": content_type})
        return response.code, ujson.loads(response.body)

    # -- radar-user side ------------------------------------------------------

    async def radar_send(self, user: Account, customer_id: int, content: Any, **form: Any) -> dict:
        if not isinstance(content, str):
            content = ujson.dumps(content, ensure_ascii=False)
        return await self.post(f"{self.RADAR}/chat/send_msg/0", user, {"customer_id": customer_id, "content": content, **form})

    async def radar_getmsg(self, user: Account, customer_id: int | None = None, wait: Any = 0, **query: Any) -> dict:
        return await self.get(f"{self.RADAR}/chat/getmsg/0", user, customer_id=customer_id, wait=wait, **query)

    async def radar_history(self, user: Account, customer_id: int | None, **query: Any) -> dict:
        return await self.get(f"{self.RADAR}/chat", user, customer_id=customer_id, **query)

    async def radar_unread(self, user: Account, customer_id: int | None = None) -> int:
        body = await self.get(f"{self.RADAR}/chat/query_num/0", user, customer_id=customer_id)
        assert body["code"] == 200, body
        return body["data"]["chatinfo_count"]

    async def contacts(self, user: Account, **query: Any) -> dict:
        return await self.get(f"{self.RADAR}/contact", user, **query)


def text(msg: str) -> dict[str, Any]:
    return {"info_type": 1, "msg": msg}


@pytest.fixture
def api_settings() -> ApiSettings:
    """Override in a test module to try other limits."""
    return ApiSettings()


BACKENDS = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that needs a database runs on each backend, unless it is marked ``sqlite_only``."""
    if "backend" in metafunc.fixturenames:
        backends = BACKENDS[:1] if metafunc.definition.get_closest_marker("sqlite_only") else BACKENDS
        metafunc.parametrize("backend", backends, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def postgres_cluster():
    from postgres import Cluster

    cluster = Cluster()
    yield cluster
    cluster.destroy()


@pytest.fixture
def pg_database(request) -> str:
    """A fresh database in the session's PostgreSQL cluster (skipped, or failed under CI, without PostgreSQL)."""
    from postgres import require_postgres

    require_postgres()
    return request.getfixturevalue("postgres_cluster").new_database()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "chat.db"


@pytest.fixture
def database(request: pytest.FixtureRequest, backend: str, db_path: Path) -> str:
    """Where the test's data lives, as ``--db`` takes it: a SQLite path, or a PostgreSQL URL."""
    if backend == "sqlite":
        return str(db_path)
    from postgres import require_postgres

    require_postgres()
    return request.getfixturevalue("postgres_cluster").new_database()


@pytest.fixture
def store(io_loop, database: str):
    store = io_loop.run_sync(lambda: ChatStore.open(database))
    yield store
    io_loop.run_sync(store.close)


@pytest.fixture
def media_settings(tmp_path: Path) -> MediaSettings:
    """Override in a test module to try other limits; the files go to a temp dir."""
    return MediaSettings(directory=tmp_path / "media")


@pytest.fixture
def media(io_loop, store: ChatStore, media_settings: MediaSettings):
    """The media room, local store, with the URL key kept in the test's database."""
    async def open_media() -> Media:
        return await Media.open(media_settings, await store.server_key(MEDIA_URL_KEY))

    room = io_loop.run_sync(open_media)
    yield room
    io_loop.run_sync(room.close)


@pytest.fixture
def app(store: ChatStore, api_settings: ApiSettings, media: Media):
    return make_app(store, api_settings, media=media)


@pytest.fixture
def http_server(request, io_loop, _unused_port, app):
    """pytest-tornado's server fixture, but with the server class leida_chat.py serves with."""
    server = ChatHTTPServer(app, idle_connection_timeout=120.0, body_timeout=30.0)
    server.add_socket(_unused_port[0])
    yield server
    server.stop()
    io_loop.run_sync(server.close_all_connections, timeout=request.config.option.async_test_timeout)


@pytest.fixture
def api(http_client, base_url) -> Api:
    return Api(http_client, base_url)


@pytest.fixture
def radar_user(io_loop, store: ChatStore) -> Account:
    return Account(*io_loop.run_sync(lambda: store.save_radar_user(
        None, username="王经理", avatar="https://img.example/avatar.png",
        mingpian_avatar="https://img.example/card.png", mingpian_phone="18932674288",
        wechat="wx_wang", wechat_phone="18866554433",
    )))


@pytest.fixture
def other_radar_user(io_loop, store: ChatStore) -> Account:
    return Account(*io_loop.run_sync(lambda: store.save_radar_user(
        None, username="李四", avatar="https://img.example/li.png",
    )))


@pytest.fixture
def customer(io_loop, store: ChatStore) -> Account:
    return Account(*io_loop.run_sync(lambda: store.save_customer(
        None, username="_zzz จุ๊บ 😀", headimgurl="https://wx.qlogo.cn/zzz/132",
    )))


@pytest.fixture
def other_customer(io_loop, store: ChatStore) -> Account:
    return Account(*io_loop.run_sync(lambda: store.save_customer(
        None, username="小明", headimgurl="https://wx.qlogo.cn/xm/132",
    )))


@pytest.fixture
def start_server(tmp_path: Path):
    """``start_server(*args, env=None, cwd=tmp_path)``: a started ``leida_chat.py`` subprocess, killed at teardown
    (``preexec_fn``: run in the child first, e.g. to lower its open-file limit)."""
    from live import Server

    servers: list[Server] = []

    def start(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
              wait: bool = True, preexec_fn: Any = None) -> Server:
        server = Server(cwd or tmp_path, list(args), env, name=f"server{len(servers)}", preexec_fn=preexec_fn)
        servers.append(server)
        return server.wait_started() if wait else server

    yield start
    for server in servers:
        server.kill()
