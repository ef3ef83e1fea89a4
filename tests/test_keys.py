"""Key sets: static keys, `{kid: key}` maps, JWKS documents and files, and JWKS URLs with rotation.

Remote key sets are served by a real `http.server.ThreadingHTTPServer` on 127.0.0.1 (port 0) in a
thread, counting the requests it gets; the last tests drive a key rotation through the engine
(`Authenticator.flow` run by `run_sync`) the way a request would.
"""

from __future__ import annotations

import inspect
import json
import math
import socket
import threading
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, x25519
from tests.jwt_helpers import (
    NOW,
    OTHER_SECRET,
    SECRET,
    JWKSServer,
    KeyMaterial,
    b64,
    claims,
    craft,
    public_jwk,
    public_pem,
    self_signed_certificate,
)

import authmw.engine
import authmw.io
from authmw.config import AuthConfig
from authmw.engine import Authenticator
from authmw.errors import ConfigurationError, InvalidToken, ServiceUnavailable
from authmw.keys import KeySet, RemoteKeySet, VerificationKey
from authmw.policy import Policy, Route
from authmw.principal import Principal
from authmw.request import ASGIRequestView
from authmw.tokens import JWTSettings, JWTVerifier

RSA_ALGORITHMS = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
HMAC_ALGORITHMS = {"HS256", "HS384", "HS512"}


@pytest.fixture(scope="module")
def km() -> KeyMaterial:
    return KeyMaterial.generate()


@pytest.fixture
def jwks_server(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> JWKSServer:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    server = JWKSServer()
    request.addfinalizer(server.stop)
    return server


def token(private: Any, kid: str | None, alg: str = "RS256", *, now: float = NOW, **overrides: Any) -> str:
    payload = claims(iat=int(now), exp=int(now) + 300, **overrides)
    return jwt.encode(payload, private, algorithm=alg, headers={"kid": kid} if kid is not None else None)


def verifier(keys: Any, algorithms: list[str] | None = None, **settings: Any) -> JWTVerifier:
    return JWTVerifier(JWTSettings(algorithms=algorithms or ["RS256"], keys=keys, **settings))


def remote(url: str, *, refresh_interval: float = 300.0, min_refresh_interval: float = 0.0) -> RemoteKeySet:
    keyset = KeySet.from_jwks_url(
        url, refresh_interval=refresh_interval, min_refresh_interval=min_refresh_interval, timeout=2.0
    )
    assert isinstance(keyset, RemoteKeySet)
    return keyset


# ---------------------------------------------------------------- KeySet.from_key


def test_from_key_hmac_secret_str_and_bytes() -> None:
    for secret in (SECRET, SECRET.hex()):
        keyset = KeySet.from_key(secret)
        (key,) = keyset.keys
        assert key.is_hmac
        assert key.algorithms == HMAC_ALGORITHMS
        assert verifier(keyset, ["HS256"]).verify(craft(secret=key.material), now=NOW).id == "alice"
    assert KeySet.from_key(SECRET[:32]).keys[0].algorithms == {"HS256"}
    assert KeySet.from_key(SECRET[:48]).keys[0].algorithms == {"HS256", "HS384"}


def test_from_key_pem_public_private_certificate_and_objects(km: KeyMaterial) -> None:
    private = km.rsa
    forms: list[Any] = [
        public_pem(private),
        public_pem(private).decode(),
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        ),
        self_signed_certificate(private).public_bytes(serialization.Encoding.PEM),
        private.public_key(),
        private,
        public_jwk(private),
    ]
    good = token(private, None)
    for form in forms:
        keyset = KeySet.from_key(form)
        (key,) = keyset.keys
        assert key.algorithms == RSA_ALGORITHMS
        assert isinstance(key.material, rsa.RSAPublicKey)  # private material is never kept
        assert verifier(keyset).verify(good, now=NOW).id == "alice"


