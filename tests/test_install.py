"""``pip install .`` gives a working ``leida-chat`` command, with no checkout beside it.

The project is copied, installed into a target directory, and the copy removed,
so the installed command can only serve what the package itself carries: the
browser client, the API document, and the built-in defaults in place of the
checkout's config.toml.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from conftest import ROOT
from live import CLI_TIMEOUT, Server, clean_env, cli_account

INSTALL_TIMEOUT = 180.0


def install(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "venv", "data", "build", "*.egg-info", "__pycache__", "e2e-screenshots", "*.db*"))
    target = tmp_path / "installed"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
         str(target), str(source)],
        capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    shutil.rmtree(source)
    return target


def test_the_installed_command_serves_on_its_own(tmp_path):
    installed = install(tmp_path)
    command = [str(installed / "bin" / "leida-chat")]
    env = clean_env(PYTHONPATH=str(installed))
    workdir = tmp_path / "anywhere"
    workdir.mkdir()

    shown = subprocess.run([*command, "--help"], cwd=workdir, env=env, capture_output=True, text=True,
                           timeout=CLI_TIMEOUT)
    assert shown.returncode == 0 and "add-user" in shown.stdout and "backup" in shown.stdout
    user = cli_account(workdir, "add-user", "--name", "王经理", env=env, program=command)

    server = Server(workdir, ["--port", "0"], env, name="installed", program=command)
    try:
        server.wait_started()
        # no config.toml anywhere: the built-in defaults, whose database is data/leida_chat.db here
        assert server.db == str(workdir / "data" / "leida_chat.db")
        assert server.radar_unread(user)["data"] == {"chatinfo_count": 0}
        for path, shipped in (("/static/leida-chat.js", ROOT / "handlers" / "static" / "leida-chat.js"),
                              ("/openapi.json", ROOT / "handlers" / "openapi.json")):
            assert server.raw_get(path) == shipped.read_bytes(), path
        assert "installed/handlers" in imported_from(installed, env, "handlers")
        assert server.stop() == 0
    finally:
        server.kill()


def imported_from(installed: Path, env: dict[str, str], module: str) -> str:
    result = subprocess.run([sys.executable, "-c", f"import {module}; print({module}.__file__)"],
                            cwd=installed.parent, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT)
    return result.stdout


def requirement_lines(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line.replace(" ", "").replace("'", '"') for line in lines if line and not line.startswith("-r")]


def test_the_package_depends_on_what_requirements_txt_lists():
    """requirements.txt installs a checkout, pyproject.toml the package: the same pins for both."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [line.replace(" ", "").replace("'", '"') for line in project["dependencies"]]
    assert sorted(declared) == sorted(requirement_lines(ROOT / "requirements.txt"))
