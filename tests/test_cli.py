"""The `authmw` command (authmw.cli): key generation, token minting, and session / token revocation against a
real Redis; errors are one line and an exit code, never a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import jwt
import pytest
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from authmw import AuthConfig, JWTSettings, JWTVerifier, KeySet, Policy
from authmw.asgi import AuthMiddleware
from authmw.cli import DEFAULT_PREFIX, EXIT_BROKEN_PIPE, build_parser, jwk_thumbprint, main
from authmw.io import run_sync
from authmw.issuer import TokenIssuer, jti_key
from authmw.sessions import SessionSettings, session_handle
from authmw.stores import RedisStore, RefreshRecord, SessionRecord, user_tag
from authmw.testing import session_cookie

SECRET = "s" * 40
JWT_KEY = "k" * 40
UNREACHABLE = "redis://127.0.0.1:1/0"
ROOT = Path(__file__).resolve().parent.parent
#: what the CLI reads besides AUTHMW_JWT_* and AUTHMW_ACCESS_TOKEN_*
REDIS_VARIABLES = ("AUTHMW_REDIS_URL", "AUTHMW_REDIS_PREFIX")


@pytest.fixture(autouse=True)
def _no_authmw_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads AUTHMW_*; the developer's own settings must not leak into these tests."""
    for name in list(os.environ):
        if name.startswith(("AUTHMW_JWT_", "AUTHMW_ACCESS_TOKEN_")) or name in REDIS_VARIABLES:
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
    ["tokens", "revoke"],
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
        ["tokens", "revoke", "a.b.c", "--jti", "x"],
        ["tokens", "revoke", "--jti", "x", "--sub", "alice", "--exp", "soon"],
        ["tokens", "revoke", "--jti", "x", "--sub", "alice", "--exp", "nan"],
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
    # no temp files; the .gitignore written the first time is kept
    assert sorted(p.name for p in out_dir.iterdir()) == [".gitignore", "jwks.json", "private.pem", "public.pem"]

    # --out naming a file
    not_dir = tmp_path / "file"
    not_dir.write_text("x")
    code, _, err = run(capsys, "keys", "ed25519", "--out", str(not_dir))
    assert code == 1
    assert "not a directory" in err


def git(cwd: Path, *argv: str) -> str:
    result = subprocess.run(["git", *argv], cwd=cwd, capture_output=True, text=True, timeout=60, check=True)
    return result.stdout


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_key_pair_directory_is_never_committed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`authmw keys rsa --out keys/` inside a working tree: `git add .` must not take the private key."""
    git(tmp_path, "init", "-q")
    (tmp_path / "app.py").write_text("print('hello')\n")
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "keys", "rsa", "--bits", "2048", "--out", "keys/")
    assert code == 0, err
    ignore = tmp_path / "keys" / ".gitignore"
    assert "*" in ignore.read_text().splitlines()
    assert f"wrote {ignore}" in err and "git" in err
    assert ".gitignore" not in out  # stdout stays the files and the AUTHMW_* lines
    git(tmp_path, "add", ".")
    assert git(tmp_path, "ls-files").split() == ["app.py"]

    # --force again: the .gitignore is there already, so it is neither rewritten nor announced
    ignore.write_text("*\n# mine\n")
    code, _, err = run(capsys, "keys", "rsa", "--bits", "2048", "--out", "keys/", "--force")
    assert code == 0, err
    assert (ignore.read_text(), err) == ("*\n# mine\n", "")

    # a directory with its own .gitignore keeps it
    own = tmp_path / "own"
    own.mkdir()
    (own / ".gitignore").write_text("private.pem\n")
    code, _, err = run(capsys, "keys", "ed25519", "--out", str(own))
    assert code == 0, err
    assert ((own / ".gitignore").read_text(), err) == ("private.pem\n", "")


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_repository_ignores_keys() -> None:
    ignored = git(ROOT, "check-ignore", "--no-index", "keys/private.pem")
    assert ignored.strip() == "keys/private.pem"


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
    assert document["header"] == {"alg": "HS256", "typ": "JWT"}
    assert JWTVerifier(settings).verify(document["token"]).id == "carol"


@pytest.mark.parametrize(
    "source",
    [["--key", "x" * 48, "--alg", "HS384"], ["--key", "x" * 48, "--kid", "v2"], ["--key-file", "ed25519"]],
    ids=["hs384", "kid", "ed25519"],
)
def test_mint_json_prints_the_tokens_own_header(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, source: list[str]
) -> None:
    if source[-1] == "ed25519":
        assert run(capsys, "keys", "ed25519", "--out", str(tmp_path))[0] == 0
        source = ["--key-file", str(tmp_path / "private.pem")]
    code, out, err = run(capsys, "token", "mint", "--sub", "alice", "--json", *source)
    assert code == 0, err
    document = json.loads(out)
    header = jwt.get_unverified_header(document["token"])
    assert document["header"] == header
    assert header["alg"] in ("HS384", "HS256", "EdDSA")
    assert document["claims"] == claims_of(document["token"])


def clean_environment(**extra: str) -> dict[str, str]:
    """The environment of a subprocess: no AUTHMW_* of the developer's, and Python's default (block) buffering."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHMW_") and k != "PYTHONUNBUFFERED"}
    return {**env, **extra}