@pytest.mark.parametrize(
    "material",
    [
        b"-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n",
        "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----",
    ],
)
def test_from_key_unreadable_pem_raises(material: str | bytes) -> None:
    with pytest.raises(ConfigurationError):
        KeySet.from_key(material)


def test_from_key_encrypted_private_pem_raises(km: KeyMaterial) -> None:
    encrypted = km.rsa.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    with pytest.raises(ConfigurationError):
        KeySet.from_key(encrypted)


@pytest.mark.parametrize(
    "kind,expected",
    [
        ("rsa", RSA_ALGORITHMS),
        ("p256", {"ES256"}),
        ("p384", {"ES384"}),
        ("p521", {"ES512"}),
        ("ed25519", {"EdDSA"}),
        ("ed448", {"EdDSA"}),
    ],
)
def test_key_type_decides_its_algorithms(km: KeyMaterial, kind: str, expected: set[str]) -> None:
    private = getattr(km, kind)
    for form in (private.public_key(), public_pem(private), public_jwk(private)):
        assert KeySet.from_key(form).keys[0].algorithms == expected


def test_from_key_algorithm_narrows_the_key(km: KeyMaterial) -> None:
    keyset = KeySet.from_key(km.rsa.public_key(), algorithm="PS256")
    assert keyset.keys[0].algorithms == {"PS256"}
    both = verifier(keyset, ["RS256", "PS256"])
    assert both.verify(token(km.rsa, None, "PS256"), now=NOW).id == "alice"
    with pytest.raises(InvalidToken):
        both.verify(token(km.rsa, None, "RS256"), now=NOW)
    assert KeySet.from_key(SECRET, algorithm="HS512").keys[0].algorithms == {"HS512"}


@pytest.mark.parametrize(
    "kind,algorithm",
    [("rsa", "HS256"), ("rsa", "ES256"), ("rsa", "EdDSA"), ("p256", "ES384"), ("p256", "RS256"), ("ed25519", "ES256")],
)
def test_from_key_algorithm_of_another_family_raises(km: KeyMaterial, kind: str, algorithm: str) -> None:
    with pytest.raises(ConfigurationError):
        KeySet.from_key(getattr(km, kind).public_key(), algorithm=algorithm)


@pytest.mark.parametrize("algorithm", ["RS256", "ES256", "EdDSA", "none", "hs256"])
def test_from_key_secret_with_non_hmac_algorithm_raises(algorithm: str) -> None:
    with pytest.raises(ConfigurationError):
        KeySet.from_key(SECRET, algorithm=algorithm)


def test_unsupported_curves_and_key_types_raise() -> None:
    secp256k1 = ec.generate_private_key(ec.SECP256K1())
    for key in (secp256k1, secp256k1.public_key(), x25519.X25519PrivateKey.generate().public_key(), object(), 12345):
        with pytest.raises(ConfigurationError):
            KeySet.from_key(key)


# ---------------------------------------------------------------- KeySet.from_keys


def test_from_keys_selects_by_kid(km: KeyMaterial) -> None:
    keyset = KeySet.from_keys({"rsa": km.rsa.public_key(), "ec": public_pem(km.p256), "ed": km.ed25519})
    assert {key.kid for key in keyset.keys} == {"rsa", "ec", "ed"}
    multi = verifier(keyset, ["RS256", "ES256", "EdDSA"])
    assert multi.verify(token(km.rsa, "rsa"), now=NOW).id == "alice"
    assert multi.verify(token(km.p256, "ec", "ES256"), now=NOW).id == "alice"
    assert multi.verify(token(km.ed25519, "ed", "EdDSA"), now=NOW).id == "alice"
    for bad in (token(km.rsa, "ec"), token(km.p256, "rsa", "ES256"), token(km.rsa, None), token(km.rsa, "RSA")):
        with pytest.raises(InvalidToken):
            multi.verify(bad, now=NOW)


