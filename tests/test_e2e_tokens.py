"""End to end: the token rows of the example-app contract over real HTTP (httpx), on both example apps (the Starlette
one under uvicorn, the Flask one under gunicorn) and both stores (in-memory; Redis under a key prefix of its own per
app, whose keys are deleted afterwards).

Login → ``/api/token`` → ``/api/items`` with the access token → refresh → the old refresh token again (401, and
the whole family revoked) → ``/logout-everywhere`` (earlier access tokens refused) → log in again → new tokens work.
A reused refresh token and a logout also end the access tokens minted from that family / session, on every worker.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.conftest import APPS, RedisSpace, SessionRedis, gunicorn_server

pytestmark = pytest.mark.slow

COOKIE_KEY = "e2e-token-cookie-key-" + "c" * 40
JWT_KEY = "e2e-token-jwt-secret-" + "j" * 40
REFRESH_SHAPE = re.compile(r"[0-9a-f]{4}\.[A-Za-z0-9_-]{43}")
PASSWORDS = {"alice": "wonderland", "bob": "builder"}


@pytest.fixture(
    scope="module",
    params=[
        "starlette-memory",
        pytest.param("starlette-redis", marks=pytest.mark.redis),
        "flask-memory",
        pytest.param("flask-redis", marks=pytest.mark.redis),
    ],
)
def app_url(request: pytest.FixtureRequest) -> Iterator[str]:
    framework, store = request.param.split("-")
    env = {
        "AUTHMW_SECRET_KEYS": COOKIE_KEY,
        "AUTHMW_JWT_ALGORITHMS": "HS256",
        "AUTHMW_JWT_KEY": JWT_KEY,
        "AUTHMW_COOKIE_SECURE": "0",
        "AUTHMW_ACCESS_TOKEN_TTL": "120",
    }
    with ExitStack() as stack:
        if store == "redis":
            session_redis: SessionRedis = request.getfixturevalue("session_redis")
            space = stack.enter_context(session_redis.space(f"e2e-tokens-{framework}"))
            env |= {"AUTHMW_REDIS_URL": space.url, "AUTHMW_REDIS_PREFIX": space.prefix}
        server = stack.enter_context(APPS[framework](env))
        yield server.url


def login(url: str, user: str = "alice") -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=5)
    response = client.post("/login", data={"username": user, "password": PASSWORDS[user]})
    assert response.status_code == 303, response.text
    return client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def refresh(url: str, token: Any) -> httpx.Response:
    return httpx.post(url + "/api/token/refresh", json={"refresh_token": token}, timeout=5)


def test_token_lifecycle(app_url: str) -> None:
    alice, bob = login(app_url), login(app_url, "bob")
    issued = alice.post("/api/token")
    assert issued.status_code == 200, issued.text
    assert "no-store" in issued.headers["cache-control"]
    pair = issued.json()
    assert pair["token_type"] == "Bearer" and pair["expires_in"] == 120
    assert REFRESH_SHAPE.fullmatch(pair["refresh_token"])
    claims = jwt.decode(pair["access_token"], JWT_KEY, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["scope"] == "items:read items:write"
    bob_pair = bob.post("/api/token").json()

    # The access token works on the JWT routes, with the session's scopes.
    items = httpx.get(app_url + "/api/items", headers=bearer(pair["access_token"]), timeout=5)
    assert items.status_code == 200 and isinstance(items.json(), list)
    me = httpx.get(app_url + "/api/me", headers=bearer(pair["access_token"]), timeout=5)
    assert me.json() == {"id": "alice", "source": "jwt", "scopes": ["items:read", "items:write"]}

    # Refresh: a new pair.
    rotated = refresh(app_url, pair["refresh_token"])
    assert rotated.status_code == 200 and "no-store" in rotated.headers["cache-control"]
    second = rotated.json()
    assert second["refresh_token"] != pair["refresh_token"] and second["access_token"] != pair["access_token"]
    assert httpx.get(app_url + "/api/items", headers=bearer(second["access_token"]), timeout=5).status_code == 200

    # The old refresh token again: 401, and its whole family is revoked (the new one fails too).
    reused = refresh(app_url, pair["refresh_token"])
    assert reused.status_code == 401
    assert reused.headers["content-type"] == "application/problem+json"
    assert 'error="invalid_token"' in reused.headers["www-authenticate"]
    assert refresh(app_url, second["refresh_token"]).status_code == 401
    assert alice.get("/account").status_code == 200  # the session itself lives on
    for access in (pair["access_token"], second["access_token"]):  # the family's access tokens end with it
        assert httpx.get(app_url + "/api/me", headers=bearer(access), timeout=5).status_code == 401

    # Logout everywhere: sessions, refresh families and earlier access tokens, at once.
    third = alice.post("/api/token").json()
    assert httpx.get(app_url + "/api/me", headers=bearer(third["access_token"]), timeout=5).status_code == 200
    time.sleep(0.002)  # the tokens above are minted strictly before the not-before
    assert alice.post("/logout-everywhere").status_code == 303
    for access in (pair["access_token"], second["access_token"], third["access_token"]):
        assert httpx.get(app_url + "/api/me", headers=bearer(access), timeout=5).status_code == 401
    assert refresh(app_url, third["refresh_token"]).status_code == 401
    assert alice.get("/account").status_code == 401
    # Bob is untouched.
    assert httpx.get(app_url + "/api/me", headers=bearer(bob_pair["access_token"]), timeout=5).status_code == 200
    assert refresh(app_url, bob_pair["refresh_token"]).status_code == 200

    # Alice logs in again: the new tokens work.
    again = login(app_url)
    fresh = again.post("/api/token").json()
    assert httpx.get(app_url + "/api/items", headers=bearer(fresh["access_token"]), timeout=5).status_code == 200
    assert httpx.get(app_url + "/api/me", headers=bearer(fresh["access_token"]), timeout=5).json()["id"] == "alice"
    renewed = refresh(app_url, fresh["refresh_token"])
    assert renewed.status_code == 200
    renewed_access = renewed.json()["access_token"]
    assert httpx.get(app_url + "/api/items", headers=bearer(renewed_access), timeout=5).status_code == 200
    for client in (alice, bob, again):
        client.close()


def test_token_endpoint_refusals(app_url: str) -> None:
    assert httpx.post(app_url + "/api/token", timeout=5).status_code == 401
    browser = login(app_url)
    access = browser.post("/api/token").json()["access_token"]
    assert httpx.post(app_url + "/api/token", headers=bearer(access), timeout=5).status_code == 401  # not a session
    cross = browser.post("/api/token", headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403 and cross.headers["content-type"] == "application/problem+json"
    not_json = httpx.post(
        app_url + "/api/token/refresh", content=b"not json", headers={"content-type": "application/json"}, timeout=5
    )
    assert not_json.status_code == 400
    assert refresh(app_url, 42).status_code == 400
    assert httpx.post(app_url + "/api/token/refresh", json={}, timeout=5).status_code == 400
    assert refresh(app_url, "nonsense").status_code == 401
    assert refresh(app_url, "abcd." + "a" * 43).status_code == 401
    jwks = httpx.get(app_url + "/.well-known/jwks.json", timeout=5)
    assert jwks.status_code == 200 and jwks.json() == {"keys": []}  # an HMAC secret is never published
    browser.close()


def test_concurrent_presentations_of_one_refresh_token(app_url: str) -> None:
    browser = login(app_url)
    token = browser.post("/api/token").json()["refresh_token"]
    barrier = threading.Barrier(10)
    responses: list[httpx.Response] = []
    lock = threading.Lock()

    def present() -> None:
        barrier.wait()
        response = refresh(app_url, token)
        with lock:
            responses.append(response)

    threads = [threading.Thread(target=present) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    statuses = Counter(r.status_code for r in responses)
    assert sum(statuses.values()) == 10 and set(statuses) <= {200, 401}, statuses
    assert statuses[200] <= 1 and statuses[401] >= 9
    for response in responses:  # afterwards the family is revoked
        if response.status_code == 200:
            assert refresh(app_url, response.json()["refresh_token"]).status_code == 401
    assert refresh(app_url, token).status_code == 401
    browser.close()


@pytest.mark.parametrize("framework", sorted(APPS))
def test_a_public_key_as_signing_key_stops_the_example_app_at_start_up(framework: str, tmp_path: Path) -> None:
    """The report: with the public half as AUTHMW_JWT_SIGNING_KEY, the Starlette example answered 500 to every
    request, /health included. Both apps now refuse to start, saying what is wrong."""
    key = rsa.generate_private_key(65537, 2048).public_key()
    public = tmp_path / "public.pem"
    public.write_bytes(key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    env = {
        "AUTHMW_SECRET_KEYS": COOKIE_KEY,
        "AUTHMW_COOKIE_SECURE": "0",
        "AUTHMW_JWT_ALGORITHMS": "RS256",
        "AUTHMW_JWT_KEY": str(public),
        "AUTHMW_JWT_SIGNING_KEY": str(public),
    }
    with pytest.raises(RuntimeError) as raised, APPS[framework](env):
        pass
    output = str(raised.value)
    assert output.startswith("server exited")  # at start-up, not after answering /health with a 500
    assert "ConfigurationError" in output
    assert "AUTHMW_JWT_SIGNING_KEY" in output and "is a public key or a certificate, not a private key" in output


def _me(url: str, access: str) -> httpx.Response:
    return httpx.get(url + "/api/me", headers=bearer(access), timeout=5)


def _refused(response: httpx.Response) -> bool:
    return response.status_code == 401 and 'error="invalid_token"' in response.headers["www-authenticate"]


def test_reuse_and_logout_end_the_access_tokens_they_cover(app_url: str) -> None:
    """Access tokens name their refresh family (claim `sid`): a reused refresh token revokes its family and a logout
    the families issued from that session, and the access tokens minted from them are refused at once, not when
    they expire. Another session of the same user keeps its tokens through both."""
    laptop, phone = login(app_url), login(app_url)
    first = laptop.post("/api/token").json()
    kept = phone.post("/api/token").json()
    for _ in range(3):  # repeated: a shell may remember the decision, which must not outlive the revocation
        assert _me(app_url, first["access_token"]).status_code == 200
    second = refresh(app_url, first["refresh_token"]).json()
    assert _me(app_url, second["access_token"]).status_code == 200

    # (a) The first refresh token again: reuse, the family is revoked, and both pairs' access tokens with it.
    assert _refused(refresh(app_url, first["refresh_token"]))
    for access in (first["access_token"], second["access_token"]):
        assert _refused(_me(app_url, access))
    assert _me(app_url, kept["access_token"]).status_code == 200

    # (b) Logout of the laptop session: the access token of the pair it got is refused too.
    third = laptop.post("/api/token").json()  # the session outlived the reuse: a new family
    for _ in range(3):
        assert _me(app_url, third["access_token"]).status_code == 200
    assert laptop.post("/logout").status_code == 303
    assert _refused(_me(app_url, third["access_token"]))
    assert _refused(refresh(app_url, third["refresh_token"]))

    # (c) The phone session's tokens of the same user: untouched by both.
    assert _me(app_url, kept["access_token"]).json()["id"] == "alice"
    assert phone.get("/account").status_code == 200
    assert refresh(app_url, kept["refresh_token"]).status_code == 200
    # The link: each access token's `sid` claim names its refresh family, one per POST /api/token.
    claims = [jwt.decode(p["access_token"], JWT_KEY, algorithms=["HS256"]) for p in (first, second, third, kept)]
    families = [c["sid"] for c in claims]
    assert families[0] == families[1] and len(set(families)) == 3
    for client in (laptop, phone):
        client.close()


@pytest.mark.redis
def test_reuse_and_logout_reach_every_worker_with_the_local_cache(redis_space: RedisSpace) -> None:
    """Three gunicorn workers, each with its own local cache of revocation state: a family revoked by one worker
    (reuse, logout) is refused by all of them within the propagation bound of every other revocation."""
    env = {
        "AUTHMW_SECRET_KEYS": COOKIE_KEY,
        "AUTHMW_JWT_ALGORITHMS": "HS256",
        "AUTHMW_JWT_KEY": JWT_KEY,
        "AUTHMW_COOKIE_SECURE": "0",
        "AUTHMW_REDIS_URL": redis_space.url,
        "AUTHMW_REDIS_PREFIX": redis_space.prefix,
        "AUTHMW_LOCAL_CACHE": "1",
    }
    with gunicorn_server("examples.flask_app.app:app", env, workers=3) as app:
        laptop, phone = login(app.url), login(app.url)
        first, kept = laptop.post("/api/token").json(), phone.post("/api/token").json()
        for _ in range(15):  # spread over the workers: every one caches "alive" for both families
            assert _me(app.url, first["access_token"]).status_code == 200
            assert _me(app.url, kept["access_token"]).status_code == 200
        assert refresh(app.url, first["refresh_token"]).status_code == 200
        assert _refused(refresh(app.url, first["refresh_token"]))  # reuse, on one of the workers
        time.sleep(0.1)  # the invalidation's way to the other workers (as for a logout: ~1-20 ms)
        for _ in range(15):
            assert _refused(_me(app.url, first["access_token"]))
            assert _me(app.url, kept["access_token"]).status_code == 200
        third = laptop.post("/api/token").json()
        for _ in range(15):
            assert _me(app.url, third["access_token"]).status_code == 200
        assert laptop.post("/logout").status_code == 303
        time.sleep(0.1)
        for _ in range(15):
            assert _refused(_me(app.url, third["access_token"]))
            assert _me(app.url, kept["access_token"]).status_code == 200
        for client in (laptop, phone):
            client.close()
