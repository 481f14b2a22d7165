"""Nothing acknowledged is ever lost, and nothing is stored twice.

The real server runs as a subprocess and is killed with SIGKILL at random
moments while several clients send; every send that got code 200 must be in
the database exactly once, in the order its sender got the acknowledgements,
and a send whose answer was lost is retried with its ``client_msg_id`` and
still stored once. On SQLite, ``PRAGMA integrity_check`` must stay ``ok``.
"""
from __future__ import annotations

import http.client
import json
import random
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlencode

from conftest import Account, sign
from live import CUSTOMER, RADAR, query, run_cli, serve_args

KILLS = 10
SEND_TIMEOUT = 3.0


@dataclass
class Sender:
    """Sends one numbered message after another over one keep-alive connection."""

    account: Account
    path: str
    form: dict
    name: str
    acknowledged: list[tuple[str, int]] = field(default_factory=list)  # (client_msg_id, message id)
    unanswered: list[str] = field(default_factory=list)  # sent, answer lost: retry with the same key
    counter: int = 0

    def next_key(self) -> str:
        if self.unanswered:
            return self.unanswered[0]
        self.counter += 1
        return f"{self.name}-{self.counter}"

    def run(self, port: int, stop: threading.Event) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=SEND_TIMEOUT)
        while not stop.is_set():
            key = self.next_key()
            body = urlencode({**self.form, "client_msg_id": key,
                              "content": json.dumps({"info_type": 1, "msg": key})})
            try:
                conn.request("POST", f"{self.path}?{urlencode(sign(self.account))}", body=body,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
                answer = json.loads(conn.getresponse().read())
            except (OSError, http.client.HTTPException, ValueError):
                if key not in self.unanswered:
                    self.unanswered.append(key)
                return  # the server is gone; the next round retries
            assert answer["code"] == 200, answer
            if self.unanswered and self.unanswered[0] == key:
                self.unanswered.pop(0)
            self.acknowledged.append((key, answer["data"]["id"]))
        conn.close()


def wait_for_http(server, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=1)
            conn.request("GET", "/")
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.02)
    raise AssertionError("server not answering")


def test_acknowledged_sends_survive_sigkill_exactly_once_and_in_order(tmp_path, start_server, database):
    db = database
    accounts_file = tmp_path / "accounts.json"
    result = run_cli(tmp_path, "demo-accounts", "--db", db, "--users", "2", "--customers", "3",
                     "--json", str(accounts_file))
    assert result.returncode == 0, result.stderr
    accounts = json.loads(accounts_file.read_text())
    users = [Account(int(i), t) for i, t in accounts["users"].items()]
    customers = [Account(int(i), t) for i, t in accounts["customers"].items()]
    senders = []
    for customer in customers:
        for user in users:
            senders.append(Sender(customer, f"{CUSTOMER}/chat/send_msg/0", {"u_id": user.id},
                                  f"c{customer.id}u{user.id}"))
    for user in users:
        senders.append(Sender(user, f"{RADAR}/chat/send_msg/0", {"customer_id": customers[0].id},
                              f"u{user.id}c{customers[0].id}"))

    rng = random.Random(20261130)
    for round_number in range(KILLS + 1):
        server = start_server(*serve_args(tmp_path, db), env=None)
        wait_for_http(server)
        stop = threading.Event()
        threads = [threading.Thread(target=sender.run, args=(server.port, stop)) for sender in senders]
        for thread in threads:
            thread.start()
        if round_number < KILLS:
            time.sleep(rng.uniform(0.05, 0.6))
            server.proc.kill()  # SIGKILL: no shutdown, no flush, mid-whatever
            server.proc.wait(timeout=5)
        else:  # the last round: let every unanswered send be retried, then stop cleanly
            deadline = time.monotonic() + 10
            while any(s.unanswered for s in senders) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)
        stop.set()
        for thread in threads:
            thread.join(timeout=SEND_TIMEOUT + 2)
        if round_number == KILLS:
            assert server.stop() == 0
    assert not any(sender.unanswered for sender in senders), "some sends were never answered"

    if "://" not in db:
        assert query(db, "PRAGMA integrity_check") == [("ok",)]
    stored = {msg_id: json.loads(content)["msg"] for msg_id, content in query(db, "SELECT id, content FROM message")}
    acknowledged = [pair for sender in senders for pair in sender.acknowledged]
    assert len(acknowledged) > 100, "too few sends to mean anything"
    by_key: dict[str, set[int]] = {}
    for key, message_id in acknowledged:
        by_key.setdefault(key, set()).add(message_id)
    for key, ids in by_key.items():
        assert len(ids) == 1, f"{key} was acknowledged with two different ids: {ids}"
        (message_id,) = ids
        assert stored.get(message_id) == key, f"acknowledged {key} as {message_id}, stored {stored.get(message_id)!r}"
    # exactly once: every stored message is one acknowledged key, none twice
    assert sorted(stored.values()) == sorted(by_key), "stored messages and acknowledged sends differ"
    for sender in senders:  # in order: each sender's acknowledgements carry rising ids
        ids = [message_id for _, message_id in sender.acknowledged]
        assert ids == sorted(ids), f"{sender.name} saw its messages out of order"
    print(f"kills survived: {KILLS}, sends acknowledged: {len(by_key)}, lost: 0, duplicated: 0")
