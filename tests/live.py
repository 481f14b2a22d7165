"""The real server and command line as subprocesses, for the tests that need them.

Every subprocess runs in its own working directory with its database inside
it, under a timeout so that a hang fails the test instead of blocking the run.
Requests go over plain ``http.client`` to 127.0.0.1.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from conftest import Account, sign

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "leida_chat.py"

CLI_TIMEOUT = 20.0      # seconds any one CLI run may take
START_TIMEOUT = 10.0    # seconds a server may take to log its startup line
HTTP_TIMEOUT = 10.0     # seconds any one request may take (held getmsgs get their wait on top)

CUSTOMER = "/zhugeleida/gongzhonghao"
RADAR = "/zhugeleida/qiyeweixin"
HEX32 = re.compile(r"[0-9a-f]{32}")
STARTUP = re.compile(r"listening on http://(?P<host>[0-9.]+):(?P<port>\d+), database (?P<db>.+?) \(")
METRICS = re.compile(r"metrics on http://(?P<host>[0-9.]+):(?P<port>\d+)/metrics")


# -- helpers ------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any LEIDA_* setting leaking in from outside.

    The metrics and server-API listeners take any free port, so that servers of parallel tests never
    collide on 9480 and 9481.
    """
    env = {name: value for name, value in os.environ.items() if not name.upper().startswith("LEIDA_")}
    env["LEIDA_METRICS_PORT"] = "0"
    env["LEIDA_SERVER_API_PORT"] = "0"
    env.update(extra)
    return env


def run_cli(cwd: Path, *args: str, env: dict[str, str] | None = None,
            timeout: float = CLI_TIMEOUT, program: list[str] | None = None) -> subprocess.CompletedProcess:
    """``program`` runs instead of this checkout's leida_chat.py (an installed ``leida-chat``)."""
    return subprocess.run(
        [*(program or [sys.executable, str(SCRIPT)]), *args],
        cwd=cwd, env=env if env is not None else clean_env(),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
    )


def cli_account(cwd: Path, command: str, *args: str, env: dict[str, str] | None = None,
                program: list[str] | None = None) -> Account:
    """Run add-user / add-customer, check it printed exactly one JSON line, return the account."""
    result = run_cli(cwd, command, *args, env=env, program=program)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    printed = json.loads(lines[0])
    assert set(printed) == {"id", "token"}, printed
    assert type(printed["id"]) is int and isinstance(printed["token"], str), printed
    return Account(printed["id"], printed["token"])


def accounts(cwd: Path, database: str, customers: int = 1,
             names: list[str] | None = None) -> tuple[Account, list[Account]]:
    """A radar user (王经理) and ``customers`` customers (客户0, 客户1, … unless ``names``), made by the CLI."""
    user = cli_account(cwd, "add-user", "--db", database, "--name", "王经理")
    names = names or [f"客户{n}" for n in range(customers)]
    return user, [cli_account(cwd, "add-customer", "--db", database, "--name", name) for name in names]


def stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGTERM, and SIGKILL if it has not exited within ``timeout`` (a helper server at teardown)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """One ``leida_chat.py`` process; stdout and stderr go to one log file."""

    def __init__(self, cwd: Path, args: list[str], env: dict[str, str] | None, name: str,
                 program: list[str] | None = None, preexec_fn: Any = None) -> None:
        """``program`` runs instead of this checkout's leida_chat.py (an installed ``leida-chat``);
        ``preexec_fn`` runs in the child before it starts (e.g. a low open-file limit)."""
        self.cwd = cwd
        self.log_path = cwd / f"{name}.log"
        self._log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [*(program or [sys.executable, str(SCRIPT)]), *args],
            cwd=cwd, env=env if env is not None else clean_env(),
            stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT, preexec_fn=preexec_fn,
        )
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.db: str | None = None

    def log(self) -> str:
        return self.log_path.read_bytes().decode("utf-8", "replace")

    def wait_started(self, timeout: float = START_TIMEOUT, workers: int = 1) -> Server:
        """Once the startup line is logged (by each of ``workers`` under --processes)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = STARTUP.search(self.log())
            if match and len(STARTUP.findall(self.log())) >= workers:
                self.port, self.db = int(match["port"]), match["db"]
                metrics = METRICS.search(self.log())
                self.metrics_port = int(metrics["port"]) if metrics else None
                return self
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode} before listening:\n{self.log()}")
            time.sleep(0.02)
        pytest.fail(f"server did not log its startup line within {timeout} s:\n{self.log()}")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._log_file.close()

    # -- HTTP ----------------------------------------------------------------

    def raw_get(self, path: str) -> bytes:
        """The body of an unsigned GET that must answer 200 (a file, not the envelope)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=HTTP_TIMEOUT)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            assert response.status == 200, (path, response.status, body[:200])
            return body
        finally:
            conn.close()

    def request(
        self, method: str, path: str, account: Account | None = None, *,
        query: dict[str, Any] | None = None, form: dict[str, Any] | None = None,
        body: bytes | None = None, headers: dict[str, str] | None = None,
        timeout: float = HTTP_TIMEOUT, raw_query: str | None = None,
    ) -> tuple[int, dict]:
        """(HTTP status, JSON body); the request is signed by ``account`` if given."""
        assert self.port is not None, "server not started"
        params: dict[str, Any] = dict(sign(account)) if account is not None else {}
        params.update({k: v for k, v in (query or {}).items() if v is not None})
        url = path + "?" + (raw_query if raw_query is not None else urlencode(params))
        headers = dict(headers or {})
        if form is not None:
            body = urlencode({k: v for k, v in form.items() if v is not None}).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, url, body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            return response.status, json.loads(payload)
        finally:
            conn.close()

    def get(self, path: str, account: Account | None, timeout: float = HTTP_TIMEOUT, **query: Any) -> dict:
        status, body = self.request("GET", path, account, query=query, timeout=timeout)
        assert status == 200, (status, body)
        return body

    def post(self, path: str, account: Account | None, form: dict[str, Any]) -> dict:
        status, body = self.request("POST", path, account, form=form)
        assert status == 200, (status, body)
        return body

    # The contract's endpoints, as the tests use them.

    def customer_send(self, customer: Account, user_id: int, content: dict) -> dict:
        return self.post(f"{CUSTOMER}/chat/send_msg/0", customer,
                         {"u_id": user_id, "content": json.dumps(content, ensure_ascii=False)})

    def customer_getmsg(self, customer: Account, user_id: int, wait: float = 0, **query: Any) -> dict:
        return self.get(f"{CUSTOMER}/chat/getmsg/0", customer, timeout=HTTP_TIMEOUT + wait,
                        u_id=user_id, wait=wait, **query)

    def customer_history(self, customer: Account, user_id: int) -> dict:
        return self.get(f"{CUSTOMER}/chat", customer, u_id=user_id)

    def radar_send(self, user: Account, customer_id: int, content: dict) -> dict:
        return self.post(f"{RADAR}/chat/send_msg/0", user,
                         {"customer_id": customer_id, "content": json.dumps(content, ensure_ascii=False)})

    def radar_getmsg(self, user: Account, customer_id: int | None = None, wait: float = 0) -> dict:
        return self.get(f"{RADAR}/chat/getmsg/0", user, timeout=HTTP_TIMEOUT + wait,
                        customer_id=customer_id, wait=wait)

    def radar_getmsg_after(self, user: Account, last_id: int, wait: float = 0) -> dict:
        """The radar user's whole inbox after a resume cursor."""
        return self.get(f"{RADAR}/chat/getmsg/0", user, timeout=HTTP_TIMEOUT + wait, wait=wait, last_id=last_id)

    def radar_unread(self, user: Account) -> dict:
        return self.get(f"{RADAR}/chat/query_num/0", user)


class Background:
    """A call in a thread, so that the test can act while a getmsg is held."""

    def __init__(self, fn, *args: Any, **kwargs: Any) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished_at: float | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, args, kwargs), daemon=True)
        self._thread.start()

    def _run(self, fn, args, kwargs) -> None:
        try:
            self.result = fn(*args, **kwargs)
        except BaseException as error:  # reported by value()
            self.error = error
        finally:
            self.finished_at = time.monotonic()

    def value(self, timeout: float) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"still running after {timeout} s"
        if self.error is not None:
            raise self.error
        return self.result


def serve_args(tmp_path: Path, db: str = "chat.db") -> list[str]:
    """``serve`` on any free port, on ``db``: a file in ``tmp_path``, an absolute path, or a PostgreSQL URL."""
    return ["serve", "--db", db if "://" in db else str(tmp_path / db), "--host", "127.0.0.1", "--port", "0"]


def query(database: str, sql: str) -> list[tuple]:
    """The rows of a read made outside the server, as an operator would: sqlite3 on a
    file, asyncpg on a ``postgresql://`` URL."""
    if "://" not in database:
        conn = sqlite3.connect(database)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    async def fetch() -> list[tuple]:
        import asyncpg

        conn = await asyncpg.connect(database)
        try:
            return [tuple(row) for row in await conn.fetch(sql)]
        finally:
            await conn.close()

    return asyncio.run(fetch())
