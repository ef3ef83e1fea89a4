"""Shared fixtures: real servers on loopback, free ports, and the test session's Redis.

Redis: by default the session starts a private ``redis-server`` (free loopback port, no persistence) and kills it
at the end. ``AUTHMW_TEST_REDIS_URL=redis://host:port/db`` uses that Redis instead, which may be shared: the run
then writes only under its own key prefix and deletes exactly those keys. Tests get a prefix of their own from
`redis_space` (or `SessionRedis.space` in module-scoped fixtures) and never flush a database. Without the
``redis-server`` binary the Redis tests skip, except with ``AUTHMW_REQUIRE_REDIS=1`` (CI), where they fail.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

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


# ---- Redis ----------------------------------------------------------------------------------------------------


def redis_required() -> bool:
    """CI sets AUTHMW_REQUIRE_REDIS=1: there, a Redis test that cannot run is a failure, never a skip."""
    return os.environ.get("AUTHMW_REQUIRE_REDIS") == "1"


def require_binary(name: str) -> str:
    """The path of a Redis program (redis-server, redis-cli); skips the test without it, or fails it in CI."""
    path = shutil.which(name)
    if path is None:
        message = (
            f"{name} is not installed: the Redis tests start private Redis processes (Debian: apt-get install "
            "redis-server). AUTHMW_TEST_REDIS_URL=redis://host:port/db runs most of them on a Redis you have instead"
        )
        if redis_required():
            pytest.fail(message)
        pytest.skip(message)
    return path


class RedisProcess:
    """A private redis-server on a loopback port, restartable on the same port and directory.

    Nothing is saved unless `persistent` (AOF only); `args` are extra options and `config` a config file (which
    Sentinel needs, and rewrites). Whoever starts it kills it: `kill` (SIGKILL) and `terminate` also reap it.
    """

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        persistent: bool = False,
        args: Sequence[str] = (),
        config: Path | None = None,
    ) -> None:
        self.binary = require_binary("redis-server")
        self.port = free_port() if port is None else port
        self.directory = directory
        self.persistent = persistent
        self.args = list(args)
        self.config = config
        self.log = directory / f"redis-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        argv = [self.binary, *([str(self.config)] if self.config is not None else [])]
        argv += ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        argv += ["--logfile", str(self.log), *self.args]
        if self.config is None:  # a Sentinel's config file is its own business
            argv += ["--save", "", "--appendonly", "yes" if self.persistent else "no"]
        return argv

    def start(self, timeout: float = 10.0) -> float:
        """Start it and wait until it answers PING (after loading its AOF); the monotonic time it did."""
        assert self.process is None or self.process.poll() is not None, "already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.process.poll() is not None:
                    log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
                    raise RuntimeError(f"redis-server on {self.port} exited with {self.process.returncode}:\n{log}")
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):  # BusyLoadingError too
                    if client.ping():
                        return time.monotonic()
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"redis-server on port {self.port} not ready after {timeout} s")
                time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed by Redis itself (also when stopped by `signal(SIGSTOP)`)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)

    def signal(self, signum: int) -> None:
        """SIGSTOP makes it hang (connections open, nothing answers); SIGCONT resumes it."""
        assert self.process is not None
        self.process.send_signal(signum)

    def terminate(self) -> None:
        """SIGTERM: Redis's own graceful shutdown (it finishes the AOF)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(port=self.port, db=db, socket_connect_timeout=1, socket_timeout=10)


def _glob_escape(text: str) -> str:
    """`text` as a literal in a SCAN MATCH pattern (which reads * ? [ ] and backslash as glob syntax)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


@dataclass(frozen=True)
class RedisSpace:
    """Where one test (or module) keeps its Redis keys: the session's Redis and a key prefix of its own."""

    url: str
    prefix: str


class SessionRedis:
    """The test session's Redis: `url`, and `prefix`, under which everything the run writes lives."""

    def __init__(self, url: str, prefix: str, *, shared: bool) -> None:
        self.url = url
        self.prefix = prefix
        self.shared = shared

    @contextlib.contextmanager
    def space(self, label: str) -> Iterator[RedisSpace]:
        """A fresh prefix under the run's (named after `label`, for whoever reads the keys); its keys are deleted
        on exit, whatever the test did."""
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-")[:60] or "space"
        space = RedisSpace(self.url, f"{self.prefix}{name}-{secrets.token_hex(3)}:")
        try:
            yield space
        finally:
            self.delete(space.prefix)

    def delete(self, prefix: str) -> int:
        """Delete exactly the keys under `prefix` (SCAN MATCH + UNLINK: never FLUSHDB or KEYS on a shared server)."""
        assert prefix.startswith(self.prefix), f"{prefix!r} is not this run's"
        client = redis.Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=10)
        try:
            keys = list(client.scan_iter(match=_glob_escape(prefix) + "*", count=1000))
            for start in range(0, len(keys), 500):
                client.unlink(*keys[start : start + 500])
            return len(keys)
        finally:
            client.close()


@pytest.fixture(scope="session")
def session_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionRedis]:
    """A private redis-server for this session, or the Redis AUTHMW_TEST_REDIS_URL names (then only this run's
    keys are ever deleted)."""
    prefix = f"authmw-test-{secrets.token_hex(4)}:"
    url = os.environ.get("AUTHMW_TEST_REDIS_URL")
    if url:
        try:
            client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
            client.ping()
            client.close()
        except Exception as exc:
            shown = re.sub(r"//([^/@]*):[^/@]*@", r"//\1:***@", url)  # never print its password
            message = f"Redis is not reachable at AUTHMW_TEST_REDIS_URL={shown} ({type(exc).__name__})"
            if redis_required():
                pytest.fail(message)
            pytest.skip(message)
        run = SessionRedis(url, prefix, shared=True)
        try:
            yield run
        finally:
            run.delete(prefix)
        return
    process = RedisProcess(tmp_path_factory.mktemp("redis"))
    try:
        process.start()
        yield SessionRedis(process.url, prefix, shared=False)
    finally:
        process.kill()


@pytest.fixture(scope="session")
def redis_url(session_redis: SessionRedis) -> str:
    """The session's Redis URL. A test using it picks a key prefix of its own and deletes only that; prefer
    `redis_space`, which does both."""
    return session_redis.url


@pytest.fixture
def redis_space(session_redis: SessionRedis, request: pytest.FixtureRequest) -> Iterator[RedisSpace]:
    """(url, prefix) for this test alone; the keys under the prefix are deleted when it ends."""
    with session_redis.space(request.node.name) as space:
        yield space
