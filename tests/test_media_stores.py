"""One contract for both media stores: a local directory, and an S3 bucket on a real S3 API server.

Each test runs on each store (the ``kind`` parameter) unless it is about what
only one of them has: the local store's rename into place, the S3 store's
presigned URLs.
"""
from __future__ import annotations

import asyncio
import errno
import os
import secrets
import tracemalloc
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from botocore.exceptions import ClientError
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from media import stores as stores_module
from media.s3 import S3MediaStore
from media.stores import LocalMediaStore, MediaStore, Served
from s3 import S3Server, s3_bucket, s3_credentials, s3_server  # noqa: F401  (fixtures)

KINDS = ("local", "s3")
NOT_KEYS = ("../etc/passwd", "ABC", "", "x" * 32, "A" * 32, "0" * 31, "0" * 32 + ".png", "0" * 32 + "/../x")
DISPOSITION = "attachment; filename=\"photo.jpg\"; filename*=UTF-8''%E7%85%A7%E7%89%87.jpg"


def new_key(thumb: bool = False) -> str:
    return secrets.token_hex(16) + (".thumb" if thumb else "")


def make_source(tmp_path: Path, data: bytes) -> Path:
    """A finished upload, as the handlers hand it over: a temporary file outside the store."""
    uploads = tmp_path / "uploads"
    uploads.mkdir(exist_ok=True)
    source = uploads / f"upload-{secrets.token_hex(4)}"
    source.write_bytes(data)
    return source


def files_under(directory: Path) -> list[Path]:
    return sorted(path.relative_to(directory) for path in directory.rglob("*") if path.is_file())


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def media_store(request: pytest.FixtureRequest, io_loop, tmp_path: Path, kind: str):
    if kind == "local":
        store: MediaStore = LocalMediaStore(tmp_path / "media")
    else:
        server: S3Server = request.getfixturevalue("s3_server")
        bucket: str = request.getfixturevalue("s3_bucket")
        store = io_loop.run_sync(lambda: S3MediaStore.open(server.endpoint, bucket))
    yield store
    io_loop.run_sync(store.close)


async def fetch(url: str) -> HTTPResponse:
    return await AsyncHTTPClient().fetch(url, raise_error=False, follow_redirects=False, request_timeout=10)


# -- the contract -----------------------------------------------------------


@pytest.mark.gen_test
async def test_put_then_read_gives_back_the_same_bytes(media_store, tmp_path):
    for key, data in ((new_key(), b"\x89PNG\r\n\x1a\n" + os.urandom(3000)), (new_key(thumb=True), b"")):
        await media_store.put(key, make_source(tmp_path, data), "image/png")
        assert await media_store.read(key) == data


@pytest.mark.gen_test
async def test_put_consumes_the_source(media_store, tmp_path):
    source = make_source(tmp_path, b"hello")
    await media_store.put(new_key(), source, "text/plain")
    assert not source.exists()
    assert list((tmp_path / "uploads").iterdir()) == []


@pytest.mark.gen_test
async def test_a_failed_put_still_consumes_the_source(kind, io_loop, request, tmp_path):
    key = new_key()
    if kind == "s3":  # a bucket that was never made
        server: S3Server = request.getfixturevalue("s3_server")
        request.getfixturevalue("s3_credentials")
        store: MediaStore = await S3MediaStore.open(server.endpoint, "leida-no-such-bucket")
        failure: type[Exception] = ClientError
    else:  # a file where the key's fan-out directory has to go
        store = LocalMediaStore(tmp_path / "media")
        (tmp_path / "media" / key[:2]).write_bytes(b"in the way")
        failure = OSError
    source = make_source(tmp_path, b"hello")
    try:
        with pytest.raises(failure):
            await store.put(key, source, "text/plain")
    finally:
        await store.close()
    assert not source.exists()


@pytest.mark.gen_test
async def test_serve_answers_with_the_bytes_and_the_given_headers(media_store, kind, tmp_path):
    key, data = new_key(), os.urandom(2048)
    await media_store.put(key, make_source(tmp_path, data), "application/octet-stream")
    served = await media_store.serve(key, content_type="image/jpeg", content_disposition=DISPOSITION)
    assert isinstance(served, Served)
    if kind == "local":
        assert served.url is None and served.path is not None
        assert served.path.read_bytes() == data
    else:
        assert served.path is None and served.url is not None
        response = await fetch(served.url)
        assert response.code == 200, response.body[:300]
        assert response.body == data
        assert response.headers["Content-Type"] == "image/jpeg"
        assert response.headers["Content-Disposition"] == DISPOSITION


@pytest.mark.gen_test
async def test_delete_removes_the_object_and_a_second_delete_is_no_error(media_store, kind, tmp_path):
    key, other = new_key(), new_key()
    await media_store.put(key, make_source(tmp_path, b"gone soon"), "text/plain")
    await media_store.put(other, make_source(tmp_path, b"stays"), "text/plain")
    await media_store.delete(key)
    with pytest.raises(FileNotFoundError):
        await media_store.read(key)
    await media_store.delete(key)
    await media_store.delete(new_key())  # never there at all
    assert await media_store.read(other) == b"stays"
    if kind == "local":
        assert files_under(media_store.directory) == [media_store.path(other).relative_to(media_store.directory)]


