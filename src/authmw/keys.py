"""Verification keys: each bound to the algorithms its type allows, prepared once, chosen only by `kid`.

Trust anchors come only from configuration (P4): a static key, a `{kid: key}` map, a JWKS document or
file, or a JWKS URL that is fetched on a schedule (never because of token content other than an
unknown `kid`, and then rate-limited). `jku`, `x5u`, `x5c` and embedded `jwk` headers are never read.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509 import load_pem_x509_certificate
from jwt.algorithms import Algorithm, ECAlgorithm, HMACAlgorithm, OKPAlgorithm, RSAAlgorithm, RSAPSSAlgorithm
from jwt.exceptions import InvalidKeyError

from authmw.errors import ConfigurationError, InvalidToken, ServiceUnavailable

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "HMAC_ALGORITHMS",
    "SUPPORTED_ALGORITHMS",
    "KeySet",
    "RemoteKeySet",
    "VerificationKey",
]

log = logging.getLogger("authmw")

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_CURVE_ALGORITHM = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
ASYMMETRIC_ALGORITHMS = _RSA_ALGORITHMS | frozenset(_EC_CURVE_ALGORITHM.values()) | {"EdDSA"}
SUPPORTED_ALGORITHMS = HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS

# One PyJWT algorithm object per name, created once: they are stateless verifiers.
ALGORITHM_OBJECTS: dict[str, Algorithm] = {
    "HS256": HMACAlgorithm(HMACAlgorithm.SHA256),
    "HS384": HMACAlgorithm(HMACAlgorithm.SHA384),
    "HS512": HMACAlgorithm(HMACAlgorithm.SHA512),
    "RS256": RSAAlgorithm(RSAAlgorithm.SHA256),
    "RS384": RSAAlgorithm(RSAAlgorithm.SHA384),
    "RS512": RSAAlgorithm(RSAAlgorithm.SHA512),
    "PS256": RSAPSSAlgorithm(RSAPSSAlgorithm.SHA256),
    "PS384": RSAPSSAlgorithm(RSAPSSAlgorithm.SHA384),
    "PS512": RSAPSSAlgorithm(RSAPSSAlgorithm.SHA512),
    "ES256": ECAlgorithm(ECAlgorithm.SHA256),
    "ES384": ECAlgorithm(ECAlgorithm.SHA384),
    "ES512": ECAlgorithm(ECAlgorithm.SHA512),
    "EdDSA": OKPAlgorithm(),
}
_MIN_HMAC_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}  # RFC 7518 §3.2: at least the hash output (P32)
_MIN_RSA_BITS = 2048

_ASYMMETRIC_MARKERS = ("-----BEGIN", "ssh-", "ecdsa-sha2-", "sk-ecdsa-", "sk-ssh-", "{")


@dataclass(frozen=True, slots=True, eq=False)
class VerificationKey:
    """A key prepared for verification, with the algorithms it may be used with (its type decides)."""

    material: Any
    algorithms: frozenset[str]
    kid: str | None = None

    @property
    def is_hmac(self) -> bool:
        return bool(self.algorithms & HMAC_ALGORITHMS)

    def verify(self, algorithm: str, signing_input: bytes, signature: bytes) -> bool:
        if algorithm not in self.algorithms:
            return False
        return bool(ALGORITHM_OBJECTS[algorithm].verify(signing_input, self.material, signature))

    # ---- construction ----

    @classmethod
    def hmac(cls, secret: str | bytes, *, kid: str | None = None, algorithm: str | None = None) -> VerificationKey:
        """An HMAC secret; refused when it looks like an asymmetric key in any encoding (P3)."""
        raw = secret.encode() if isinstance(secret, str) else bytes(secret)
        text = raw.lstrip()[:32].decode("latin-1")
        if text.startswith(_ASYMMETRIC_MARKERS) or _parses_as_public_key(raw) or _pyjwt_refuses_as_hmac(raw):
            raise ConfigurationError(
                "an asymmetric key (PEM, DER, OpenSSH or JWK) was given as an HMAC secret; "
                "configure an RS/PS/ES/EdDSA algorithm for it instead"
            )
        algorithms = HMAC_ALGORITHMS if algorithm is None else frozenset({algorithm}) & HMAC_ALGORITHMS
        if not algorithms:
            raise ConfigurationError(f"algorithm {algorithm!r} is not an HMAC algorithm")
        algorithms = frozenset(a for a in algorithms if len(raw) >= _MIN_HMAC_BYTES[a])
        if not algorithms:
            raise ConfigurationError(
                f"HMAC secret too short ({len(raw)} bytes): use at least 32 random bytes for HS256 "
                "(64 for HS512); e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
            )
        return cls(raw, algorithms, kid)

    @classmethod
    def public(cls, key: Any, *, kid: str | None = None, algorithm: str | None = None) -> VerificationKey:
        """An asymmetric key: a cryptography key object, or PEM text/bytes (public key, private key or cert)."""
        if isinstance(key, str | bytes):
            key = _load_pem(key.encode() if isinstance(key, str) else key)
        if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            key = key.public_key()
        if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
            key = key.public_key()
        if isinstance(key, rsa.RSAPublicKey):
            if key.key_size < _MIN_RSA_BITS:
                raise ConfigurationError(f"RSA key of {key.key_size} bits; at least {_MIN_RSA_BITS} required")
            allowed = _RSA_ALGORITHMS
        elif isinstance(key, ec.EllipticCurvePublicKey):
            name = _EC_CURVE_ALGORITHM.get(key.curve.name)
            if name is None:
                raise ConfigurationError(f"unsupported elliptic curve {key.curve.name}")
            allowed = frozenset({name})
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            allowed = frozenset({"EdDSA"})
        else:
            raise ConfigurationError(f"unsupported key type {type(key).__name__}")
        if algorithm is not None:
            if algorithm not in allowed:
                raise ConfigurationError(f"key of type {type(key).__name__} cannot be used with {algorithm}")
            allowed = frozenset({algorithm})
        return cls(key, allowed, kid)

    @classmethod
    def from_any(cls, key: Any, *, kid: str | None = None, algorithm: str | None = None) -> VerificationKey:
        """A key from whatever the user has: a VerificationKey, a JWK dict, PEM, a key object, or a secret."""
        if isinstance(key, VerificationKey):
            return key
        if isinstance(key, Mapping):
            return cls.from_jwk(key)
        if isinstance(key, str | bytes):
            head = (key.encode() if isinstance(key, str) else key).lstrip()[:11]
            if head.startswith(b"-----BEGIN"):
                return cls.public(key, kid=kid, algorithm=algorithm)
            return cls.hmac(key, kid=kid, algorithm=algorithm)
        return cls.public(key, kid=kid, algorithm=algorithm)

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any]) -> VerificationKey:
        """A key from one JWK; its `alg` (if any) narrows the algorithms, `use`/`key_ops` must allow verify."""
        kty = jwk.get("kty")
        kid = jwk.get("kid")
        alg = jwk.get("alg")
        if kid is not None and not isinstance(kid, str):
            raise ConfigurationError("JWK kid must be a string")
        if alg is not None and alg not in SUPPORTED_ALGORITHMS:
            raise ConfigurationError(f"JWK alg {alg!r} is not supported")
        if jwk.get("use", "sig") != "sig":
            raise ConfigurationError("JWK use is not 'sig'")
        ops = jwk.get("key_ops")
        if ops is not None and "verify" not in ops:
            raise ConfigurationError("JWK key_ops does not allow 'verify'")
        data = dict(jwk)
        try:
            if kty == "oct":
                return cls.hmac(HMACAlgorithm.from_jwk(data), kid=kid, algorithm=alg)
            if kty == "RSA":
                return cls.public(RSAAlgorithm.from_jwk(data), kid=kid, algorithm=alg)
            if kty == "EC":
                return cls.public(ECAlgorithm.from_jwk(data), kid=kid, algorithm=alg)
            if kty == "OKP":
                return cls.public(OKPAlgorithm.from_jwk(data), kid=kid, algorithm=alg)
        except ConfigurationError:
            raise
        except Exception as exc:
            raise ConfigurationError(f"invalid JWK ({kty}): {exc}") from None
        raise ConfigurationError(f"unsupported JWK kty {kty!r}")


def _load_pem(data: bytes) -> Any:
    loaders = (
        lambda d: serialization.load_pem_public_key(d),
        lambda d: serialization.load_pem_private_key(d, password=None),
        lambda d: load_pem_x509_certificate(d).public_key(),
    )
    for load in loaders:
        try:
            return load(data)
        except (ValueError, TypeError):
            continue
    raise ConfigurationError("could not read the PEM key (public key, unencrypted private key or certificate)")


def _parses_as_public_key(raw: bytes) -> bool:
    """True when `raw` is a DER or OpenSSH public key: such bytes must never become an HMAC secret (P3)."""
    for load in (serialization.load_der_public_key, serialization.load_ssh_public_key):
        try:
            load(raw)
        except Exception:  # noqa: S112 - any failure means "not a key of this encoding"
            continue
        return True
    return False


def _pyjwt_refuses_as_hmac(raw: bytes) -> bool:
    """PyJWT's own check (PEM anywhere in the text, certificates, SSH keys, JWK JSON) as a second opinion."""
    try:
        HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(raw)
    except InvalidKeyError:
        return True
    return raw.lstrip(b"\xef\xbb\xbf \t\r\n").startswith((b"{", b"["))