def test_from_keys_hmac_secrets_by_kid() -> None:
    keyset = KeySet.from_keys({"old": OTHER_SECRET, "new": SECRET})
    multi = verifier(keyset, ["HS256"])
    assert multi.verify(craft({"alg": "HS256", "kid": "new"}), now=NOW).id == "alice"
    assert multi.verify(craft({"alg": "HS256", "kid": "old"}, secret=OTHER_SECRET), now=NOW).id == "alice"
    with pytest.raises(InvalidToken):
        multi.verify(craft({"alg": "HS256", "kid": "old"}), now=NOW)


def test_duplicate_kid_raises(km: KeyMaterial) -> None:
    with pytest.raises(ConfigurationError):
        KeySet([VerificationKey.from_any(SECRET, kid="a"), VerificationKey.from_any(OTHER_SECRET, kid="a")])
    with pytest.raises(ConfigurationError):
        KeySet.from_jwks({"keys": [public_jwk(km.rsa, kid="a"), public_jwk(km.rsa_other, kid="a")]})


# ---------------------------------------------------------------- KeySet.from_jwks / from_jwks_file


def _jwks(km: KeyMaterial) -> dict[str, Any]:
    return {"keys": [public_jwk(km.rsa, kid="r1"), public_jwk(km.p256, kid="e1"), public_jwk(km.ed25519, kid="o1")]}


def test_from_jwks_dict_text_and_bytes(km: KeyMaterial) -> None:
    document = _jwks(km)
    for source in (document, json.dumps(document), json.dumps(document).encode()):
        keyset = KeySet.from_jwks(source)
        assert [key.kid for key in keyset.keys] == ["r1", "e1", "o1"]
        multi = verifier(keyset, ["RS256", "ES256", "EdDSA"])
        assert multi.verify(token(km.rsa, "r1"), now=NOW).id == "alice"
        assert multi.verify(token(km.p256, "e1", "ES256"), now=NOW).id == "alice"
        assert multi.verify(token(km.ed25519, "o1", "EdDSA"), now=NOW).id == "alice"


def test_from_jwks_strict_raises_on_unusable_key_and_lenient_skips_it(km: KeyMaterial) -> None:
    document = _jwks(km)
    document["keys"].append({"kty": "RSA", "kid": "enc", "use": "enc", **public_jwk(km.rsa_other)})
    document["keys"].append({"kty": "XYZ", "kid": "weird"})
    document["keys"].append("not an object")
    with pytest.raises(ConfigurationError):
        KeySet.from_jwks(document)
    lenient = KeySet.from_jwks(document, strict=False)
    assert [key.kid for key in lenient.keys] == ["r1", "e1", "o1"]


@pytest.mark.parametrize(
    "document",
    [
        [],
        {},
        {"keys": {}},
        {"keys": "r1"},
        {"keys": None},
        "not json",
        b"\xff\xfe",
        '{"keys": [}',
    ],
)
def test_from_jwks_not_a_jwks_raises(document: Any) -> None:
    with pytest.raises(ConfigurationError):
        KeySet.from_jwks(document)


def test_from_jwks_file(km: KeyMaterial, tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(_jwks(km)))
    for source in (path, str(path)):
        keyset = KeySet.from_jwks_file(source)
        assert verifier(keyset, ["RS256", "ES256", "EdDSA"]).verify(token(km.rsa, "r1"), now=NOW).id == "alice"
    bad = tmp_path / "bad.json"
    bad.write_text('{"keys": 1}')
    with pytest.raises(ConfigurationError):
        KeySet.from_jwks_file(bad)


# ---------------------------------------------------------------- VerificationKey.from_jwk


def test_from_jwk_alg_narrows_to_one_algorithm(km: KeyMaterial) -> None:
    # GHSA-jq35-7prp-9v3f: a JWK's `alg` binds the key; another RSA algorithm must not verify with it.
    key = VerificationKey.from_jwk(public_jwk(km.rsa, kid="k", alg="PS256"))
    assert key.algorithms == {"PS256"}
    both = verifier(KeySet([key]), ["RS256", "PS256"])
    assert both.verify(token(km.rsa, "k", "PS256"), now=NOW).id == "alice"
    with pytest.raises(InvalidToken):
        both.verify(token(km.rsa, "k", "RS256"), now=NOW)
    oct_key = VerificationKey.from_jwk({"kty": "oct", "k": b64(SECRET), "alg": "HS384"})
    assert oct_key.algorithms == {"HS384"}


