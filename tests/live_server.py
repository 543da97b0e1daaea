"""A real ``communs serve`` process for tests that drive it from outside (browser,
third-party clients)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


@contextmanager
def communs_serve(
    database_url: str, data_dir: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[str]:
    """``communs serve [args]`` on a free port of loopback, on the test database, with
    only the COMMUNS_ variables given; yields its base URL once /healthz answers."""
    with serve_process(database_url, data_dir, *args, env=env) as (_process, url):
        yield url


@contextmanager
def serve_process(
    database_url: str, data_dir: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen, str]]:
    """``communs_serve`` that also yields the process (for tests that kill it)."""
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("COMMUNS_")}
    environment.update(env or {}, COMMUNS_DATABASE_URL=database_url)
    log_path = data_dir / "server.log"
    command = [sys.executable, "-m", "communs", "serve", "--port", str(port)]
    command += ["--data-dir", str(data_dir), *args]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(process, url, log_path)
        yield process, url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait_until_healthy(process: subprocess.Popen, url: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{log_tail(log_path)}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"no answer on {url}/healthz in {START_TIMEOUT} s:\n{log_tail(log_path)}")
        time.sleep(0.1)
