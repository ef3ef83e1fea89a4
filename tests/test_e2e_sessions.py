"""End to end: the session rows of the example-app contract on the Starlette example under a real uvicorn, on both
stores, plus Redis killed and restarted under a running app (fail closed with 503, recovery without a restart).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import redis
from tests.conftest import APPS, RedisProcess, RedisSpace, SessionRedis, gunicorn_server

pytestmark = pytest.mark.slow

SECRET = "e2e-session-secret-" + "z" * 40
JWT_KEY = "e2e-jwt-secret-" + "q" * 40


def _env(space: RedisSpace | None) -> dict[str, str]:
    env = {
        "AUTHMW_SECRET_KEYS": SECRET,
        "AUTHMW_JWT_ALGORITHMS": "HS256",
        "AUTHMW_JWT_KEY": JWT_KEY,
        "AUTHMW_COOKIE_SECURE": "0",
    }
    if space is not None:
        env |= {"AUTHMW_REDIS_URL": space.url, "AUTHMW_REDIS_PREFIX": space.prefix}
    return env


@pytest.fixture(scope="module", params=["starlette-memory", "starlette-redis", "flask-memory", "flask-redis"])
def app_url(request: pytest.FixtureRequest) -> Iterator[str]:
    framework, store = request.param.split("-")
    with ExitStack() as stack:
        space = None
        if store == "redis":
            # A key prefix of its own per app, deleted after the module (the server is gone by then).
            session_redis: SessionRedis = request.getfixturevalue("session_redis")
            space = stack.enter_context(session_redis.space(f"e2e-sessions-{framework}"))
        server = stack.enter_context(APPS[framework](_env(space)))
        yield server.url


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


@pytest.mark.parametrize("proxies", ["unset", "1"])
def test_p23_forwarded_host_counts_only_behind_trusted_proxies_on_both_apps(proxies: str) -> None:
    """The report: the Flask example believed any client's X-Forwarded-Host (ProxyFix), so `Origin: evil` with
    `X-Forwarded-Host: evil` passed the CSRF check and got a token pair. Now both apps ignore the header unless
    AUTHMW_TRUSTED_PROXIES says a proxy sets it, and then read only the value that proxy appended."""
    env = _env(None) | ({} if proxies == "unset" else {"AUTHMW_TRUSTED_PROXIES": proxies})
    evil = {"Origin": "http://evil.example"}
    cases = {
        "forwarded-evil": evil | {"X-Forwarded-Host": "evil.example"},
        "forwarded-app": evil | {"X-Forwarded-Host": "app.example"},
        "spoofed-left": evil | {"X-Forwarded-Host": "evil.example, app.example"},
    }
    answers: dict[str, dict[str, tuple[int, Any]]] = {}
    for framework in sorted(APPS):
        with APPS[framework](env) as server:
            client = _login(server.url)
            answers[framework] = {}
            for name, headers in cases.items():
                response = client.post("/api/token", headers=headers)
                body = response.json()
                answers[framework][name] = (response.status_code, body if response.status_code != 200 else "pair")
                if response.status_code == 200:
                    assert set(body) >= {"access_token", "refresh_token"}
    refused = (403, {"type": "urn:authmw:problem:csrf_failed", "error": "csrf_failed"})
    expected = {
        "forwarded-evil": refused if proxies == "unset" else (200, "pair"),
        "forwarded-app": refused,
        "spoofed-left": refused,
    }
    for framework, seen in answers.items():
        for name, (status, body) in seen.items():
            want_status, want = expected[name]
            assert status == want_status, (framework, name, body)
            if want_status == 403:
                assert {k: body[k] for k in want} == want and body["detail"] == "Origin is not this site"
    assert answers["starlette"] == answers["flask"]  # the same answers, body for body


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


# ---- Redis killed and restarted under a running app (a private redis-server of the test's own) ----


@pytest.mark.parametrize("framework", ["starlette", "flask"])
def test_p27_redis_killed_mid_run_fails_closed_then_recovers(tmp_path: Path, framework: str) -> None:
    private = RedisProcess(tmp_path)
    private.start()
    try:
        with APPS[framework](_env(RedisSpace(private.url, "authmw:"))) as app:  # the server is the test's own
            client = _login(app.url)
            assert client.get("/account").status_code == 200
            private.kill()
            started = time.monotonic()
            down = client.get("/account")
            assert down.status_code == 503
            assert down.headers["retry-after"].isdigit()
            assert down.headers["content-type"] == "application/problem+json"
            assert time.monotonic() - started < 3
            assert client.get("/health").status_code == 200  # public routes keep serving
            assert client.get("/api/me").status_code == 503  # a cookie that cannot be checked is not anonymous
            private.start()  # on the same port
            # The record died with the old server (no persistence): a clean 401, and logging in works again.
            assert client.get("/account").status_code == 401
            again = _login(app.url)
            assert again.get("/account").status_code == 200
    finally:
        private.kill()


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


@pytest.mark.parametrize(("case", "error"), [("anonymous", None), ("bad_token", "invalid_token")])
def test_p29_websocket_denial_body_says_the_status_sent(starlette_url: str, case: str, error: str | None) -> None:
    """uvicorn offers the denial-response extension: a refused handshake is HTTP 403, and its problem body says 403
    too (it said 401, the status an HTTP request would get), and why, beside the Bearer challenge."""
    from websockets.exceptions import InvalidStatus

    headers = {"Authorization": "Bearer not.a.token"} if case == "bad_token" else {}
    with pytest.raises(InvalidStatus) as refused:
        _ws(starlette_url, **headers)
    response = refused.value.response
    assert response.status_code == 403
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = json.loads(response.body)
    assert problem["status"] == response.status_code
    assert problem.get("error") == error
    challenges = response.headers.get_all("WWW-Authenticate")
    assert challenges and challenges[0].startswith('Bearer realm="authmw"')
    assert (error is not None) == any(f'error="{error}"' in c for c in challenges)


# ---- several worker processes sharing Redis, with the local cache on ----


@pytest.mark.parametrize("local_cache", ["0", "1"])
def test_workers_share_sessions_and_logout_reaches_every_worker(redis_space: RedisSpace, local_cache: str) -> None:
    env = _env(redis_space) | {"AUTHMW_LOCAL_CACHE": local_cache}
    with gunicorn_server("examples.flask_app.app:app", env, workers=3) as app:
        clients = [_login(app.url) for _ in range(3)]
        with redis.Redis.from_url(redis_space.url) as admin:  # the sessions live under the prefix given
            assert len(list(admin.scan_iter(match=redis_space.prefix + "*:s:*"))) == 3
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