@pytest.mark.parametrize(
    "kind,alg",
    [("rsa", "HS256"), ("rsa", "ES256"), ("p256", "ES384"), ("p256", "RS256"), ("ed25519", "ES256"), ("oct", "RS256")],
)
def test_from_jwk_alg_must_fit_the_key_type(km: KeyMaterial, kind: str, alg: str) -> None:
    jwk = {"kty": "oct", "k": b64(SECRET)} if kind == "oct" else public_jwk(getattr(km, kind))
    with pytest.raises(ConfigurationError):
        VerificationKey.from_jwk({**jwk, "alg": alg})


@pytest.mark.parametrize("alg", ["none", "RSA-OAEP", "A256GCM", "rs256", "HS1", 256])
def test_from_jwk_unsupported_alg_raises(km: KeyMaterial, alg: Any) -> None:
    with pytest.raises(ConfigurationError):
        VerificationKey.from_jwk({**public_jwk(km.rsa), "alg": alg})


def test_from_jwk_use_must_be_sig(km: KeyMaterial) -> None:
    assert VerificationKey.from_jwk({**public_jwk(km.rsa), "use": "sig"}).algorithms == RSA_ALGORITHMS
    for use in ("enc", "SIG", "", None):
        with pytest.raises(ConfigurationError):
            VerificationKey.from_jwk({**public_jwk(km.rsa), "use": use})


def test_from_jwk_key_ops_must_allow_verify(km: KeyMaterial) -> None:
    for ops in (["verify"], ["sign", "verify"]):
        assert VerificationKey.from_jwk({**public_jwk(km.rsa), "key_ops": ops}).algorithms == RSA_ALGORITHMS
    for ops in (["sign"], ["encrypt", "wrapKey"], []):
        with pytest.raises(ConfigurationError):
            VerificationKey.from_jwk({**public_jwk(km.rsa), "key_ops": ops})


@pytest.mark.parametrize("kid", [1, ["k"], {"k": 1}, True])
def test_from_jwk_kid_must_be_string(km: KeyMaterial, kid: Any) -> None:
    with pytest.raises(ConfigurationError):
        VerificationKey.from_jwk({**public_jwk(km.rsa), "kid": kid})


