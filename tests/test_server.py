"""The real command line and the real server, as subprocesses.

Every subprocess runs in its own ``tmp_path`` working directory with its
database inside it, under a timeout so that a hang fails the test instead of
blocking the run; servers are killed in the fixture's teardown whatever
happens. Requests go over plain ``http.client`` to 127.0.0.1.
"""
from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import time
from typing import Any
from urllib.parse import urlencode

import pytest

from conftest import Account, sign, text
from live import (
    CUSTOMER,
    HEX32,
    HTTP_TIMEOUT,
    RADAR,
    Background,
    clean_env,
    cli_account,
    free_port,
    query,
    run_cli,
    serve_args,
)

# -- 1. add-user ----------------------------------------------------------------


def test_add_user_without_token_prints_one_json_line_with_random_hex_token(tmp_path):
    db = str(tmp_path / "chat.db")
    first = cli_account(tmp_path, "add-user", "--db", db, "--name", "王经理")
    second = cli_account(tmp_path, "add-user", "--db", db, "--name", "李四")
    assert HEX32.fullmatch(first.token) and HEX32.fullmatch(second.token)
    assert first.id != second.id and first.token != second.token


def test_add_user_with_token_and_id_uses_them(tmp_path):
    db = str(tmp_path / "chat.db")
    user = cli_account(tmp_path, "add-user", "--db", db, "--name", "王经理", "--id", "42", "--token", "my-secret-token")
    assert user == Account(42, "my-secret-token")


CACHE_SECONDS = 0.5  # auth.account_cache_seconds for servers that see CLI updates


def test_add_user_update_keeps_token_and_changes_fields_seen_over_http(tmp_path, start_server, database):
    # A running server sees a CLI change once its account cache entry expires.
    server = start_server(*serve_args(tmp_path, database), env={"LEIDA_AUTH_ACCOUNT_CACHE_SECONDS": str(CACHE_SECONDS)})
    db = database
    user = cli_account(
        tmp_path, "add-user", "--db", db, "--name", "王经理",
        "--avatar", "https://img.example/a.png", "--mingpian-avatar", "https://img.example/card.png",
        "--mingpian-phone", "18900000001", "--wechat", "wx_wang", "--wechat-phone", "18800000002",
    )
    customer = cli_account(tmp_path, "add-customer", "--db", db, "--name", "小明")

    history = server.customer_history(customer, user.id)
    assert history["code"] == 200, history
    assert history["data"]["mingpian_phone"] == "18900000001"
    assert history["data"]["wechat"] == "wx_wang"
    server.customer_send(customer, user.id, text("你好"))
    item = server.customer_getmsg(customer, user.id)["data"]["ret_data"][0]
    assert item["user_avator"] == "https://img.example/card.png"

    # Same id, new name and phone, no --token: the account is updated, its token kept.
    updated = cli_account(tmp_path, "add-user", "--db", db, "--id", str(user.id),
                          "--name", "王总", "--mingpian-phone", "18900000009",
                          "--mingpian-avatar", "https://img.example/card2.png")
    assert updated == user
    time.sleep(CACHE_SECONDS + 0.1)
    history = server.customer_history(customer, user.id)
    assert history["data"]["mingpian_phone"] == "18900000009"
    assert history["data"]["wechat"] == "wx_wang"  # not given: unchanged
    assert history["data"]["ret_data"][0]["user_avatar"] == "https://img.example/card2.png"
    assert server.radar_unread(user)["code"] == 200  # the kept token still signs

    # Only one account: a second user would have been a new id.
    again = cli_account(tmp_path, "add-user", "--db", db, "--name", "新人")
    assert again.id == user.id + 1

    # --token on an existing id replaces the token: the old one stops signing.
    rotated = cli_account(tmp_path, "add-user", "--db", db, "--id", str(user.id), "--token", "rotated-token")
    assert rotated == Account(user.id, "rotated-token")
    time.sleep(CACHE_SECONDS + 0.1)
    assert server.radar_unread(user)["code"] == 400
    assert server.radar_unread(rotated)["code"] == 200