@pytest.mark.gen_test
async def test_read_of_a_missing_key_is_file_not_found(media_store):
    with pytest.raises(FileNotFoundError):
        await media_store.read(new_key())
    with pytest.raises(FileNotFoundError):
        await media_store.read(new_key(thumb=True))


@pytest.mark.gen_test
async def test_anything_but_a_server_key_is_refused_before_touching_anything(media_store, kind, request, tmp_path):
    source = make_source(tmp_path, b"must stay")
    for bad in NOT_KEYS:
        with pytest.raises(ValueError):
            await media_store.put(bad, source, "text/plain")
        with pytest.raises(ValueError):
            await media_store.serve(bad, content_type="text/plain", content_disposition="inline")
        with pytest.raises(ValueError):
            await media_store.read(bad)
        with pytest.raises(ValueError):
            await media_store.delete(bad)
    assert source.read_bytes() == b"must stay"
    if kind == "local":
        assert files_under(media_store.directory) == []
    else:
        assert request.getfixturevalue("s3_server").keys(media_store.bucket) == []


@pytest.mark.gen_test(timeout=30)
async def test_a_5_mb_file_round_trips_without_being_read_into_memory(media_store, tmp_path):
    data = os.urandom(5 * 1024 * 1024)
    source = make_source(tmp_path, data)
    key = new_key()
    tracemalloc.start()
    try:
        await media_store.put(key, source, "video/mp4")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # streamed: about 2 MB at the peak (botocore hashes the body in 1 MB reads); read whole: over 5 MB
    assert peak < len(data) * 3 // 4, f"put held {peak} bytes at once for a {len(data)}-byte file"
    assert not source.exists()
    assert await media_store.read(key) == data


# -- S3 only: presigned URLs --------------------------------------------------


@pytest.mark.gen_test(timeout=15)
async def test_a_presigned_url_stops_working_once_it_expires(s3_server, s3_bucket, tmp_path):
    store = await S3MediaStore.open(s3_server.endpoint, s3_bucket, presign_seconds=1)
    try:
        key = new_key()
        await store.put(key, make_source(tmp_path, b"short-lived"), "text/plain")
        served = await store.serve(key, content_type="text/plain", content_disposition="inline")
    finally:
        await store.close()
    assert served.url is not None
    query = parse_qs(urlsplit(served.url).query)
    assert query["X-Amz-Expires"] == ["1"] and query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert "leida-test" in query["X-Amz-Credential"][0] and "X-Amz-Security-Token" not in query
    assert (await fetch(served.url)).code == 200
    await asyncio.sleep(2.1)
    response = await fetch(served.url)
    if response.code == 200:
        pytest.xfail("moto's server does not enforce X-Amz-Expires (real S3, OSS, COS and MinIO answer 403)")
    assert response.code == 403, response.body[:300]


def test_describe_names_the_bucket_and_endpoint_and_no_credentials(io_loop, s3_server, s3_bucket):
    store = io_loop.run_sync(lambda: S3MediaStore.open(s3_server.endpoint, s3_bucket))
    try:
        assert store.name == "s3"
        assert store.describe() == f"s3 bucket {s3_bucket} at {s3_server.endpoint}"
        assert os.environ["AWS_SECRET_ACCESS_KEY"] not in store.describe()
    finally:
        io_loop.run_sync(store.close)


# -- local only: the rename into place ----------------------------------------


@pytest.mark.gen_test
async def test_local_put_leaves_only_the_file_under_its_real_name(tmp_path):
    store = LocalMediaStore(tmp_path / "media")
    key = new_key()
    source = make_source(tmp_path, b"whole")
    await store.put(key, source, "text/plain")
    assert not source.exists()
    assert files_under(store.directory) == [Path(key[:2], key[2:4], key)]
    assert store.path(key).read_bytes() == b"whole"


@pytest.mark.gen_test
async def test_local_put_from_another_file_system_copies_then_renames(tmp_path, monkeypatch):
    """Across file systems the bytes go to ``<key>.part`` first; the real name appears only by the rename."""
    store = LocalMediaStore(tmp_path / "media")
    key, data = new_key(), os.urandom(100_000)
    source = make_source(tmp_path, data)
    target = store.path(key)
    real_replace = os.replace
    renames: list[tuple[Path, Path]] = []

    def replace(src, dst):
        if Path(src) == source:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        assert not target.exists(), "the real name appeared before the rename"
        assert Path(src).read_bytes() == data
        renames.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(stores_module.os, "replace", replace)
    await store.put(key, source, "text/plain")
    assert renames == [(target.with_name(key + ".part"), target)]
    assert not source.exists()
    assert files_under(store.directory) == [target.relative_to(store.directory)]
    assert target.read_bytes() == data