@pytest.mark.parametrize(
    "jwk",
    [
        {"kty": "XYZ"},
        {},
        {"kty": "RSA", "n": "AQAB"},
        {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"},
        {"kty": "oct"},
        {"kty": "oct", "k": b64(SECRET[:31])},
        {"kty": "OKP", "crv": "X25519", "x": b64(b"\x09" * 32)},
    ],
)
def test_from_jwk_invalid_or_weak_key_raises(jwk: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        VerificationKey.from_jwk(jwk)


def test_from_jwk_rsa_under_2048_bits_raises() -> None:
    small = rsa.generate_private_key(65537, 1024)
    with pytest.raises(ConfigurationError):
        VerificationKey.from_jwk(public_jwk(small))


def test_from_jwk_private_members_yield_a_public_key(km: KeyMaterial) -> None:
    from jwt.algorithms import RSAAlgorithm

    private_jwk = RSAAlgorithm.to_jwk(km.rsa, as_dict=True)
    private_jwk.pop("key_ops", None)  # PyJWT marks private JWKs ["sign"]
    assert "d" in private_jwk
    key = VerificationKey.from_jwk(private_jwk)
    assert isinstance(key.material, rsa.RSAPublicKey)


# ---------------------------------------------------------------- RemoteKeySet (a JWKS URL)


def test_remote_first_fetch(km: KeyMaterial, jwks_server: JWKSServer) -> None:
    jwks_server.serve_jwks(public_jwk(km.rsa, kid="k1"))
    keyset = remote(jwks_server.url)
    assert jwks_server.hits == 0  # nothing fetched at construction
    assert keyset.refresh_due()
    assert keyset.ensure_fresh() is True
    assert jwks_server.hits == 1
    assert keyset.version == 1
    assert not keyset.refresh_due()
    assert keyset.ensure_fresh() is False  # not due yet
    assert jwks_server.hits == 1
    keyset.check_available()
    assert verifier(keyset).verify(token(km.rsa, "k1"), now=NOW).id == "alice"
    assert jwks_server.paths == ["/.well-known/jwks.json"]


def test_remote_key_rotation_picked_up_on_unknown_kid(km: KeyMaterial, jwks_server: JWKSServer) -> None:
    jwks_server.serve_jwks(public_jwk(km.rsa, kid="k1"))
    keyset = remote(jwks_server.url)
    keyset.ensure_fresh()
    rs = verifier(keyset)
    new_token = token(km.rsa_other, "k2")
    with pytest.raises(InvalidToken):
        rs.verify(new_token, now=NOW)
    jwks_server.serve_jwks(public_jwk(km.rsa, kid="k1"), public_jwk(km.rsa_other, kid="k2"))
    assert keyset.ensure_fresh(force=True) is True
    assert keyset.version == 2
    assert jwks_server.hits == 2
    assert rs.verify(new_token, now=NOW).id == "alice"
    assert rs.verify(token(km.rsa, "k1"), now=NOW).id == "alice"


def test_remote_refresh_on_unknown_kid_rate_limited(km: KeyMaterial, jwks_server: JWKSServer) -> None:
    jwks_server.serve_jwks(public_jwk(km.rsa, kid="k1"))
    keyset = remote(jwks_server.url, min_refresh_interval=0.5)
    assert keyset.ensure_fresh() is True
    jwks_server.serve_jwks(public_jwk(km.rsa_other, kid="k2"))
    for _ in range(5):  # a flood of unknown kids
        assert keyset.ensure_fresh(force=True) is False
    assert jwks_server.hits == 1
    time.sleep(0.55)
    assert keyset.ensure_fresh(force=True) is True
    assert jwks_server.hits == 2
    assert keyset.ensure_fresh(force=True) is False
    assert jwks_server.hits == 2


def test_remote_refresh_interval_refetches(km: KeyMaterial, jwks_server: JWKSServer) -> None:
    jwks_server.serve_jwks(public_jwk(km.rsa, kid="k1"))
    keyset = remote(jwks_server.url, refresh_interval=0.3)
    keyset.ensure_fresh()
    assert not keyset.refresh_due()
    time.sleep(0.35)
    assert keyset.refresh_due()
    assert keyset.ensure_fresh() is False  # same document: fetched, nothing changed
    assert jwks_server.hits == 2
    assert keyset.version == 1
    assert not keyset.refresh_due()


@pytest.mark.parametrize("status", [500, 503, 404])
def test_remote_stale_keys_kept_when_server_errors(km: KeyMaterial, jwks_server: JWKSServer, status: int) -> None:
    jwks_server.serve_jwks(public_jwk(km.rsa, kid="k1"))
    keyset = remote(jwks_server.url)
    keyset.ensure_fresh()
    jwks_server.fail_with(status)
    assert keyset.ensure_fresh(force=True) is False
    assert jwks_server.hits == 2
    assert keyset.version == 1
    keyset.check_available()
    assert verifier(keyset).verify(token(km.rsa, "k1"), now=NOW).id == "alice"


@pytest.mark.parametrize("body", [b"not json", b'{"keys": "nope"}', b"[]", b"{" * 100_000, b" " * 1_000_001])
def test_remote_stale_keys_kept_when_document_is_bad(km: KeyMaterial, jwks_server: JWKSServer, body: bytes) -> None:
    jwks_server.serve_jwks(public_jwk(km.rsa, kid="k1"))
    keyset = remote(jwks_server.url)
    keyset.ensure_fresh()
    jwks_server.body = body
    assert keyset.ensure_fresh(force=True) is False
    assert keyset.version == 1
    assert verifier(keyset).verify(token(km.rsa, "k1"), now=NOW).id == "alice"


def test_remote_stale_keys_kept_when_server_is_down(km: KeyMaterial, jwks_server: JWKSServer) -> None:
    jwks_server.serve_jwks(public_jwk(km.rsa, kid="k1"))
    keyset = remote(jwks_server.url)
    keyset.ensure_fresh()
    jwks_server.stop()
    assert keyset.ensure_fresh(force=True) is False
    keyset.check_available()
    assert verifier(keyset).verify(token(km.rsa, "k1"), now=NOW).id == "alice"


def test_remote_never_loaded_is_service_unavailable(km: KeyMaterial, jwks_server: JWKSServer) -> None:
    jwks_server.stop()
    keyset = remote(jwks_server.url)
    assert keyset.ensure_fresh() is False
    with pytest.raises(ServiceUnavailable):
        keyset.check_available()
    with pytest.raises(ServiceUnavailable):
        verifier(keyset).verify(token(km.rsa, "k1"), now=NOW)


def test_remote_never_loaded_when_server_answers_500(km: KeyMaterial, jwks_server: JWKSServer) -> None:
    jwks_server.fail_with(500)
    keyset = remote(jwks_server.url)
    assert keyset.ensure_fresh() is False
    with pytest.raises(ServiceUnavailable):
        keyset.check_available()


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "FILE:///etc/passwd",
        "ftp://127.0.0.1/jwks.json",
        "gopher://127.0.0.1/",
        "data:application/json,{}",
        "/etc/jwks.json",
        "jwks.json",
        "",
    ],
)
def test_remote_non_http_url_raises(url: str) -> None:
    with pytest.raises(ConfigurationError):
        KeySet.from_jwks_url(url)


