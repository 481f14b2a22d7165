"""A real nginx in front of the server, started by the test on a free port.

Debian's ``nginx-light`` (``.ci/run`` installs it). Each nginx runs in its own
prefix directory with its pid, logs and temp files inside, in the foreground,
and is stopped at teardown.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from live import free_port, stop_process

NGINX = os.environ.get("LEIDA_NGINX", shutil.which("nginx") or "/usr/sbin/nginx")
START_TIMEOUT = 10.0


def require_nginx() -> None:
    if not Path(NGINX).exists():
        pytest.skip(f"no nginx at {NGINX} (apt-get install nginx-light)")


class Nginx:
    """``nginx -p prefix -c nginx.conf``, with ``http { ... }`` made from ``server_block``."""

    def __init__(self, prefix: Path, server_block: str) -> None:
        require_nginx()
        self.prefix = prefix
        self.port = free_port()
        prefix.mkdir(parents=True, exist_ok=True)
        (prefix / "logs").mkdir(exist_ok=True)
        config = prefix / "nginx.conf"
        config.write_text(
            "daemon off;\nworker_processes 1;\npid nginx.pid;\nerror_log logs/error.log info;\n"
            + ("user root;\n" if os.geteuid() == 0 else "")
            + "events { worker_connections 1024; }\n"
            "http {\n"
            "  access_log logs/access.log;\n"
            "  client_body_temp_path tmp_body; proxy_temp_path tmp_proxy;\n"
            "  fastcgi_temp_path tmp_fastcgi; uwsgi_temp_path tmp_uwsgi; scgi_temp_path tmp_scgi;\n"
            + server_block.replace("{{port}}", str(self.port))
            + "\n}\n"
        )
        self.log_file = open(prefix / "nginx.out", "wb")
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(prefix), "-c", str(config)],
            stdin=subprocess.DEVNULL, stdout=self.log_file, stderr=subprocess.STDOUT,
        )
        self._wait_listening()

    def _wait_listening(self) -> None:
        import socket

        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"nginx exited with {self.proc.returncode}:\n{self.output()}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        pytest.fail(f"nginx did not listen within {START_TIMEOUT} s:\n{self.output()}")

    def output(self) -> str:
        parts = [(self.prefix / "nginx.out"), (self.prefix / "logs" / "error.log")]
        return "\n".join(p.read_text(errors="replace") for p in parts if p.exists())

    def stop(self) -> None:
        stop_process(self.proc)
        self.log_file.close()


@pytest.fixture
def start_nginx(tmp_path: Path):
    """``start_nginx(server_block)``: a running nginx; ``{{port}}`` in the block is its listen port."""
    started: list[Nginx] = []

    def start(server_block: str) -> Nginx:
        nginx = Nginx(tmp_path / f"nginx{len(started)}", server_block)
        started.append(nginx)
        return nginx

    yield start
    for nginx in started:
        nginx.stop()
