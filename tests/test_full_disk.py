"""A full disk is a 503 with Retry-After, not a 500: on a small tmpfs the test mounts.

The database lives on a 3 MB tmpfs; a filler file takes the rest of it, sends
go on until SQLite reports SQLITE_FULL, and then: every refused send is a 503
naming the full storage, reads keep working, the log gets one warning (no
traceback per request), nothing acknowledged is lost, and once the filler is
gone the next send succeeds.
"""
from __future__ import annotations

import os
import sqlite3
import subprocess

import pytest

from live import CUSTOMER, cli_account, serve_args

TMPFS_SIZE = "3m"


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def fill(directory) -> None:
    """Take every free byte of the disk with a file."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        for size in (65536, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)


def test_a_full_disk_is_a_503_and_nothing_acknowledged_is_lost(tmp_path, small_disk, start_server):
    db = str(small_disk / "chat.db")
    user = cli_account(tmp_path, "add-user", "--db", db, "--name", "王经理")
    customer = cli_account(tmp_path, "add-customer", "--db", db, "--name", "客户")
    server = start_server(*serve_args(tmp_path)[:2], db, *serve_args(tmp_path)[3:])
    assert server.customer_send(customer, user.id, {"info_type": 1, "msg": "before"})["code"] == 200
    assert server.request("GET", "/readyz") == (200, {"code": 200, "msg": "ready", "data": {}})
    fill(small_disk)

    acknowledged, refused = [], []
    for n in range(2000):
        status, body = server.request("POST", f"{CUSTOMER}/chat/send_msg/0", customer,
                                      form={"u_id": user.id, "content": f'{{"info_type": 1, "msg": "{n:04d}{"x" * 3000}"}}'})
        assert status in (200, 503), (status, body)
        if status == 200:
            acknowledged.append(body["data"]["id"])
        else:
            refused.append(body)
            if len(refused) >= 20:
                break
    assert refused, "the disk never filled"
    assert all(body["code"] == 503 and "storage is full" in body["msg"] for body in refused), refused[0]
    status, _ = server.request("POST", f"{CUSTOMER}/chat/send_msg/0", customer,
                               form={"u_id": user.id, "content": '{"info_type": 1, "msg": "refused"}'})
    assert status == 503
    # reads keep working while the disk is full
    history = server.customer_history(customer, user.id)
    assert history["code"] == 200 and history["data"]["data_count"] == 1 + len(acknowledged)
    status, ready = server.request("GET", "/readyz")
    assert status == 503 and ready["code"] == 503 and "storage is full" in ready["data"]["reason"]
    assert server.request("GET", "/healthz") == (200, {"code": 200, "msg": "ok", "data": {}})

    os.remove(small_disk / "filler")
    assert server.request("GET", "/readyz")[0] == 200
    after = server.customer_send(customer, user.id, {"info_type": 1, "msg": "after"})
    assert after["code"] == 200
    assert server.stop() == 0

    log = server.log()
    assert "Traceback" not in log
    assert log.count("storage is full: ") == 1, log  # one warning, not one per refused send
    assert "storage writable again" in log
    stored = {row[0] for row in sqlite3.connect(db).execute("SELECT id FROM message")}
    assert set(acknowledged) <= stored and after["data"]["id"] in stored


def test_a_disk_full_from_the_start_is_not_ready_until_a_send_fits(tmp_path, small_disk, start_server):
    """Filled before any send: a one-page write may still fit where a send does not, so
    /readyz must probe with a send's size, or it says ready while every send gets 503
    (and the log flaps between "full" and "writable again")."""
    db = str(small_disk / "chat.db")
    user = cli_account(tmp_path, "add-user", "--db", db, "--name", "王经理")
    customer = cli_account(tmp_path, "add-customer", "--db", db, "--name", "客户")
    server = start_server(*serve_args(tmp_path)[:2], db, *serve_args(tmp_path)[3:])
    fill(small_disk)
    content = f'{{"info_type": 1, "msg": "{"x" * 3000}"}}'
    for _ in range(5):
        status, body = server.request("POST", f"{CUSTOMER}/chat/send_msg/0", customer,
                                      form={"u_id": user.id, "content": content})
        assert status == 503 and "storage is full" in body["msg"]
        status, ready = server.request("GET", "/readyz")
        assert status == 503 and "storage is full" in ready["data"]["reason"]
    os.remove(small_disk / "filler")
    assert server.request("GET", "/readyz")[0] == 200
    assert server.customer_send(customer, user.id, {"info_type": 1, "msg": "x" * 3000})["code"] == 200
    assert server.stop() == 0
    log = server.log()
    assert log.count("storage is full: ") == 1 and log.count("storage writable again") == 1, log