def test_add_user_phone_fallbacks_reach_the_customer_history(tmp_path, start_server):
    server = start_server(*serve_args(tmp_path))
    db = str(tmp_path / "chat.db")
    user = cli_account(tmp_path, "add-user", "--db", db, "--name", "只有微信手机", "--wechat-phone", "13700000003")
    customer = cli_account(tmp_path, "add-customer", "--db", db, "--name", "客")
    data = server.customer_history(customer, user.id)["data"]
    assert data["mingpian_phone"] == "13700000003"
    assert data["wechat"] == "13700000003"


# -- 2. add-customer ------------------------------------------------------------


def test_add_customer_same_rules_seen_over_http(tmp_path, start_server):
    server = start_server(*serve_args(tmp_path), env={"LEIDA_AUTH_ACCOUNT_CACHE_SECONDS": str(CACHE_SECONDS)})
    db = str(tmp_path / "chat.db")
    user = cli_account(tmp_path, "add-user", "--db", db, "--name", "王经理")
    customer = cli_account(tmp_path, "add-customer", "--db", db, "--name", "_zzz จุ๊บ 😀",
                           "--headimgurl", "https://wx.qlogo.cn/zzz/132")
    assert HEX32.fullmatch(customer.token)
    given = cli_account(tmp_path, "add-customer", "--db", db, "--name", "小明", "--id", "500", "--token", "cust-token")
    assert given == Account(500, "cust-token")

    server.customer_send(customer, user.id, text("在吗"))
    item = server.customer_getmsg(customer, user.id)["data"]["ret_data"][0]
    assert item["customer"] == "_zzz จุ๊บ 😀"
    assert item["customer_headimgurl"] == "https://wx.qlogo.cn/zzz/132"

    # Same id, new name: same account, token kept, the new name shows on every item.
    updated = cli_account(tmp_path, "add-customer", "--db", db, "--id", str(customer.id), "--name", "张三")
    assert updated == customer
    body = server.customer_getmsg(customer, user.id, last_id=0)  # signed with the kept token
    assert body["code"] == 200, body
    assert body["data"]["ret_data"][0]["customer"] == "张三"
    assert body["data"]["ret_data"][0]["customer_headimgurl"] == "https://wx.qlogo.cn/zzz/132"
    radar_item = server.radar_getmsg(user)["data"]["ret_data"][0]
    assert radar_item["name"] == "张三" and radar_item["customer_id"] == customer.id

    rotated = cli_account(tmp_path, "add-customer", "--db", db, "--id", str(customer.id), "--token", "new-cust-token")
    assert rotated == Account(customer.id, "new-cust-token")
    time.sleep(CACHE_SECONDS + 0.1)
    assert server.customer_history(customer, user.id)["code"] == 400
    assert server.customer_history(rotated, user.id)["code"] == 200


@pytest.mark.parametrize("command", ["add-customer", "add-user"])
@pytest.mark.parametrize("id_args", [[], ["--id", "77"]], ids=["no-id", "new-id"])
def test_new_account_without_name_fails_cleanly(tmp_path, command, id_args):
    db = tmp_path / "chat.db"
    result = run_cli(tmp_path, command, "--db", str(db), "--token", "t0k", *id_args)
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.strip(), "no message on stderr"
    assert "name" in result.stderr
    assert "Traceback" not in result.stderr
    # Nothing half-made: the next account is still the first one.
    made = cli_account(tmp_path, command, "--db", str(db), "--name", "第一个")
    assert made.id == 1


@pytest.mark.parametrize("command", ["add-customer", "add-user"])
def test_out_of_range_id_fails_cleanly(tmp_path, command):
    result = run_cli(tmp_path, command, "--db", str(tmp_path / "chat.db"), "--name", "x", "--id", "99999999999999999999")
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.strip()
    assert "Traceback" not in result.stderr