def test_mint_for_a_readme(tmp_path: Path) -> None:
    """The line a README gives: `AUTHMW_JWT_ALGORITHMS=HS256 AUTHMW_JWT_KEY=… authmw token mint --sub alice
    --scope items:read` prints the token and nothing else on stdout, so `TOKEN=$(…)` works."""
    env = clean_environment(AUTHMW_JWT_ALGORITHMS="HS256", AUTHMW_JWT_KEY=JWT_KEY)
    script = Path(sys.executable).parent / "authmw"
    argv = [str(script), "token", "mint", "--sub", "alice", "--scope", "items:read"]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    [token] = result.stdout.splitlines()
    assert result.stdout == token + "\n"
    principal = JWTVerifier(JWTSettings(algorithms=["HS256"], keys=JWT_KEY)).verify(token)
    assert (principal.id, principal.scopes) == ("alice", {"items:read"})
    assert "Traceback" not in result.stderr


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
    return {session_handle(r.sid): r.sid for r in run_sync(store.list_user(user))}


def refresh_family(store: RedisStore, user: str) -> str:
    """A new refresh-token family for `user`; the hash of its one token."""
    token_hash = uuid4().hex + uuid4().hex
    now = time.time()
    record = RefreshRecord(token_hash=token_hash, user_id=user, family=uuid4().hex, scopes=(), expires=now + 3600)
    assert run_sync(store.refresh_create(record, now + 3600, True))
    return token_hash


def refresh_outcome(store: RedisStore, user: str, token_hash: str) -> str:
    return run_sync(store.refresh_use(user_tag(user), token_hash, time.time(), 0.0))[0]


def redis_args(redis_url: str, prefix: str) -> list[str]:
    return ["--redis-url", redis_url, "--prefix", prefix]


