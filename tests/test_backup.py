"""`leida_chat.py backup`: a consistent copy while the server serves and sends go on."""
from __future__ import annotations

import json
import sqlite3
import threading

from live import CUSTOMER, cli_account, run_cli, serve_args


def test_a_backup_taken_during_sends_holds_every_send_acknowledged_before_it(tmp_path, start_server):
    db = tmp_path / "chat.db"
    user = cli_account(tmp_path, "add-user", "--db", str(db), "--name", "王经理")
    customer = cli_account(tmp_path, "add-customer", "--db", str(db), "--name", "客户")
    server = start_server(*serve_args(tmp_path))
    acknowledged: list[int] = []
    failures: list[tuple] = []
    stop = threading.Event()

    def keep_sending() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            status, body = server.request("POST", f"{CUSTOMER}/chat/send_msg/0", customer,
                                          form={"u_id": user.id, "content": json.dumps({"info_type": 1, "msg": f"m{n}"})})
            if status == 200 and body["code"] == 200:
                acknowledged.append(body["data"]["id"])
            else:
                failures.append((status, body))

    senders = [threading.Thread(target=keep_sending) for _ in range(3)]
    for sender in senders:
        sender.start()
    while len(acknowledged) < 200:
        threading.Event().wait(0.01)
    before = list(acknowledged)
    out = tmp_path / "backups" / "copy.db"
    out.parent.mkdir()
    result = run_cli(tmp_path, "backup", "--db", str(db), str(out))
    during = len(acknowledged)
    stop.set()
    for sender in senders:
        sender.join()
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["backup"] == str(out) and printed["messages"] >= len(before)
    assert not failures and during > len(before), "sends did not go on during the backup"

    copy = sqlite3.connect(out)
    assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    stored = {row[0] for row in copy.execute("SELECT id FROM message")}
    assert set(before) <= stored
    copy.close()
    assert not (tmp_path / "backups" / "copy.db.partial").exists()
    assert server.stop() == 0

    # restoring is starting a server on the copy
    restored = start_server("serve", "--db", str(out), "--host", "127.0.0.1", "--port", "0")
    history = restored.customer_history(customer, user.id)
    assert history["data"]["data_count"] == len(stored)
    assert restored.stop() == 0


def test_a_backup_of_a_missing_database_says_so(tmp_path):
    result = run_cli(tmp_path, "backup", "--db", str(tmp_path / "nothing.db"), str(tmp_path / "copy.db"))
    assert result.returncode == 1 and "no database at" in result.stderr and "Traceback" not in result.stderr