class KeySet:
    """A fixed set of verification keys, looked up by `kid` (exact match only)."""

    def __init__(self, keys: Iterable[VerificationKey]) -> None:
        self._install(tuple(keys))
        self.version = 0

    def _install(self, keys: tuple[VerificationKey, ...]) -> None:
        by_kid: dict[str, VerificationKey] = {}
        for key in keys:
            if key.kid is not None:
                if key.kid in by_kid:
                    raise ConfigurationError(f"duplicate kid {key.kid!r} in key set")
                by_kid[key.kid] = key
        self.keys = keys
        self._by_kid = by_kid
        self._only = keys[0] if len(keys) == 1 else None

    # ---- constructors ----

    @classmethod
    def from_key(cls, key: Any, *, kid: str | None = None, algorithm: str | None = None) -> KeySet:
        return cls([VerificationKey.from_any(key, kid=kid, algorithm=algorithm)])

    @classmethod
    def from_keys(cls, keys: Mapping[str, Any]) -> KeySet:
        """Several keys selected by `kid`: ``{kid: key}``."""
        return cls([VerificationKey.from_any(key, kid=kid) for kid, key in keys.items()])

    @classmethod
    def from_jwks(cls, jwks: Mapping[str, Any] | str | bytes, *, strict: bool = True) -> KeySet:
        """A JWKS document (dict or JSON text). With ``strict=False`` unusable keys are skipped."""
        return cls(_keys_from_jwks(jwks, strict=strict))

    @classmethod
    def from_jwks_file(cls, path: str | Path) -> KeySet:
        return cls.from_jwks(Path(path).read_bytes())

    @classmethod
    def from_jwks_url(
        cls,
        url: str,
        *,
        refresh_interval: float = 300.0,
        min_refresh_interval: float = 30.0,
        timeout: float = 5.0,
    ) -> RemoteKeySet:
        return RemoteKeySet(
            url, refresh_interval=refresh_interval, min_refresh_interval=min_refresh_interval, timeout=timeout
        )

    # ---- lookup ----

    def select(self, kid: str | None) -> VerificationKey:
        """The key for a token's `kid`. One key without a kid: it serves every token; else `kid` must match."""
        only = self._only
        if only is not None and only.kid is None:
            return only
        if kid is None:
            if only is not None:
                return only
            raise InvalidToken("the token has no kid and several keys are configured", reason="kid_required")
        key = self._by_kid.get(kid)
        if key is None:
            raise UnknownKeyId("the token's kid is not a configured key", reason="unknown_kid")
        return key

    def ensure_fresh(self, *, force: bool = False) -> bool:
        """Fetch newer keys if this set has a source that may have them; True if the keys changed."""
        return False

    #: whether `refresh_due` can ever be True (a subclass overrides it): checked first, per request, to skip the call
    refreshes = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "refreshes" not in cls.__dict__:  # a subclass may say so itself (e.g. one that refreshes by delegating)
            cls.refreshes = cls.refresh_due is not KeySet.refresh_due

    def refresh_due(self) -> bool:
        """True when `ensure_fresh` would fetch now (remote sets past their refresh interval)."""
        return False

    def check_available(self) -> None:
        """Raise `ServiceUnavailable` when no keys could ever be loaded (remote sets only)."""