# -- 3. demo-accounts -----------------------------------------------------------


def test_demo_accounts_writes_tokens_that_sign_real_requests(tmp_path, start_server, database):
    out = tmp_path / "out" / "demo.json"
    db = database
    started = time.monotonic()
    result = run_cli(tmp_path, "demo-accounts", "--db", db, "--users", "3", "--customers", "10000", "--json", str(out))
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < 10, f"10,000 customers took {elapsed:.1f} s"

    written = json.loads(out.read_text())
    assert set(written) == {"users", "customers"}
    assert len(written["users"]) == 3 and len(written["customers"]) == 10000
    for accounts in written.values():
        for account_id, token in accounts.items():
            assert account_id.isdigit() and isinstance(token, str) and token
    assert len(set(written["customers"].values())) == 10000  # every token its own

    server = start_server(*serve_args(tmp_path, database))
    user_id, user_token = sorted(written["users"].items(), key=lambda kv: int(kv[0]))[-1]
    user = Account(int(user_id), user_token)
    some_customers = [Account(int(i), t) for i, t in list(written["customers"].items())[::2500]]
    for customer in some_customers:
        assert server.customer_send(customer, user.id, text(f"hi from {customer.id}"))["code"] == 200
    inbox = server.radar_getmsg(user)
    assert inbox["code"] == 200, inbox
    assert sorted(item["customer_id"] for item in inbox["data"]["ret_data"]) == sorted(c.id for c in some_customers)
    # A token from the file signs only its own account.
    wrong = Account(some_customers[0].id, some_customers[1].token)
    assert server.customer_history(wrong, user.id)["code"] == 400


def test_demo_accounts_append_after_existing_accounts(tmp_path):
    db = str(tmp_path / "chat.db")
    existing = cli_account(tmp_path, "add-customer", "--db", db, "--name", "老客户")
    out = tmp_path / "demo.json"
    result = run_cli(tmp_path, "demo-accounts", "--db", db, "--users", "1", "--customers", "2", "--json", str(out))
    assert result.returncode == 0, result.stderr
    written = json.loads(out.read_text())
    assert len(written["customers"]) == 2 and str(existing.id) not in written["customers"]


# -- 4. serve -------------------------------------------------------------------


@pytest.mark.parametrize("subcommand", [["serve"], []], ids=["serve", "no-subcommand"])
def test_serve_logs_startup_line_and_answers_signed_request(tmp_path, start_server, subcommand):
    db = tmp_path / "data" / "chat.db"
    args = [*subcommand, "--db", str(db), "--host", "127.0.0.1", "--port", "0"]
    server = start_server(*args)
    startup = [line for line in server.log().splitlines() if "listening on" in line]
    assert len(startup) == 1, server.log()
    assert f"http://127.0.0.1:{server.port}" in startup[0]
    assert str(db) in startup[0]
    assert db.exists()

    user = cli_account(tmp_path, "add-user", "--db", str(db), "--name", "王经理")
    body = server.radar_unread(user)
    assert body == {"code": 200, "msg": "查询成功", "data": {"chatinfo_count": 0}}
    status, body = server.request("GET", f"{RADAR}/chat/query_num/0", Account(user.id, "wrong"))
    assert (status, body["code"], body["msg"]) == (200, 400, "token异常")
    assert server.stop() == 0


