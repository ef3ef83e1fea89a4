"""The `authmw` command (authmw.cli): key generation, token minting, and session / token revocation against a
real Redis; errors are one line and an exit code, never a traceback.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import jwt
import pytest
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from authmw import AuthConfig, JWTSettings, JWTVerifier, KeySet
from authmw.cli import jwk_thumbprint, main
from authmw.issuer import TokenIssuer
from authmw.sessions import SessionSettings, session_handle
from authmw.stores import RedisStore, RefreshRecord, SessionRecord, user_tag
from authmw.testing import session_cookie

SECRET = "s" * 40
JWT_KEY = "k" * 40
UNREACHABLE = "redis://127.0.0.1:1/0"


@pytest.fixture(autouse=True)
def _no_authmw_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads AUTHMW_*; the developer's own settings must not leak into these tests."""
    for name in list(os.environ):
        if name.startswith(("AUTHMW_JWT_", "AUTHMW_ACCESS_TOKEN_")) or name == "AUTHMW_REDIS_URL":
            monkeypatch.delenv(name)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def env_lines(out: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in out.splitlines() if line and not line.startswith("#"))


def public_der(key: Any) -> bytes:
    return bytes(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def pem_private(key: Any) -> bytes:
    return bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


# --------------------------------------------------------------------------------------------------
# the parser: help everywhere, bad arguments exit 2


COMMANDS = [
    [],
    ["keys"],
    ["keys", "hs"],
    ["keys", "rsa"],
    ["keys", "ec"],
    ["keys", "ed25519"],
    ["keys", "jwks"],
    ["token"],
    ["token", "mint"],
    ["sessions"],
    ["sessions", "list"],
    ["sessions", "revoke"],
    ["sessions", "revoke-all"],
    ["tokens"],
    ["tokens", "revoke-all"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "authmw")
def test_every_command_has_help(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    code, out, err = run(capsys, *command, "--help")
    assert code == 0, err
    assert out.startswith(f"usage: authmw {' '.join(command)}".rstrip())
    # a description beyond the usage line and the -h option
    assert len([line for line in out.splitlines() if line.strip()]) >= 4


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.startswith("authmw ")


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nope"],
        ["keys"],
        ["keys", "rsa"],
        ["keys", "rsa", "--out", "x", "--bits", "1024"],
        ["keys", "rsa", "--out", "x", "--curve", "P-256"],
        ["keys", "ec", "--out", "x", "--curve", "P-192"],
        ["keys", "hs", "--bytes", "16"],
        ["keys", "jwks"],
        ["token", "mint"],
        ["token", "mint", "--sub", "a", "--ttl", "0"],
        ["token", "mint", "--sub", "a", "--key", "x", "--key-file", "y"],
        ["token", "mint", "--sub", "a", "--alg", "none"],
        ["sessions", "list"],
        ["sessions", "revoke", "alice"],
        ["sessions", "revoke-all", "alice", "--ttl", "-5"],
        ["tokens", "revoke-all"],
    ],
    ids=lambda argv: " ".join(argv) or "nothing",
)
def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert "usage: authmw" in err
    assert "Traceback" not in err


# --------------------------------------------------------------------------------------------------
# keys


def test_keys_hs_prints_a_random_48_byte_secret(capsys: pytest.CaptureFixture[str]) -> None:
    code, first, _ = run(capsys, "keys", "hs")
    assert code == 0
    secret = first.strip()
    assert len(base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))) == 48
    assert run(capsys, "keys", "hs")[1].strip() != secret
    # --bytes 64 is long enough for HS512, and the middleware takes it
    code, out, _ = run(capsys, "keys", "hs", "--bytes", "64")
    long_secret = out.strip()
    settings = JWTSettings(algorithms=["HS512"], keys=long_secret)
    token, _ = TokenIssuer(settings).mint("alice")
    assert JWTVerifier(settings).verify(token).id == "alice"


PAIRS = [
    (["rsa", "--bits", "2048"], rsa.RSAPrivateKey, "RS256"),
    (["ec"], ec.EllipticCurvePrivateKey, "ES256"),
    (["ec", "--curve", "P-384"], ec.EllipticCurvePrivateKey, "ES384"),
    (["ec", "--curve", "P-521"], ec.EllipticCurvePrivateKey, "ES512"),
    (["ed25519"], ed25519.Ed25519PrivateKey, "EdDSA"),
]


