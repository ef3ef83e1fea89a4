"""The token side of the hybrid (DESIGN.md §3 revocation rows, §6 token rows): `TokenIssuer`, `TokenService`,
the refresh-token and revocation parts of both stores, the engine's revocation check, and the token endpoints of
both adapters in-process.

Stores are real: `MemoryStore` and `RedisStore` (each Redis test on its own key prefix, deleted afterwards), each
through its sync face and its async face (one `asyncio.Runner` per test, so the redis.asyncio pool stays on one
loop). Tests that found a bug assert the correct behaviour and are marked ``xfail(strict=True, reason="BUG: ...")``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import math
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from uuid import uuid4

import jwt as pyjwt
import pytest
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from examples.common import ROUTES

import authmw.issuer as issuer_module
from authmw import (
    AuthConfig,
    ConfigurationError,
    InvalidRequest,
    InvalidToken,
    JWTSettings,
    JWTVerifier,
    KeySet,
    MissingCredentials,
    Policy,
    Principal,
    Route,
)
from authmw.engine import Authenticator
from authmw.io import Blocking, Flow, inline, run_async, run_sync
from authmw.issuer import NOT_CONFIGURED, TokenIssuer, TokenService, jti_key
from authmw.masking import TagMask
from authmw.request import WSGIRequestView
from authmw.sessions import SessionSettings, SessionState, session_handle
from authmw.stores import MemoryStore, RedisStore, SessionRecord, user_tag

SECRET = "k" * 40
COOKIE_KEY = "s" * 40
ISSUER = "https://issuer.example"
AUDIENCE = "authmw-tests"
REFRESH_SHAPE = re.compile(r"[0-9a-f]{4}\.[A-Za-z0-9_-]{43}")
ALICE_SCOPES = ["items:read", "items:write"]
#: the order of the P-256 group: (r, n - s) is a second valid ECDSA signature of the same message
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


# --- helpers ------------------------------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def header_of(token: str) -> dict[str, Any]:
    return dict(json.loads(unb64(token.split(".")[0])))


def private_pem(key: Any) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def public_pem(key: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def body(token: Any) -> bytes:
    return json.dumps({"refresh_token": token}).encode()


def session_principal(user: str = "alice", scopes: tuple[str, ...] = ("items:read", "items:write")) -> Principal:
    return Principal(id=user, source="session", scopes=frozenset(scopes), auth_time=time.time())


def make_session(user: str = "alice", scopes: tuple[str, ...] = ("items:read", "items:write")) -> SessionRecord:
    now = time.time()
    return SessionRecord(
        sid=f"{user_tag(user)}.{secrets.token_urlsafe(32)}",
        user_id=user,
        scopes=scopes,
        created=now,
        auth_time=now,
        absolute_expiry=now + 3600,
        idle_timeout=600.0,
        last_seen=now,
    )


def malleate_es256(token: str) -> str:
    """The same token with the other valid ECDSA signature (r, n - s): a different string, equally valid."""
    header, payload, signature = token.split(".")
    raw = unb64(signature)
    r, s = raw[:32], int.from_bytes(raw[32:], "big")
    return f"{header}.{payload}.{b64(r + (P256_ORDER - s).to_bytes(32, 'big'))}"


def purge(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def redis_contents(store: RedisStore) -> list[bytes]:
    """Every key name and every stored value under the store's prefix (strings, hashes, sets)."""
    client = store.client
    found: list[bytes] = []
    for key in client.scan_iter(match=store.prefix + "*", count=1000):
        found.append(key)
        kind = client.type(key)
        if kind == b"string":
            found.append(client.get(key) or b"")
        elif kind == b"hash":
            for field_name, value in client.hgetall(key).items():
                found.extend((field_name, value))
        elif kind == b"set":
            found.extend(client.smembers(key))
        elif kind != b"none":
            raise AssertionError(f"unexpected Redis type {kind!r} at {key!r}")
    return found


class Harness:
    """One store and one face: flows run with `run_sync`, or with `run_async` on one event loop."""

    def __init__(self, store: Any, runner: asyncio.Runner | None) -> None:
        self.store = store
        self.runner = runner
        self.mode = "sync" if runner is None else "async"

    def run(self, flow: Flow[Any]) -> Any:
        if self.runner is None:
            return run_sync(flow)
        return self.runner.run(run_async(flow))

    def call(self, name: str, *args: Any) -> Any:
        """The store's operation `name`, run on this face."""
        return self.run(getattr(self.store, name)(*args))

    def service(self, **jwt: Any) -> TokenService:
        jwt.setdefault("algorithms", ["HS256"])
        jwt.setdefault("keys", SECRET)
        return TokenService(TokenIssuer(JWTSettings(**jwt)), self.store)

    def authenticator(self, **jwt: Any) -> Authenticator:
        jwt.setdefault("algorithms", ["HS256"])
        jwt.setdefault("keys", SECRET)
        sessions = SessionSettings(secret_keys=[COOKIE_KEY], store=self.store, cookie_secure=False)
        return Authenticator(AuthConfig(jwt=JWTSettings(**jwt), sessions=sessions))

    def verify(self, auth: Authenticator, token: str) -> Principal:
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/api/me", "HTTP_AUTHORIZATION": f"Bearer {token}"}
        principal: Principal = self.run(auth.flow(WSGIRequestView(environ), Policy.jwt()))
        return principal

    def refused(self, auth: Authenticator, token: str) -> str:
        """The reason code a token is refused with."""
        with pytest.raises(InvalidToken) as info:
            self.verify(auth, token)
        return info.value.reason


@pytest.fixture
def redis_store(redis_url: str) -> Iterator[RedisStore]:
    prefix = f"test:{uuid4().hex}:"
    store = RedisStore.from_url(redis_url, prefix=prefix)
    yield store
    store.client.close()
    purge(redis_url, prefix)


def _harness(request: pytest.FixtureRequest, kind: str, mode: str) -> Iterator[Harness]:
    store: Any = request.getfixturevalue("redis_store") if kind == "redis" else MemoryStore()
    if mode == "sync":
        yield Harness(store, None)
        return
    with asyncio.Runner() as runner:
        yield Harness(store, runner)
        if isinstance(store, RedisStore):
            runner.run(store.async_client.aclose())


FACES = [
    pytest.param(("memory", "sync"), id="memory-sync"),
    pytest.param(("memory", "async"), id="memory-async"),
    pytest.param(("redis", "sync"), id="redis-sync", marks=pytest.mark.redis),
    pytest.param(("redis", "async"), id="redis-async", marks=pytest.mark.redis),
]


@pytest.fixture(params=FACES)
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    yield from _harness(request, *request.param)


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {
        "RS256": rsa.generate_private_key(65537, 2048),
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "EdDSA": ed25519.Ed25519PrivateKey.generate(),
        "other-rsa": rsa.generate_private_key(65537, 2048),
        "other-ES256": ec.generate_private_key(ec.SECP256R1()),
        "other-EdDSA": ed25519.Ed25519PrivateKey.generate(),
    }


# --- TokenIssuer --------------------------------------------------------------------------------------------------


def test_hs256_signs_with_the_verification_secret_by_default() -> None:
    settings = JWTSettings(algorithms=["HS256"], keys=SECRET)
    issuer = TokenIssuer(settings)
    assert issuer.algorithm == "HS256"
    token, claims = issuer.mint("alice", ["items:read"])
    assert header_of(token) == {"alg": "HS256", "typ": "JWT"}  # one key without a kid: no kid header
    assert pyjwt.decode(token, SECRET, algorithms=["HS256"]) == claims
    principal = JWTVerifier(settings).verify(token)
    assert (principal.id, principal.source, principal.scopes) == ("alice", "jwt", frozenset({"items:read"}))


def test_hs256_kid_of_the_configured_secret_is_in_the_header() -> None:
    settings = JWTSettings(algorithms=["HS256"], keys=KeySet.from_keys({"hmac-1": SECRET, "hmac-2": "z" * 40}))
    token, _ = TokenIssuer(settings).mint("alice")
    assert header_of(token)["kid"] == "hmac-1"
    assert JWTVerifier(settings).verify(token).id == "alice"


def test_explicit_hmac_signing_key_equal_to_a_verification_secret_is_accepted() -> None:
    keyset = KeySet.from_keys({"h1": "z" * 40, "h2": SECRET})
    settings = JWTSettings(algorithms=["HS256"], keys=keyset, signing_key=SECRET)
    issuer = TokenIssuer(settings)
    token, _ = issuer.mint("alice")
    assert header_of(token)["kid"] == "h2"  # the kid of the secret that matches, not simply the first one
    assert JWTVerifier(settings).verify(token).id == "alice"


def test_hmac_signing_key_that_verifies_nothing_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        TokenIssuer(JWTSettings(algorithms=["HS256"], keys=SECRET, signing_key="q" * 40))


@pytest.mark.parametrize("algorithm", ["RS256", "ES256", "EdDSA"])
@pytest.mark.parametrize("form", ["pem", "object"])
def test_asymmetric_signing_key_mints_tokens_the_verifier_accepts(
    keys: dict[str, Any], algorithm: str, form: str
) -> None:
    private = keys[algorithm]
    other = keys["other-rsa" if algorithm == "RS256" else f"other-{algorithm}"]
    keyset = KeySet.from_keys({"old": public_pem(other), f"{algorithm}-key": public_pem(private)})
    settings = JWTSettings(
        algorithms=[algorithm],
        keys=keyset,
        signing_key=private_pem(private) if form == "pem" else private,
        issuer=ISSUER,
        audience=AUDIENCE,
    )
    issuer = TokenIssuer(settings)
    assert issuer.algorithm == algorithm
    token, claims = issuer.mint("alice", ["items:write", "items:read"])
    assert header_of(token) == {"alg": algorithm, "typ": "JWT", "kid": f"{algorithm}-key"}
    decoded = pyjwt.decode(token, private.public_key(), algorithms=[algorithm], audience=AUDIENCE, issuer=ISSUER)
    assert decoded == claims
    principal = JWTVerifier(settings).verify(token)
    assert principal.id == "alice" and principal.scopes == frozenset(ALICE_SCOPES)
    assert principal.issuer == ISSUER and principal.token_id == claims["jti"]


