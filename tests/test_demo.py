"""`make demo`, `make demo-flask` and `make demo-redis` as a new user runs them: `python -m examples` starts the
app with the demo's settings, prints the URL, the demo users and how to get a token, and the token it describes
works. With --redis, a session outlives a restart of the app (a fixed demo cookie key, sessions in Redis)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from examples.__main__ import DEMO_JWT_KEY
from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def demo(*args: str, env: dict[str, str] | None = None) -> Iterator[tuple[str, str]]:
    """`python -m examples ARGS` until its banner is printed: (url, banner); stopped with Ctrl-C (SIGINT)."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AUTHMW_")}
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    process = subprocess.Popen(
        [sys.executable, "-m", "examples", *args, "--port", str(port)],
        cwd=ROOT,
        env={**clean, **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def output() -> str:
        log.seek(0)
        return log.read().decode(errors="replace")

    try:
        deadline = time.monotonic() + 30
        while "Press Ctrl-C to stop." not in output():
            assert process.poll() is None, output()
            assert time.monotonic() < deadline, output()
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", output()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()


def mint_as_the_banner_says(banner: str) -> str:
    """Run the banner's `authmw token mint` line with the variables its `export` line sets."""
    exported = dict(re.findall(r"(AUTHMW_[A-Z_]+)=(\S+)", banner.split("export", 1)[1].splitlines()[0]))
    assert exported == {"AUTHMW_JWT_ALGORITHMS": "HS256", "AUTHMW_JWT_KEY": DEMO_JWT_KEY}
    command = re.search(r"\$\(\.venv/bin/authmw (token mint [^)]*)\)", banner)
    assert command is not None, banner
    minted = subprocess.run(
        [sys.executable, "-m", "authmw.cli", *command.group(1).split()],
        env={**os.environ, **exported},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return minted.stdout.strip()


@pytest.mark.parametrize("framework", ["starlette", "flask"])
def test_the_demo_prints_where_to_go_and_its_token_works(framework: str) -> None:
    with demo(framework) as (url, banner):
        assert f"is up: {url}" in banner
        assert "alice / wonderland" in banner and "bob / builder" in banner
        token = mint_as_the_banner_says(banner)
        items = httpx.get(url + "/api/items", headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert items.status_code == 200 and items.json()[0]["name"] == "tea"
        login = httpx.post(url + "/login", data={"username": "bob", "password": "builder"}, timeout=5)
        assert login.status_code == 303 and login.headers["location"] == "/account"
        pair = httpx.post(url + "/api/token", cookies=login.cookies, headers={"Origin": url}, timeout=5)
        assert pair.status_code == 200, pair.text  # the demo can mint tokens too: it has a signing key
        assert (
            httpx.get(url + "/api/me", headers={"Authorization": f"Bearer {pair.json()['access_token']}"}).json()["id"]
            == "bob"
        )


def test_demo_redis_sessions_survive_a_restart(redis_url: str) -> None:
    prefix = f"authmw-test-demo-{uuid.uuid4().hex[:8]}:"
    env = {"AUTHMW_REDIS_URL": redis_url, "AUTHMW_REDIS_PREFIX": prefix}
    try:
        with demo("starlette", "--redis", env=env) as (url, banner):
            assert f"Redis at {redis_url}" in banner
            login = httpx.post(url + "/login", data={"username": "alice", "password": "wonderland"}, timeout=5)
            assert login.status_code == 303
            cookies = login.cookies
        with demo("starlette", "--redis", env=env) as (url, _):
            account = httpx.get(url + "/account", cookies=cookies, headers={"Accept": "application/json"}, timeout=5)
            assert account.status_code == 200 and account.json()["id"] == "alice"
    finally:
        import redis

        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(match=prefix + "*"):
            client.unlink(key)