class UnknownKeyId(InvalidToken):
    """The `kid` names no known key; a remote key set may know it after a (rate-limited) refresh."""


def _keys_from_jwks(jwks: Mapping[str, Any] | str | bytes, *, strict: bool) -> list[VerificationKey]:
    if isinstance(jwks, str | bytes):
        try:
            jwks = json.loads(jwks)
        except (ValueError, RecursionError) as exc:
            raise ConfigurationError(f"JWKS is not valid JSON: {exc}") from None
    if not isinstance(jwks, Mapping) or not isinstance(jwks.get("keys"), list):
        raise ConfigurationError('a JWKS must be an object with a "keys" list')
    keys: list[VerificationKey] = []
    for entry in jwks["keys"]:
        try:
            if not isinstance(entry, Mapping):
                raise ConfigurationError("a JWKS entry is not an object")
            keys.append(VerificationKey.from_jwk(entry))
        except ConfigurationError as exc:
            if strict:
                raise
            log.warning("authmw: skipping an unusable JWKS key: %s", exc)
    return keys


class _SameSchemeRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a JWKS URL's redirects only within its own scheme: never to another (file:, ftp:, GHSA-993g-76c3-p5m4)
    nor from https down to http."""

    def redirect_request(
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        if urllib.parse.urlsplit(newurl).scheme != urllib.parse.urlsplit(req.full_url).scheme:
            raise urllib.error.HTTPError(newurl, code, "JWKS redirect to another scheme refused", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_JWKS_OPENER = urllib.request.build_opener(_SameSchemeRedirects)


class RemoteKeySet(KeySet):
    """Keys from a JWKS URL: fetched on first use, re-fetched every `refresh_interval`, and at once (at most
    every `min_refresh_interval`) when a token names an unknown `kid`. If the URL is down the last good keys
    stay in use (stale fallback); if no keys were ever fetched, verification answers 503.
    """

    def __init__(self, url: str, *, refresh_interval: float, min_refresh_interval: float, timeout: float) -> None:
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme not in ("https", "http"):
            # GHSA-993g-76c3-p5m4: never let a key URL read local files or other schemes.
            raise ConfigurationError(f"JWKS URL must be http(s), not {scheme or 'a bare path'!r}")
        super().__init__(())
        self.url = url
        self.refresh_interval = refresh_interval
        self.min_refresh_interval = min_refresh_interval
        self.timeout = timeout
        # NaN would pass the comparisons below and turn off the schedule or the unknown-kid rate limit.
        ConfigurationError.unless_finite(self, "refresh_interval", "min_refresh_interval", "timeout")
        if refresh_interval < 0 or min_refresh_interval < 0 or timeout <= 0:
            raise ConfigurationError("JWKS refresh intervals must not be negative, and the timeout must be positive")
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")
        self._loaded = False
        self._document = b""
        self._lock = threading.Lock()

    def _fetch(self) -> bytes:
        request = urllib.request.Request(self.url, headers={"Accept": "application/json"})  # noqa: S310
        with _JWKS_OPENER.open(request, timeout=self.timeout) as response:
            body: bytes = response.read(1_000_001)
        if len(body) > 1_000_000:
            raise ConfigurationError("JWKS document larger than 1 MB")
        return body

    def refresh_due(self) -> bool:
        now = time.monotonic()
        return not self._loaded or now - self._fetched_at >= self.refresh_interval

    def ensure_fresh(self, *, force: bool = False) -> bool:
        """Fetch if due (or `force`d by an unknown kid), never more than once per `min_refresh_interval`."""
        with self._lock:
            now = time.monotonic()
            if now - self._attempted_at < self.min_refresh_interval:
                return False
            if not force and self._loaded and now - self._fetched_at < self.refresh_interval:
                return False
            self._attempted_at = now
            try:
                body = self._fetch()
                keys = _keys_from_jwks(body, strict=False) if body != self._document else None
            except Exception as exc:
                log.warning(
                    "authmw: JWKS fetch from %s failed (%s); keeping %d known keys",
                    self.url,
                    type(exc).__name__,
                    len(self.keys),
                )
                return False
            if keys is not None and not keys:
                log.warning("authmw: JWKS from %s has no usable key; keeping %d known keys", self.url, len(self.keys))
                return False
            if keys is None:  # same document as last time
                self._fetched_at = now
                return False
            try:
                self._install(tuple(keys))
            except ConfigurationError as exc:
                log.warning("authmw: JWKS from %s rejected: %s", self.url, exc)
                return False
            self._document = body
            self._fetched_at = now
            self._loaded = True
            self.version += 1
            return True

    def select(self, kid: str | None) -> VerificationKey:
        self.check_available()
        if kid is None and len(self.keys) > 1:
            raise InvalidToken("the token has no kid and several keys are configured", reason="kid_required")
        if kid is not None and kid not in self._by_kid:
            raise UnknownKeyId("the token's kid is not a known key", reason="unknown_kid")
        return super().select(kid)

    def check_available(self) -> None:
        if not self._loaded:
            raise ServiceUnavailable("the signing keys could not be fetched", reason="jwks_unavailable")
