"""Offline notifications: signed webhooks from the outbox, received by a real HTTP server.

Each test runs real ``leida_chat.py`` processes on every backend, with a short
``unread_after_seconds`` and retry schedule so that a stretch goes unread in
half a second; the receiver (tests/receiver.py) records what arrives and
answers as told. Signatures are checked with the receiver example printed in
the README, so that the example is known to work.
"""
from __future__ import annotations

import base64
import json
import re
import secrets
import signal
import time
from datetime import datetime

import jsonschema_rs
import pytest
from receiver import Answer, Receiver

import live
from conftest import ROOT, text
from live import Background, clean_env, query, run_cli, serve_args
from postgres import wait_until

UNREAD_AFTER = 0.5
#: how long an event may take to arrive once due: generous, as every bound in the tests
ARRIVAL = 5.0


def readme_verify():
    """The ``verify`` function of README.md's webhook receiver example, as printed there."""
    readme = (ROOT / "README.md").read_text()
    (code,) = [block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "def verify(" in block]
    namespace: dict = {}
    exec(code, namespace)
    return namespace["verify"]


def matches_the_documented_schema(event: dict) -> None:
    """The event is what openapi.json's ``webhooks`` section says it is."""
    document = json.loads((ROOT / "handlers" / "openapi.json").read_text())
    for name in ("message.unread", "reply.unread"):
        ref = document["webhooks"][name]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref == "#/components/schemas/UnreadEvent"
    errors = [error.message for error in jsonschema_rs.validator_for(
        document["components"]["schemas"]["UnreadEvent"]).iter_errors(event)]
    assert not errors, (errors, event)


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture
def secret() -> str:
    return new_secret()


def webhook_env(receiver: Receiver, secret: str, retry: str = "0,0.3,0.3", timeout: float = 2.0, **extra: str):
    return clean_env(LEIDA_WEBHOOK_URL=receiver.url, LEIDA_WEBHOOK_SECRET=secret,
                     LEIDA_WEBHOOK_UNREAD_AFTER_SECONDS=str(UNREAD_AFTER), LEIDA_WEBHOOK_RETRY_SECONDS=retry,
                     LEIDA_WEBHOOK_TIMEOUT_SECONDS=str(timeout), **extra)


def accounts(tmp_path, database: str):
    """The radar user and one customer, 张三, whose name the events carry."""
    user, (customer,) = live.accounts(tmp_path, database, names=["张三"])
    return user, customer


def sent_id(body: dict) -> int:
    assert body["code"] == 200, body
    return body["data"]["id"]


def quiet_for(receiver: Receiver, count: int, seconds: float) -> None:
    """Nothing more than ``count`` requests arrives for ``seconds``."""
    time.sleep(seconds)
    assert len(receiver.received) == count, [r.body for r in receiver.received]


# -- the events ---------------------------------------------------------------------


def test_a_customer_message_left_unread_raises_one_signed_message_unread(tmp_path, start_server, database,
                                                                          receiver, secret):
    user, customer = accounts(tmp_path, database)
    server = start_server(*serve_args(tmp_path, database), env=webhook_env(receiver, secret))
    first = sent_id(server.customer_send(customer, user.id, text("请问这款还有货吗？")))
    second = sent_id(server.customer_send(customer, user.id, {"info_type": 4, "url": "https://img.example/1.png"}))
    sent_at = time.time()
    (hook,) = receiver.wait_for(1, ARRIVAL)
    assert hook.at - sent_at >= UNREAD_AFTER - 0.1
    assert readme_verify()(secret, hook.headers, hook.body)
    assert hook.headers["content-type"] == "application/json"
    assert re.fullmatch(r"evt_[0-9a-f]{24}", hook.id)
    assert abs(int(hook.headers["webhook-timestamp"]) - time.time()) < 10
    event = hook.event
    matches_the_documented_schema(event)
    assert event["type"] == "message.unread"
    assert datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).tzinfo is not None
    data = event["data"]
    assert data == {**data, "user_id": user.id, "customer_id": customer.id, "message_ids": [first, second],
                    "unread_count": 2, "preview": "请问这款还有货吗？", "customer_name": "张三", "user_name": "王经理"}
    first_unread = datetime.fromisoformat(data["first_unread_at"].replace("Z", "+00:00")).timestamp()
    assert abs(first_unread - sent_at) < 2
    assert set(data) == {"user_id", "customer_id", "message_ids", "unread_count", "first_unread_at", "preview",
                         "customer_name", "user_name"}  # nothing secret: no token, no signature input
    quiet_for(receiver, 1, 3 * UNREAD_AFTER)
    assert secret not in server.log() and secret.removeprefix("whsec_") not in server.log()