def test_at_jwt_type(keys: dict[str, Any]) -> None:
    settings = JWTSettings(
        algorithms=["ES256"], keys=public_pem(keys["ES256"]), signing_key=keys["ES256"], access_token_type="at+jwt"
    )
    token, _ = TokenIssuer(settings).mint("alice")
    assert header_of(token)["typ"] == "at+jwt"
    assert JWTVerifier(settings).verify(token).id == "alice"
    with pytest.raises(ConfigurationError):
        JWTSettings(algorithms=["HS256"], keys=SECRET, access_token_type="id_token")


def test_claims_of_a_minted_token() -> None:
    settings = JWTSettings(
        algorithms=["HS256"], keys=SECRET, issuer=ISSUER, audience=[AUDIENCE, "other"], access_token_ttl=120
    )
    issuer = TokenIssuer(settings)
    before = time.time()
    token, claims = issuer.mint("alice", ["items:write", "items:read", "items:read"])
    after = time.time()
    assert set(claims) == {"sub", "iat", "exp", "jti", "scope", "iss", "aud"}
    assert claims["sub"] == "alice"
    assert isinstance(claims["iat"], float) and before - 0.001 <= claims["iat"] <= after + 0.001
    assert int(before + 120) <= claims["exp"] <= int(after + 120)  # ttl = access_token_ttl
    fixed = issuer.mint("alice", now=1_800_000_000.25)[1]
    assert (fixed["iat"], fixed["exp"]) == (1_800_000_000.25, 1_800_000_120)
    assert re.fullmatch(r"[0-9a-f]{32}", claims["jti"])
    assert claims["scope"] == "items:read items:write"  # space-separated (RFC 9068), each once
    assert claims["iss"] == ISSUER and claims["aud"] == [AUDIENCE, "other"]
    assert pyjwt.decode(token, SECRET, algorithms=["HS256"], audience=AUDIENCE) == claims
    # jti is unique per token; no iss/aud/scope when not configured or empty
    plain = TokenIssuer(JWTSettings(algorithms=["HS256"], keys=SECRET))
    one, two = plain.mint("bob")[1], plain.mint("bob")[1]
    assert one["jti"] != two["jti"]
    assert set(one) == {"sub", "iat", "exp", "jti"}
    assert one["exp"] - one["iat"] == pytest.approx(300, abs=1)


def test_signing_key_must_be_among_the_verification_keys(keys: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="not among the verification keys"):
        TokenIssuer(JWTSettings(algorithms=["RS256"], keys=public_pem(keys["other-rsa"]), signing_key=keys["RS256"]))
    with pytest.raises(ConfigurationError):  # a key of another type entirely
        TokenIssuer(JWTSettings(algorithms=["RS256"], keys=public_pem(keys["RS256"]), signing_key=keys["ES256"]))


def test_a_signing_key_that_cannot_sign_fails_when_the_settings_are_built(keys: dict[str, Any]) -> None:
    """Before, these were taken as they were: the token endpoints then answered 501, or a request failed (500)
    when the key was loaded or first used to sign."""
    private = keys["RS256"]
    encrypted = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
    )
    for signing_key, failure in (
        (private.public_key(), "is a public key"),
        (public_pem(private), "is a public key"),
        (public_pem(private).decode(), "is a public key"),
        (encrypted, "encrypted PEM private key"),
        (42, "of type int"),
        (keys["EdDSA"], "is an Ed25519 private key, which signs ['EdDSA'], none of the configured algorithms"),
        (keys["other-rsa"], "not among the verification keys"),
    ):
        with pytest.raises(ConfigurationError, match=re.escape(failure)) as raised:
            JWTSettings(algorithms=["RS256"], keys=public_pem(private), signing_key=signing_key)
        assert "AUTHMW_JWT_SIGNING_KEY" in str(raised.value) and "JWTSettings.signing_key" in str(raised.value)
    with pytest.raises(ConfigurationError, match="is an RSA private key"):
        JWTSettings(algorithms=["HS256"], keys=SECRET, signing_key=private_pem(private))
    with pytest.raises(ConfigurationError, match="HMAC secret that is not among the verification keys"):
        JWTSettings(algorithms=["HS256"], keys=SECRET, signing_key="q" * 40)


def test_asymmetric_config_without_signing_key_cannot_mint(keys: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="signing key"):
        TokenIssuer(JWTSettings(algorithms=["RS256"], keys=public_pem(keys["RS256"])))


def test_jwks_publishes_public_keys_with_kid_and_use(keys: dict[str, Any]) -> None:
    keyset = KeySet.from_keys({"rsa-1": public_pem(keys["RS256"]), "rsa-2": public_pem(keys["other-rsa"])})
    issuer = TokenIssuer(JWTSettings(algorithms=["RS256"], keys=keyset, signing_key=private_pem(keys["RS256"])))
    document = issuer.jwks()
    assert [k["kid"] for k in document["keys"]] == ["rsa-1", "rsa-2"]
    for jwk in document["keys"]:
        assert jwk["kty"] == "RSA" and jwk["use"] == "sig"
        assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & set(jwk)  # public parameters only
    # Another service can verify the minted tokens from the published document alone.
    token, _ = issuer.mint("alice", ["items:read"])
    other = JWTVerifier(JWTSettings(algorithms=["RS256"], keys=KeySet.from_jwks(document)))
    assert other.verify(token).id == "alice"


@pytest.mark.parametrize(("algorithm", "kty", "crv"), [("ES256", "EC", "P-256"), ("EdDSA", "OKP", "Ed25519")])
def test_jwks_of_single_algorithm_keys_names_the_algorithm(
    keys: dict[str, Any], algorithm: str, kty: str, crv: str
) -> None:
    private = keys[algorithm]
    settings = JWTSettings(
        algorithms=[algorithm], keys=KeySet.from_keys({"k1": public_pem(private)}), signing_key=private
    )
    (jwk,) = TokenIssuer(settings).jwks()["keys"]
    assert (jwk["kty"], jwk["crv"], jwk["kid"], jwk["alg"], jwk["use"]) == (kty, crv, "k1", algorithm, "sig")
    assert "d" not in jwk


@pytest.mark.parametrize("algorithm", ["RS256", "PS256"])
def test_jwks_names_the_algorithm_of_rsa_keys(keys: dict[str, Any], algorithm: str) -> None:
    settings = JWTSettings(
        algorithms=[algorithm], keys=KeySet.from_keys({"r1": public_pem(keys["RS256"])}), signing_key=keys["RS256"]
    )
    issuer = TokenIssuer(settings)
    (jwk,) = issuer.jwks()["keys"]
    assert jwk.get("alg") == issuer.algorithm == algorithm


def test_jwks_never_publishes_hmac_secrets() -> None:
    issuer = TokenIssuer(JWTSettings(algorithms=["HS256"], keys=KeySet.from_keys({"h1": SECRET})))
    document = issuer.jwks()
    assert document == {"keys": []}
    assert b64(SECRET.encode()) not in json.dumps(document) and SECRET not in json.dumps(document)


def test_jti_key_is_derived_from_issuer_and_jti_only() -> None:
    key = jti_key(ISSUER, "abc")
    assert re.fullmatch(r"[0-9a-f]{32}", key)
    assert key == jti_key(ISSUER, "abc")
    assert key != jti_key("https://other.example", "abc")
    assert key != jti_key(ISSUER, "abd")
    assert key != jti_key(None, "abc")


# --- refresh tokens -----------------------------------------------------------------------------------------------


def test_issue_gives_a_pair_with_an_opaque_refresh_token(harness: Harness) -> None:
    service = harness.service(access_token_ttl=120, issuer=ISSUER)
    pair = harness.run(service.issue(session_principal()))
    assert set(pair) >= {"access_token", "token_type", "expires_in", "refresh_token"}
    assert pair["token_type"] == "Bearer" and pair["expires_in"] == 120
    refresh = pair["refresh_token"]
    assert REFRESH_SHAPE.fullmatch(refresh)
    assert service.tag_masks[0].unmask(refresh).split(".")[0] == user_tag("alice")  # the tag inside, masked
    principal = JWTVerifier(service.settings).verify(pair["access_token"])
    assert (principal.id, principal.scopes) == ("alice", frozenset(ALICE_SCOPES))
    with pytest.raises(pyjwt.DecodeError):  # never a JWT
        pyjwt.decode(refresh, options={"verify_signature": False})


def test_refresh_tokens_are_stored_only_hashed(harness: Harness) -> None:
    service = harness.service()
    first = harness.run(service.issue(session_principal()))
    second = harness.run(service.refresh(body(first["refresh_token"])))
    raw_tokens = [first["refresh_token"], second["refresh_token"]]
    # The hash of the internal form (the user tag unmasked): neither the token nor its internal form is kept.
    internal = [service.tag_masks[0].unmask(t) for t in raw_tokens]
    hashes = [hashlib.sha256(t.encode()).hexdigest() for t in internal]
    store = harness.store
    if isinstance(store, RedisStore):
        contents = redis_contents(store)
        assert contents
        blob = b"\n".join(contents)
        for token in raw_tokens + internal:
            assert token.encode() not in blob
            assert token.split(".")[1].encode() not in blob  # not even the random part
        keys = [k.decode() for k in store.client.scan_iter(match=store.prefix + "*")]
        for digest in hashes:
            assert any(k.endswith(":rt:" + digest) for k in keys)
    else:
        assert set(store._refresh) == set(hashes)
        assert all(token not in repr(record) for record in store._refresh.values() for token in raw_tokens + internal)


def test_rotation_then_reuse_revokes_the_family(harness: Harness) -> None:
    service = harness.service()
    r1 = harness.run(service.issue(session_principal()))["refresh_token"]
    pair2 = harness.run(service.refresh(body(r1)))
    r2 = pair2["refresh_token"]
    assert r2 != r1 and REFRESH_SHAPE.fullmatch(r2)
    assert JWTVerifier(service.settings).verify(pair2["access_token"]).scopes == frozenset(ALICE_SCOPES)
    r3 = harness.run(service.refresh(body(r2)))["refresh_token"]
    with pytest.raises(InvalidToken) as reused:
        harness.run(service.refresh(body(r1)))
    assert reused.value.status == 401 and reused.value.reason == "refresh_reuse"
    with pytest.raises(InvalidToken) as successor:  # the live end of the family is dead too
        harness.run(service.refresh(body(r3)))
    assert successor.value.reason == "refresh_revoked"


