"""Recall (撤回) and typing on the real server (``leida_chat.py serve`` subprocesses):
webhooks after a recall (both backends), typing and a recall across two processes on
PostgreSQL, and a recalled text gone from a ``pg_dump``.
"""
from __future__ import annotations

import itertools
import threading
import time

import pytest
from test_webhooks import ARRIVAL, matches_the_documented_schema, quiet_for, receiver, secret, sent_id, webhook_env  # noqa: F401

from conftest import Account, text
from live import CUSTOMER, RADAR, Server, accounts, clean_env, query, serve_args

#: how long a customer's message stays unread before its event: long enough for the test's
#: sends and recalls (a few milliseconds each) to be made well before it
UNREAD_AFTER = 1.0


def recall(server: Server, customer: Account, user_id: int, message_id: int) -> int:
    answer = server.post(f"{CUSTOMER}/chat/recall/0", customer, {"u_id": user_id, "message_id": message_id})
    assert answer["code"] == 200 and answer["data"]["recalled_id"] == message_id, answer
    return answer["data"]["id"]


def webhook_server(start_server, tmp_path, database: str, receiver, secret) -> Server:  # noqa: F811
    env = webhook_env(receiver, secret)
    env["LEIDA_WEBHOOK_UNREAD_AFTER_SECONDS"] = str(UNREAD_AFTER)
    return start_server(*serve_args(tmp_path, database), env=env)


# -- webhooks after a recall (both backends) ----------------------------------------------


def test_an_unread_stretch_whose_every_message_was_recalled_raises_no_webhook(
        tmp_path, start_server, database, receiver, secret):  # noqa: F811
    user, (customer,) = accounts(tmp_path, database, names=["张三"])
    server = webhook_server(start_server, tmp_path, database, receiver, secret)
    sent = [sent_id(server.customer_send(customer, user.id, text(f"发错了{n}"))) for n in range(2)]
    for message_id in sent:
        recall(server, customer, user.id, message_id)
    assert server.radar_unread(user)["data"]["chatinfo_count"] == 0
    quiet_for(receiver, 0, UNREAD_AFTER + 2.0)  # well past when the stretch was due

    # the webhooks were on all along: the next unread message raises its event, naming it alone
    later = sent_id(server.customer_send(customer, user.id, text("请问还有货吗")))
    (hook,) = receiver.wait_for(1, UNREAD_AFTER + ARRIVAL)
    matches_the_documented_schema(hook.event)
    data = hook.event["data"]
    assert (hook.event["type"], data["message_ids"], data["unread_count"], data["preview"]) \
        == ("message.unread", [later], 1, "请问还有货吗")


def test_a_stretch_with_one_of_two_recalled_raises_an_event_counting_and_naming_the_other(
        tmp_path, start_server, database, receiver, secret):  # noqa: F811
    user, (customer,) = accounts(tmp_path, database, names=["张三"])
    server = webhook_server(start_server, tmp_path, database, receiver, secret)
    taken_back = sent_id(server.customer_send(customer, user.id, text("我的身份证号是 110101199001011234")))
    kept = sent_id(server.customer_send(customer, user.id, text("请回电话")))
    recall(server, customer, user.id, taken_back)
    (hook,) = receiver.wait_for(1, UNREAD_AFTER + ARRIVAL)
    matches_the_documented_schema(hook.event)
    data = hook.event["data"]
    assert data["message_ids"] == [kept] and data["unread_count"] == 1, data
    assert data["preview"] == "请回电话" and "110101" not in hook.body.decode(), data
    quiet_for(receiver, 1, 2 * UNREAD_AFTER)


def test_a_webhook_already_sent_is_not_taken_back_and_a_later_recall_raises_nothing_new(
        tmp_path, start_server, database, receiver, secret):  # noqa: F811
    """What the README says: the CRM keeps what it was sent; the recall changes the chat only."""
    user, (customer,) = accounts(tmp_path, database, names=["张三"])
    server = webhook_server(start_server, tmp_path, database, receiver, secret)
    message_id = sent_id(server.customer_send(customer, user.id, text("发错人了")))
    (hook,) = receiver.wait_for(1, UNREAD_AFTER + ARRIVAL)
    assert hook.event["data"]["message_ids"] == [message_id] and hook.event["data"]["preview"] == "发错人了"
    recall(server, customer, user.id, message_id)  # within the window, after the event
    quiet_for(receiver, 1, UNREAD_AFTER + 1.0)
    assert server.radar_unread(user)["data"]["chatinfo_count"] == 0
    # the outbox keeps nothing of the text: the stored event's preview says it was recalled
    (body,) = [row[0] for row in query(database if "://" in database else str(tmp_path / database),
                                       "SELECT body FROM webhook_event")]
    assert "发错人了" not in body and "[已撤回]" in body


# -- two processes on PostgreSQL ------------------------------------------------------------


def two_workers(tmp_path, pg_database: str) -> Server:
    server = Server(tmp_path, [*serve_args(tmp_path, pg_database), "--processes", "2"],
                    clean_env(LEIDA_LONGPOLL_TIMEOUT="5"), "two-workers")
    return server.wait_started(workers=2)