def test_a_reply_the_customer_has_not_received_raises_reply_unread(tmp_path, start_server, database, receiver,
                                                                   secret):
    user, customer = accounts(tmp_path, database)
    server = start_server(*serve_args(tmp_path, database), env=webhook_env(receiver, secret))
    reply = sent_id(server.radar_send(user, customer.id, {"info_type": 2, "product_name": "雷达名片"}))
    (hook,) = receiver.wait_for(1, ARRIVAL)
    assert hook.event["type"] == "reply.unread"
    matches_the_documented_schema(hook.event)
    assert hook.event["data"]["message_ids"] == [reply] and hook.event["data"]["preview"] == "[商品] 雷达名片"
    assert readme_verify()(secret, hook.headers, hook.body)


def test_a_message_read_in_time_raises_nothing(tmp_path, start_server, database, receiver, secret):
    user, customer = accounts(tmp_path, database)
    server = start_server(*serve_args(tmp_path, database), env=webhook_env(receiver, secret))
    message = sent_id(server.customer_send(customer, user.id, text("在吗")))
    got = server.radar_getmsg(user, customer.id)  # the rep's page receives it: read
    assert [item["id"] for item in got["data"]["ret_data"]] == [message]
    reply = sent_id(server.radar_send(user, customer.id, text("在的")))
    got = server.customer_getmsg(customer, user.id)
    assert reply in [item["id"] for item in got["data"]["ret_data"]]
    quiet_for(receiver, 0, 4 * UNREAD_AFTER)


def test_a_stretch_is_announced_once_and_the_next_one_after_a_read(tmp_path, start_server, database, receiver,
                                                                   secret):
    """Messages before the event join it; messages after it, with the rep still away, raise
    nothing more; once the rep reads, the next unread message starts a new stretch."""
    user, customer = accounts(tmp_path, database)
    server = start_server(*serve_args(tmp_path, database), env=webhook_env(receiver, secret))
    joined = [sent_id(server.customer_send(customer, user.id, text(f"第{n}条"))) for n in range(3)]
    (first,) = receiver.wait_for(1, ARRIVAL)
    assert first.event["data"]["message_ids"] == joined
    later = sent_id(server.customer_send(customer, user.id, text("还在吗")))
    quiet_for(receiver, 1, 3 * UNREAD_AFTER)  # the same stretch: the rep has not read since

    got = server.radar_getmsg(user, customer.id)
    assert [item["id"] for item in got["data"]["ret_data"]] == [*joined, later]
    time.sleep(0.3)  # the read position is written lazily
    after_read = sent_id(server.customer_send(customer, user.id, text("新的问题")))
    second = receiver.wait_for(2, ARRIVAL)[1]
    assert second.event["data"]["message_ids"] == [after_read] and second.event["data"]["unread_count"] == 1
    assert second.id != first.id


# -- delivery ---------------------------------------------------------------------------


def test_failed_attempts_are_retried_with_the_same_id_and_retry_after_is_honoured(
        tmp_path, start_server, database, receiver, secret):
    receiver.answers = [Answer(500), Answer(503, retry_after="1"), Answer(502)]
    user, customer = accounts(tmp_path, database)
    server = start_server(*serve_args(tmp_path, database), env=webhook_env(receiver, secret, retry="0,0.2,0.2,0.2"))
    server.customer_send(customer, user.id, text("在吗"))
    hooks = receiver.wait_for(4, ARRIVAL + 3)
    assert [hook.answered for hook in hooks] == [500, 503, 502, 200]
    assert len({hook.id for hook in hooks}) == 1 and len({hook.body for hook in hooks}) == 1
    assert all(readme_verify()(secret, hook.headers, hook.body) for hook in hooks)
    assert hooks[1].at - hooks[0].at < 1.0  # the schedule: 0.2 s (+ jitter, + one tick)
    assert hooks[2].at - hooks[1].at >= 0.95  # Retry-After: 1 wins over the schedule's 0.2 s
    quiet_for(receiver, 4, 1.0)
    counts = query(database, "SELECT status, attempts FROM webhook_event")
    assert counts == [("delivered", 4)]