@pytest.mark.parametrize(("options", "key_type", "alg"), PAIRS, ids=[p[2] for p in PAIRS])
def test_key_pair_files_load_and_verify(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, options: list[str], key_type: type, alg: str
) -> None:
    out_dir = tmp_path / "keys"
    code, out, err = run(capsys, "keys", *options, "--out", str(out_dir))
    assert code == 0, err
    private_path, public_path, jwks_path = out_dir / "private.pem", out_dir / "public.pem", out_dir / "jwks.json"
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    for path in (private_path, public_path, jwks_path):
        assert str(path) in out

    private = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
    assert isinstance(private, key_type)
    public = serialization.load_pem_public_key(public_path.read_bytes())
    assert public_der(public) == public_der(private.public_key())

    jwks = json.loads(jwks_path.read_text())
    [jwk] = jwks["keys"]
    assert jwk["use"] == "sig"
    assert jwk["alg"] == alg
    assert jwk["kid"] == jwk_thumbprint(jwk)[:16]
    assert "d" not in jwk  # never the private part

    # A token signed by the private key verifies against the JWKS, found by its kid.
    token = jwt.encode(
        {"sub": "alice", "iat": int(time.time()), "exp": int(time.time()) + 60}, private, alg, {"kid": jwk["kid"]}
    )
    verifier = JWTVerifier(JWTSettings(algorithms=[alg], keys=KeySet.from_jwks_file(jwks_path)))
    assert verifier.verify(token).id == "alice"

    # The printed AUTHMW_* lines configure a middleware that mints and verifies with these files.
    env = env_lines(out)
    assert env == {
        "AUTHMW_JWT_KEY": str(public_path),
        "AUTHMW_JWT_SIGNING_KEY": str(private_path),
        "AUTHMW_JWT_ALGORITHMS": alg,
    }
    settings = AuthConfig.from_env({**env, "AUTHMW_SECRET_KEYS": SECRET}).jwt
    assert settings is not None
    minted, _ = TokenIssuer(settings).mint("bob")
    assert JWTVerifier(settings).verify(minted).id == "bob"
    assert verifier.verify(minted).id == "bob"


def test_key_pair_refuses_to_overwrite_unless_forced(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_dir = tmp_path / "nested" / "dir"  # created on demand
    assert run(capsys, "keys", "ed25519", "--out", str(out_dir), "--kid", "2026-11")[0] == 0
    assert json.loads((out_dir / "jwks.json").read_text())["keys"][0]["kid"] == "2026-11"
    before = {name: (out_dir / name).read_bytes() for name in ("private.pem", "public.pem", "jwks.json")}

    code, out, err = run(capsys, "keys", "ed25519", "--out", str(out_dir))
    assert (code, out) == (1, "")
    assert "refusing to overwrite" in err and "--force" in err
    assert "Traceback" not in err
    assert before == {name: (out_dir / name).read_bytes() for name in before}

    # One leftover file is enough to refuse, and nothing is written then.
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "jwks.json").write_text("{}")
    assert run(capsys, "keys", "ec", "--out", str(lone))[0] == 1
    assert sorted(p.name for p in lone.iterdir()) == ["jwks.json"]

    # --force replaces all three; the private key is 0600 even if the old file was wider.
    (out_dir / "private.pem").chmod(0o644)
    code, _, err = run(capsys, "keys", "ed25519", "--out", str(out_dir), "--force")
    assert code == 0, err
    assert stat.S_IMODE((out_dir / "private.pem").stat().st_mode) == 0o600
    for name, old in before.items():
        assert (out_dir / name).read_bytes() != old
    assert sorted(p.name for p in out_dir.iterdir()) == ["jwks.json", "private.pem", "public.pem"]  # no temp files

    # --out naming a file
    not_dir = tmp_path / "file"
    not_dir.write_text("x")
    code, _, err = run(capsys, "keys", "ed25519", "--out", str(not_dir))
    assert code == 1
    assert "not a directory" in err