@pytest.mark.parametrize("config_file", [False, True], ids=["config.toml", "--config"])
def test_environment_overrides_config_file(tmp_path, start_server, config_file):
    port = free_port()
    env = clean_env(LEIDA_SERVER_PORT=str(port), LEIDA_DATABASE_PATH="envdir/env.db")
    args: list[str] = []
    if config_file:  # a file that names another port and database: the environment still wins
        config = tmp_path / "my.toml"
        config.write_text(f'[server]\nport = {free_port()}\n\n[database]\npath = "cfgdir/cfg.db"\n')
        args = ["--config", str(config)]
    # No --port and no --db: config.toml says 8000 and data/leida_chat.db; the environment wins.
    server = start_server(*args, env=env)
    assert server.port == port
    assert server.db == str(tmp_path / "envdir" / "env.db")
    assert (tmp_path / "envdir" / "env.db").exists()
    assert not (tmp_path / "data").exists() and not (tmp_path / "cfgdir").exists()
    # The CLI reads the same environment, so the account lands in the server's database.
    user = cli_account(tmp_path, "add-user", *args, "--name", "环境", env=env)
    assert server.radar_unread(user)["code"] == 200
    assert server.stop() == 0


def test_config_file_is_used_without_environment(tmp_path, start_server):
    port = free_port()
    config = tmp_path / "my.toml"
    config.write_text(f'[server]\nport = {port}\n\n[database]\npath = "cfgdir/cfg.db"\n')
    server = start_server("serve", "--config", str(config))
    assert server.port == port
    assert server.db == str(tmp_path / "cfgdir" / "cfg.db")


def test_command_line_flags_override_environment(tmp_path, start_server):
    env = clean_env(LEIDA_SERVER_PORT=str(free_port()), LEIDA_DATABASE_PATH="envdir/env.db")
    db = tmp_path / "flag.db"
    server = start_server("--db", str(db), "--port", "0", env=env)
    assert server.port != int(env["LEIDA_SERVER_PORT"])
    assert server.db == str(db)
    assert not (tmp_path / "envdir").exists()


@pytest.mark.parametrize("subcommand", [["serve"], []], ids=["serve", "no-subcommand"])
@pytest.mark.parametrize(
    "toml, name",
    [("[server]\nport = 0\nbogus_key = 1\n", "bogus_key"), ("[nosuchsection]\nx = 1\n", "nosuchsection")],
    ids=["unknown-key", "unknown-section"],
)
def test_config_with_unknown_key_exits_nonzero_naming_it(tmp_path, subcommand, toml, name):
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    result = run_cli(tmp_path, *subcommand, "--config", str(config), "--db", str(tmp_path / "chat.db"),
                     "--port", "0", timeout=10)
    assert result.returncode != 0
    assert name in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "chat.db").exists()


# -- 5. graceful shutdown -------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_answers_held_getmsg_and_exits_zero(tmp_path, start_server, database, signum):
    server = start_server(*serve_args(tmp_path, database))
    db = database
    user = cli_account(tmp_path, "add-user", "--db", db, "--name", "王经理")
    customer = cli_account(tmp_path, "add-customer", "--db", db, "--name", "小明")
    # An idle keep-alive connection must not keep the server alive either.
    idle = http.client.HTTPConnection("127.0.0.1", server.port, timeout=HTTP_TIMEOUT)
    idle.request("GET", f"{RADAR}/chat/query_num/0?" + urlencode(sign(user)))
    assert json.loads(idle.getresponse().read())["code"] == 200
    held_customer = Background(server.customer_getmsg, customer, user.id, wait=30)
    held_inbox = Background(server.radar_getmsg, user, None, wait=30)
    time.sleep(0.5)  # both requests are now held
    assert held_customer.finished_at is None and held_inbox.finished_at is None

    signalled = time.monotonic()
    server.proc.send_signal(signum)
    returncode = server.proc.wait(timeout=3)
    assert returncode == 0, server.log()
    assert time.monotonic() - signalled < 3

    for held in (held_customer, held_inbox):
        body = held.value(timeout=3)
        assert body["code"] == 200, body
        assert body["data"]["ret_data"] == [] and body["data"]["data_count"] == 0
        assert held.finished_at - signalled < 3
    idle.close()
    assert "Traceback" not in server.log()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()