def test_after_the_last_retry_an_event_fails_and_can_be_queued_again(tmp_path, start_server, database, receiver,
                                                                     secret):
    receiver.then = Answer(500)
    user, customer = accounts(tmp_path, database)
    env = webhook_env(receiver, secret, retry="0,0.1")
    server = start_server(*serve_args(tmp_path, database), env=env)
    server.customer_send(customer, user.id, text("在吗"))
    hooks = receiver.wait_for(2, ARRIVAL)
    quiet_for(receiver, 2, 1.0)  # two delays configured: two attempts, then failed
    listed = run_cli(tmp_path, "webhooks", "--db", database, env=env)
    assert listed.returncode == 0, listed.stderr
    shown = json.loads(listed.stdout)
    assert shown["counts"] == {"pending": 0, "delivered": 0, "failed": 1}
    (event,) = shown["events"]
    assert event["id"] == hooks[0].id and event["status"] == "failed" and event["attempts"] == 2
    assert event["last_error"] == "HTTP 500"

    receiver.then = Answer(200)
    retried = run_cli(tmp_path, "webhooks", "retry", "--failed", "--db", database, env=env)
    assert retried.returncode == 0 and json.loads(retried.stdout) == {"queued": [hooks[0].id]}, retried
    again = receiver.wait_for(3, ARRIVAL)[2]
    assert again.id == hooks[0].id and again.answered == 200
    unknown = run_cli(tmp_path, "webhooks", "retry", "evt_nope", "--db", database, env=env)
    assert unknown.returncode == 2 and "no webhook event evt_nope" in unknown.stderr


def test_an_answer_slower_than_the_timeout_is_a_failed_attempt(tmp_path, start_server, database, receiver, secret):
    receiver.answers = [Answer(200, delay=2.0)]
    user, customer = accounts(tmp_path, database)
    server = start_server(*serve_args(tmp_path, database), env=webhook_env(receiver, secret, timeout=0.5))
    server.customer_send(customer, user.id, text("在吗"))
    slow, again = receiver.wait_for(2, ARRIVAL + 2)
    assert slow.id == again.id and again.at - slow.at >= 0.45
    assert wait_until(lambda: query(database, "SELECT status FROM webhook_event") == [("delivered",)], ARRIVAL, 0.1)
    assert f"webhook {slow.id} attempt 1" in server.log() and "no answer" in server.log()


def test_the_webhooks_command_names_what_is_wrong_with_its_arguments(tmp_path, database):
    for args, message in [(("retry",), "webhooks retry takes event ids or --failed"),
                          (("retry", "evt_1", "--failed"), "webhooks retry takes event ids or --failed"),
                          (("list", "--failed"), "IDs and --failed go with `webhooks retry`"),
                          (("resend",), "invalid choice: 'resend'")]:
        result = run_cli(tmp_path, "webhooks", *args, "--db", database)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    listed = run_cli(tmp_path, "webhooks", "--all", "--db", database)
    assert listed.returncode == 0 and json.loads(listed.stdout) == {
        "counts": {"pending": 0, "delivered": 0, "failed": 0}, "events": []}


def test_a_410_stops_retrying_that_event_with_a_warning(tmp_path, start_server, database, receiver, secret):
    receiver.then = Answer(410)
    user, customer = accounts(tmp_path, database)
    server = start_server(*serve_args(tmp_path, database), env=webhook_env(receiver, secret, retry="0,0.1,0.1"))
    server.customer_send(customer, user.id, text("在吗"))
    (hook,) = receiver.wait_for(1, ARRIVAL)
    quiet_for(receiver, 1, 1.0)
    assert query(database, "SELECT status, attempts FROM webhook_event") == [("failed", 1)]
    assert f"webhook {hook.id}: the receiver answered 410 Gone" in server.log()


