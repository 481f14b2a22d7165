"""Prometheus metrics, scraped from the real server's own metrics listener.

Each metric the README lists is exported, and moves when the thing it counts
happens: a held request, a send, the commit, the delivery, an error. The
metrics are never on the public port.
"""
from __future__ import annotations

import http.client
import re
import socket
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT
from live import CUSTOMER, RADAR, Background, clean_env, cli_account, run_cli, serve_args


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type").startswith("text/plain; version=")
        text = response.read().decode()
    finally:
        conn.close()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_every_metric_moves_with_what_it_counts(tmp_path, start_server):
    db = str(tmp_path / "chat.db")
    user = cli_account(tmp_path, "add-user", "--db", db, "--name", "王经理")
    customer = cli_account(tmp_path, "add-customer", "--db", db, "--name", "客户")
    server = start_server(*serve_args(tmp_path))
    assert server.metrics_port is not None and server.metrics_port != server.port
    before = scrape(server.metrics_port)
    assert value(before, "leida_held_requests") == 0

    held = Background(server.customer_getmsg, customer, user.id, wait=20)
    deadline = time.monotonic() + 5
    while value(scrape(server.metrics_port), "leida_held_requests") < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert value(scrape(server.metrics_port), "leida_held_requests") == 1
    assert server.radar_send(user, customer.id, {"info_type": 1, "msg": "您好"})["code"] == 200
    assert held.value(timeout=10)["data"]["data_count"] == 1
    assert server.customer_send(customer, user.id, {"info_type": 1, "msg": "在吗"})["code"] == 200
    assert server.request("GET", f"{CUSTOMER}/chat/getmsg/0")[1]["code"] == 400  # unsigned
    server.request("GET", "/no/such/route")

    after = scrape(server.metrics_port)
    assert value(after, "leida_held_requests") == 0
    assert value(after, "leida_messages_sent_total", side="radar_user") == 1
    assert value(after, "leida_messages_sent_total", side="customer") == 1
    requests = {route: value(after, "leida_requests_total", route=route, code=code) for route, code in [
        (f"{RADAR}/chat/send_msg/{{o_id}}", "200"), (f"{CUSTOMER}/chat/send_msg/{{o_id}}", "200"),
        (f"{CUSTOMER}/chat/getmsg/{{o_id}}", "200"), ("unmatched", "404"),
    ]}
    assert all(count == 1 for count in requests.values()), requests
    assert value(after, "leida_requests_total", route=f"{CUSTOMER}/chat/getmsg/{{o_id}}", code="400") == 1
    # the two sends (and the read position the delivery moved) were committed, in one or more transactions
    commits = value(after, "leida_commit_duration_seconds_count")
    assert commits >= 2 and value(after, "leida_commit_batch_size_count") == commits
    assert value(after, "leida_commit_batch_size_sum") >= 3
    assert 0 < value(after, "leida_commit_duration_seconds_sum") < 5
    # the held request was woken by the reply's commit: one delivery, well under a second
    assert value(after, "leida_delivery_latency_seconds_count") == 1
    assert 0 < value(after, "leida_delivery_latency_seconds_sum") < 1
    for kind in ("storage_full", "storage_io", "database_locked", "overloaded", "internal"):
        assert ("leida_errors_total", (("kind", kind),)) in after, kind
    # every metric the README's table lists is exported
    listed = re.findall(r"^\| `(leida_[a-z_]+)", (ROOT / "README.md").read_text(), re.MULTILINE)
    assert len(listed) >= 7
    exported = {name for name, _ in after}
    for name in listed:
        assert any(sample == name or sample.startswith(name + "_") for sample in exported), name
    # the public port has no metrics
    status, body = server.request("GET", "/metrics")
    assert status == 404 and b"leida_" not in str(body).encode()
    assert server.stop() == 0


def test_errors_are_counted_by_kind(tmp_path, start_server):
    """An overloaded server (longpoll.max_waiters reached) counts each refusal."""
    db = str(tmp_path / "chat.db")
    user = cli_account(tmp_path, "add-user", "--db", db, "--name", "王经理")
    customer = cli_account(tmp_path, "add-customer", "--db", db, "--name", "客户")
    server = start_server(*serve_args(tmp_path), env=clean_env(LEIDA_LONGPOLL_MAX_WAITERS="1"))
    held = Background(server.customer_getmsg, customer, user.id, wait=20)
    deadline = time.monotonic() + 5
    while value(scrape(server.metrics_port), "leida_held_requests") < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    status, refused = server.request("GET", f"{RADAR}/chat/getmsg/0", user,
                                     query={"customer_id": customer.id, "wait": 20}, timeout=30)
    assert status == 503 and refused["code"] == 503
    assert value(scrape(server.metrics_port), "leida_errors_total", kind="overloaded") == 1
    server.radar_send(user, customer.id, {"info_type": 1, "msg": "好"})
    held.value(timeout=10)
    assert server.stop() == 0


def test_a_taken_metrics_port_stops_the_server_naming_the_setting(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(tmp_path, *serve_args(tmp_path), env=clean_env(LEIDA_METRICS_PORT=str(port)))
    assert result.returncode != 0
    assert f"cannot listen for metrics on 127.0.0.1:{port}" in result.stderr and "LEIDA_METRICS_PORT" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("port", ["-1", "65536", "lots"])
def test_a_bad_metrics_port_is_refused_naming_it(tmp_path, port):
    result = run_cli(tmp_path, *serve_args(tmp_path), env=clean_env(LEIDA_METRICS_PORT=port))
    assert result.returncode == 2
    assert "metrics.port" in result.stderr or "LEIDA_METRICS_PORT" in result.stderr
