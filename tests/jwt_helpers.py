"""Helpers for the JWT and key tests: hand-crafted JWS segments, fixed clocks, key material, a JWKS server.

Tokens are built two ways: with PyJWT's `jwt.encode` for the well-formed cases, and segment by segment
(`craft`, `sign_input`) for the malformed ones, so that a malformed token still carries a *valid*
signature over its exact signing input. That way a rejection can only come from the check under test,
never from the signature check.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm, get_default_algorithms

from authmw.tokens import JWTSettings, JWTVerifier

#: a fixed "now" for every verification (POSIX seconds, 2027-01-15)
NOW = 1_800_000_000
ISSUER = "https://issuer.example"
AUDIENCE = "authmw-demo"
#: 64 random-looking bytes: long enough for HS256, HS384 and HS512 (P32)
SECRET = hashlib.sha512(b"authmw tests: the configured HMAC secret").digest()
OTHER_SECRET = hashlib.sha512(b"another, unrelated 64-byte secret").digest()

_HASHES = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
B64URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def b64(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def claims(**overrides: Any) -> dict[str, Any]:
    """Good access-token claims at `NOW`; an override of `None` removes the claim."""
    base: dict[str, Any] = {
        "sub": "alice",
        "iat": NOW,
        "exp": NOW + 300,
        "jti": uuid.uuid4().hex,
        "scope": "items:read items:write",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hs_signature(signing_input: str | bytes, secret: bytes = SECRET, alg: str = "HS256") -> str:
    data = signing_input.encode("ascii") if isinstance(signing_input, str) else signing_input
    return b64(hmac.new(secret, data, _HASHES[alg]).digest())


def sign_input(header_b64: str, payload_b64: str, secret: bytes = SECRET, alg: str = "HS256") -> str:
    """`header.payload.signature`, HMAC-signed over exactly the two segments given (whatever they contain)."""
    return f"{header_b64}.{payload_b64}.{hs_signature(f'{header_b64}.{payload_b64}', secret, alg)}"


def segment(value: dict[str, Any] | bytes | str) -> str:
    """A dict becomes compact JSON; bytes are used as the raw JSON text; a str is UTF-8 encoded."""
    if isinstance(value, dict):
        return b64(json_bytes(value))
    if isinstance(value, str):
        return b64(value.encode())
    return b64(value)


def craft(
    header: dict[str, Any] | bytes | str | None = None,
    payload: dict[str, Any] | bytes | str | None = None,
    *,
    secret: bytes = SECRET,
    alg: str = "HS256",
) -> str:
    """An HMAC-signed token from any header/payload (raw bytes allowed for malformed JSON)."""
    header = {"alg": alg, "typ": "JWT"} if header is None else header
    payload = claims() if payload is None else payload
    return sign_input(segment(header), segment(payload), secret, alg)


def flip_unused_bits(seg: str) -> str:
    """The same bytes, non-canonically encoded: set an unused low bit of the last base64url character."""
    if len(seg) % 4 not in (2, 3):
        raise ValueError("this segment length has no unused bits")
    last = B64URL_ALPHABET.index(seg[-1])
    return seg[:-1] + B64URL_ALPHABET[last ^ 1]


def payload_with_spare_bits(**overrides: Any) -> dict[str, Any]:
    """Claims whose base64url encoding ends with unused bits (length % 4 in {2, 3})."""
    for n in range(8):
        body = claims(pad="x" * n, **overrides)
        if len(segment(body)) % 4 in (2, 3):
            return body
    raise AssertionError("unreachable")


def sign_with(header: dict[str, Any] | bytes, payload: dict[str, Any] | bytes, key: Any, alg: str) -> str:
    """A token signed by PyJWT's algorithm object for `alg` with `key` (any key, even one of the wrong curve)."""
    signing_input = f"{segment(header)}.{segment(payload)}"
    signature = get_default_algorithms()[alg].sign(signing_input.encode("ascii"), key)
    return f"{signing_input}.{b64(signature)}"


def hs_verifier(**settings: Any) -> JWTVerifier:
    settings.setdefault("algorithms", ["HS256"])
    settings.setdefault("keys", SECRET)
    return JWTVerifier(JWTSettings(**settings))


def hs_token(
    secret: bytes = SECRET, alg: str = "HS256", headers: dict[str, Any] | None = None, **overrides: Any
) -> str:
    return jwt.encode(claims(**overrides), secret, algorithm=alg, headers=headers)


# ---- key material ----


@dataclass
class KeyMaterial:
    """Private keys generated once per test module."""

    rsa: rsa.RSAPrivateKey
    rsa_other: rsa.RSAPrivateKey
    p256: ec.EllipticCurvePrivateKey
    p384: ec.EllipticCurvePrivateKey
    p521: ec.EllipticCurvePrivateKey
    ed25519: ed25519.Ed25519PrivateKey
    ed448: ed448.Ed448PrivateKey

    @classmethod
    def generate(cls) -> KeyMaterial:
        return cls(
            rsa=rsa.generate_private_key(65537, 2048),
            rsa_other=rsa.generate_private_key(65537, 2048),
            p256=ec.generate_private_key(ec.SECP256R1()),
            p384=ec.generate_private_key(ec.SECP384R1()),
            p521=ec.generate_private_key(ec.SECP521R1()),
            ed25519=ed25519.Ed25519PrivateKey.generate(),
            ed448=ed448.Ed448PrivateKey.generate(),
        )


def public_pem(private: Any) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_jwk(private: Any, **extra: Any) -> dict[str, Any]:
    """The public JWK of `private` (RSA, EC or OKP) plus `extra` members (kid, alg, use, key_ops)."""
    public = private.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    return {**jwk, **extra}


def self_signed_certificate(private: Any) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "authmw test")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(2040, 1, 1, tzinfo=datetime.UTC))
        .sign(private, hashes.SHA256())
    )


# ---- a real JWKS server on loopback ----


@dataclass
class JWKSServer:
    """A `ThreadingHTTPServer` on 127.0.0.1 (port 0) serving `body` with `status`, counting GET requests."""

    body: bytes = b'{"keys": []}'
    status: int = 200
    hits: int = 0
    paths: list[str] = field(default_factory=list)
    #: a Location header to send (with a 3xx `status`), or None
    location: str | None = None

    def __post_init__(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.hits += 1
                    server.paths.append(self.path)
                    status, body, location = server.status, server.body, server.location
                self.send_response(status)
                if location is not None:
                    self.send_header("Location", location)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/.well-known/jwks.json"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        self._stopped = False

    def serve_jwks(self, *jwks: dict[str, Any], status: int = 200) -> None:
        with self._lock:
            self.body = json_bytes({"keys": list(jwks)})
            self.status = status

    def fail_with(self, status: int) -> None:
        with self._lock:
            self.status = status
            self.body = b'{"error": "down"}'

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