def test_rotation_signs_with_every_secret(tmp_path, start_server, database, receiver):
    old, new = new_secret(), new_secret()
    user, customer = accounts(tmp_path, database)
    server = start_server(*serve_args(tmp_path, database), env=webhook_env(receiver, f"{old} {new}"))
    server.customer_send(customer, user.id, text("在吗"))
    (hook,) = receiver.wait_for(1, ARRIVAL)
    assert len(hook.headers["webhook-signature"].split()) == 2
    verify = readme_verify()
    assert verify(old, hook.headers, hook.body) and verify(new, hook.headers, hook.body)
    assert not verify(new_secret(), hook.headers, hook.body)
    tampered = hook.body.replace(b"message.unread", b"message.unreaD")
    assert not verify(new, hook.headers, tampered)


def test_events_pending_at_sigkill_are_sent_after_the_restart_with_the_same_id(
        tmp_path, start_server, database, receiver, secret):
    """Two kinds of pending: a stretch not yet due when the process dies (its watch was
    committed with the message), and an event whose attempts failed until then."""
    user, customer = accounts(tmp_path, database)
    env = webhook_env(receiver, secret, retry="0,0.2,0.2,0.2,0.2,0.2,0.2,0.2")
    server = start_server(*serve_args(tmp_path, database), env=env)
    waiting = sent_id(server.customer_send(customer, user.id, text("还没到时间")))
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(5)
    assert receiver.received == []
    server = start_server(*serve_args(tmp_path, database), env=env)
    (hook,) = receiver.wait_for(1, ARRIVAL)
    assert hook.event["data"]["message_ids"] == [waiting]

    receiver.then = Answer(500)
    retried = sent_id(server.radar_send(user, customer.id, text("您好")))
    failing = receiver.wait_for(3, ARRIVAL)[1:]
    assert {r.id for r in failing} == {failing[0].id} and failing[0].event["data"]["message_ids"] == [retried]
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(5)
    before_restart = len(receiver.received)
    receiver.then = Answer(200)
    start_server(*serve_args(tmp_path, database), env=env)
    after = receiver.wait_for(before_restart + 1, ARRIVAL + 5)[before_restart:]
    assert after[0].id == failing[0].id and after[0].answered == 200


def test_an_attempt_cut_by_sigkill_is_sent_again_once_its_lease_runs_out(
        tmp_path, start_server, database, receiver, secret):
    receiver.answers = [Answer(200, delay=3.0)]  # the first attempt hangs past the SIGKILL
    user, customer = accounts(tmp_path, database)
    env = webhook_env(receiver, secret, timeout=1.0)
    server = start_server(*serve_args(tmp_path, database), env=env)
    server.customer_send(customer, user.id, text("在吗"))
    (cut,) = receiver.wait_for(1, ARRIVAL)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(5)
    start_server(*serve_args(tmp_path, database), env=env)
    again = receiver.wait_for(2, ARRIVAL + 2)[1]
    assert again.id == cut.id and again.body == cut.body and again.at - cut.at >= 1.9  # the lease: 2 timeouts


def test_delivery_never_holds_up_sends_or_long_polls(tmp_path, start_server, database, receiver, secret):
    """A receiver that answers after 3 s: sends and a held getmsg answer at their usual pace meanwhile."""
    receiver.then = Answer(200, delay=3.0)
    user, customer = accounts(tmp_path, database)
    server = start_server(*serve_args(tmp_path, database), env=webhook_env(receiver, secret, timeout=5.0))
    server.customer_send(customer, user.id, text("第一条"))
    receiver.wait_for(1, ARRIVAL)  # an attempt is now in flight, waiting on the receiver
    server.radar_getmsg(user, customer.id)  # the rep reads what is there
    held = Background(server.radar_getmsg, user, customer.id, wait=5)
    time.sleep(0.2)
    started = time.monotonic()
    sent = [sent_id(server.customer_send(customer, user.id, text(f"消息{n}"))) for n in range(20)]
    woken = [item["id"] for item in held.value(timeout=5)["data"]["ret_data"]]
    assert woken and woken[0] == sent[0]
    assert time.monotonic() - started < 2.0
    assert len(receiver.received) == 1  # the slow attempt is still the only one


