"""Pictures and videos through the real server process, and the programs it meets.

The shipped deploy/nginx.conf in a real nginx; a real S3 API server (moto's,
tests/s3.py); two servers on one PostgreSQL database sharing the URL key; a
SIGKILL in the middle of an upload; a disk that fills up; the ``media`` command.
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest
from media_files import jpeg, multipart, png
from PIL import Image
from test_behind_nginx import shipped_config
from test_full_disk import fill, small_disk  # noqa: F401  (fixture)
from test_webhooks import ARRIVAL, matches_the_documented_schema, receiver, secret, webhook_env  # noqa: F401

from conftest import Account, sign
from live import CUSTOMER, HTTP_TIMEOUT, RADAR, accounts, clean_env, run_cli, serve_args
from nginx import start_nginx  # noqa: F401  (fixture)
from s3 import CREDENTIALS, REGION, s3_bucket, s3_credentials, s3_server  # noqa: F401  (fixtures)


def upload(port: int, account: Account, data: bytes, *, side: str = "customer", peer: int,
           headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """(status, envelope) of an upload; ``headers``, if given, is filled with the answer's."""
    body, content_type = multipart(("file", "photo.jpg", data))
    query = urlencode({**sign(account), ("u_id" if side == "customer" else "customer_id"): peer})
    prefix = CUSTOMER if side == "customer" else RADAR
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT)
    try:
        conn.request("POST", f"{prefix}/chat/upload/0?{query}", body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        if headers is not None:
            headers.update({name.lower(): value for name, value in response.getheaders()})
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def get(port: int, path_and_query: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT)
    try:
        conn.request("GET", path_and_query, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def local_path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def stored_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and "tmp" not in p.relative_to(directory).parts)


# -- nginx ----------------------------------------------------------------------------


def test_an_upload_and_its_picture_through_the_shipped_nginx(tmp_path, start_server, start_nginx):
    db = str(tmp_path / "chat.db")
    user, (customer,) = accounts(tmp_path, db)
    server = start_server(*serve_args(tmp_path), env=clean_env(LEIDA_SERVER_TRUSTED_PROXIES="127.0.0.1,::1",
                                                               LEIDA_MEDIA_MAX_IMAGE_BYTES="200000"))
    nginx = start_nginx(shipped_config(server.port))
    status, answer = upload(nginx.port, customer, jpeg(), peer=user.id)
    assert status == 200 and answer["code"] == 200, answer
    url = answer["data"]["url"]
    assert url.startswith(f"http://127.0.0.1:{nginx.port}/media/")  # the address the page reached
    sent = server.customer_send(customer, user.id, {"info_type": 4, "attachment_id": answer["data"]["attachment_id"]})
    assert sent["code"] == 200
    status, headers, body = get(nginx.port, local_path(url))
    assert status == 200 and headers["content-type"] == "image/jpeg" and headers["x-content-type-options"] == "nosniff"
    assert Image.open(__import__("io").BytesIO(body)).format == "JPEG"
    status, headers, body = get(nginx.port, local_path(url), {"Range": "bytes=0-9"})
    assert status == 206 and len(body) == 10
    # past the server's picture limit, through nginx: the server's own 413, with its words
    status, answer = upload(nginx.port, customer, jpeg(64, 64) + b"\0" * 200_001, peer=user.id)
    assert status == 413 and "at most 200000 bytes" in answer["msg"]
    assert "rand_str" in server.log() and customer.token not in server.log()
    assert "&s=***" in server.log() and urlsplit(url).query.split("&s=")[1] not in server.log()


# -- S3 -------------------------------------------------------------------------------


def test_the_s3_store_behind_the_same_routes(tmp_path, start_server, s3_server, s3_bucket):
    db = str(tmp_path / "chat.db")
    user, (customer,) = accounts(tmp_path, db)
    env = clean_env(LEIDA_MEDIA_STORE="s3", LEIDA_MEDIA_S3_ENDPOINT=s3_server.endpoint,
                    LEIDA_MEDIA_S3_BUCKET=s3_bucket, AWS_DEFAULT_REGION=REGION, **CREDENTIALS)
    server = start_server(*serve_args(tmp_path), env=env)
    status, answer = upload(server.port, user, png(), side="radar", peer=customer.id)
    assert status == 200 and answer["code"] == 200, answer
    attachment_id = answer["data"]["attachment_id"]
    assert sorted(s3_server.keys(s3_bucket)) == [attachment_id, f"{attachment_id}.thumb"]
    assert not stored_files(tmp_path / "media")  # nothing kept on this host
    sent = server.radar_send(user, customer.id, {"info_type": 4, "attachment_id": attachment_id})
    assert sent["code"] == 200
    (item,) = server.customer_getmsg(customer, user.id)["data"]["ret_data"]
    status, headers, _ = get(server.port, local_path(item["url"]))
    assert status == 302  # to a presigned GET, after the same signature check
    target = urlsplit(headers["location"])
    assert target.netloc == urlsplit(s3_server.endpoint).netloc and "X-Amz-Expires=90" in target.query
    conn = http.client.HTTPConnection(target.hostname, target.port, timeout=HTTP_TIMEOUT)
    conn.request("GET", f"{target.path}?{target.query}")
    response = conn.getresponse()
    body = response.read()
    assert response.status == 200 and response.getheader("Content-Type") == "image/png"
    assert Image.open(__import__("io").BytesIO(body)).size == (640, 480)
    tampered = local_path(item["url"])[:-3] + "AAA"
    assert get(server.port, tampered)[0] == 403
    usage = run_cli(tmp_path, "media", "--db", db, env=env)
    assert usage.returncode == 0, usage.stderr
    assert json.loads(usage.stdout)["by_type"]["image"]["count"] == 1


# -- several processes on PostgreSQL ---------------------------------------------------


def test_two_servers_on_one_database_share_the_url_key(tmp_path, start_server, pg_database):
    user, (customer,) = accounts(tmp_path, pg_database)
    shared = tmp_path / "shared-media"
    env = clean_env(LEIDA_MEDIA_DIRECTORY=str(shared))
    first = start_server(*serve_args(tmp_path, pg_database), env=env)
    second = start_server(*serve_args(tmp_path, pg_database), env=env)
    status, answer = upload(first.port, customer, jpeg(), peer=user.id)
    assert answer["code"] == 200
    # sent through the other process, and served by it, from the URL the first one signed
    sent = second.customer_send(customer, user.id, {"info_type": 4, "attachment_id": answer["data"]["attachment_id"]})
    assert sent["code"] == 200
    status, _, body = get(second.port, local_path(answer["data"]["url"]))
    assert status == 200 and len(body) == answer["data"]["size"]
    (item,) = first.radar_getmsg(user, customer.id)["data"]["ret_data"]
    assert local_path(item["url"]) == local_path(answer["data"]["url"])


# -- crashes and full disks -----------------------------------------------------------


@pytest.mark.sqlite_only
def test_a_sigkill_mid_upload_leaves_no_file_and_the_next_start_cleans_up(tmp_path, start_server):
    db = str(tmp_path / "chat.db")
    user, (customer,) = accounts(tmp_path, db)
    server = start_server(*serve_args(tmp_path))
    body, content_type = multipart(("file", "photo.jpg", jpeg(2400, 2400) * 4))
    query = urlencode({**sign(customer), "u_id": user.id})
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall((f"POST {CUSTOMER}/chat/upload/0?{query} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n").encode() + body[: len(body) // 2])
    temporary = tmp_path / "media" / "tmp"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(p.stat().st_size for p in temporary.glob("*.upload")):
        time.sleep(0.02)
    assert list(temporary.glob("*.upload"))
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(timeout=5)
    sock.close()
    assert stored_files(tmp_path / "media") == []  # nothing under a real name
    assert list(temporary.glob("*.upload"))  # what the killed process left
    restarted = start_server(*serve_args(tmp_path))
    assert list(temporary.iterdir()) == []
    assert "removed 1 temporary upload files" in restarted.log()


@pytest.mark.sqlite_only
def test_a_full_disk_while_storing_is_a_503_and_leaves_nothing(tmp_path, start_server, small_disk):
    db = str(tmp_path / "chat.db")
    user, (customer,) = accounts(tmp_path, db)
    media = small_disk / "media"
    server = start_server(*serve_args(tmp_path), env=clean_env(LEIDA_MEDIA_DIRECTORY=str(media)))
    assert upload(server.port, customer, jpeg(), peer=user.id)[1]["code"] == 200
    fill(small_disk)
    answered: dict[str, str] = {}
    status, answer = upload(server.port, customer, jpeg(1600, 1600, colour=(1, 2, 3)) * 2, peer=user.id,
                            headers=answered)
    assert status == 503 and answer["code"] == 503 and "full" in answer["msg"], answer
    assert answered["retry-after"] == "2"
    assert list((media / "tmp").iterdir()) == []
    assert len(stored_files(media)) == 2  # the first upload and its thumbnail, nothing more
    (small_disk / "filler").unlink()
    assert upload(server.port, customer, jpeg(), peer=user.id)[1]["code"] == 200
    assert "Traceback" not in server.log()


def test_the_media_command_counts_uploads_by_type(tmp_path, start_server, database):
    user, (customer,) = accounts(tmp_path, database)
    server = start_server(*serve_args(tmp_path, database))
    first = upload(server.port, customer, jpeg(), peer=user.id)[1]["data"]
    upload(server.port, customer, png(), peer=user.id)
    server.customer_send(customer, user.id, {"info_type": 4, "attachment_id": first["attachment_id"]})
    result = run_cli(tmp_path, "media", "--db", database)
    assert result.returncode == 0, result.stderr
    usage = json.loads(result.stdout)
    image = usage["by_type"]["image"]
    assert (image["count"], image["unclaimed_count"]) == (2, 1) and image["bytes"] > image["unclaimed_bytes"] > 0
    assert usage["by_type"]["video"]["count"] == 0 and usage["total"]["count"] == 2


def test_an_unread_picture_raises_an_event_that_carries_its_urls(tmp_path, start_server, database, receiver, secret):
    user, (customer,) = accounts(tmp_path, database)
    env = webhook_env(receiver, secret, LEIDA_MEDIA_BASE_URL="https://chat.example.com")
    server = start_server(*serve_args(tmp_path, database), env=env)
    uploaded = upload(server.port, customer, jpeg(), peer=user.id)[1]["data"]
    assert uploaded["url"].startswith("https://chat.example.com/media/")
    server.customer_send(customer, user.id, {"info_type": 4, "attachment_id": uploaded["attachment_id"]})
    (hook,) = receiver.wait_for(1, ARRIVAL)
    matches_the_documented_schema(hook.event)
    data = hook.event["data"]
    assert data["preview"] == "[图片]"
    attachment = data["attachment"]
    assert attachment["attachment_id"] == uploaded["attachment_id"]
    assert (attachment["width"], attachment["height"], attachment["content_type"]) == (1200, 800, "image/jpeg")
    # served by the URL the event carries (the host is the deployment's; the path is this server's)
    status, _, body = get(server.port, local_path(attachment["url"]))
    assert status == 200 and len(body) == uploaded["size"]


def test_uploads_are_counted_by_type_and_outcome(tmp_path, start_server):
    from test_metrics import scrape, value

    db = str(tmp_path / "chat.db")
    user, (customer,) = accounts(tmp_path, db)
    server = start_server(*serve_args(tmp_path), env=clean_env(LEIDA_MEDIA_MAX_IMAGE_BYTES="100000"))
    stored = upload(server.port, customer, jpeg(), peer=user.id)[1]["data"]
    upload(server.port, customer, b"<svg xmlns='http://www.w3.org/2000/svg'/>", peer=user.id)
    upload(server.port, customer, jpeg(64, 64) + b"\0" * 100_001, peer=user.id)
    metrics = scrape(server.metrics_port)
    assert value(metrics, "leida_uploads_total", type="image", outcome="stored") == 1
    assert value(metrics, "leida_uploads_total", type="unknown", outcome="refused") == 1
    assert value(metrics, "leida_uploads_total", type="unknown", outcome="too_large") == 1
    assert value(metrics, "leida_upload_bytes_total") == stored["size"]
    assert value(metrics, "leida_upload_processing_seconds_count") == 2


@pytest.mark.sqlite_only
def test_a_killed_server_leaves_no_media_worker_behind(tmp_path, start_server):
    db = str(tmp_path / "chat.db")
    user, (customer,) = accounts(tmp_path, db)
    server = start_server(*serve_args(tmp_path))
    assert upload(server.port, customer, jpeg(), peer=user.id)[1]["code"] == 200  # the workers start

    def workers() -> list[int]:
        children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()
        return [int(pid) for pid in children if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]

    started = workers()
    assert started and all(os.getpriority(os.PRIO_PROCESS, pid) >= 10 for pid in started)  # below the chat
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(timeout=5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in started):
        time.sleep(0.1)
    assert not any(Path(f"/proc/{pid}").exists() for pid in started)
