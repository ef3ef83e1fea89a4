"""End to end: the example apps' login throttle on real servers sharing Redis (uvicorn Starlette; gunicorn Flask
with two workers, whose counters must be one). Small limits from `AUTHMW_LOGIN_THROTTLE_*`; each test speaks from
a loopback address of its own (127.0.0.x), so the per-address counters of one test never reach another's.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest
from tests.conftest import SessionRedis, gunicorn_server, uvicorn_server

pytestmark = [pytest.mark.slow, pytest.mark.redis]

BROWSER = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
USER_ATTEMPTS, ADDRESS_ATTEMPTS = 3, 8


@pytest.fixture(scope="module", params=["starlette", "flask"])
def app_url(request: pytest.FixtureRequest) -> Iterator[str]:
    session_redis: SessionRedis = request.getfixturevalue("session_redis")
    with ExitStack() as stack:
        space = stack.enter_context(session_redis.space(f"e2e-throttle-{request.param}"))
        env = {
            "AUTHMW_SECRET_KEYS": "e2e-throttle-secret-" + "t" * 40,
            "AUTHMW_COOKIE_SECURE": "0",
            "AUTHMW_REDIS_URL": space.url,
            "AUTHMW_REDIS_PREFIX": space.prefix,
            "AUTHMW_LOGIN_THROTTLE_USER_ATTEMPTS": str(USER_ATTEMPTS),
            "AUTHMW_LOGIN_THROTTLE_ADDRESS_ATTEMPTS": str(ADDRESS_ATTEMPTS),
            "AUTHMW_LOGIN_THROTTLE_FIRST_LOCK": "1",
            "AUTHMW_LOGIN_THROTTLE_MAX_LOCK": "1",
        }
        if request.param == "starlette":
            server = stack.enter_context(uvicorn_server("examples.starlette_app.app:app", env))
        else:
            server = stack.enter_context(gunicorn_server("examples.flask_app.app:app", env, workers=2))
        yield server.url


_addresses = iter(range(2, 250))


def client_from_new_address(url: str) -> httpx.Client:
    """A client whose requests come from a loopback address no other test uses, one connection per request (so
    that gunicorn's workers take turns)."""
    transport = httpx.HTTPTransport(local_address=f"127.0.0.{next(_addresses)}")
    return httpx.Client(base_url=url, transport=transport, headers={"Connection": "close"}, timeout=10)


def attempt(client: httpx.Client, user: str, password: str = "wrong", **options: object) -> httpx.Response:
    return client.post("/login", data={"username": user, "password": password}, **options)  # type: ignore[arg-type]


def test_wrong_passwords_then_429_for_known_and_unknown_names_alike(app_url: str) -> None:
    client = client_from_new_address(app_url)
    unknown = f"nobody-{secrets.token_hex(4)}"
    answers = {}
    for user in ("alice", unknown):
        assert [attempt(client, user).status_code for _ in range(USER_ATTEMPTS)] == [401] * USER_ATTEMPTS
        refused = attempt(client, user)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.json() == {"detail": "Too many attempts; try again in 1 second."}
        answers[user] = (refused.status_code, refused.headers["retry-after"], refused.content)
        page = attempt(client, user, headers=BROWSER)
        assert page.status_code == 429 and page.headers["content-type"].startswith("text/html")
        assert page.headers["retry-after"] == "1"
        assert "Too many attempts; try again in 1 second." in page.text and 'name="password"' in page.text
    assert answers["alice"] == answers[unknown]  # nothing tells a real account from a made-up one


def test_the_right_password_waits_out_the_lock_then_works(app_url: str) -> None:
    client = client_from_new_address(app_url)
    for _ in range(USER_ATTEMPTS):
        assert attempt(client, "bob").status_code == 401
    locked_at = time.monotonic()
    during = attempt(client, "bob", "builder")
    assert during.status_code == 429 and "set-cookie" not in during.headers  # not even tried
    time.sleep(max(0.0, locked_at + 1.05 - time.monotonic()))
    after = attempt(client, "bob", "builder")
    assert after.status_code == 303 and after.headers["location"] == "/account"
    # A success forgets the name's failures: the next wrong passwords start from nothing.
    assert [attempt(client, "bob").status_code for _ in range(USER_ATTEMPTS)] == [401] * USER_ATTEMPTS


def test_one_address_is_locked_across_user_names(app_url: str) -> None:
    client = client_from_new_address(app_url)
    names = [f"spray-{n}-{secrets.token_hex(3)}" for n in range(ADDRESS_ATTEMPTS)]
    assert [attempt(client, name).status_code for name in names] == [401] * ADDRESS_ATTEMPTS  # one try per name
    refused = attempt(client, f"spray-next-{secrets.token_hex(3)}")
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert attempt(client, "alice", "wonderland").status_code == 429  # right password, locked address
    # Another address is not locked, and the names tried from the locked one have not been counted further.
    other = client_from_new_address(app_url)
    assert attempt(other, names[0]).status_code == 401
    assert attempt(other, f"spray-other-{secrets.token_hex(3)}").status_code == 401