def test_with_several_processes_each_event_is_sent_by_one_of_them(tmp_path, start_server, pg_database,
                                                                   receiver, secret):
    """Two servers on one PostgreSQL database, 12 conversations gone unread at once: each
    stretch is announced once and each event sent once (SKIP LOCKED), though both look."""
    database = pg_database
    user, customers = live.accounts(tmp_path, database, customers=12)
    env = webhook_env(receiver, secret)
    servers = [start_server(*serve_args(tmp_path, database), env=env) for _ in range(2)]
    sent = {sent_id(servers[n % 2].customer_send(customer, user.id, text("在吗"))): customer.id
            for n, customer in enumerate(customers)}
    hooks = receiver.wait_for(12, ARRIVAL)
    quiet_for(receiver, 12, 3 * UNREAD_AFTER)
    assert len({hook.id for hook in hooks}) == 12
    assert sorted(i for hook in hooks for i in hook.event["data"]["message_ids"]) == sorted(sent)
    assert all(readme_verify()(secret, hook.headers, hook.body) for hook in hooks)


# -- operations -------------------------------------------------------------------------


def test_metrics_count_pending_delivered_and_failed_events(tmp_path, start_server, database, receiver, secret):
    import urllib.request

    receiver.answers = [Answer(200)]
    receiver.then = Answer(500)
    user, customer = accounts(tmp_path, database)
    server = start_server(*serve_args(tmp_path, database), env=webhook_env(receiver, secret, retry="0,0.1"))
    server.customer_send(customer, user.id, text("在吗"))
    receiver.wait_for(1, ARRIVAL)
    server.radar_send(user, customer.id, text("您好"))
    receiver.wait_for(3, ARRIVAL)
    deadline = time.monotonic() + ARRIVAL + 6
    while True:
        page = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
        if 'leida_webhook_events_total{outcome="failed"} 1.0' in page and "leida_webhook_events_pending 0.0" in page:
            break
        assert time.monotonic() < deadline, page
        time.sleep(0.5)
    assert 'leida_webhook_events_total{outcome="delivered"} 1.0' in page
    assert 'leida_webhook_attempts_total{result="failure"} 2.0' in page
    assert "leida_webhook_delivery_seconds_count 1.0" in page


@pytest.mark.parametrize("setting, value, message", [
    ("LEIDA_WEBHOOK_URL", "ftp://crm.example.com/hooks", "webhook.url must be an http:// or https:// URL"),
    ("LEIDA_WEBHOOK_URL", "crm.example.com/hooks", "webhook.url must be an http:// or https:// URL"),
    ("LEIDA_WEBHOOK_SECRET", "hunter2-not-a-whsec", "webhook.secret: secret 1 does not start with whsec_"),
    ("LEIDA_WEBHOOK_SECRET", "whsec_!!!notbase64!!!", "webhook.secret: secret 1 is not whsec_ followed by base64"),
    ("LEIDA_WEBHOOK_SECRET", "", "webhook.secret is required when webhook.url is set"),
    ("LEIDA_WEBHOOK_RETRY_SECONDS", "0,5,soon", "webhook.retry_seconds must be seconds"),
    ("LEIDA_WEBHOOK_RETRY_SECONDS", "0,-5", "webhook.retry_seconds must be seconds"),
    ("LEIDA_WEBHOOK_TIMEOUT_SECONDS", "0", "webhook.timeout_seconds must be positive"),
    ("LEIDA_WEBHOOK_UNREAD_AFTER_SECONDS", "-1", "webhook.unread_after_seconds must be 0 or more"),
])
def test_bad_webhook_configuration_stops_the_server_naming_the_key(tmp_path, setting, value, message):
    env = clean_env(LEIDA_WEBHOOK_URL="https://crm.example.com/hooks", LEIDA_WEBHOOK_SECRET=new_secret())
    env[setting] = value
    result = run_cli(tmp_path, *serve_args(tmp_path), env=env)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    if setting == "LEIDA_WEBHOOK_SECRET" and value:
        assert value not in result.stderr and value.removeprefix("whsec_") not in result.stderr
    assert env["LEIDA_WEBHOOK_SECRET"] not in result.stderr or not env["LEIDA_WEBHOOK_SECRET"]