def test_typing_and_a_recall_on_one_process_answer_held_getmsg_on_both(tmp_path, pg_database):
    from test_server_api_scale_out import hold_on_both_workers

    user, (customer,) = accounts(tmp_path, pg_database, customers=1)
    server = two_workers(tmp_path, pg_database)
    try:
        answers: list[tuple[float, dict]] = []
        lock = threading.Lock()

        def poll(**query) -> None:
            body = server.get(f"{RADAR}/chat/getmsg/0", user, timeout=20, wait=5, **query)
            with lock:
                answers.append((time.monotonic(), body))

        # typing: the radar user's getmsg that asked (typing=1), held on both workers, for the
        # conversation and (every other one) for the whole inbox; the customer's POST lands on one
        numbers = itertools.count()

        def poll_asking() -> None:
            if next(numbers) % 2:
                poll(typing=1)
            else:
                poll(customer_id=customer.id, typing=1)

        pollers = hold_on_both_workers(server, poll_asking, count=2)
        typed_at = time.monotonic()
        assert server.post(f"{CUSTOMER}/chat/typing/0", customer, {"u_id": user.id}) == {
            "code": 200, "msg": "ok", "data": {}}
        for poller in pollers:
            poller.join(timeout=10)
        assert len(answers) == len(pollers)
        for at, body in answers:
            assert body["data"]["ret_data"] == [] and body["data"]["typing"] == {
                "customer_id": customer.id, "user_id": user.id, "side": "customer"}, body
            assert at - typed_at < 2.0, (at - typed_at, body)

        # a recall: the notice answers the held getmsg (from the recalled message's id) on both
        sent = sent_id(server.customer_send(customer, user.id, text("发错了")))
        answers.clear()
        pollers = hold_on_both_workers(server, lambda: poll(customer_id=customer.id, last_id=sent))
        recalled_at = time.monotonic()
        notice = recall(server, customer, user.id, sent)
        for poller in pollers:
            poller.join(timeout=10)
        assert len(answers) == len(pollers)
        for at, body in answers:
            (item,) = body["data"]["ret_data"]
            assert (item["id"], item["info_type"], item["recalled_id"]) == (notice, 7, sent), body
            assert "typing" not in body["data"]
            assert at - recalled_at < 2.0, (at - recalled_at, body)
        log = server.log()
        assert "Traceback" not in log, log
    finally:
        server.stop()


# -- pg_dump ------------------------------------------------------------------------------


def pg_dump(postgres_cluster, database_url: str) -> str:
    """The whole database as ``pg_dump`` writes it (as the cluster's own binaries run: as the
    postgres user when root)."""
    name = database_url.rsplit("/", 1)[1]
    return postgres_cluster.run("pg_dump", "-h", "127.0.0.1", "-p", str(postgres_cluster.port), "-U", "postgres",
                                "--no-owner", name).stdout


def test_a_recalled_text_is_gone_from_a_pg_dump(tmp_path, start_server, pg_database, request):
    postgres_cluster = request.getfixturevalue("postgres_cluster")
    user, (customer,) = accounts(tmp_path, pg_database, customers=1)
    server = start_server(*serve_args(tmp_path, pg_database))
    secret_text = "银行卡号 6222 0203 9999 8888"
    recalled = sent_id(server.customer_send(customer, user.id, text(secret_text)))
    kept = sent_id(server.radar_send(user, customer.id, text("已收到，谢谢")))
    before = pg_dump(postgres_cluster, pg_database)
    assert secret_text in before and "已收到，谢谢" in before  # the dump is one a grep can read

    recall(server, customer, user.id, recalled)
    after = pg_dump(postgres_cluster, pg_database)
    assert "6222 0203" not in after
    assert "已收到，谢谢" in after and "recalled_id" in after  # the rest, and the notice, are there
    history = server.customer_history(customer, user.id)["data"]["ret_data"]
    assert [(item["id"], item.get("recalled")) for item in history][:2] == [(recalled, True), (kept, None)]


@pytest.mark.parametrize("side", ["customer", "radar_user"])
def test_typing_on_one_process_never_answers_a_getmsg_that_did_not_ask_on_the_other(tmp_path, pg_database, side):
    """The other process learns of typing by NOTIFY, and still answers only typing=1."""
    from test_server_api_scale_out import hold_on_both_workers

    user, (customer,) = accounts(tmp_path, pg_database, customers=1)
    server = two_workers(tmp_path, pg_database)
    try:
        answers: list[tuple[float, dict]] = []

        def poll() -> None:
            started = time.monotonic()
            if side == "customer":  # the customer's page, not asking; the radar user types
                body = server.get(f"{CUSTOMER}/chat/getmsg/0", customer, timeout=20, u_id=user.id, wait=5)
            else:
                body = server.get(f"{RADAR}/chat/getmsg/0", user, timeout=20, customer_id=customer.id, wait=5)
            answers.append((time.monotonic() - started, body))

        pollers = hold_on_both_workers(server, poll, count=2)
        if side == "customer":
            server.post(f"{RADAR}/chat/typing/0", user, {"customer_id": customer.id})
        else:
            server.post(f"{CUSTOMER}/chat/typing/0", customer, {"u_id": user.id})
        for poller in pollers:
            poller.join(timeout=10)
        assert len(answers) == len(pollers)
        for took, body in answers:
            assert "typing" not in body["data"] and body["data"]["ret_data"] == [], body
            assert took > 4.5, took  # each waited for its own timeout (5 s), not woken by the typing
    finally:
        server.stop()