def test_jwk_thumbprint_matches_rfc_7638() -> None:
    # RFC 7638 §3.1
    jwk = {
        "kty": "RSA",
        "n": (
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiF"
            "V4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0"
            "zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csF"
            "Cur-kEgU8awapJzKnqDKgw"
        ),
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_keys_jwks_of_public_and_private_pems(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_pem, rsa_pem = tmp_path / "ec-private.pem", tmp_path / "rsa-public.pem"
    ec_pem.write_bytes(pem_private(ec_key))
    rsa_pem.write_bytes(
        rsa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )

    code, out, err = run(capsys, "keys", "jwks", str(ec_pem), str(rsa_pem))
    assert code == 0, err
    document = json.loads(out)
    first, second = document["keys"]
    assert (first["kty"], first["alg"], first["use"]) == ("EC", "ES256", "sig")
    assert (second["kty"], second["alg"], second["use"]) == ("RSA", "RS256", "sig")
    assert first["kid"] == jwk_thumbprint(first)[:16] and second["kid"] == jwk_thumbprint(second)[:16]
    assert "d" not in first  # the private PEM is published as its public half
    keyset = KeySet.from_jwks(document)
    for private, jwk in ((ec_key, first), (rsa_key, second)):
        now = int(time.time())
        token = jwt.encode({"sub": "alice", "iat": now, "exp": now + 60}, private, jwk["alg"], {"kid": jwk["kid"]})
        verifier = JWTVerifier(JWTSettings(algorithms=["ES256", "RS256"], keys=keyset))
        assert verifier.verify(token).id == "alice"

    code, out, _ = run(capsys, "keys", "jwks", str(ec_pem), str(rsa_pem), "--kid", "a", "--kid", "b")
    assert code == 0
    assert [k["kid"] for k in json.loads(out)["keys"]] == ["a", "b"]

    code, out, _ = run(capsys, "keys", "jwks", str(rsa_pem), "--alg", "PS256")
    assert code == 0
    assert json.loads(out)["keys"][0]["alg"] == "PS256"


def test_keys_jwks_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    pem = tmp_path / "key.pem"
    pem.write_bytes(pem_private(key))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key\n")
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    cases = [
        ([str(pem), "--kid", "a", "--kid", "b"], 2, "one --kid per PEM"),
        ([str(tmp_path / "missing.pem")], 1, "cannot read"),
        ([str(garbage)], 1, "garbage.pem"),
        ([str(encrypted)], 1, "encrypted.pem"),
        ([str(pem), str(pem)], 1, "duplicate kid"),
        ([str(pem), "--alg", "RS256"], 1, "RS256"),
    ]
    for argv, expected, message in cases:
        code, out, err = run(capsys, "keys", "jwks", *argv)
        assert (code, out) == (expected, ""), argv
        assert err.startswith("authmw: error:") and message in err, err
        assert "Traceback" not in err


# --------------------------------------------------------------------------------------------------
# token mint


def test_mint_from_the_environment(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTHMW_JWT_KEY", JWT_KEY)
    monkeypatch.setenv("AUTHMW_JWT_ISSUER", "https://issuer.example")
    monkeypatch.setenv("AUTHMW_JWT_AUDIENCE", "api")
    code, out, err = run(
        capsys,
        "token",
        "mint",
        "--sub",
        "alice",
        "--scope",
        "items:read items:write",
        "--scope",
        "admin",
        "--claim",
        "org=acme",
        "--claim",
        "staff=true",
        "--claim",
        "level=5",
    )
    assert code == 0, err
    token = out.strip()
    settings = JWTSettings(algorithms=["HS256"], keys=JWT_KEY, issuer="https://issuer.example", audience="api")
    principal = JWTVerifier(settings).verify(token)
    assert principal.id == "alice"
    assert principal.scopes == {"items:read", "items:write", "admin"}
    claims = claims_of(token)
    assert (claims["org"], claims["staff"], claims["level"]) == ("acme", True, 5)
    assert 299 <= claims["exp"] - claims["iat"] <= 300

    # --iss / --aud / --ttl override the environment
    code, out, _ = run(capsys, "token", "mint", "--sub", "bob", "--iss", "other", "--aud", "web", "--ttl", "60")
    assert code == 0
    claims = claims_of(out.strip())
    assert (claims["iss"], claims["aud"]) == ("other", "web")
    assert 59 <= claims["exp"] - claims["iat"] <= 60
    override = JWTSettings(algorithms=["HS256"], keys=JWT_KEY, issuer="other", audience="web")
    assert JWTVerifier(override).verify(out.strip()).id == "bob"

    # --json: the token with its header and claims
    code, out, _ = run(capsys, "token", "mint", "--sub", "carol", "--json")
    document = json.loads(out)
    assert document["claims"]["sub"] == "carol"
    assert document["header"]["typ"] == "JWT"
    assert JWTVerifier(settings).verify(document["token"]).id == "carol"


def test_mint_with_generated_keys(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out_dir = tmp_path / "keys"
    assert run(capsys, "keys", "ed25519", "--out", str(out_dir))[0] == 0
    jwks_path = out_dir / "jwks.json"
    kid = json.loads(jwks_path.read_text())["keys"][0]["kid"]
    verifier = JWTVerifier(JWTSettings(algorithms=["EdDSA"], keys=KeySet.from_jwks_file(jwks_path)))

    # --key-file: the environment is not read; the kid is the key's thumbprint, as in jwks.json
    monkeypatch.setenv("AUTHMW_JWT_KEY", "this would not parse as a key.pem")
    code, out, err = run(capsys, "token", "mint", "--sub", "alice", "--key-file", str(out_dir / "private.pem"))
    assert code == 0, err
    assert jwt.get_unverified_header(out.strip())["kid"] == kid
    assert verifier.verify(out.strip()).id == "alice"
    monkeypatch.delenv("AUTHMW_JWT_KEY")

    # the environment: a JWKS file and the signing key, as a deployment configures them
    monkeypatch.setenv("AUTHMW_JWT_JWKS", str(jwks_path))
    monkeypatch.setenv("AUTHMW_JWT_SIGNING_KEY", str(out_dir / "private.pem"))
    code, out, err = run(capsys, "token", "mint", "--sub", "bob", "--scope", "items:read")
    assert code == 0, err
    assert jwt.get_unverified_header(out.strip())["kid"] == kid
    principal = verifier.verify(out.strip())
    assert (principal.id, principal.scopes) == ("bob", {"items:read"})


def test_mint_with_a_secret_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    secret = "x" * 48
    code, out, err = run(capsys, "token", "mint", "--sub", "alice", "--key", secret, "--alg", "HS384", "--kid", "v1")
    assert code == 0, err
    header = jwt.get_unverified_header(out.strip())
    assert (header["alg"], header["kid"]) == ("HS384", "v1")
    settings = JWTSettings(algorithms=["HS384"], keys=KeySet.from_keys({"v1": secret}))
    assert JWTVerifier(settings).verify(out.strip()).id == "alice"


def test_mint_when_the_jwks_url_cannot_be_fetched(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out_dir = tmp_path / "keys"
    assert run(capsys, "keys", "ed25519", "--out", str(out_dir))[0] == 0
    monkeypatch.setenv("AUTHMW_JWT_JWKS", "http://127.0.0.1:1/jwks.json")
    monkeypatch.setenv("AUTHMW_JWT_ALGORITHMS", "EdDSA")
    monkeypatch.setenv("AUTHMW_JWT_SIGNING_KEY", str(out_dir / "private.pem"))
    code, out, err = run(capsys, "token", "mint", "--sub", "alice", "--kid", "published-kid")
    assert code == 0, err
    assert "warning" in err and "could not be fetched" in err
    assert jwt.get_unverified_header(out.strip())["kid"] == "published-kid"
    verifier = JWTVerifier(JWTSettings(algorithms=["EdDSA"], keys=(out_dir / "public.pem").read_bytes()))
    assert verifier.verify(out.strip()).id == "alice"


def test_mint_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run(capsys, "keys", "ed25519", "--out", str(tmp_path / "a"))[0] == 0
    assert run(capsys, "keys", "ed25519", "--out", str(tmp_path / "b"))[0] == 0
    public_a, private_b = str(tmp_path / "a" / "public.pem"), str(tmp_path / "b" / "private.pem")
    mint = ["token", "mint", "--sub", "alice"]
    cases: list[tuple[dict[str, str], list[str], int, str]] = [
        ({}, [], 2, "no JWT configuration"),
        ({"AUTHMW_JWT_KEY": public_a}, [], 2, "AUTHMW_JWT_SIGNING_KEY"),
        ({"AUTHMW_JWT_KEY": public_a, "AUTHMW_JWT_SIGNING_KEY": private_b}, [], 2, "not among the verification keys"),
        ({"AUTHMW_JWT_KEY": JWT_KEY}, ["--ttl", "90000"], 2, "AUTHMW_JWT_MAX_LIFETIME"),
        ({"AUTHMW_JWT_KEY": JWT_KEY}, ["--alg", "RS256"], 2, "RS256"),
        ({"AUTHMW_JWT_KEY": JWT_KEY}, ["--claim", "sub=mallory"], 2, "--sub"),
        ({"AUTHMW_JWT_KEY": JWT_KEY}, ["--claim", "no-value"], 2, "NAME=VALUE"),
        ({}, ["--key-file", public_a], 2, "public key"),
        ({}, ["--key", "short"], 2, "too short"),
        ({}, ["--key", JWT_KEY, "--alg", "ES256"], 2, "HMAC"),
        ({}, ["--key", JWT_KEY, "--ttl", "90000"], 2, "maximum token lifetime"),
        ({}, ["--key-file", str(tmp_path / "missing")], 1, "cannot read"),
    ]
    for env, argv, expected, message in cases:
        with monkeypatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            code, out, err = run(capsys, *mint, *argv)
        assert (code, out) == (expected, ""), (env, argv, err)
        assert err.startswith("authmw: error:") and message in err, err
        assert "Traceback" not in err


# --------------------------------------------------------------------------------------------------
# sessions and tokens against a real Redis


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    value = f"test:{uuid4().hex}:"
    yield value
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{value}*"):
        client.delete(key)
    client.close()


@pytest.fixture
def store(redis_url: str, prefix: str) -> Iterator[RedisStore]:
    value = RedisStore.from_url(redis_url, prefix=prefix)
    yield value
    value.client.close()


def login(store: RedisStore, user: str) -> None:
    config = AuthConfig(
        sessions=SessionSettings(secret_keys=[SECRET], store=store, cookie_secure=False),
        jwt=JWTSettings(algorithms=["HS256"], keys=JWT_KEY),
    )
    session_cookie(config, user)


def handles(store: RedisStore, user: str) -> dict[str, str]:
    """handle -> session id"""
    return {session_handle(r.sid): r.sid for r in store.list_user(user)}


def refresh_family(store: RedisStore, user: str) -> str:
    """A new refresh-token family for `user`; the hash of its one token."""
    token_hash = uuid4().hex + uuid4().hex
    now = time.time()
    record = RefreshRecord(token_hash=token_hash, user_id=user, family=uuid4().hex, scopes=(), expires=now + 3600)
    assert store.refresh_create(record, now + 3600, True)
    return token_hash


def refresh_outcome(store: RedisStore, user: str, token_hash: str) -> str:
    return store.refresh_use(user_tag(user), token_hash, time.time(), 0.0)[0]


def redis_args(redis_url: str, prefix: str) -> list[str]:
    return ["--redis-url", redis_url, "--prefix", prefix]


@pytest.mark.redis
def test_sessions_list(capsys: pytest.CaptureFixture[str], redis_url: str, prefix: str, store: RedisStore) -> None:
    login(store, "alice")
    login(store, "alice")
    login(store, "bob")
    now = time.time()
    hostile_agent = "Mozilla\x1b[31m\u202e"  # a user agent is whatever the client sent
    store.create(
        SessionRecord(
            sid=f"{user_tag('alice')}.{'A' * 43}",
            user_id="alice",
            created=now + 1,
            auth_time=now,
            absolute_expiry=now + 3600,
            idle_timeout=600,
            last_seen=now,
            user_agent=hostile_agent,
            ip="203.0.113.7",
        )
    )
    expected = handles(store, "alice")
    assert len(expected) == 3

    code, out, err = run(capsys, "sessions", "list", "alice", *redis_args(redis_url, prefix))
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["HANDLE", "CREATED", "LAST", "SEEN", "EXPIRES", "IP", "USER", "AGENT"]
    assert {row.split()[0] for row in rows} == set(expected)
    assert not set(handles(store, "bob")) & {row.split()[0] for row in rows}
    assert "203.0.113.7" in rows[-1]  # oldest first: the hand-made session was created last
    assert "\x1b" not in out and "\u202e" not in out
    assert "Mozilla\\x1b[31m\\u202e" in rows[-1]
    assert all(sid not in out for sid in expected.values())  # the ids are bearer secrets: never shown

    code, out, _ = run(capsys, "sessions", "list", "alice", "--json", *redis_args(redis_url, prefix))
    assert code == 0
    listed = json.loads(out)
    assert {item["handle"] for item in listed} == set(expected)
    last = listed[-1]
    assert (last["user_agent"], last["ip"], last["user_id"]) == (hostile_agent, "203.0.113.7", "alice")
    assert last["expires"] == pytest.approx(now + 3600, abs=1)
    assert set(last) == {"handle", "user_id", "created", "last_seen", "expires", "user_agent", "ip"}

    code, out, _ = run(capsys, "sessions", "list", "nobody", *redis_args(redis_url, prefix))
    assert (code, out.strip()) == (0, "no sessions for user nobody")
    code, out, _ = run(capsys, "sessions", "list", "nobody", "--json", *redis_args(redis_url, prefix))
    assert (code, json.loads(out)) == (0, [])


@pytest.mark.redis
def test_sessions_revoke_one(
    capsys: pytest.CaptureFixture[str], redis_url: str, prefix: str, store: RedisStore
) -> None:
    login(store, "alice")
    login(store, "alice")
    login(store, "bob")
    alice, bob = handles(store, "alice"), handles(store, "bob")
    target, kept = sorted(alice)

    code, out, err = run(capsys, "sessions", "revoke", "alice", target, *redis_args(redis_url, prefix))
    assert code == 0, err
    assert target in out
    assert store.load(alice[target], 60) is None
    assert set(handles(store, "alice")) == {kept}
    assert set(handles(store, "bob")) == set(bob)

    # again: no such session
    code, out, err = run(capsys, "sessions", "revoke", "alice", target, *redis_args(redis_url, prefix))
    assert (code, out) == (1, "")
    assert "no session" in err and target in err
    # another user's handle does not reach that user's session
    [bob_handle] = bob
    code, _, err = run(capsys, "sessions", "revoke", "alice", bob_handle, *redis_args(redis_url, prefix))
    assert code == 1
    assert set(handles(store, "bob")) == {bob_handle}
    assert run(capsys, "sessions", "revoke", "alice", "not-a-handle", *redis_args(redis_url, prefix))[0] == 1


@pytest.mark.redis
def test_sessions_revoke_all(
    capsys: pytest.CaptureFixture[str], redis_url: str, prefix: str, store: RedisStore
) -> None:
    login(store, "alice")
    login(store, "alice")
    login(store, "bob")
    alice_refresh, bob_refresh = refresh_family(store, "alice"), refresh_family(store, "bob")
    before = time.time()

    code, out, err = run(capsys, "sessions", "revoke-all", "alice", "--ttl", "600", *redis_args(redis_url, prefix))
    assert code == 0, err
    assert "revoked 2 sessions of user alice" in out
    assert store.list_user("alice") == []
    not_before, _ = store.token_state("alice", None)
    assert not_before is not None and before <= not_before <= time.time()
    ttl = redis.Redis.from_url(redis_url).pttl(store._user_key("alice", "nbf"))
    assert 590_000 < ttl <= 600_000
    assert refresh_outcome(store, "alice", alice_refresh) == "revoked"
    # bob is untouched
    assert len(store.list_user("bob")) == 1
    assert store.token_state("bob", None) == (None, False)
    assert refresh_outcome(store, "bob", bob_refresh) == "ok"


@pytest.mark.redis
def test_tokens_revoke_all_keeps_sessions(
    capsys: pytest.CaptureFixture[str], redis_url: str, prefix: str, store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    login(store, "alice")
    login(store, "alice")
    alice_refresh, bob_refresh = refresh_family(store, "alice"), refresh_family(store, "bob")
    before = time.time()
    monkeypatch.setenv("AUTHMW_REDIS_URL", redis_url)  # --redis-url defaults to it

    code, out, err = run(capsys, "tokens", "revoke-all", "alice", "--prefix", prefix)
    assert code == 0, err
    assert "sessions kept" in out
    assert len(store.list_user("alice")) == 2
    not_before, _ = store.token_state("alice", None)
    assert not_before is not None and before <= not_before <= time.time()
    ttl = redis.Redis.from_url(redis_url).pttl(store._user_key("alice", "nbf"))
    assert 2 * 24 * 3600 * 1000 - 10_000 < ttl <= 2 * 24 * 3600 * 1000  # the default outlives a 24 h token
    assert refresh_outcome(store, "alice", alice_refresh) == "revoked"
    assert refresh_outcome(store, "bob", bob_refresh) == "ok"


@pytest.mark.redis
def test_a_cli_revocation_reaches_local_caches(capsys: pytest.CaptureFixture[str], redis_url: str, prefix: str) -> None:
    """A middleware process with a local cache refuses a session the operator revoked from the command line."""
    cached = RedisStore.from_url(redis_url, prefix=prefix, local_cache=True)
    cache = cached.local_cache
    assert cache is not None
    try:
        cache.ensure_listening()
        deadline = time.monotonic() + 5
        while not cache.healthy:
            assert time.monotonic() < deadline, "the invalidation channel never came up"
            time.sleep(0.01)
        login(cached, "alice")
        [(handle, sid)] = handles(cached, "alice").items()
        assert cached.load(sid, 60) is not None  # now cached in this process
        assert run(capsys, "sessions", "revoke", "alice", handle, *redis_args(redis_url, prefix))[0] == 0
        deadline = time.monotonic() + 1
        while cached.load(sid, 60) is not None:
            assert time.monotonic() < deadline, "the CLI's revocation never reached the local cache"
            time.sleep(0.005)
    finally:
        cache.close()
        cached.client.close()


# --------------------------------------------------------------------------------------------------
# Redis missing or unreachable: a clear line and an exit code, never a traceback

REDIS_COMMANDS = [
    ["sessions", "list", "alice"],
    ["sessions", "revoke", "alice", "0123456789abcdef"],
    ["sessions", "revoke-all", "alice"],
    ["tokens", "revoke-all", "alice"],
]


@pytest.mark.parametrize("command", REDIS_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_unreachable_redis_exits_1(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    level = logging.getLogger("authmw").level
    code, out, err = run(capsys, *command, "--redis-url", UNREACHABLE)
    assert (code, out) == (1, "")
    assert err.startswith(f"authmw: error: cannot reach Redis at {UNREACHABLE}")
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    assert logging.getLogger("authmw").level == level  # the CLI's log quieting is undone


@pytest.mark.parametrize("command", REDIS_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_missing_redis_url_exits_2(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    code, out, err = run(capsys, *command)
    assert (code, out) == (2, "")
    assert "--redis-url" in err and "AUTHMW_REDIS_URL" in err


def test_redis_url_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "sessions", "list", "alice", "--redis-url", "redis://:hunter2@127.0.0.1:1/0")
    assert code == 1
    assert "cannot reach Redis at redis://:***@127.0.0.1:1/0" in err
    assert "hunter2" not in err
    code, _, err = run(capsys, "sessions", "list", "alice", "--redis-url", "redis://127.0.0.1:1/0?password=hunter2")
    assert code == 1
    assert "password=***" in err and "hunter2" not in err
    code, _, err = run(capsys, "sessions", "list", "alice", "--redis-url", "http://127.0.0.1:6379")
    assert code == 2
    assert "invalid Redis URL" in err


def test_installed_console_script(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "authmw"
    assert script.exists(), "the authmw console script is not installed (pip install -e .)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHMW_")}
    result = subprocess.run(
        [str(script), "sessions", "list", "alice", "--redis-url", UNREACHABLE],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"authmw: error: cannot reach Redis at {UNREACHABLE}")
    assert "Traceback" not in result.stderr

    result = subprocess.run(
        [sys.executable, "-m", "authmw.cli", "keys", "ed25519", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert env_lines(result.stdout)["AUTHMW_JWT_ALGORITHMS"] == "EdDSA"
