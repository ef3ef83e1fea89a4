"""End to end: the session rows of DESIGN.md §6 on the Starlette example under a real uvicorn, on both stores,
plus Redis killed and restarted under a running app (fail closed with 503, recovery without a restart).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import jwt
import pytest
import redis
from tests.conftest import APPS, free_port

pytestmark = pytest.mark.slow

SECRET = "e2e-session-secret-" + "z" * 40
JWT_KEY = "e2e-jwt-secret-" + "q" * 40


def _env(redis_url: str | None) -> dict[str, str]:
    env = {
        "AUTHMW_SECRET_KEYS": SECRET,
        "AUTHMW_JWT_ALGORITHMS": "HS256",
        "AUTHMW_JWT_KEY": JWT_KEY,
        "AUTHMW_COOKIE_SECURE": "0",
    }
    if redis_url:
        env["AUTHMW_REDIS_URL"] = redis_url
    return env


@pytest.fixture(scope="module", params=["starlette-memory", "starlette-redis", "flask-memory", "flask-redis"])
def app_url(request: pytest.FixtureRequest) -> Iterator[str]:
    framework, store = request.param.split("-")
    url = None
    if store == "redis":
        url = request.getfixturevalue("redis_url")
        # A database of its own per app; flushed after the module.
        url = url.rsplit("/", 1)[0] + ("/7" if framework == "starlette" else "/8")
        redis.Redis.from_url(url).flushdb()
    with APPS[framework](_env(url)) as server:
        yield server.url
    if url:
        redis.Redis.from_url(url).flushdb()


def _login(url: str, user: str = "alice", password: str = "wonderland") -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=5)
    response = client.post("/login", data={"username": user, "password": password})
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/account"
    return client


def test_login_sets_cookie_and_account_works(app_url: str) -> None:
    client = _login(app_url)
    cookie = client.cookies.get("authmw_session")
    assert cookie
    account = client.get("/account")
    assert account.status_code == 200
    assert account.json() == {"id": "alice", "source": "session", "scopes": ["items:read", "items:write"]}
    me = client.get("/api/me")
    assert me.json()["source"] == "session"


def test_bad_password_is_401(app_url: str) -> None:
    response = httpx.post(app_url + "/login", data={"username": "alice", "password": "nope"}, timeout=5)
    assert response.status_code == 401
    assert "set-cookie" not in response.headers


def test_p20_logout_then_replay_is_401(app_url: str) -> None:
    client = _login(app_url)
    old = client.cookies.get("authmw_session")
    response = client.post("/logout")
    assert response.status_code == 303
    assert "Max-Age=0" in response.headers["set-cookie"]
    replay = httpx.get(app_url + "/account", cookies={"authmw_session": old}, timeout=5)
    assert replay.status_code == 401


def test_p18_fixation_login_issues_a_new_id(app_url: str) -> None:
    client = _login(app_url)
    first = client.cookies.get("authmw_session")
    client.post("/login", data={"username": "bob", "password": "builder"})
    second = client.cookies.get("authmw_session")
    assert first != second
    assert httpx.get(app_url + "/account", cookies={"authmw_session": first}, timeout=5).status_code == 401
    assert client.get("/account").json()["id"] == "bob"


def test_logout_everywhere(app_url: str) -> None:
    laptop, phone = _login(app_url), _login(app_url)
    bob = _login(app_url, "bob", "builder")
    assert phone.post("/logout-everywhere").status_code == 303
    assert laptop.get("/account").status_code == 401
    assert phone.get("/account").status_code == 401
    assert bob.get("/account").status_code == 200


def test_p17_tampered_cookie_is_401_and_cleared(app_url: str) -> None:
    client = _login(app_url)
    value = client.cookies.get("authmw_session")
    tampered = value[:-2] + ("AA" if not value.endswith("AA") else "BB")
    response = httpx.get(app_url + "/account", cookies={"authmw_session": tampered}, timeout=5)
    assert response.status_code == 401
    assert "Max-Age=0" in response.headers.get("set-cookie", "")


def test_p23_cross_site_post_is_refused(app_url: str) -> None:
    client = _login(app_url)
    refused = client.post("/logout", headers={"Sec-Fetch-Site": "cross-site"})
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"
    refused = client.post("/logout", headers={"Origin": "https://evil.example"})
    assert refused.status_code == 403
    assert client.get("/account").status_code == 200
    same = client.post("/logout", headers={"Origin": app_url, "Sec-Fetch-Site": "same-origin"})
    assert same.status_code == 303


def test_p21_cookie_flags_over_plain_http_demo(app_url: str) -> None:
    response = httpx.post(app_url + "/login", data={"username": "alice", "password": "wonderland"}, timeout=5)
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    assert "Domain" not in cookie and "Max-Age" not in cookie


def test_api_me_prefers_a_presented_bearer_token_and_never_downgrades(app_url: str) -> None:
    client = _login(app_url)
    response = client.get("/api/me", headers={"Authorization": "Bearer not.a.token"})
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


# ---- Redis killed and restarted under a running app ----


@contextmanager
def redis_server(port: int) -> Iterator[subprocess.Popen[bytes]]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port, socket_connect_timeout=0.5)
        for _ in range(50):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        yield process
    finally:
        process.kill()
        process.wait(timeout=5)


@pytest.mark.parametrize("framework", ["starlette", "flask"])
def test_p27_redis_killed_mid_run_fails_closed_then_recovers(redis_url: str, framework: str) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with redis_server(port) as first, APPS[framework](_env(url)) as app:
        client = _login(app.url)
        assert client.get("/account").status_code == 200
        first.kill()
        first.wait(timeout=5)
        started = time.monotonic()
        down = client.get("/account")
        assert down.status_code == 503
        assert down.headers["retry-after"].isdigit()
        assert down.headers["content-type"] == "application/problem+json"
        assert time.monotonic() - started < 3
        assert client.get("/health").status_code == 200  # public routes keep serving
        assert client.get("/api/me").status_code == 503  # a cookie that cannot be checked is not anonymous
        with redis_server(port):
            # The record died with the old server (no persistence): a clean 401, and logging in works again.
            assert client.get("/account").status_code == 401
            again = _login(app.url)
            assert again.get("/account").status_code == 200


# ---- WS /ws (Starlette): authenticated at the handshake, refused before accept otherwise (P29) ----


@pytest.fixture(scope="module")
def starlette_url() -> Iterator[str]:
    with APPS["starlette"](_env(None)) as server:
        yield server.url


def _ws(url: str, **headers: str) -> dict[str, object]:
    from websockets.sync.client import connect

    with connect(url.replace("http://", "ws://") + "/ws", additional_headers=headers, open_timeout=5) as socket:
        return dict(json.loads(socket.recv(timeout=5)))


def test_p29_websocket_with_session_or_token(starlette_url: str) -> None:
    client = _login(starlette_url)
    cookie = client.cookies.get("authmw_session")
    assert _ws(starlette_url, Cookie=f"authmw_session={cookie}", Origin=starlette_url) == {"id": "alice"}
    token = jwt.encode({"sub": "bob", "iat": int(time.time()), "exp": int(time.time()) + 60}, JWT_KEY, "HS256")
    assert _ws(starlette_url, Authorization=f"Bearer {token}") == {"id": "bob"}


@pytest.mark.parametrize("case", ["anonymous", "bad_token", "foreign_origin"])
def test_p29_websocket_refused_before_accept(starlette_url: str, case: str) -> None:
    from websockets.exceptions import InvalidStatus

    headers: dict[str, str] = {}
    if case == "bad_token":
        headers["Authorization"] = "Bearer not.a.token"
    if case == "foreign_origin":
        cookie = _login(starlette_url).cookies.get("authmw_session")
        headers |= {"Cookie": f"authmw_session={cookie}", "Origin": "https://evil.example"}
    with pytest.raises(InvalidStatus) as refused:
        _ws(starlette_url, **headers)
    assert refused.value.response.status_code in (401, 403)


# ---- several worker processes sharing Redis, with the local cache on ----


@pytest.mark.parametrize("local_cache", ["0", "1"])
def test_workers_share_sessions_and_logout_reaches_every_worker(redis_url: str, local_cache: str) -> None:
    from tests.conftest import gunicorn_server

    url = redis_url.rsplit("/", 1)[0] + "/14"
    redis.Redis.from_url(url).flushdb()
    env = _env(url) | {"AUTHMW_LOCAL_CACHE": local_cache}
    try:
        with gunicorn_server("examples.flask_app.app:app", env, workers=3) as app:
            clients = [_login(app.url) for _ in range(3)]
            for client in clients:
                for _ in range(10):  # spread over the workers: every one of them knows the session
                    assert client.get("/account").status_code == 200
            old = clients[0].cookies.get("authmw_session")
            assert clients[0].post("/logout").status_code == 303
            time.sleep(0.1)  # the invalidation's way to the other workers (measured: ~1-20 ms)
            for _ in range(30):
                response = httpx.get(app.url + "/account", cookies={"authmw_session": old}, timeout=5)
                assert response.status_code == 401
            assert clients[1].post("/logout-everywhere").status_code == 303
            time.sleep(0.1)
            for client in clients[1:]:
                for _ in range(10):
                    assert client.get("/account").status_code == 401
    finally:
        redis.Redis.from_url(url).flushdb()
