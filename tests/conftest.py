"""Shared fixtures: real servers on loopback, free ports, and the rule that Redis tests skip only outside CI."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A real HTTP server in a subprocess on a loopback port; stopped when the test ends."""

    def __init__(self, argv: list[str], env: Mapping[str, str], port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
        # Output goes to a file, never an unread pipe: a full pipe would block the server's workers.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(argv, cwd=ROOT, env=full_env, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server on {self.url} not ready after {timeout} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.log.close()


@contextlib.contextmanager
def uvicorn_server(app: str, env: Mapping[str, str]) -> Iterator[Server]:
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    server = Server(argv, env, port)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def gunicorn_server(app: str, env: Mapping[str, str], workers: int = 1) -> Iterator[Server]:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        app,
    ]
    server = Server(argv, env, port)
    try:
        yield server
    finally:
        server.stop()


APPS = {
    "starlette": lambda env: uvicorn_server("examples.starlette_app.app:app", env),
    "flask": lambda env: gunicorn_server("examples.flask_app.app:app", env),
}


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The URL of the real Redis on 127.0.0.1:6379; skips outside CI when absent, fails in CI (AUTHMW_REQUIRE_REDIS)."""
    url = os.environ.get("AUTHMW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except Exception as exc:
        message = f"Redis is not reachable at {url} ({type(exc).__name__}); start redis-server to run these tests"
        if os.environ.get("AUTHMW_REQUIRE_REDIS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return url