@pytest.mark.redis
def test_sessions_list(capsys: pytest.CaptureFixture[str], redis_url: str, prefix: str, store: RedisStore) -> None:
    login(store, "alice")
    login(store, "alice")
    login(store, "bob")
    now = time.time()
    hostile_agent = "Mozilla\x1b[31m\u202e"  # a user agent is whatever the client sent
    run_sync(
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
    assert run_sync(store.load(alice[target], 60)) is None
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
def test_sessions_revoke_one_also_ends_the_tokens_issued_from_that_session(
    capsys: pytest.CaptureFixture[str], redis_url: str, prefix: str, store: RedisStore
) -> None:
    """The handle names the session as before (its public name, never the id), and ending it revokes the refresh
    families issued from it: their refresh tokens, and the access tokens that name them (claim `sid`)."""
    login(store, "alice")
    login(store, "alice")
    alice = handles(store, "alice")
    target, kept = sorted(alice)
    now = time.time()
    families = {}
    for handle in (target, kept):
        record = RefreshRecord(
            token_hash=uuid4().hex + uuid4().hex,
            user_id="alice",
            family=uuid4().hex,
            scopes=(),
            expires=now + 3600,
            session_sid=alice[handle],
        )
        assert run_sync(store.refresh_create(record, now + 3600, True))
        families[handle] = record
    code, _, err = run(capsys, "sessions", "revoke", "alice", target, *redis_args(redis_url, prefix))
    assert code == 0, err
    assert run_sync(store.token_state("alice", None, 0.0, families[target].family)) == (None, True)
    assert refresh_outcome(store, "alice", families[target].token_hash) == "revoked"
    assert run_sync(store.token_state("alice", None, 0.0, families[kept].family)) == (None, False)
    assert refresh_outcome(store, "alice", families[kept].token_hash) == "ok"


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
    assert run_sync(store.list_user("alice")) == []
    not_before, _ = run_sync(store.token_state("alice", None))
    assert not_before is not None and before <= not_before <= time.time()
    ttl = redis.Redis.from_url(redis_url).pttl(store._user_key("alice", "nbf"))
    assert 590_000 < ttl <= 600_000
    assert refresh_outcome(store, "alice", alice_refresh) == "revoked"
    # bob is untouched
    assert len(run_sync(store.list_user("bob"))) == 1
    assert run_sync(store.token_state("bob", None)) == (None, False)
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
    assert len(run_sync(store.list_user("alice"))) == 2
    not_before, _ = run_sync(store.token_state("alice", None))
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
        assert run_sync(cached.load(sid, 60)) is not None  # now cached in this process
        assert run(capsys, "sessions", "revoke", "alice", handle, *redis_args(redis_url, prefix))[0] == 0
        deadline = time.monotonic() + 1
        while run_sync(cached.load(sid, 60)) is not None:
            assert time.monotonic() < deadline, "the CLI's revocation never reached the local cache"
            time.sleep(0.005)
    finally:
        cache.close()
        cached.client.close()


@pytest.mark.redis
def test_prefix_defaults_to_the_environment(
    capsys: pytest.CaptureFixture[str], redis_url: str, prefix: str, store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTHMW_REDIS_URL", redis_url)
    monkeypatch.setenv("AUTHMW_REDIS_PREFIX", prefix)
    login(store, "alice")
    code, out, err = run(capsys, "sessions", "list", "alice", "--json")
    assert code == 0, err
    assert len(json.loads(out)) == 1
    assert run(capsys, "tokens", "revoke-all", "alice")[0] == 0
    assert run_sync(store.token_state("alice", None))[0] is not None
    # --prefix wins over the environment
    code, out, _ = run(capsys, "sessions", "list", "alice", "--json", "--prefix", f"{prefix}other:")
    assert (code, json.loads(out)) == (0, [])
    # set but empty: a mistake, as the middleware's configuration says too
    monkeypatch.setenv("AUTHMW_REDIS_PREFIX", "")
    code, out, err = run(capsys, "sessions", "list", "alice")
    assert (code, out) == (2, "")
    assert "AUTHMW_REDIS_PREFIX" in err


def test_prefix_default_without_the_environment() -> None:
    assert build_parser().parse_args(["sessions", "list", "alice"]).prefix is None  # resolved when used
    assert DEFAULT_PREFIX == "authmw:"
    assert RedisStore(client=object()).prefix == DEFAULT_PREFIX  # the library's own default


# --------------------------------------------------------------------------------------------------
# tokens revoke: one access token on the middleware's jti denylist


def bearer_app(store: RedisStore, **settings: Any) -> AuthMiddleware:
    """The middleware as a deployment runs it: bearer JWTs, revocations in the Redis store."""

    async def ok(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    jwt_settings = JWTSettings(algorithms=["HS256"], keys=JWT_KEY, revocation_store=store, **settings)
    return AuthMiddleware(ok, AuthConfig(jwt=jwt_settings, default=Policy.jwt()))


Check = Callable[[str], Awaitable[str]]


def with_app(app: AuthMiddleware, scenario: Callable[[Check], Awaitable[None]]) -> None:
    """Run `scenario` with `check(token)`: "ok", or the error code of the 401 the app answers."""

    async def session() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:

            async def check(token: str) -> str:
                response = await client.get("/api/items", headers={"Authorization": f"Bearer {token}"})
                if response.status_code == 200:
                    return "ok"
                assert response.status_code == 401, response.text
                challenge = response.headers["www-authenticate"]
                return challenge.split('error="', 1)[1].split('"', 1)[0]

            await scenario(check)

    asyncio.run(session())


def mint(capsys: pytest.CaptureFixture[str], user: str = "alice") -> str:
    code, out, err = run(capsys, "token", "mint", "--sub", user, "--scope", "items:read")
    assert code == 0, err
    return out.strip()


def denied_keys(redis_url: str, prefix: str) -> dict[str, int]:
    """The jti denylist entries under `prefix`: key -> milliseconds left."""
    client = redis.Redis.from_url(redis_url)
    try:
        return {key.decode(): client.pttl(key) for key in client.scan_iter(match=f"{prefix}*:jti:*")}
    finally:
        client.close()


@pytest.fixture
def jwt_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTHMW_JWT_ALGORITHMS", "HS256")
    monkeypatch.setenv("AUTHMW_JWT_KEY", JWT_KEY)


@pytest.mark.redis
@pytest.mark.usefixtures("jwt_environment")
def test_tokens_revoke_denies_one_token(
    capsys: pytest.CaptureFixture[str],
    redis_url: str,
    prefix: str,
    store: RedisStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    revoked, sibling, piped, dashed = (mint(capsys) for _ in range(4))
    bob = mint(capsys, "bob")

    async def scenario(check: Check) -> None:
        for token in (revoked, sibling, piped, dashed, bob):
            assert await check(token) == "ok"  # accepted, and remembered by this process

        code, out, err = run(capsys, "tokens", "revoke", revoked, *redis_args(redis_url, prefix))
        assert code == 0, err
        assert f"revoked token {claims_of(revoked)['jti']} of user alice" in out
        assert revoked not in out + err  # the token is a bearer secret
        assert await check(revoked) == "invalid_token"
        assert await check(sibling) == "ok"
        assert await check(bob) == "ok"

        # from stdin: no argument, or -
        monkeypatch.setattr(sys, "stdin", io.StringIO(piped + "\n"))
        assert run(capsys, "tokens", "revoke", *redis_args(redis_url, prefix))[0] == 0
        monkeypatch.setattr(sys, "stdin", io.StringIO(dashed))
        assert run(capsys, "tokens", "revoke", "-", *redis_args(redis_url, prefix))[0] == 0
        assert [await check(token) for token in (piped, dashed, sibling)] == ["invalid_token", "invalid_token", "ok"]

    with_app(bearer_app(store), scenario)

    # Denied until exp plus the leeway (30 s by default), under the key the middleware reads (issuer.jti_key).
    claims = claims_of(revoked)
    key = store._user_key("alice", "jti", jti_key(None, claims["jti"]))
    left = denied_keys(redis_url, prefix)
    assert len(left) == 3
    expected = (claims["exp"] + 30 - time.time()) * 1000
    assert expected - 5000 < left[key] <= expected + 1000  # the server's clock and milliseconds
    assert run_sync(store.token_state("alice", jti_key(None, claims["jti"]))) == (None, True)

    # again: nothing changes, still done
    assert run(capsys, "tokens", "revoke", revoked, *redis_args(redis_url, prefix))[0] == 0
    assert len(denied_keys(redis_url, prefix)) == 3


@pytest.mark.redis
@pytest.mark.usefixtures("jwt_environment")
def test_tokens_revoke_reaches_other_processes_caches(
    capsys: pytest.CaptureFixture[str], redis_url: str, prefix: str
) -> None:
    """A middleware process with a local cache, which saw the token accepted, refuses it once the CLI revoked it."""
    cached = RedisStore.from_url(redis_url, prefix=prefix, local_cache=True)
    cache = cached.local_cache
    assert cache is not None
    revoked, sibling = mint(capsys), mint(capsys)

    async def scenario(check: Check) -> None:
        cache.ensure_listening()
        deadline = time.monotonic() + 5
        while not cache.healthy:
            assert time.monotonic() < deadline, "the invalidation channel never came up"
            await asyncio.sleep(0.01)
        assert [await check(revoked), await check(sibling)] == ["ok", "ok"]
        assert run(capsys, "tokens", "revoke", revoked, *redis_args(redis_url, prefix))[0] == 0
        deadline = time.monotonic() + 1
        while await check(revoked) == "ok":
            assert time.monotonic() < deadline, "the CLI's revocation never reached the local cache"
            await asyncio.sleep(0.005)
        assert await check(revoked) == "invalid_token"
        assert await check(sibling) == "ok"

    try:
        with_app(bearer_app(cached), scenario)
    finally:
        cache.close()
        cached.client.close()


@pytest.mark.redis
def test_tokens_revoke_by_jti(
    capsys: pytest.CaptureFixture[str],
    redis_url: str,
    prefix: str,
    store: RedisStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AUTHMW_JWT_KEY", JWT_KEY)
    monkeypatch.setenv("AUTHMW_JWT_ISSUER", "https://issuer.example")
    revoked, sibling, other = mint(capsys), mint(capsys), mint(capsys)

    def by_claims(token: str, *extra: str) -> tuple[int, str, str]:
        claims = claims_of(token)
        named = ["--jti", claims["jti"], "--sub", claims["sub"], "--exp", str(claims["exp"])]
        return run(capsys, "tokens", "revoke", *named, *extra, *redis_args(redis_url, prefix))

    async def scenario(check: Check) -> None:
        # --iss defaults to the one configured issuer: it is part of the denylist key
        code, out, err = by_claims(revoked)
        assert code == 0, err
        assert f"revoked token {claims_of(revoked)['jti']} of user alice" in out
        assert [await check(revoked), await check(sibling)] == ["invalid_token", "ok"]
        code, _, err = by_claims(other, "--iss", "https://issuer.example")
        assert code == 0, err
        assert [await check(other), await check(sibling)] == ["invalid_token", "ok"]
        # an issuer that is not accepted names no token that could be accepted
        code, out, err = by_claims(sibling, "--iss", "https://elsewhere.example")
        assert (code, out) == (2, "")
        assert "--iss" in err
        assert await check(sibling) == "ok"

    with_app(bearer_app(store, issuer="https://issuer.example"), scenario)
    assert len(denied_keys(redis_url, prefix)) == 2


@pytest.mark.redis
@pytest.mark.usefixtures("jwt_environment")
def test_tokens_revoke_expired_and_invalid_tokens(
    capsys: pytest.CaptureFixture[str], redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = int(time.time())

    def token(key: str = JWT_KEY, **claims: Any) -> str:
        return jwt.encode({"sub": "alice", "iat": now, "exp": now + 60, "jti": uuid4().hex, **claims}, key, "HS256")

    args = redis_args(redis_url, prefix)
    # expired (past the leeway): nothing to do, and nothing written; not even Redis is needed
    for argv in ([token(iat=now - 600, exp=now - 60)], ["--jti", "old", "--sub", "alice", "--exp", str(now - 60)]):
        code, out, err = run(capsys, "tokens", "revoke", *argv, "--redis-url", UNREACHABLE)
        assert code == 0, err
        assert "expired" in out and "nothing to revoke" in out
    # within the leeway the middleware still accepts it: denied
    assert run(capsys, "tokens", "revoke", token(iat=now - 600, exp=now - 5), *args)[0] == 0
    assert len(denied_keys(redis_url, prefix)) == 1

    monkeypatch.setenv("AUTHMW_JWT_ISSUER", "https://issuer.example")
    no_jti = jwt.encode({"sub": "alice", "iat": now, "exp": now + 60, "iss": "https://issuer.example"}, JWT_KEY)
    cases = [
        (token("f" * 40, iss="https://issuer.example"), "signature"),
        ("not a token", "not a compact JWS"),
        (no_jti, "no jti"),
        (token(iss="https://elsewhere.example"), "issuer"),
    ]
    for text, message in cases:
        code, out, err = run(capsys, "tokens", "revoke", text, *args)
        assert (code, out) == (1, ""), (message, err)
        assert err.startswith("authmw: error:") and message in err, err
        assert text not in err
    assert len(denied_keys(redis_url, prefix)) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--jti", "x", "--sub", "alice"], "--exp"),
        (["--jti", "x", "--exp", "{soon}"], "--sub"),
        (["a.b.c", "--sub", "alice"], "go with --jti"),
        (["--jti", "x", "--sub", "alice", "--exp", "{soon_ms}"], "seconds"),
        (["--jti", "", "--sub", "alice", "--exp", "{soon}"], "empty"),
    ],
    ids=["no-exp", "no-sub", "sub-with-token", "exp-in-ms", "empty-jti"],
)
@pytest.mark.usefixtures("jwt_environment")
def test_tokens_revoke_argument_errors(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    soon = int(time.time()) + 60
    argv = [arg.format(soon=soon, soon_ms=soon * 1000) for arg in argv]
    code, out, err = run(capsys, "tokens", "revoke", *argv, "--redis-url", UNREACHABLE)
    assert (code, out) == (2, "")
    assert err.startswith("authmw: error:") and message in err, err


def test_tokens_revoke_needs_jwt_configuration_and_a_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = run(capsys, "tokens", "revoke", "a.b.c", "--redis-url", UNREACHABLE)
    assert (code, out) == (2, "")
    assert "no JWT configuration" in err and "AUTHMW_JWT_KEY" in err
    monkeypatch.setenv("AUTHMW_JWT_KEY", JWT_KEY)
    monkeypatch.setattr(sys, "stdin", io.StringIO("  \n"))
    code, _, err = run(capsys, "tokens", "revoke", "--redis-url", UNREACHABLE)
    assert code == 2 and "no token on stdin" in err


# --------------------------------------------------------------------------------------------------
# Redis missing or unreachable: a clear line and an exit code, never a traceback

REDIS_COMMANDS = [
    ["sessions", "list", "alice"],
    ["sessions", "revoke", "alice", "0123456789abcdef"],
    ["sessions", "revoke-all", "alice"],
    ["tokens", "revoke-all", "alice"],
    ["tokens", "revoke", "--jti", "x", "--sub", "alice", "--exp", str(int(time.time()) + 3600)],
]


@pytest.mark.parametrize("command", REDIS_COMMANDS, ids=lambda c: " ".join(c[:2]))
@pytest.mark.usefixtures("jwt_environment")
def test_unreachable_redis_exits_1(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    level = logging.getLogger("authmw").level
    code, out, err = run(capsys, *command, "--redis-url", UNREACHABLE)
    assert (code, out) == (1, "")
    assert err.startswith(f"authmw: error: cannot reach Redis at {UNREACHABLE}")
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    assert logging.getLogger("authmw").level == level  # the CLI's log quieting is undone


@pytest.mark.parametrize("command", REDIS_COMMANDS, ids=lambda c: " ".join(c[:2]))
@pytest.mark.usefixtures("jwt_environment")
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


# --------------------------------------------------------------------------------------------------
# a reader that goes away early (`authmw … | head -1`): exit 141, no traceback


def closed_pipe_run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the CLI with stdout a pipe whose reader has gone, as `| head -1` leaves it once head exits."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "authmw.cli", *argv],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=60,
        )
    finally:
        os.close(write_end)


def two_pems(directory: Path) -> list[str]:
    paths = [directory / "a.pem", directory / "b.pem"]
    for path in paths:
        path.write_bytes(pem_private(ed25519.Ed25519PrivateKey.generate()))
    return [str(path) for path in paths]


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("command", ["jwks", "mint", "hs"])
def test_closed_stdout_exits_141_without_a_traceback(tmp_path: Path, command: str, unbuffered: bool) -> None:
    env = clean_environment(AUTHMW_JWT_KEY=JWT_KEY, **({"PYTHONUNBUFFERED": "1"} if unbuffered else {}))
    argv = {
        "jwks": ["keys", "jwks", *two_pems(tmp_path)],
        "mint": ["token", "mint", "--sub", "alice", "--json"],
        "hs": ["keys", "hs"],
    }[command]
    result = closed_pipe_run(argv, env)
    assert (result.returncode, result.stderr) == (EXIT_BROKEN_PIPE, "")


def test_closed_stdout_after_help() -> None:
    result = closed_pipe_run(["--help"], clean_environment())
    assert (result.returncode, result.stderr) == (EXIT_BROKEN_PIPE, "")
    # unbuffered, argparse itself drops the failed write and exits 0: still no traceback
    result = closed_pipe_run(["tokens", "revoke", "--help"], clean_environment(PYTHONUNBUFFERED="1"))
    assert (result.returncode, result.stderr) in ((0, ""), (EXIT_BROKEN_PIPE, ""))


@pytest.mark.redis
def test_closed_stdout_after_a_redis_command(redis_url: str, prefix: str, store: RedisStore) -> None:
    login(store, "alice")
    argv = ["sessions", "list", "alice", "--json", *redis_args(redis_url, prefix)]
    result = closed_pipe_run(argv, clean_environment())
    assert (result.returncode, result.stderr) == (EXIT_BROKEN_PIPE, "")