def test_sigterm_lets_in_flight_sends_finish_and_exits_within_two_seconds(tmp_path, start_server, database):
    """Senders that keep sending on keep-alive connections while the server stops:
    every answered send is a 200 (or a 503 once stopping began) and every 200 is stored."""
    import threading

    server = start_server(*serve_args(tmp_path, database))
    db = database
    user = cli_account(tmp_path, "add-user", "--db", db, "--name", "王经理")
    customer = cli_account(tmp_path, "add-customer", "--db", db, "--name", "小明")
    acknowledged: list[int] = []
    answers: list[int] = []
    stop = threading.Event()

    def keep_sending(worker: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=HTTP_TIMEOUT)
        n = 0
        while not stop.is_set():
            n += 1
            body = urlencode({"u_id": user.id, "content": json.dumps({"info_type": 1, "msg": f"{worker}-{n}"})})
            try:
                conn.request("POST", f"{CUSTOMER}/chat/send_msg/0?" + urlencode(sign(customer)), body=body,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
                response = conn.getresponse()
                answer = json.loads(response.read())
            except (OSError, http.client.HTTPException):
                conn.close()
                return  # the server closed the connection or stopped listening
            answers.append(response.status)
            if answer["code"] == 200:
                acknowledged.append(answer["data"]["id"])

    threads = [threading.Thread(target=keep_sending, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    returncode = server.proc.wait(timeout=5)
    elapsed = time.monotonic() - signalled
    stop.set()
    for thread in threads:
        thread.join(timeout=HTTP_TIMEOUT)
    assert returncode == 0, server.log()
    assert elapsed < 2, f"took {elapsed:.2f} s to stop"
    assert set(answers) <= {200, 503}, sorted(set(answers))
    assert len(acknowledged) > 20
    stored = {row[0] for row in query(db, "SELECT id FROM message")}
    assert set(acknowledged) <= stored
    assert "Traceback" not in server.log()


# -- 6. no secrets in the logs --------------------------------------------------


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_secrets_never_logged(tmp_path, start_server, level):
    db = str(tmp_path / "chat.db")
    user = cli_account(tmp_path, "add-user", "--db", db, "--name", "王经理")
    customer = cli_account(tmp_path, "add-customer", "--db", db, "--name", "小明")
    server = start_server(*serve_args(tmp_path), env=clean_env(LEIDA_LOG_LEVEL=level))
    rand_strs: list[str] = []

    def call(method: str, path: str, account: Account, **kwargs: Any) -> tuple[int, dict]:
        params = sign(account)
        rand_strs.append(params["rand_str"])
        query = {**params, **kwargs.pop("query", {})}
        return server.request(method, path, raw_query=urlencode(query), **kwargs)

    # Good signatures, both sides.
    status, body = call("POST", f"{CUSTOMER}/chat/send_msg/0", customer,
                        form={"u_id": user.id, "content": json.dumps(text("秘密"))})
    assert (status, body["code"]) == (200, 200)
    assert call("GET", f"{CUSTOMER}/chat/getmsg/0", customer, query={"u_id": user.id, "wait": 0})[1]["code"] == 200
    assert call("GET", f"{RADAR}/chat/getmsg/0", user, query={"wait": 0})[1]["code"] == 200
    assert call("GET", f"{RADAR}/contact", user)[1]["code"] == 200
    # Bad signatures: a wrong token, and the customer's token presented as the user's.
    assert call("GET", f"{RADAR}/chat/query_num/0", Account(user.id, "not-the-token"))[1]["code"] == 400
    assert call("GET", f"{RADAR}/chat/query_num/0", Account(user.id, customer.token))[1]["code"] == 400
    # Bad parameters (402), an unknown route (404), a wrong method (405).
    assert call("GET", f"{CUSTOMER}/chat/getmsg/0", customer, query={"u_id": "x"})[1]["code"] == 402
    status, body = call("GET", "/zhugeleida/nowhere", customer)
    assert (status, body["code"]) == (404, 404)
    status, body = call("PUT", f"{CUSTOMER}/chat/send_msg/0", customer, body=b"")
    assert status == 405
    # A body over max_body_bytes (64 KiB): 413, declared up front.
    big = b"content=" + b"x" * 70_000
    status, body = call("POST", f"{CUSTOMER}/chat/send_msg/0", customer, body=big,
                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert (status, body["code"]) == (413, 413)
    # A rand_str sent as a secret-looking query value on a 404 too.
    status, _ = call("GET", "/favicon.ico", user, query={"token": user.token})
    assert status == 404

    assert server.stop() == 0
    log = server.log()
    assert "send_msg" in log and "getmsg" in log and "/zhugeleida/nowhere" in log and "/favicon.ico" in log
    assert re.search(r"^.*\s413\b.* POST /zhugeleida/gongzhonghao/chat/send_msg/0\?.*$", log, re.M), log
    assert re.search(r"^.*\s404\b.* GET /zhugeleida/nowhere\?.*$", log, re.M), log
    assert re.search(r"^.*\s200\b.* GET /zhugeleida/qiyeweixin/contact\?.*$", log, re.M), log
    for secret in [*rand_strs, user.token, customer.token]:
        assert secret not in log, f"secret {secret!r} in the log:\n{log}"


@pytest.mark.parametrize("path", [f"{CUSTOMER}/chat/query_num/0", f"{RADAR}/chat/query_num/0"], ids=["customer", "radar"])
def test_out_of_range_user_id_is_an_unknown_account(tmp_path, start_server, path):
    server = start_server(*serve_args(tmp_path))
    status, body = server.request("GET", path, Account(9999999999999999999, "guess"), query={"u_id": 1})
    assert (status, body) == (200, {"code": 400, "msg": "token异常", "data": {}})
    assert server.stop() == 0
    assert "Traceback" not in server.log()


# -- 7. a new user's conversation, end to end -----------------------------------


def test_new_user_flow_end_to_end(tmp_path, start_server, database):
    server = start_server(*serve_args(tmp_path, database))
    db = database
    user = cli_account(tmp_path, "add-user", "--db", db, "--name", "王经理",
                       "--mingpian-avatar", "https://img.example/card.png")
    customer = cli_account(tmp_path, "add-customer", "--db", db, "--name", "小明 😀",
                           "--headimgurl", "https://wx.qlogo.cn/xm/132")

    # The radar user's whole inbox is held before the customer writes.
    inbox = Background(server.radar_getmsg, user, None, wait=10)
    time.sleep(0.3)
    sent = server.customer_send(customer, user.id, text("你好,我想了解一下"))
    assert sent["code"] == 200 and sent["msg"] == "send msg successful"
    sent_at = time.monotonic()
    body = inbox.value(timeout=5)
    assert inbox.finished_at - sent_at < 1.0
    assert body["code"] == 200 and body["msg"] == "实时获取-最新聊天信息成功", body
    [item] = body["data"]["ret_data"]
    assert item["id"] == sent["data"]["id"]
    assert item["customer_id"] == customer.id and item["user_id"] == user.id
    assert item["name"] == "小明 😀" and item["src"] == "https://wx.qlogo.cn/xm/132"
    assert item["send_type"] == 2 and item["msg"] == "你好,我想了解一下"
    assert server.radar_unread(user)["data"]["chatinfo_count"] == 0  # delivered = read

    # The customer's own message echoes back once; then its poll is held.
    echo = server.customer_getmsg(customer, user.id)
    assert [m["id"] for m in echo["data"]["ret_data"]] == [sent["data"]["id"]]
    held = Background(server.customer_getmsg, customer, user.id, wait=10)
    time.sleep(0.3)
    assert held.finished_at is None
    reply = server.radar_send(user, customer.id, text("您好,请问有什么可以帮您?"))
    assert reply["code"] == 200 and reply["msg"] == "发送成功"
    replied_at = time.monotonic()
    body = held.value(timeout=5)
    assert held.finished_at - replied_at < 1.0
    assert body["code"] == 200, body
    [item] = body["data"]["ret_data"]
    assert item["id"] == reply["data"]["id"] and item["send_type"] == 1
    assert item["msg"] == "您好,请问有什么可以帮您?"
    assert item["user_avator"] == "https://img.example/card.png"
    assert item["customer"] == "小明 😀" and item["is_first_info"] is False

    history = server.customer_history(customer, user.id)["data"]
    assert [m["send_type"] for m in history["ret_data"]] == [2, 1]
    assert history["ret_data"][0]["is_first_info"] is True
    assert server.stop() == 0


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
def test_both_event_loops_serve_and_deliver(tmp_path, start_server, event_loop):
    server = start_server(*serve_args(tmp_path), env={"LEIDA_SERVER_EVENT_LOOP": event_loop})
    startup = [line for line in server.log().splitlines() if "listening on" in line]
    assert f"{event_loop} loop" in startup[0], startup
    db = str(tmp_path / "chat.db")
    user = cli_account(tmp_path, "add-user", "--db", db, "--name", "王经理")
    customer = cli_account(tmp_path, "add-customer", "--db", db, "--name", "小明")
    server.customer_send(customer, user.id, text("loop test"))
    item = server.radar_getmsg(user)["data"]["ret_data"][0]
    assert item["msg"] == "loop test"
    assert server.stop() == 0


@pytest.mark.parametrize("name,value", [("LEIDA_DEMO", "maybe"), ("LEIDA_LOG_ACCESS", "2"),
                                        ("LEIDA_SERVER_EVENT_LOOP", "bogus"),
                                        ("LEIDA_SERVER_IDLE_CONNECTION_TIMEOUT", "0"),
                                        ("LEIDA_SERVER_BODY_TIMEOUT", "-1"),
                                        ("LEIDA_SERVER_SHUTDOWN_GRACE_SECONDS", "-1"),
                                        ("LEIDA_AUTH_ACCOUNT_CACHE_SECONDS", "-1")])
def test_a_bad_environment_value_stops_the_server_naming_it(tmp_path, name, value):
    result = run_cli(tmp_path, *serve_args(tmp_path), env=clean_env(**{name: value}))
    assert result.returncode == 2 and "configuration error" in result.stderr
    assert name in result.stderr or name.lower().split("_", 1)[1].replace("_", ".", 1) in result.stderr


def test_full_garbage_collections_run_on_a_timer_not_on_allocation_counts(io_loop):
    """At 10,000 held requests a full collection stops the server for most of a second;
    CPython's own trigger would start one every few seconds (bench/README.md)."""
    import gc

    import leida_chat

    thresholds = gc.get_threshold()
    try:
        full = leida_chat.collect_fully_on_a_timer()
        try:
            assert gc.get_threshold()[:2] == thresholds[:2]  # young generations as usual
            assert gc.get_threshold()[2] >= 1_000_000_000  # never reached by counting
            assert full.is_running() and full.callback_time == leida_chat.FULL_COLLECTION_SECONDS * 1000
        finally:
            full.stop()
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def test_the_shipped_config_toml_says_what_the_defaults_are():
    """An installed ``leida-chat`` runs on the built-in defaults and a checkout on
    config.toml: they must be the same server."""
    from leida_config import DEFAULTS, SHIPPED_CONFIG, load_config

    assert load_config(SHIPPED_CONFIG, environ={}) == load_config(None, environ={}) == DEFAULTS


def test_a_config_toml_in_the_working_directory_wins_over_the_shipped_one(tmp_path, start_server):
    port = free_port()
    (tmp_path / "config.toml").write_text(f'[server]\nport = {port}\n\n[database]\npath = "here.db"\n')
    server = start_server(env=clean_env())
    assert server.port == port and server.db == str(tmp_path / "here.db")
    assert server.stop() == 0
