"""A real S3 API server, started by the tests themselves.

moto's standalone server (``moto[server]``, in requirements-dev.txt) runs as a
subprocess on a free port on 127.0.0.1, for the whole session, and is stopped
at its end. It keeps everything in memory and checks no signatures; each test
gets a bucket of its own, and fake credentials in the environment, so that
the store under test finds them through botocore's default chain as it would
in production.
"""
from __future__ import annotations

import http.client
import importlib.util
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from live import free_port, stop_process

START_TIMEOUT = 20.0
REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "leida-test", "AWS_SECRET_ACCESS_KEY": "leida-test-secret"}


def missing_moto() -> str | None:
    """Why no server can be started here, or None."""
    for module in ("moto.server", "flask", "boto3"):
        try:
            if importlib.util.find_spec(module) is None:
                raise ModuleNotFoundError(module)
        except ModuleNotFoundError:
            return f"no {module} to run moto's S3 server: pip install 'moto[server]' (requirements-dev.txt)"
    return None


def require_s3() -> None:
    """Skip without moto; fail instead where CI says everything is installed."""
    reason = missing_moto()
    if reason is not None:
        if os.environ.get("LEIDA_TEST_REQUIRE_POSTGRES"):
            pytest.fail(f"LEIDA_TEST_REQUIRE_POSTGRES is set, and {reason}")
        pytest.skip(reason)


class S3Server:
    """``python -m moto.server`` on a free port; stopped by ``stop()``."""

    def __init__(self) -> None:
        require_s3()
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.root = Path(tempfile.mkdtemp(prefix="leida-s3-"))
        self.log_path = self.root / "moto.log"
        self._log_file = open(self.log_path, "wb")
        self._names = itertools.count(1)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            cwd=self.root, env={**os.environ, **CREDENTIALS},
            stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
        )
        self._wait_answering()
        self._client = self._make_client()

    def _wait_answering(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"moto server exited with {self.proc.returncode}:\n{self.log()}")
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            try:
                conn.request("GET", "/moto-api/")
                if conn.getresponse().status < 500:
                    return
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"moto server did not answer within {START_TIMEOUT} s:\n{self.log()}")

    def _make_client(self):
        """A plain (synchronous) botocore client for the fixtures' own setup, with explicit credentials."""
        import botocore.session
        from botocore.config import Config

        return botocore.session.get_session().create_client(
            "s3", endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def new_bucket(self) -> str:
        """The name of a new, empty bucket."""
        name = f"leida-test-{os.getpid()}-{next(self._names)}"
        self._client.create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> list[str]:
        """What ``bucket`` holds (the stores never list; the tests check nothing was left behind)."""
        return [item["Key"] for item in self._client.list_objects_v2(Bucket=bucket).get("Contents", [])]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc)
        self._log_file.close()


@pytest.fixture(scope="session")
def s3_server():
    """The session's moto server (skipped, or failed under CI, without moto); ``.endpoint`` is its URL."""
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture
def s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials where botocore's default chain looks first, and nothing else of the host's AWS setup."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    for name in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def s3_bucket(s3_server: S3Server, s3_credentials: None) -> str:
    """A fresh bucket in the session's server, with the credentials to reach it in the environment."""
    return s3_server.new_bucket()