def test_remote_cache_flushed_when_rotation_removes_a_key(km: KeyMaterial, jwks_server: JWKSServer) -> None:
    jwks_server.serve_jwks(public_jwk(km.rsa, kid="k1"), public_jwk(km.rsa_other, kid="k2"))
    keyset = remote(jwks_server.url)
    keyset.ensure_fresh()
    rs = verifier(keyset)
    old = token(km.rsa, "k1")
    assert rs.verify(old, now=NOW).id == "alice"  # now cached
    jwks_server.serve_jwks(public_jwk(km.rsa_other, kid="k2"))
    assert keyset.ensure_fresh(force=True) is True
    with pytest.raises(InvalidToken):
        rs.verify(old, now=NOW)


def test_a_verification_racing_a_rotation_leaves_no_verdict_for_the_removed_key(
    km: KeyMaterial, jwks_server: JWKSServer
) -> None:
    """A token verified with k1 while another thread's refresh removes k1 (and a request verifies with the new
    keys, flushing the cache): its verdict may answer that one request, but is never served again from the cache
    (found by review: it was kept under the new key-set version, so the removed key's token passed until `exp`)."""
    jwks_server.serve_jwks(public_jwk(km.rsa, kid="k1"))
    keyset = remote(jwks_server.url)
    keyset.ensure_fresh()
    rs = verifier(keyset)
    old, new = token(km.rsa, "k1"), token(km.rsa_other, "k2", sub="bob")
    in_signature, go_on = threading.Event(), threading.Event()
    select = keyset.select

    class Paused:
        """k1, pausing inside its signature check until the rotation below is done."""

        def __init__(self, key: Any) -> None:
            self.key, self.algorithms = key, key.algorithms

        def verify(self, *args: Any) -> Any:
            in_signature.set()
            go_on.wait(5)
            return self.key.verify(*args)

    def paused_select(kid: str | None) -> Any:
        key = select(kid)
        return Paused(key) if kid == "k1" and not go_on.is_set() else key

    keyset.select = paused_select  # type: ignore[method-assign]
    answers: list[Any] = []
    racing = threading.Thread(target=lambda: answers.append(rs.verify(old, now=NOW)))
    racing.start()
    assert in_signature.wait(5)
    jwks_server.serve_jwks(public_jwk(km.rsa_other, kid="k2"))  # the issuer rotates k1 out
    assert keyset.ensure_fresh(force=True) is True
    assert rs.verify(new, now=NOW).id == "bob"  # the cache, flushed for the new keys
    go_on.set()
    racing.join(5)
    assert [p.id for p in answers] == ["alice"]  # in flight when k1 went: that one answer may stand
    with pytest.raises(InvalidToken):
        rs.verify(old, now=NOW)
    assert rs.cached(old, NOW) is None