def test_reuse_leaves_other_families_alone(harness: Harness) -> None:
    service = harness.service()
    laptop = harness.run(service.issue(session_principal()))["refresh_token"]
    phone = harness.run(service.issue(session_principal()))["refresh_token"]
    bob = harness.run(service.issue(session_principal("bob", ("items:read",))))["refresh_token"]
    harness.run(service.refresh(body(laptop)))
    with pytest.raises(InvalidToken):
        harness.run(service.refresh(body(laptop)))
    phone_next = harness.run(service.refresh(body(phone)))
    assert harness.run(service.refresh(body(phone_next["refresh_token"])))["token_type"] == "Bearer"
    bob_next = harness.run(service.refresh(body(bob)))
    assert JWTVerifier(service.settings).verify(bob_next["access_token"]).id == "bob"


class ShiftedClock:
    """Stands in for the `time` module inside `authmw.issuer`: real time plus an offset."""

    def __init__(self) -> None:
        self.offset = 0.0
        self._real = time.time

    def time(self) -> float:
        return self._real() + self.offset


def test_reuse_grace_window(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = ShiftedClock()
    monkeypatch.setattr(issuer_module, "time", clock)
    service = harness.service(refresh_reuse_grace=5)
    r1 = harness.run(service.issue(session_principal()))["refresh_token"]
    first = harness.run(service.refresh(body(r1)))
    clock.offset = 3.0  # a client's retry within the window: a new pair, not theft
    second = harness.run(service.refresh(body(r1)))
    assert second["refresh_token"] not in (first["refresh_token"], r1)
    assert JWTVerifier(service.settings).verify(second["access_token"]).id == "alice"
    r2 = harness.run(service.refresh(body(first["refresh_token"])))["refresh_token"]
    clock.offset = 6.5  # past the window: reuse, and the whole family goes
    with pytest.raises(InvalidToken) as late:
        harness.run(service.refresh(body(r1)))
    assert late.value.reason == "refresh_reuse"
    for token in (r2, second["refresh_token"]):
        with pytest.raises(InvalidToken):
            harness.run(service.refresh(body(token)))


def test_store_refresh_use_outcomes_with_explicit_times(harness: Harness) -> None:
    service = harness.service()
    token = service.tag_masks[0].unmask(harness.run(service.issue(session_principal()))["refresh_token"])
    digest = hashlib.sha256(token.encode()).hexdigest()
    tag = token[:4]
    now = time.time()
    outcome, record = harness.call("refresh_use", tag, digest, now, 5.0)
    assert outcome == "ok" and record is not None and record.user_id == "alice"
    assert record.scopes == tuple(ALICE_SCOPES)
    assert harness.call("refresh_use", tag, digest, now + 4.9, 5.0)[0] == "grace"
    assert harness.call("refresh_use", tag, digest, now + 5.5, 5.0)[0] == "reuse"
    assert harness.call("refresh_use", tag, digest, now + 6.0, 5.0)[0] == "revoked"
    other_tag = "0000" if tag != "0000" else "ffff"
    assert harness.call("refresh_use", other_tag, digest, now, 0.0) == ("invalid", None)
    assert harness.call("refresh_use", tag, "0" * 64, now, 0.0) == ("invalid", None)


def test_refresh_token_expires(harness: Harness) -> None:
    service = harness.service(refresh_token_ttl=0.5)
    pair = harness.run(service.issue(session_principal()))
    fresh = harness.run(service.issue(session_principal()))["refresh_token"]
    assert harness.run(service.refresh(body(fresh)))["token_type"] == "Bearer"
    time.sleep(0.7)
    with pytest.raises(InvalidToken) as expired:
        harness.run(service.refresh(body(pair["refresh_token"])))
    assert expired.value.status == 401


def test_refresh_tokens_bound_to_a_session_die_with_it(harness: Harness) -> None:
    service = harness.service()
    laptop, phone = make_session(), make_session()
    harness.call("create", laptop)
    harness.call("create", phone)
    principal = session_principal()
    laptop_token = harness.run(service.issue_for_session(principal, laptop.sid))["refresh_token"]
    laptop_later = harness.run(service.issue_for_session(principal, laptop.sid))["refresh_token"]
    phone_token = harness.run(service.issue_for_session(principal, phone.sid))["refresh_token"]
    laptop_next = harness.run(service.refresh(body(laptop_token)))["refresh_token"]
    assert harness.call("delete", laptop.sid, "alice") is True  # logout of the laptop session
    for token in (laptop_next, laptop_later):
        with pytest.raises(InvalidToken) as info:
            harness.run(service.refresh(body(token)))
        assert info.value.reason == "refresh_revoked"
    assert harness.run(service.refresh(body(phone_token)))["token_type"] == "Bearer"


def test_logout_everywhere_in_the_store_ends_every_family(harness: Harness) -> None:
    service = harness.service()
    bound_session = make_session()
    harness.call("create", bound_session)
    bound = harness.run(service.issue_for_session(session_principal(), bound_session.sid))["refresh_token"]
    unbound = harness.run(service.issue(session_principal()))["refresh_token"]
    bob = harness.run(service.issue(session_principal("bob", ("items:read",))))["refresh_token"]
    assert harness.call("revoke_user", "alice", time.time(), 3600.0) == 1
    for token in (bound, unbound):
        with pytest.raises(InvalidToken):
            harness.run(service.refresh(body(token)))
    assert harness.run(service.refresh(body(bob)))["token_type"] == "Bearer"


def test_issue_for_a_session_that_ended_meanwhile_gives_no_tokens(harness: Harness) -> None:
    # The session was resolved, then a logout-everywhere ended it before the refresh family was stored.
    service = harness.service()
    ended, never, bobs = make_session(), make_session(), make_session("bob")
    harness.call("create", ended)
    harness.call("create", bobs)
    harness.call("revoke_user", "alice", time.time(), 3600.0)
    for sid in (ended.sid, never.sid, bobs.sid):  # bob's session is no session of alice's
        with pytest.raises(MissingCredentials) as info:
            harness.run(service.issue_for_session(session_principal(), sid))
        assert info.value.reason == "session_ended"


def test_a_refresh_family_is_never_bound_to_another_users_session(harness: Harness) -> None:
    # Session ids carry a 16-bit user tag: another user with the same tag must still not do.
    tag = user_tag("alice")
    twin = next(f"user-{i}" for i in itertools.count() if user_tag(f"user-{i}") == tag)
    theirs = make_session(twin)
    harness.call("create", theirs)
    with pytest.raises(MissingCredentials) as info:
        harness.run(harness.service().issue_for_session(session_principal(), theirs.sid))
    assert info.value.reason == "session_ended"


# --- issue 3: refresh tokens do not reveal their user (a masked tag) ----------------------------------------------


def test_refresh_tokens_do_not_start_with_their_users_tag_and_look_unrelated(harness: Harness) -> None:
    """The token's first part is the user tag XOR a keyed hash of its random part: not sha256(user)[:4], and the
    first parts of one user's tokens (new families and successors alike) are spread like random values."""
    service = harness.service()
    tokens = [harness.run(service.issue(session_principal()))["refresh_token"] for _ in range(150)]
    chain = tokens[0]
    for _ in range(50):
        chain = harness.run(service.refresh(body(chain)))["refresh_token"]
        tokens.append(chain)
    firsts = [token.split(".")[0] for token in tokens]
    assert firsts.count(user_tag("alice")) <= 2  # 200 / 65536 expected
    assert len(set(firsts)) >= 195  # about 0.3 equal pairs expected among 200 random 16-bit values
    for position in range(4):  # each hex digit takes (nearly) every value
        assert len({first[position] for first in firsts}) >= 12
    assert all(REFRESH_SHAPE.fullmatch(token) for token in tokens)
    assert {service.tag_masks[0].unmask(token).split(".")[0] for token in tokens} == {user_tag("alice")}


def test_a_refresh_token_masked_with_an_older_key_still_refreshes_at_one_more_round_trip(harness: Harness) -> None:
    old, new = b"older-session-key-" + b"o" * 30, b"newer-session-key-" + b"n" * 30
    recorder = RecordingStore(harness.store)

    def service(*masks: bytes) -> TokenService:
        return TokenService(TokenIssuer(JWTSettings(algorithms=["HS256"], keys=SECRET)), recorder, None, None, masks)

    before, rotated, retired = service(old), service(new, old), service(new)
    token = harness.run(before.issue(session_principal()))["refresh_token"]
    successor = harness.run(rotated.refresh(body(token)))["refresh_token"]
    assert recorder.outcomes == ["invalid", "ok"]  # the current key's mask first, then the older one's
    assert retired.tag_masks[0].unmask(successor).split(".")[0] == user_tag("alice")  # the successor: current mask
    assert harness.run(retired.refresh(body(successor)))["token_type"] == "Bearer"
    assert recorder.outcomes[2:] == ["ok"]
    stale = harness.run(before.issue(session_principal()))["refresh_token"]
    with pytest.raises(InvalidToken) as info:  # its key is gone: no record found, an ordinary 401
        harness.run(retired.refresh(body(stale)))
    assert info.value.reason == "refresh_invalid"


def test_refresh_token_masks_come_from_the_session_keys_else_from_the_signing_key(
    harness: Harness, keys: dict[str, Any]
) -> None:
    auth = harness.authenticator()
    assert auth.tokens is not None
    token = harness.run(auth.tokens.issue(session_principal()))["refresh_token"]
    assert TagMask(COOKIE_KEY.encode()).unmask(token).split(".")[0] == user_tag("alice")
    # Without session keys: the signing key's, which every process that mints and refreshes holds.
    for settings in (
        JWTSettings(algorithms=["HS256"], keys=SECRET),
        JWTSettings(algorithms=["RS256"], keys=public_pem(keys["RS256"]), signing_key=keys["RS256"]),
    ):
        one, other = (TokenService(TokenIssuer(settings), harness.store) for _ in range(2))
        token = harness.run(one.issue(session_principal()))["refresh_token"]
        assert harness.run(other.refresh(body(token)))["token_type"] == "Bearer"
    elsewhere = JWTSettings(algorithms=["RS256"], keys=public_pem(keys["other-rsa"]), signing_key=keys["other-rsa"])
    foreign = harness.run(TokenService(TokenIssuer(elsewhere), harness.store).issue(session_principal()))
    with pytest.raises(InvalidToken):
        harness.run(other.refresh(body(foreign["refresh_token"])))


# --- issue 4: a revoked refresh family ends the access tokens minted from it -------------------------------------


def _logged_in(harness: Harness, auth: Authenticator, user: str = "alice") -> SessionState:
    assert auth.sessions is not None
    state = SessionState(auth.sessions, WSGIRequestView({"REQUEST_METHOD": "POST", "PATH_INFO": "/login"}))
    harness.run(auth.sessions.login(state, user, ALICE_SCOPES))
    return state


def _pair_of(harness: Harness, auth: Authenticator, state: SessionState) -> dict[str, Any]:
    """`POST /api/token` for the session of `state`."""
    assert auth.tokens is not None and auth.sessions is not None and state.record is not None
    principal = auth.sessions.principal_of(state.record)
    pair: dict[str, Any] = harness.run(auth.tokens.issue_for_session(principal, state.record.sid))
    return pair


def _family_of(access: str) -> str:
    family: str = pyjwt.decode(access, options={"verify_signature": False})["sid"]
    return family


def test_p30_reuse_detection_ends_the_access_tokens_of_the_family(harness: Harness) -> None:
    auth = harness.authenticator()
    assert auth.tokens is not None
    laptop, phone = _logged_in(harness, auth), _logged_in(harness, auth)
    first, kept = _pair_of(harness, auth, laptop), _pair_of(harness, auth, phone)
    second = harness.run(auth.tokens.refresh(body(first["refresh_token"])))
    for access in (first["access_token"], second["access_token"]):
        assert harness.verify(auth, access).id == "alice"
    with pytest.raises(InvalidToken) as reuse:
        harness.run(auth.tokens.refresh(body(first["refresh_token"])))
    assert reuse.value.reason == "refresh_reuse"
    for access in (first["access_token"], second["access_token"]):
        assert harness.refused(auth, access) == "revoked"
    assert harness.verify(auth, kept["access_token"]).id == "alice"  # another family of the same user
    assert harness.run(auth.tokens.refresh(body(kept["refresh_token"])))["token_type"] == "Bearer"
    # The link is the `sid` claim: the refresh family (never the session id), revoked for good.
    family = _family_of(first["access_token"])
    assert _family_of(second["access_token"]) == family != _family_of(kept["access_token"])
    assert laptop.record is not None and family not in laptop.record.sid
    assert harness.call("token_state", "alice", None, 0.0, family) == (None, True)


def test_p20_logout_and_revoking_a_session_end_the_access_tokens_of_its_families(harness: Harness) -> None:
    auth = harness.authenticator()
    assert auth.sessions is not None and auth.tokens is not None
    laptop, tablet, phone = (_logged_in(harness, auth) for _ in range(3))
    laptop_pairs = [_pair_of(harness, auth, laptop) for _ in range(2)]  # two families from one session
    tablet_pair, kept = _pair_of(harness, auth, tablet), _pair_of(harness, auth, phone)
    assert harness.run(auth.sessions.logout(laptop)) is True
    for pair in laptop_pairs:
        assert harness.refused(auth, pair["access_token"]) == "revoked"
    assert harness.verify(auth, tablet_pair["access_token"]).id == "alice"
    assert tablet.record is not None
    handle = session_handle(tablet.record.sid)  # "your devices": end one session by its public handle
    assert harness.run(auth.sessions.revoke_session(None, "alice", handle)) is True
    assert harness.refused(auth, tablet_pair["access_token"]) == "revoked"
    assert harness.verify(auth, kept["access_token"]).id == "alice"
    assert harness.run(auth.tokens.refresh(body(kept["refresh_token"])))["token_type"] == "Bearer"


def test_a_sid_claim_of_a_token_minted_elsewhere_is_not_taken_for_a_refresh_family(
    harness: Harness, keys: dict[str, Any]
) -> None:
    """Identity providers put their own session id in `sid` (OpenID Connect): only tokens with the `iss` this app
    mints with are checked against its refresh families, and an app that mints none checks none."""
    idp = "https://idp.example"
    auth = harness.authenticator(issuer=[ISSUER, idp])
    now = time.time()
    claims = {"sub": "alice", "iat": now, "exp": int(now + 60), "jti": uuid4().hex, "sid": "idp-session-1"}
    assert harness.verify(auth, pyjwt.encode({**claims, "iss": idp}, SECRET, algorithm="HS256")).id == "alice"
    ours = pyjwt.encode({**claims, "iss": ISSUER}, SECRET, algorithm="HS256")
    assert harness.refused(auth, ours) == "revoked"  # no such family of ours
    assert harness.verify(auth, pyjwt.encode({**claims, "iss": ISSUER, "sid": 7}, SECRET, algorithm="HS256"))
    verifying_only = JWTSettings(algorithms=["RS256"], keys=public_pem(keys["RS256"]), revocation_store=harness.store)
    reader = Authenticator(AuthConfig(jwt=verifying_only))
    assert reader.tokens is None
    signed = pyjwt.encode({**claims, "sid": "anything"}, keys["RS256"], algorithm="RS256")
    assert harness.verify(reader, signed).id == "alice"


def test_a_revoked_family_counts_as_a_revocation_of_the_memory_store() -> None:
    """Remembered decisions (`Authenticator.still_holds`) are reused while `MemoryStore.revocations` is unchanged:
    ending a family (reuse, logout) must change it, as a jti denial does."""
    harness = Harness(MemoryStore(), None)
    auth = harness.authenticator()
    assert auth.revocation_counter is harness.store and auth.tokens is not None and auth.sessions is not None
    state = _logged_in(harness, auth)
    pair = _pair_of(harness, auth, state)
    harness.run(auth.tokens.refresh(body(pair["refresh_token"])))
    count = harness.store.revocations
    with pytest.raises(InvalidToken):
        harness.run(auth.tokens.refresh(body(pair["refresh_token"])))
    assert harness.store.revocations > count
    again = _pair_of(harness, auth, state)
    count = harness.store.revocations
    harness.run(auth.sessions.logout(state))
    assert harness.store.revocations > count
    assert harness.refused(auth, again["access_token"]) == "revoked"


class LogoutDuringIssue:
    """A store whose logout-everywhere lands right after the refresh family is stored, before the pair is minted."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def refresh_create(self, *args: Any) -> Flow[bool]:
        created: bool = yield from self.store.refresh_create(*args)
        yield from self.store.revoke_user("alice", time.time(), 3600.0)
        return created


def test_logout_everywhere_during_issue_leaves_no_valid_token(harness: Harness) -> None:
    auth = harness.authenticator()
    assert auth.tokens is not None
    session = make_session()
    harness.call("create", session)
    time.sleep(0.002)  # the session's own clock reading is behind us
    service = TokenService(auth.tokens.issuer, LogoutDuringIssue(harness.store))
    pair = harness.run(service.issue_for_session(session_principal(), session.sid))
    # The access token's iat was taken before the store call, so the not-before set meanwhile covers it.
    assert harness.refused(auth, pair["access_token"]) == "revoked"
    with pytest.raises(InvalidToken) as info:
        harness.run(service.refresh(body(pair["refresh_token"])))
    assert info.value.reason == "refresh_revoked"


class LogoutJustBeforeTheFamilyIsStored(LogoutDuringIssue):
    """The logout-everywhere lands after issue() took its time, before the family is stored."""

    def refresh_create(self, *args: Any) -> Flow[bool]:
        yield from self.store.revoke_user("alice", time.time(), 3600.0)
        created: bool = yield from self.store.refresh_create(*args)
        return created


def test_a_family_not_bound_to_a_session_is_not_created_after_a_logout_everywhere(harness: Harness) -> None:
    auth = harness.authenticator()
    assert auth.tokens is not None
    service = TokenService(auth.tokens.issuer, LogoutJustBeforeTheFamilyIsStored(harness.store))
    with pytest.raises(MissingCredentials) as info:
        harness.run(service.issue(session_principal()))  # an app's own grant: no session
    assert info.value.reason == "session_ended"
    # Issued after the logout-everywhere (a new login): fine.
    time.sleep(0.002)
    pair = harness.run(harness.service().issue(session_principal()))
    assert harness.run(harness.service().refresh(body(pair["refresh_token"])))["token_type"] == "Bearer"


def test_issue_for_session_needs_a_session_principal(harness: Harness) -> None:
    service = harness.service()
    jwt_caller = Principal(id="alice", source="jwt", scopes=frozenset(ALICE_SCOPES))
    for principal, sid in ((None, "x"), (jwt_caller, "abcd.x"), (session_principal(), None)):
        with pytest.raises(MissingCredentials) as info:
            harness.run(service.issue_for_session(principal, sid))
        assert info.value.status == 401


@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b"[]", b"null", b'"a.b"', b"{}", b'{"token": "x"}', b'{"refresh_token": 5}',
     b'{"refresh_token": null}', b'{"refresh_token": ["abcd.x"]}', b"\xff\xfe{}",
     b"[" * 3000, b'{"a":' * 800],  # nested deeper than Python parses (RecursionError; found by review)
)  # fmt: skip
def test_malformed_refresh_bodies_are_400(raw: bytes) -> None:
    service = TokenService(TokenIssuer(JWTSettings(algorithms=["HS256"], keys=SECRET)), MemoryStore())
    with pytest.raises(InvalidRequest) as info:
        run_sync(service.refresh(raw))
    assert info.value.status == 400


@pytest.mark.parametrize(
    "token",
    ["nonsense", "", "abcd", "ABCD." + "a" * 43, "abcd." + "a" * 42, "abcd." + "a" * 44, " abcd." + "a" * 43,
     "abcd." + "a" * 42 + "=", "abcd." + "a" * 42 + "/", "abcd:" + "a" * 43, "x" * 4000],
)  # fmt: skip
def test_malformed_refresh_token_values_are_401(token: str) -> None:
    service = TokenService(TokenIssuer(JWTSettings(algorithms=["HS256"], keys=SECRET)), MemoryStore())
    with pytest.raises(InvalidToken) as info:
        run_sync(service.refresh(body(token)))
    assert info.value.status == 401 and info.value.reason == "refresh_malformed"


def test_well_formed_but_unknown_or_retagged_refresh_tokens_are_401(harness: Harness) -> None:
    service = harness.service()
    token = harness.run(service.issue(session_principal()))["refresh_token"]
    tag, rest = token.split(".")
    other_tag = "0000" if tag != "0000" else "ffff"
    for candidate in (f"{tag}.{secrets.token_urlsafe(32)}", f"{other_tag}.{rest}"):
        with pytest.raises(InvalidToken) as info:
            harness.run(service.refresh(body(candidate)))
        assert info.value.reason == "refresh_invalid"
    assert harness.run(service.refresh(body(token)))["token_type"] == "Bearer"  # the real one still works


# --- concurrency: the same refresh token presented 20 times at once -----------------------------------------------


class RecordingStore:
    """A pass-through to a real store that records the outcome of every `refresh_use` (not a mock: it delegates)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.outcomes: list[str] = []
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def refresh_use(self, *args: Any) -> Flow[Any]:
        result = yield from self._store.refresh_use(*args)
        with self._lock:
            self.outcomes.append(result[0])
        return result


def _outcome(call: Callable[[], dict[str, Any]]) -> tuple[int, Any]:
    try:
        return 200, call()
    except InvalidToken as exc:
        return exc.status, exc.reason
    except Exception as exc:  # anything else would be a 500
        return 500, repr(exc)


def _check_grace_zero_race(service: TokenService, recorder: RecordingStore, results: list[tuple[int, Any]]) -> None:
    statuses = Counter(status for status, _ in results)
    assert set(statuses) <= {200, 401}, results
    # The token is consumed exactly once; the first presentation after that is a reuse, which revokes the family,
    # and the later ones find it revoked.
    outcomes = Counter(recorder.outcomes)
    assert outcomes["ok"] == 1 and outcomes["reuse"] >= 1, outcomes
    assert set(outcomes) <= {"ok", "reuse", "revoked"} and sum(outcomes.values()) == 20, outcomes
    # Exactly one caller gets a pair: consuming the token and storing its successor is one atomic operation.
    assert statuses[200] == 1
    assert statuses[401] == 19
    winners = [pair for status, pair in results if status == 200]
    for pair in winners:  # afterwards the family is revoked: the winner's successor is dead too
        with pytest.raises(InvalidToken):
            run_sync(service.refresh(body(pair["refresh_token"])))


def test_rotation_stores_its_successor_atomically(harness: Harness) -> None:
    """Consuming a refresh token and storing its successor is one store operation: the flow asks the store for a
    single one, the successor works at once, and a later reuse of the consumed token revokes it with its family."""
    service = harness.service()
    token = harness.run(service.issue(session_principal()))["refresh_token"]
    asked = OperationLog(harness.store)
    service.store = asked  # type: ignore[assignment]
    successor = harness.run(service.refresh(body(token)))["refresh_token"]
    assert asked.names == ["refresh_use"]
    service.store = harness.store
    with pytest.raises(InvalidToken) as reuse:
        harness.run(service.refresh(body(token)))
    assert reuse.value.reason == "refresh_reuse"
    with pytest.raises(InvalidToken) as late:
        harness.run(service.refresh(body(successor)))
    assert late.value.reason == "refresh_revoked"


class OperationLog:
    """A pass-through to a real store that notes the name of every operation asked of it (not a mock)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.names: list[str] = []

    def __getattr__(self, name: str) -> Any:
        operation = getattr(self._store, name)

        def noted(*args: Any) -> Any:
            self.names.append(name)
            return operation(*args)

        return noted


@pytest.mark.parametrize("kind", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_twenty_threads_race_one_refresh_token(request: pytest.FixtureRequest, kind: str) -> None:
    store: Any = request.getfixturevalue("redis_store") if kind == "redis" else MemoryStore()
    recorder = RecordingStore(store)
    service = TokenService(TokenIssuer(JWTSettings(algorithms=["HS256"], keys=SECRET)), recorder)
    token = run_sync(service.issue(session_principal()))["refresh_token"]
    barrier = threading.Barrier(20)
    results: list[tuple[int, Any]] = []

    def present() -> None:
        barrier.wait()
        outcome = _outcome(lambda: run_sync(service.refresh(body(token))))
        with recorder._lock:
            results.append(outcome)

    threads = [threading.Thread(target=present) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 20
    _check_grace_zero_race(service, recorder, results)


@pytest.mark.redis
def test_twenty_tasks_race_one_refresh_token(redis_store: RedisStore) -> None:
    recorder = RecordingStore(redis_store)
    service = TokenService(TokenIssuer(JWTSettings(algorithms=["HS256"], keys=SECRET)), recorder)

    async def race() -> list[tuple[int, Any]]:
        token = (await run_async(service.issue(session_principal())))["refresh_token"]

        async def present() -> tuple[int, Any]:
            try:
                return 200, await run_async(service.refresh(body(token)))
            except InvalidToken as exc:
                return exc.status, exc.reason
            except Exception as exc:
                return 500, repr(exc)

        results = await asyncio.gather(*(present() for _ in range(20)))
        await redis_store.async_client.aclose()
        return list(results)

    results = asyncio.run(race())
    _check_grace_zero_race(service, recorder, results)


@pytest.mark.parametrize("kind", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_twenty_concurrent_uses_within_the_grace_window_all_succeed(request: pytest.FixtureRequest, kind: str) -> None:
    store: Any = request.getfixturevalue("redis_store") if kind == "redis" else MemoryStore()
    recorder = RecordingStore(store)
    service = TokenService(TokenIssuer(JWTSettings(algorithms=["HS256"], keys=SECRET, refresh_reuse_grace=5)), recorder)
    token = run_sync(service.issue(session_principal()))["refresh_token"]
    barrier = threading.Barrier(20)
    results: list[tuple[int, Any]] = []

    def present() -> None:
        barrier.wait()
        outcome = _outcome(lambda: run_sync(service.refresh(body(token))))
        with recorder._lock:
            results.append(outcome)

    threads = [threading.Thread(target=present) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert [status for status, _ in results] == [200] * 20, results
    assert Counter(recorder.outcomes) == {"ok": 1, "grace": 19}
    new_tokens = {pair["refresh_token"] for _, pair in results}
    assert len(new_tokens) == 20
    assert run_sync(service.refresh(body(new_tokens.pop())))["token_type"] == "Bearer"

    async def async_race() -> list[tuple[int, Any]]:
        # The same with 20 asyncio tasks on the async face.
        second = (await run_async(service.issue(session_principal())))["refresh_token"]

        async def present_async() -> tuple[int, Any]:
            try:
                return 200, await run_async(service.refresh(body(second)))
            except InvalidToken as exc:
                return exc.status, exc.reason
            except Exception as exc:
                return 500, repr(exc)

        outcomes = await asyncio.gather(*(present_async() for _ in range(20)))
        if isinstance(store, RedisStore):
            await store.async_client.aclose()
        return list(outcomes)

    assert [status for status, _ in asyncio.run(async_race())] == [200] * 20


# --- revocation: jti denylist and per-user not-before, checked after the signature and the cache ------------------


def test_revoked_access_token_is_refused_even_when_cached(harness: Harness) -> None:
    auth = harness.authenticator(issuer=ISSUER)
    assert auth.tokens is not None
    token, claims = auth.tokens.issuer.mint("alice", ALICE_SCOPES)
    other, _ = auth.tokens.issuer.mint("alice", ALICE_SCOPES)
    principal = harness.verify(auth, token)
    assert auth.verifier is not None and auth.verifier.verify(token) is principal  # served from the cache
    harness.run(auth.tokens.revoke_access_token(principal))
    assert harness.call("token_state", "alice", jti_key(ISSUER, claims["jti"])) == (None, True)
    assert harness.refused(auth, token) == "revoked"
    assert harness.verify(auth, other).id == "alice"  # only that token
    with pytest.raises(ValueError):
        harness.run(auth.tokens.revoke_access_token(session_principal()))


def test_denylist_entry_lives_until_the_verifier_would_refuse_the_token_anyway(harness: Harness) -> None:
    """Until `exp` plus the leeway the verifier allows for clock skew (30 s here): a revoked token is not accepted
    again in between (found by review: the entry ended at `exp`, and a revocation within the leeway did nothing)."""
    auth = harness.authenticator()
    assert auth.tokens is not None
    token, claims = auth.tokens.issuer.mint("alice", now=time.time() - 290)  # expires in about 10 s
    harness.run(auth.tokens.revoke_access_token(harness.verify(auth, token)))
    if isinstance(harness.store, RedisStore):
        (key,) = harness.store.client.scan_iter(match=harness.store.prefix + "*:jti:*")
        assert key.decode().endswith(":jti:" + jti_key(None, claims["jti"]))
        assert 30_000 < harness.store.client.pttl(key) <= 41_000
    else:
        assert harness.store._denied == {("alice", jti_key(None, claims["jti"])): float(claims["exp"]) + 30}


def test_a_revoked_token_stays_refused_past_exp_within_the_leeway(harness: Harness) -> None:
    auth = harness.authenticator()
    assert auth.tokens is not None
    token, claims = auth.tokens.issuer.mint("alice", now=time.time() - 299)  # expires within about a second
    harness.run(auth.tokens.revoke_access_token(harness.verify(auth, token)))
    time.sleep(max(0.0, claims["exp"] - time.time()) + 0.1)
    assert harness.refused(auth, token) == "revoked"  # not "expired": the verifier still accepts it for 30 s
    # Revoked only now, within the leeway: refused too.
    late, _ = auth.tokens.issuer.mint("alice", now=time.time() - 300.5)
    principal = harness.verify(auth, late)
    assert principal.expires_at is not None and principal.expires_at < time.time()
    harness.run(auth.tokens.revoke_access_token(principal))
    assert harness.refused(auth, late) == "revoked"


def test_p30_malleated_copies_of_a_revoked_token_are_refused(keys: dict[str, Any], harness: Harness) -> None:
    private = keys["ES256"]
    auth = harness.authenticator(
        algorithms=["ES256"], keys=KeySet.from_keys({"e1": public_pem(private)}), signing_key=private, issuer=ISSUER
    )
    assert auth.tokens is not None
    token, claims = auth.tokens.issuer.mint("alice", ALICE_SCOPES)
    twin = malleate_es256(token)
    assert twin != token
    harness.run(auth.tokens.revoke_access_token(harness.verify(auth, token)))
    assert harness.refused(auth, token) == "revoked"
    # The other valid ECDSA signature of the same claims: a different string the verifier has never cached.
    assert harness.refused(auth, twin) == "revoked"
    # Padding on the signature is refused by strict parsing before any lookup.
    assert harness.refused(auth, token + "=") == "malformed"
    # Re-signed with the same iss and jti (different iat and extra claims): the (iss, jti) key catches it.
    resigned = pyjwt.encode(
        {**claims, "iat": claims["iat"] + 1, "note": "resigned"}, private, algorithm="ES256", headers={"kid": "e1"}
    )
    assert harness.refused(auth, resigned) == "revoked"
    # The same jti from a different issuer would be a different token: not on the denylist (only the iss differs).
    assert jti_key("https://other.example", claims["jti"]) != jti_key(ISSUER, claims["jti"])


def test_per_user_not_before(harness: Harness) -> None:
    auth = harness.authenticator()
    assert auth.tokens is not None
    mint = auth.tokens.issuer.mint
    earlier, _ = mint("alice", now=time.time() - 5)
    cached, _ = mint("alice", now=time.time() - 1)
    harness.verify(auth, cached)
    bob, _ = mint("bob", now=time.time() - 5)
    not_before = time.time()
    harness.call("revoke_user", "alice", not_before, 3600.0)
    assert harness.refused(auth, earlier) == "revoked"
    assert harness.refused(auth, cached) == "revoked"
    assert harness.verify(auth, bob).id == "bob"
    later, claims = mint("alice", now=not_before + 0.01)
    assert claims["iat"] != int(claims["iat"])  # fractional iat: same-second tokens are told apart
    assert harness.verify(auth, later).id == "alice"
    # A token without iat can never be shown to postdate the not-before.
    no_iat = pyjwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    lenient = harness.authenticator(required_claims=("exp", "sub"))
    harness.call("revoke_user", "alice", time.time(), 3600.0)
    assert harness.refused(lenient, no_iat) == "revoked"


def _millisecond() -> float:
    return math.floor(time.time() * 1000) / 1000


def test_token_minted_just_after_the_not_before_passes(harness: Harness) -> None:
    auth = harness.authenticator()
    assert auth.tokens is not None
    not_before = _millisecond() + 0.0002
    minted_at = not_before + 0.0001
    harness.call("revoke_user", "alice", not_before, 3600.0)
    token, _ = auth.tokens.issuer.mint("alice", now=minted_at)
    assert harness.verify(auth, token).id == "alice"


def test_token_minted_just_before_the_not_before_is_refused(harness: Harness) -> None:
    auth = harness.authenticator()
    assert auth.tokens is not None
    not_before = _millisecond() + 0.0009
    minted_at = not_before - 0.0002
    token, _ = auth.tokens.issuer.mint("alice", now=minted_at)
    harness.call("revoke_user", "alice", not_before, 3600.0)
    assert harness.refused(auth, token) == "revoked"


class PausedRevocations:
    """A pass-through to a real store whose revocations stop once before they start, as a store call on its way
    does (an effect that does nothing): a flow driven by hand can let something else commit meanwhile."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def revoke_user(self, *args: Any) -> Flow[int]:
        yield Blocking(lambda: None)
        return (yield from self._store.revoke_user(*args))

    def revoke_tokens(self, *args: Any) -> Flow[None]:
        yield Blocking(lambda: None)
        yield from self._store.revoke_tokens(*args)


def _racing_a_refresh(harness: Harness, auth: Authenticator, revocation: Flow[Any], refresh_token: str) -> Any:
    """Drive `revocation` up to its first store call, refresh with `refresh_token` meanwhile (it commits first),
    then let the revocation land and finish; the refreshed pair."""
    assert auth.tokens is not None and auth.sessions is not None
    paused = PausedRevocations(harness.store)
    auth.sessions.store = auth.sessions.token_store = auth.tokens.store = paused
    effect = revocation.send(None)  # its not-before is read; the store call is on its way
    time.sleep(0.002)
    pair = harness.run(auth.tokens.refresh(json.dumps({"refresh_token": refresh_token}).encode()))
    try:
        while True:
            effect = revocation.send(effect.run_sync())
    except StopIteration:
        pass
    return pair


def test_a_refresh_racing_logout_everywhere_mints_no_token_that_outlives_it(harness: Harness) -> None:
    """Found by review: the not-before was the time read before the revocation's store call, so an access token
    refreshed while it was on its way (iat later than that) was accepted until its exp, from a family it ended."""
    auth = harness.authenticator()
    assert auth.tokens is not None and auth.sessions is not None
    now = time.time()
    record = SessionRecord(
        sid=f"{user_tag('alice')}.{secrets.token_urlsafe(32)}",
        user_id="alice",
        scopes=tuple(ALICE_SCOPES),
        created=now,
        auth_time=now,
        absolute_expiry=now + 3600,
        idle_timeout=600,
        last_seen=now,
    )
    harness.call("create", record)
    pair = harness.run(auth.tokens.issue(auth.sessions.principal_of(record), record.sid))
    state = SessionState(auth.sessions, WSGIRequestView({"REQUEST_METHOD": "POST", "PATH_INFO": "/logout-all"}))
    state.record = record
    stolen = _racing_a_refresh(harness, auth, auth.sessions.logout_everywhere(state), pair["refresh_token"])
    assert harness.call("list_user", "alice") == []
    assert harness.refused(auth, stolen["access_token"]) == "revoked"
    with pytest.raises(InvalidToken):  # and its refresh token's family is gone
        harness.run(auth.tokens.refresh(json.dumps({"refresh_token": stolen["refresh_token"]}).encode()))


def test_a_refresh_racing_revoke_all_tokens_mints_no_token_that_outlives_it(harness: Harness) -> None:
    auth = harness.authenticator()
    assert auth.tokens is not None
    pair = harness.run(auth.tokens.issue(session_principal(), None))
    stolen = _racing_a_refresh(harness, auth, auth.tokens.revoke_all_tokens("alice"), pair["refresh_token"])
    assert harness.refused(auth, stolen["access_token"]) == "revoked"
    fresh = harness.run(auth.tokens.issue(session_principal(), None))  # a new login afterwards: accepted
    assert harness.verify(auth, fresh["access_token"]).id == "alice"


def test_a_token_refused_after_revoke_all_tokens_says_the_tokens_were_revoked(harness: Harness) -> None:
    """`tokens revoke-all` keeps the sessions, so the refusal must not say they were revoked (it did)."""
    auth = harness.authenticator()
    assert auth.tokens is not None
    token, _ = auth.tokens.issuer.mint("alice", now=time.time() - 5)
    harness.run(auth.tokens.revoke_all_tokens("alice"))
    with pytest.raises(InvalidToken) as refused:
        harness.verify(auth, token)
    assert refused.value.reason == "revoked"
    assert refused.value.description == "the token was issued before the user's tokens were revoked"


# --- the endpoints, in-process, on both adapters ------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    cookies: list[str]
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


Transport = Callable[[str, str, dict[str, str], dict[str, Any]], Reply]


class Browser:
    """One user agent with its own cookie jar, over a transport shared by every browser of the app."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self.jar: dict[str, str] = {}

    def request(self, method: str, path: str, *, bearer: str | None = None, **kwargs: Any) -> Reply:
        headers = dict(kwargs.pop("headers", None) or {})
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        if self.jar:
            headers["Cookie"] = "; ".join(f"{name}={value}" for name, value in self.jar.items())
        reply = self._transport(method, path, headers, kwargs)
        for cookie in reply.cookies:
            name, _, value = cookie.split(";", 1)[0].partition("=")
            if not value or "max-age=0" in cookie.lower():
                self.jar.pop(name, None)
            else:
                self.jar[name] = value
        return reply

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Reply:
        return self.request("POST", path, **kwargs)

    def login(self, user: str = "alice", password: str | None = None) -> Browser:
        password = password or {"alice": "wonderland", "bob": "builder"}[user]
        reply = self.post("/login", data={"username": user, "password": password})
        assert reply.status == 303, reply.content
        assert self.jar.get("authmw_session")
        return self


@contextmanager
def serve_in_process(framework: str, config: AuthConfig, store: Any = None) -> Iterator[Callable[[], Browser]]:
    """The example app of `framework` on `config`; yields a factory of browsers sharing one in-process client."""
    if framework == "starlette":
        from examples.starlette_app.app import create_app as create_starlette
        from starlette.testclient import TestClient

        with TestClient(create_starlette(config), follow_redirects=False) as client:

            def send_asgi(method: str, path: str, headers: dict[str, str], kwargs: dict[str, Any]) -> Reply:
                client.cookies.clear()
                response = client.request(method, path, headers=headers, **kwargs)
                flat = {k.lower(): ", ".join(response.headers.get_list(k)) for k in response.headers}
                return Reply(response.status_code, flat, response.headers.get_list("set-cookie"), response.content)

            yield lambda: Browser(send_asgi)
            if isinstance(store, RedisStore):
                assert client.portal is not None
                client.portal.call(store.async_client.aclose)
        return
    from examples.flask_app.app import create_app as create_flask

    flask_client = create_flask(config).test_client(use_cookies=False)

    def send_wsgi(method: str, path: str, headers: dict[str, str], kwargs: dict[str, Any]) -> Reply:
        if "content" in kwargs:
            kwargs["data"] = kwargs.pop("content")
        response = flask_client.open(path, method=method, headers=headers, **kwargs)
        flat = {k.lower(): ", ".join(response.headers.getlist(k)) for k in response.headers.keys()}  # noqa: SIM118
        return Reply(response.status_code, flat, response.headers.getlist("Set-Cookie"), response.get_data())

    yield lambda: Browser(send_wsgi)


def code_config(store: Any = None, routes: list[Route] | None = None, **jwt: Any) -> AuthConfig:
    sessions: dict[str, Any] = {"secret_keys": [COOKIE_KEY], "cookie_secure": False}
    if store is not None:
        sessions["store"] = store
    return AuthConfig(
        jwt=JWTSettings(algorithms=["HS256"], keys=SECRET, **jwt),
        sessions=SessionSettings(**sessions),
        routes=routes if routes is not None else ROUTES,
        default=Policy.optional(),
    )


def env_config(**env: str) -> AuthConfig:
    base = {
        "AUTHMW_SECRET_KEYS": COOKIE_KEY,
        "AUTHMW_JWT_ALGORITHMS": "HS256",
        "AUTHMW_JWT_KEY": SECRET,
        "AUTHMW_COOKIE_SECURE": "0",
    }
    return AuthConfig.from_env({**base, **env}, routes=ROUTES, default=Policy.optional())


FRAMEWORKS = ["starlette", "flask"]
SETUPS = ["code-memory", "env-memory", pytest.param("code-redis", marks=pytest.mark.redis)]


@pytest.fixture(params=FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=SETUPS)
def app(request: pytest.FixtureRequest, framework: str) -> Iterator[Callable[[], Browser]]:
    """The example app of each framework: configured in code (memory or Redis store) or from the environment."""
    setup = request.param
    store = request.getfixturevalue("redis_store") if setup == "code-redis" else None
    if setup == "env-memory":
        config = env_config(AUTHMW_ACCESS_TOKEN_TTL="120")
    else:
        config = code_config(store, access_token_ttl=120)
    with serve_in_process(framework, config, store) as browsers:
        yield browsers


def test_token_endpoint_with_revocations_in_another_store_says_why_it_cannot_issue(
    framework: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Refresh tokens are bound to their session, which the store checks atomically on every use: with
    `JWTSettings.revocation_store` apart from the session store that cannot work, and the endpoint says so (501)
    instead of answering every session "ended" (found by review). Revocation itself works there."""
    revocations = MemoryStore()
    with caplog.at_level("WARNING", logger="authmw"):
        config = code_config(MemoryStore(), revocation_store=revocations)
        with serve_in_process(framework, config) as app:
            answer = app().login().post("/api/token")
    assert answer.status == 501
    assert answer.json() == issuer_module.SESSIONS_ELSEWHERE
    assert "revocation_store is not the session store" in caplog.text
    shared = MemoryStore()
    with serve_in_process(framework, code_config(shared, revocation_store=shared)) as app:
        assert app().login().post("/api/token").status == 200


def test_token_endpoint_needs_a_session_and_is_csrf_checked(app: Callable[[], Browser]) -> None:
    anon, browser = app(), app().login()
    assert anon.post("/api/token").status == 401
    bearer = browser.post("/api/token").json()["access_token"]
    refused = anon.post("/api/token", bearer=bearer)  # a bearer token alone is not a session
    assert refused.status == 401
    assert refused.headers["content-type"] == "application/problem+json"
    for cross_site in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": "null"}):
        answer = browser.post("/api/token", headers=cross_site)
        assert answer.status == 403, cross_site
        assert answer.headers["content-type"] == "application/problem+json"


def test_token_endpoint_issues_a_pair(app: Callable[[], Browser]) -> None:
    alice, bob, anon = app().login(), app().login("bob"), app()
    issued = alice.post("/api/token")
    assert issued.status == 200
    assert issued.headers["content-type"].startswith("application/json")
    assert "no-store" in issued.headers["cache-control"]
    pair = issued.json()
    assert {"access_token", "token_type", "expires_in", "refresh_token"} <= set(pair)
    assert pair["token_type"] == "Bearer" and pair["expires_in"] == 120
    assert REFRESH_SHAPE.fullmatch(pair["refresh_token"])
    claims = pyjwt.decode(pair["access_token"], SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["scope"] == "items:read items:write"
    assert claims["exp"] - claims["iat"] == pytest.approx(pair["expires_in"], abs=1)
    # The access token carries the session's scopes.
    listed = anon.get("/api/items", bearer=pair["access_token"])
    assert listed.status == 200 and isinstance(listed.json(), list)
    assert anon.get("/api/me", bearer=pair["access_token"]).json() == {
        "id": "alice",
        "source": "jwt",
        "scopes": ALICE_SCOPES,
    }
    assert anon.post("/api/items", bearer=pair["access_token"], json={"name": "jam"}).status == 201
    bob_token = bob.post("/api/token").json()["access_token"]
    assert anon.get("/api/items", bearer=bob_token).status == 200
    assert anon.post("/api/items", bearer=bob_token, json={"name": "jam"}).status == 403


def test_refresh_endpoint_rotates_and_detects_reuse(app: Callable[[], Browser]) -> None:
    alice, anon = app().login(), app()
    first = alice.post("/api/token").json()
    other_family = alice.post("/api/token").json()
    refreshed = anon.post("/api/token/refresh", json={"refresh_token": first["refresh_token"]})
    assert refreshed.status == 200 and "no-store" in refreshed.headers["cache-control"]
    second = refreshed.json()
    assert second["token_type"] == "Bearer" and REFRESH_SHAPE.fullmatch(second["refresh_token"])
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert anon.get("/api/items", bearer=second["access_token"]).status == 200
    reused = anon.post("/api/token/refresh", json={"refresh_token": first["refresh_token"]})
    assert reused.status == 401
    assert reused.headers["content-type"] == "application/problem+json"
    assert 'error="invalid_token"' in reused.headers["www-authenticate"]
    assert first["refresh_token"] not in reused.content.decode()
    assert anon.post("/api/token/refresh", json={"refresh_token": second["refresh_token"]}).status == 401
    untouched = anon.post("/api/token/refresh", json={"refresh_token": other_family["refresh_token"]})
    assert untouched.status == 200
    # The session itself is not ended by a refresh-token reuse.
    assert alice.get("/account").status == 200


@pytest.mark.parametrize(
    "kwargs",
    [{"content": b"not json"}, {"content": b""}, {"json": {}}, {"json": []}, {"json": {"refresh_token": 7}},
     {"json": {"token": "abcd.x"}}, {"content": b"\xff\xfe"}, {"json": {"refresh_token": "x" * 9000}},
     {"content": b" " * 4097}, {"content": b"[" * 3000}],
)  # fmt: skip
def test_refresh_endpoint_malformed_bodies_are_400(app: Callable[[], Browser], kwargs: dict[str, Any]) -> None:
    answer = app().post("/api/token/refresh", **kwargs)
    assert answer.status == 400
    assert answer.headers["content-type"] == "application/problem+json"


def test_example_apps_answer_bodies_nested_too_deep_for_python_as_bad_input(app: Callable[[], Browser]) -> None:
    """DESIGN.md §6: a bad login is a 401 and a bad item a 400, never a 500 (found by review: RecursionError)."""
    nested = {"content": b"[" * 3000, "headers": {"Content-Type": "application/json"}}
    assert app().post("/login", **nested).status == 401
    bearer = app().login().post("/api/token").json()["access_token"]
    assert app().post("/api/items", bearer=bearer, **nested).status == 400


@pytest.mark.parametrize("token", ["nonsense", "abcd." + "a" * 43, "ABCD." + "a" * 43, "x" * 4000])
def test_refresh_endpoint_bad_tokens_are_401(app: Callable[[], Browser], token: str) -> None:
    answer = app().post("/api/token/refresh", json={"refresh_token": token})
    assert answer.status == 401
    assert 'error="invalid_token"' in answer.headers["www-authenticate"]


def test_logout_kills_that_sessions_refresh_tokens(app: Callable[[], Browser]) -> None:
    laptop, phone, anon = app().login(), app().login(), app()
    laptop_pair, phone_pair = laptop.post("/api/token").json(), phone.post("/api/token").json()
    assert laptop.post("/logout").status == 303
    assert anon.post("/api/token/refresh", json={"refresh_token": laptop_pair["refresh_token"]}).status == 401
    assert anon.post("/api/token/refresh", json={"refresh_token": phone_pair["refresh_token"]}).status == 200


def test_logout_everywhere_revokes_sessions_families_and_access_tokens(app: Callable[[], Browser]) -> None:
    laptop, phone, bob, anon = app().login(), app().login(), app().login("bob"), app()
    laptop_pair, phone_pair, bob_pair = (b.post("/api/token").json() for b in (laptop, phone, bob))
    rotated = anon.post("/api/token/refresh", json={"refresh_token": phone_pair["refresh_token"]}).json()
    assert anon.get("/api/me", bearer=laptop_pair["access_token"]).status == 200  # verified, now cached
    time.sleep(0.002)  # minted well before the not-before
    assert laptop.post("/logout-everywhere", headers={"Origin": "https://evil.example"}).status == 403
    everywhere = laptop.post("/logout-everywhere")
    assert everywhere.status == 303
    assert "authmw_session" not in laptop.jar
    assert phone.get("/account").status == 401
    for access in (laptop_pair["access_token"], phone_pair["access_token"], rotated["access_token"]):
        assert anon.get("/api/me", bearer=access).status == 401
    for refresh in (laptop_pair["refresh_token"], rotated["refresh_token"]):
        assert anon.post("/api/token/refresh", json={"refresh_token": refresh}).status == 401
    # Bob keeps everything.
    assert bob.get("/account").status == 200
    assert anon.get("/api/me", bearer=bob_pair["access_token"]).json()["id"] == "bob"
    assert anon.post("/api/token/refresh", json={"refresh_token": bob_pair["refresh_token"]}).status == 200
    # Alice logs in again: the new tokens work.
    again = app().login()
    fresh = again.post("/api/token").json()
    assert anon.get("/api/items", bearer=fresh["access_token"]).status == 200
    assert anon.post("/api/token/refresh", json={"refresh_token": fresh["refresh_token"]}).status == 200


def test_jwks_endpoint_on_an_hmac_config(app: Callable[[], Browser]) -> None:
    answer = app().get("/.well-known/jwks.json")
    assert answer.status == 200
    assert answer.json() == {"keys": []}
    assert SECRET not in answer.content.decode()


@pytest.mark.parametrize(
    "framework",
    [
        "starlette",
        "flask",
    ],
)
def test_token_endpoint_refusal_carries_every_challenge(framework: str) -> None:
    """The endpoint's own 401 (a bearer caller on a route that accepts both kinds) challenges like the middleware's."""
    routes = [Route("/api/token", Policy.either(), methods={"POST"}), *ROUTES]
    with serve_in_process(framework, code_config(routes=routes)) as browsers:
        browser, anon = browsers().login(), browsers()
        access = browser.post("/api/token").json()["access_token"]
        from_middleware = anon.post("/api/token")
        from_endpoint = anon.post("/api/token", bearer=access)
        assert from_middleware.status == from_endpoint.status == 401
        challenges = from_middleware.headers["www-authenticate"]
        assert "Bearer" in challenges and "Session" in challenges
        assert from_endpoint.headers["www-authenticate"] == challenges


def test_bearer_token_cannot_be_exchanged_even_where_the_route_accepts_jwts(framework: str) -> None:
    routes = [Route("/api/token", Policy.either(), methods={"POST"}), *ROUTES]
    with serve_in_process(framework, code_config(routes=routes)) as browsers:
        browser, anon = browsers().login(), browsers()
        access = browser.post("/api/token").json()["access_token"]
        refused = anon.post("/api/token", bearer=access)
        assert refused.status == 401
        assert refused.headers["content-type"] == "application/problem+json"
        # With both, the bearer token is the credential used (P26): still no exchange.
        assert browser.post("/api/token", bearer=access).status == 401


@pytest.fixture
def rsa_files(tmp_path: Path, keys: dict[str, Any]) -> tuple[Path, Path]:
    public, private = tmp_path / "jwt.pub.pem", tmp_path / "jwt.key.pem"
    public.write_bytes(public_pem(keys["RS256"]))
    private.write_text(private_pem(keys["RS256"]))
    return public, private


def test_verification_only_config_answers_501(framework: str, rsa_files: tuple[Path, Path]) -> None:
    public, _ = rsa_files
    config = env_config(AUTHMW_JWT_ALGORITHMS="RS256", AUTHMW_JWT_KEY=str(public))
    with serve_in_process(framework, config) as browsers:
        browser, anon = browsers().login(), browsers()
        for answer in (
            browser.post("/api/token"),
            anon.post("/api/token/refresh", json={"refresh_token": "abcd." + "a" * 43}),
            anon.get("/.well-known/jwks.json"),
        ):
            assert answer.status == 501
            assert answer.headers["content-type"] == "application/problem+json"
            assert answer.json() == NOT_CONFIGURED
        assert anon.post("/api/token").status == 401  # the session requirement comes first


def test_rs256_config_with_a_signing_key_mints_and_publishes(framework: str, rsa_files: tuple[Path, Path]) -> None:
    public, private = rsa_files
    config = env_config(
        AUTHMW_JWT_ALGORITHMS="RS256",
        AUTHMW_JWT_KEY=str(public),
        AUTHMW_JWT_SIGNING_KEY=str(private),
        AUTHMW_JWT_ISSUER=ISSUER,
        AUTHMW_JWT_AUDIENCE=AUDIENCE,
    )
    with serve_in_process(framework, config) as browsers:
        browser, anon = browsers().login(), browsers()
        pair = browser.post("/api/token").json()
        assert header_of(pair["access_token"])["alg"] == "RS256"
        jwks = anon.get("/.well-known/jwks.json")
        assert jwks.status == 200 and "max-age" in jwks.headers["cache-control"]
        document = jwks.json()
        assert [k["kty"] for k in document["keys"]] == ["RSA"] and "d" not in document["keys"][0]
        verifier = JWTVerifier(
            JWTSettings(algorithms=["RS256"], keys=KeySet.from_jwks(document), issuer=ISSUER, audience=AUDIENCE)
        )
        assert verifier.verify(pair["access_token"]).scopes == frozenset(ALICE_SCOPES)
        assert anon.get("/api/items", bearer=pair["access_token"]).status == 200
        refreshed = anon.post("/api/token/refresh", json={"refresh_token": pair["refresh_token"]})
        assert refreshed.status == 200


def test_env_hmac_signing_key_equal_to_the_jwt_key_works(framework: str) -> None:
    with serve_in_process(framework, env_config(AUTHMW_JWT_SIGNING_KEY=SECRET)) as browsers:
        browser, anon = browsers().login(), browsers()
        issued = browser.post("/api/token")
        assert issued.status == 200
        assert anon.get("/api/items", bearer=issued.json()["access_token"]).status == 200


def test_revoke_helpers_in_both_adapters() -> None:
    """`revoke_access_token` (this request's token) and `revoke_all_tokens(user)` from inside a view."""
    from flask import Flask
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route as StarletteRoute
    from starlette.testclient import TestClient

    import authmw.flask as flask_adapter
    import authmw.starlette as starlette_adapter
    from authmw import AuthConfig, Policy, Route
    from authmw.sessions import SessionSettings
    from authmw.testing import mint_token

    def config() -> AuthConfig:
        return AuthConfig(
            jwt=JWTSettings(algorithms=["HS256"], keys=SECRET),
            sessions=SessionSettings(secret_keys=["s" * 40], cookie_secure=False),
            routes=[Route("/me", Policy.jwt()), Route("/revoke", Policy.jwt()), Route("/revoke-all", Policy.jwt())],
        )

    star_config = config()

    async def me(request: Request) -> JSONResponse:
        return JSONResponse({"id": request.user.id})

    async def revoke(request: Request) -> JSONResponse:
        await starlette_adapter.revoke_access_token(request)
        return JSONResponse({})

    async def revoke_all(request: Request) -> JSONResponse:
        await starlette_adapter.revoke_all_tokens(request, request.user.id)
        return JSONResponse({})

    star = Starlette(
        routes=[
            StarletteRoute("/me", me),
            StarletteRoute("/revoke", revoke, methods=["POST"]),
            StarletteRoute("/revoke-all", revoke_all, methods=["POST"]),
        ],
        middleware=[Middleware(starlette_adapter.AuthMiddleware, config=star_config)],
    )
    flask_config = config()
    app = Flask(__name__)
    flask_adapter.AuthMW(app, flask_config)

    @app.get("/me")
    def flask_me() -> dict[str, str]:
        return {"id": flask_adapter.current_principal.identity}

    @app.post("/revoke")
    def flask_revoke() -> dict[str, str]:
        flask_adapter.revoke_access_token()
        return {}

    @app.post("/revoke-all")
    def flask_revoke_all() -> dict[str, str]:
        flask_adapter.revoke_all_tokens(flask_adapter.current_principal.identity)
        return {}

    for client, cfg in ((TestClient(star), star_config), (app.test_client(), flask_config)):
        first, second = (mint_token(cfg, "alice") for _ in range(2))
        auth = {"Authorization": f"Bearer {first}"}
        assert client.get("/me", headers=auth).status_code == 200
        assert client.post("/revoke", headers=auth).status_code == 200
        assert client.get("/me", headers=auth).status_code == 401  # this token only
        other = {"Authorization": f"Bearer {second}"}
        assert client.get("/me", headers=other).status_code == 200
        assert client.post("/revoke-all", headers=other).status_code == 200
        assert client.get("/me", headers=other).status_code == 401
        later = {"Authorization": f"Bearer {mint_token(cfg, 'alice')}"}
        assert client.get("/me", headers=later).status_code == 200  # minted after the revocation: fine


class TwoArgumentRevocations:
    """A custom revocation store written to the older two-argument `token_state`."""

    def __init__(self) -> None:
        self.not_before: dict[str, float] = {}

    @inline
    def token_state(self, user_id: str, jti_key: str | None) -> tuple[float | None, bool]:
        return self.not_before.get(user_id), False


def test_a_custom_two_argument_revocation_store_still_works() -> None:
    store = TwoArgumentRevocations()
    jwt = JWTSettings(algorithms=["HS256"], keys=SECRET, revocation_store=store)
    auth = Authenticator(AuthConfig(jwt=jwt))
    harness = Harness(MemoryStore(), None)
    token, _ = TokenIssuer(jwt).mint("alice", now=time.time() - 1)
    assert harness.verify(auth, token).id == "alice"
    store.not_before["alice"] = time.time()
    assert harness.refused(auth, token) == "revoked"
    # Only a grace needs the third argument, and that is said at start-up.
    with pytest.raises(ConfigurationError, match="grace"):
        Authenticator(AuthConfig(jwt=replace(jwt, revocation_grace=5.0)))


def test_flask_refresh_works_after_a_hook_read_the_body_and_refuses_large_ones_unread() -> None:
    from examples.flask_app.app import create_app as create_flask
    from flask import request as flask_request

    app = create_flask(code_config())
    seen: list[bytes] = []

    @app.before_request
    def read_body_first() -> None:  # e.g. a request logger
        seen.append(flask_request.get_data())

    client = app.test_client()
    client.post("/login", data={"username": "alice", "password": "wonderland"})
    pair = client.post("/api/token").get_json()
    assert pair is not None and "refresh_token" in pair, pair
    refreshed = client.post("/api/token/refresh", json={"refresh_token": pair["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.get_data()
    big = client.post("/api/token/refresh", data=b" " * 100_000, headers={"Content-Type": "application/json"})
    assert big.status_code == 400


def test_an_overridden_decide_is_asked_on_every_route() -> None:
    """`resolve` skips `decide` where the stock one has nothing to check (no scopes, no max_auth_age) — never a
    subclass's own, which may check more."""
    asked: list[str] = []

    class Stricter(Authenticator):
        @staticmethod
        def decide(policy: Policy, principal: Principal | None) -> None:
            asked.append(principal.id if principal is not None else "-")
            if principal is not None and principal.id == "mallory":
                raise InvalidToken("not this one", reason="custom")

    auth = Stricter(AuthConfig(jwt=JWTSettings(algorithms=["HS256"], keys=SECRET)))
    for sub in ("alice", "mallory"):
        now = int(time.time())
        token = pyjwt.encode({"sub": sub, "iat": now, "exp": now + 60}, SECRET, algorithm="HS256")
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_AUTHORIZATION": f"Bearer {token}"}
        if sub == "mallory":
            with pytest.raises(InvalidToken):
                auth.resolve(WSGIRequestView(environ), Policy.jwt())
        else:
            assert auth.resolve(WSGIRequestView(environ), Policy.jwt()) is not None
    assert asked == ["alice", "mallory"]


def test_the_verifier_counts_full_verifications_not_cache_answers() -> None:
    settings = JWTSettings(algorithms=["HS256"], keys=SECRET)
    issuer, verifier = TokenIssuer(settings), JWTVerifier(settings)
    first, _ = issuer.mint("alice")
    second, _ = issuer.mint("bob")
    assert verifier.verifications == 0
    verifier.verify(first)
    verifier.verify(first)  # from the cache
    assert verifier.verifications == 1
    verifier.verify(second)
    assert verifier.verifications == 2
    verifier.clear_cache()
    verifier.verify(first)  # in full again
    assert verifier.verifications == 3