def test_remote_jwks_redirects_are_followed_only_within_their_scheme(km: KeyMaterial, jwks_server: JWKSServer) -> None:
    """GHSA-993g-76c3-p5m4: the URL's scheme is checked at start, and a redirect may not change it either (found
    by review: urllib followed a 302 to ftp://, connecting wherever it pointed)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    redirecting = JWKSServer(status=302, location=f"ftp://127.0.0.1:{listener.getsockname()[1]}/jwks.json")
    try:
        keyset = remote(redirecting.url)
        assert keyset.ensure_fresh() is False
        with pytest.raises(TimeoutError):
            listener.accept()  # nothing came
        jwks_server.serve_jwks(public_jwk(km.rsa, kid="k1"))
        redirecting.location = jwks_server.url  # http to http: followed
        assert keyset.ensure_fresh(force=True) is True
        assert verifier(keyset).verify(token(km.rsa, "k1"), now=NOW).id == "alice"
    finally:
        redirecting.stop()
        listener.close()


@pytest.mark.parametrize(
    "settings",
    [{"refresh_interval": math.nan}, {"min_refresh_interval": math.nan}, {"timeout": math.inf},
     {"refresh_interval": -1}, {"min_refresh_interval": -1}, {"timeout": 0}],
)  # fmt: skip
def test_remote_refresh_settings_must_be_finite_and_positive(settings: dict[str, float]) -> None:
    """NaN passed every comparison: no refresh schedule, or no rate limit on unknown kids (found by review)."""
    options = {"refresh_interval": 300.0, "min_refresh_interval": 1.0, "timeout": 2.0, **settings}
    with pytest.raises(ConfigurationError):
        KeySet.from_jwks_url("https://issuer.example/jwks.json", **options)


def test_remote_jwks_cannot_bring_an_hmac_key_to_an_rs256_route(km: KeyMaterial, jwks_server: JWKSServer) -> None:
    jwks_server.serve_jwks({"kty": "oct", "kid": "k1", "k": b64(SECRET)}, public_jwk(km.rsa, kid="k2"))
    keyset = remote(jwks_server.url)
    rs = verifier(keyset)  # configured before the first fetch, as in a real deployment
    keyset.ensure_fresh()
    assert rs.verify(token(km.rsa, "k2"), now=NOW).id == "alice"
    for forged in (craft({"alg": "HS256", "kid": "k1"}), craft({"alg": "HS256", "kid": "k2"})):
        with pytest.raises(InvalidToken):
            rs.verify(forged, now=NOW)
    with pytest.raises(InvalidToken):
        rs.verify(token(km.rsa, "k1"), now=NOW)


def test_remote_several_keys_require_kid(km: KeyMaterial, jwks_server: JWKSServer) -> None:
    jwks_server.serve_jwks(public_jwk(km.rsa, kid="k1"), public_jwk(km.rsa_other, kid="k2"))
    keyset = remote(jwks_server.url)
    keyset.ensure_fresh()
    with pytest.raises(InvalidToken):
        verifier(keyset).verify(token(km.rsa, None), now=NOW)


# ---------------------------------------------------------------- key refresh driven by the engine


run_sync = authmw.io.run_sync


def authenticate(auth: Authenticator, bearer: str) -> Principal | None:
    view = ASGIRequestView(
        {
            "type": "http",
            "method": "GET",
            "path": "/x",
            "headers": [(b"authorization", b"Bearer " + bearer.encode())],
            "query_string": b"",
        }
    )
    policy = auth.policy_for(view)
    if len(inspect.signature(auth.flow).parameters) >= 3:
        return run_sync(auth.flow(view, policy, None))
    return run_sync(auth.flow(view, policy))  # type: ignore[call-arg]


def engine(keyset: RemoteKeySet) -> Authenticator:
    return Authenticator(
        AuthConfig(jwt=JWTSettings(algorithms=["RS256"], keys=keyset), routes=[Route("/x", Policy.jwt())])
    )


def test_engine_picks_up_rotated_key_for_new_kid(km: KeyMaterial, jwks_server: JWKSServer) -> None:
    jwks_server.serve_jwks(public_jwk(km.rsa, kid="k1"))
    auth = engine(remote(jwks_server.url))
    now = time.time()
    principal = authenticate(auth, token(km.rsa, "k1", now=now))  # first use fetches the JWKS
    assert principal is not None and principal.id == "alice"
    assert jwks_server.hits == 1
    jwks_server.serve_jwks(public_jwk(km.rsa, kid="k1"), public_jwk(km.rsa_other, kid="k2"))
    principal = authenticate(auth, token(km.rsa_other, "k2", now=now, sub="bob"))
    assert principal is not None and principal.id == "bob"
    assert jwks_server.hits == 2
    with pytest.raises(InvalidToken):  # still unknown after one (forced) look
        authenticate(auth, token(km.rsa_other, "k3", now=now))
    assert jwks_server.hits == 3


def test_engine_unknown_kid_refresh_rate_limited(km: KeyMaterial, jwks_server: JWKSServer) -> None:
    jwks_server.serve_jwks(public_jwk(km.rsa, kid="k1"))
    keyset = remote(jwks_server.url, min_refresh_interval=60)
    auth = engine(keyset)
    now = time.time()
    assert authenticate(auth, token(km.rsa, "k1", now=now)) is not None
    for i in range(5):
        with pytest.raises(InvalidToken):
            authenticate(auth, token(km.rsa_other, f"attacker-{i}", now=now))
    assert jwks_server.hits == 1


def test_engine_keys_never_loaded_is_503(km: KeyMaterial, jwks_server: JWKSServer) -> None:
    jwks_server.stop()
    auth = engine(remote(jwks_server.url))
    with pytest.raises(ServiceUnavailable) as info:
        authenticate(auth, token(km.rsa, "k1", now=time.time()))
    assert info.value.status == 503


def test_engine_uses_stale_keys_when_server_down(km: KeyMaterial, jwks_server: JWKSServer) -> None:
    jwks_server.serve_jwks(public_jwk(km.rsa, kid="k1"))
    keyset = remote(jwks_server.url, refresh_interval=0.0)
    auth = engine(keyset)
    now = time.time()
    assert authenticate(auth, token(km.rsa, "k1", now=now)) is not None
    jwks_server.stop()
    principal = authenticate(auth, token(km.rsa, "k1", now=now, sub="carol"))
    assert principal is not None and principal.id == "carol"


def test_a_key_set_that_can_refresh_says_so_so_requests_ask_it() -> None:
    """`_verify_jwt` skips `refresh_due()` for sets that never refresh: any subclass overriding it is asked."""
    from authmw.keys import KeySet, RemoteKeySet

    class Custom(KeySet):
        def refresh_due(self) -> bool:
            return True

    class Plain(KeySet):
        pass

    class Delegating(KeySet):  # refreshes through something else: says so itself
        refreshes = True

    assert not KeySet.refreshes and not Plain.refreshes
    assert RemoteKeySet.refreshes and Custom.refreshes and Delegating.refreshes
