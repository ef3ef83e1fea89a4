"""Bearer JWT verification: PyJWT's algorithm objects for the signature, authmw's own checks for the rest.

The verifier parses a token once: strict JWS compact syntax (P11), canonical base64url, one UTF-8 JSON
object without duplicate members (P12), a header allow-list (`alg` exact, `typ`, no `crit`/`b64`/`zip`/
nested `cty`, every registered parameter of its RFC 7515 type, P2/P9/P10), a key chosen only by `kid` from
configuration (P4), the signature, and then the claims (P5-P9). Verified tokens are cached by their exact
string until `exp`, never longer.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import logging
import math
import re
import time
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509 import load_pem_x509_certificate

from authmw.errors import ConfigurationError, InvalidToken, ServiceUnavailable
from authmw.keys import (
    ASYMMETRIC_ALGORITHMS,
    HMAC_ALGORITHMS,
    SUPPORTED_ALGORITHMS,
    KeySet,
    RemoteKeySet,
    VerificationKey,
)
from authmw.principal import CONTROL_CHARACTERS, Principal

__all__ = ["JWTSettings", "JWTVerifier", "PrincipalFactory", "signing_parameters"]

log = logging.getLogger("authmw")

PrincipalFactory = Callable[[Mapping[str, Any]], Principal]

MAX_LEEWAY = 120.0
_CLAIMS_KNOWN = frozenset({"exp", "iat", "nbf", "sub", "iss", "aud", "jti"})
_COMPACT_JWS = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)")
_B64_VALUES = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")}
_NOT_ACCESS_TOKEN_CLAIMS = frozenset(("events", "nonce", "at_hash", "c_hash"))  # SETs and ID tokens (P9)
_ACCESS_TOKEN_USES = ("access", "access_token")
_MAX_DEPTH = 16
#: RFC 7515 §4.1's header parameters and their JSON types: a wrong type (null included) is refused, not ignored
_HEADER_STRINGS = ("alg", "jku", "kid", "x5u", "x5t", "x5t#S256", "typ", "cty")
_HEADER_STRING_ARRAYS = ("x5c", "crit")


@dataclass(slots=True)
class JWTSettings:
    """How bearer JWTs are verified. Only `algorithms` and `keys` are required.

    `keys` is a `KeySet` or anything `KeySet.from_key` accepts (an HMAC secret, PEM, a key object, a JWK).
    """

    algorithms: Sequence[str]
    keys: Any
    issuer: str | Sequence[str] | None = None
    audience: str | Sequence[str] | None = None
    leeway: float = 30.0
    #: longest accepted `exp - iat` (P8)
    max_lifetime: float = 24 * 3600.0
    #: claims that must be present; `iss`/`aud` are added when an issuer/audience is configured
    required_claims: Sequence[str] = ("exp", "iat", "sub")
    #: accepted `typ` header values (absent is always accepted); compared case-insensitively (RFC 7515 §4.1.9)
    allowed_types: Sequence[str] = ("JWT", "at+jwt")
    max_token_bytes: int = 8192
    cache_size: int = 10_000
    #: claims → Principal hook; the default reads `sub`, the scopes, `jti`, `iss`, `iat`, `auth_time`, `exp`
    to_principal: PrincipalFactory | None = None
    #: key for the tokens the app mints itself (issuer side); with HS* it defaults to `keys`
    signing_key: Any = None
    #: lifetime in seconds of the access tokens the app mints
    access_token_ttl: float = 300.0
    #: `typ` header of minted access tokens: "JWT", or RFC 9068's "at+jwt"
    access_token_type: str = "JWT"
    #: lifetime of one refresh token, and of a whole family of rotated refresh tokens
    refresh_token_ttl: float = 14 * 24 * 3600.0
    refresh_family_ttl: float = 30 * 24 * 3600.0
    #: a refresh token used again within this many seconds (a client's concurrent retry) is not treated as
    #: theft; 0 (the default) means any second use revokes the family, as the OAuth security BCP prefers
    refresh_reuse_grace: float = 0.0
    #: where revocations (jti denylist, per-user not-before) and refresh tokens live; default: the session store
    revocation_store: Any = None
    #: with the Redis local cache on: while Redis is unreachable, answer the revocation check from state fetched
    #: at most this many seconds ago instead of 503. 0 (the default) fails closed; an explicit opt-in, ≤ 300 s
    revocation_grace: float = 0.0
    keyset: KeySet = field(init=False, repr=False)

    def __post_init__(self) -> None:
        ConfigurationError.unless_finite(
            self,
            "leeway",
            "max_lifetime",
            "access_token_ttl",
            "refresh_token_ttl",
            "refresh_family_ttl",
            "refresh_reuse_grace",
            "revocation_grace",
        )
        algorithms = list(self.algorithms)
        if not algorithms:
            raise ConfigurationError("JWTSettings.algorithms must name at least one algorithm")
        for name in algorithms:
            if name not in SUPPORTED_ALGORITHMS:
                raise ConfigurationError(
                    f"unsupported JWT algorithm {name!r}; choose from {sorted(SUPPORTED_ALGORITHMS)}"
                )
        chosen = frozenset(algorithms)
        if chosen & HMAC_ALGORITHMS and chosen & ASYMMETRIC_ALGORITHMS:
            raise ConfigurationError("HMAC (HS*) and asymmetric algorithms must not be mixed (RFC 8725 §3.1)")
        self.algorithms = tuple(algorithms)
        if not 0 <= self.leeway <= MAX_LEEWAY:
            raise ConfigurationError(f"leeway must be between 0 and {MAX_LEEWAY:g} seconds")
        if self.max_lifetime <= 0:
            raise ConfigurationError("max_lifetime must be positive")
        ConfigurationError.unless_count(self, "max_token_bytes", 1, 65536)
        ConfigurationError.unless_count(self, "cache_size", 0, 10_000_000)
        unknown = set(self.required_claims) - _CLAIMS_KNOWN
        if unknown:
            raise ConfigurationError(f"unknown required claims {sorted(unknown)}")
        keyset = self.keys if isinstance(self.keys, KeySet) else KeySet.from_key(self.keys)
        for key in keyset.keys:
            if not key.algorithms & chosen:
                kind = "an HMAC secret" if key.is_hmac else "an asymmetric key"
                raise ConfigurationError(
                    f"key {key.kid or '(no kid)'} is {kind} usable with {sorted(key.algorithms)}, "
                    f"none of which is in the configured algorithms {sorted(chosen)}"
                )
        self.keyset = keyset
        if self.access_token_ttl <= 0 or self.access_token_ttl > self.max_lifetime:
            raise ConfigurationError("access_token_ttl must be positive and within max_lifetime")
        if not 0 <= self.revocation_grace <= 300:
            raise ConfigurationError("revocation_grace must be between 0 and 300 seconds")
        if not 0 <= self.refresh_reuse_grace <= 60:
            raise ConfigurationError("refresh_reuse_grace must be between 0 and 60 seconds")
        if self.access_token_type not in ("JWT", "at+jwt"):
            raise ConfigurationError("access_token_type must be 'JWT' or 'at+jwt'")
        if self.signing_key is not None:
            # Checked here, not when the token endpoints are built (at a Starlette app's first request): a wrong
            # key must stop the app at start-up instead of answering 500s or 501s. Keys from a JWKS URL are only
            # known after the first fetch: until then only the key itself can be checked.
            if isinstance(keyset, RemoteKeySet) and not keyset.keys:
                _signing_key(self, self.signing_key)
            else:
                signing_parameters(self)
        if self.issuer is None or self.audience is None:
            missing = [n for n, v in (("issuer", self.issuer), ("audience", self.audience)) if v is None]
            log.info("authmw: JWT %s not configured; tokens are not checked for them", " and ".join(missing))


def _names(value: str | Sequence[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    return frozenset((value,)) if isinstance(value, str) else frozenset(value)


# ---- the signing key of the tokens the app mints (checked when JWTSettings is built) ----

_SIGNING_KEY = "the signing key (AUTHMW_JWT_SIGNING_KEY / JWTSettings.signing_key)"
_VERIFICATION_KEYS = "the verification keys (AUTHMW_JWT_KEY / AUTHMW_JWT_JWKS / JWTSettings.keys)"
_PRIVATE_KEYS = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)
_PUBLIC_KEYS = (rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)


def _private_key(material: Any) -> Any:
    """A PEM private key loaded; other text or bytes (an HMAC secret) as bytes; a key object as it is."""
    if not isinstance(material, str | bytes):
        return material
    data = material.encode() if isinstance(material, str) else bytes(material)
    if not data.lstrip().startswith(b"-----BEGIN"):
        return data
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:  # what cryptography raises for an encrypted key without a password
        raise ConfigurationError(
            f"{_SIGNING_KEY} is an encrypted PEM private key: give it unencrypted "
            "(e.g. `openssl pkey -in key.pem -out key.plain.pem`) and keep that file private"
        ) from None
    except ValueError:
        pass
    for load in (serialization.load_pem_public_key, load_pem_x509_certificate):
        try:
            load(data)
        except ValueError:
            continue
        raise ConfigurationError(
            f"{_SIGNING_KEY} is a public key or a certificate, not a private key: set it to the PEM private key "
            f"whose public half is among {_VERIFICATION_KEYS}"
        )
    raise ConfigurationError(f"{_SIGNING_KEY} could not be read: give an unencrypted PEM private key or an HMAC secret")


def _kind(key: Any) -> str:
    if isinstance(key, bytes):
        return "an HMAC secret"
    if isinstance(key, rsa.RSAPrivateKey):
        return "an RSA private key"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"an EC private key ({key.curve.name})"
    return "an Ed25519 private key" if isinstance(key, ed25519.Ed25519PrivateKey) else "an Ed448 private key"


def _signing_key(settings: JWTSettings, key: Any) -> tuple[Any, list[str]]:
    """`key` ready to sign with, and the configured algorithms it can sign; else `ConfigurationError` saying why:
    not a private key (or an HMAC secret), or of a type none of the configured algorithms uses."""
    key = _private_key(key)
    if isinstance(key, _PUBLIC_KEYS):
        raise ConfigurationError(
            f"{_SIGNING_KEY} is a public key, not a private key: set it to the private key whose public half is "
            f"among {_VERIFICATION_KEYS}"
        )
    if not isinstance(key, (bytes, *_PRIVATE_KEYS)):
        raise ConfigurationError(
            f"{_SIGNING_KEY} is of type {type(key).__name__}: give an HMAC secret, a PEM private key or a private "
            "key object"
        )
    try:
        usable = (VerificationKey.hmac(key) if isinstance(key, bytes) else VerificationKey.public(key)).algorithms
    except ConfigurationError as exc:  # too short a secret, too small an RSA key, an unsupported curve
        raise ConfigurationError(f"{_SIGNING_KEY}: {exc}") from None
    fits = [name for name in settings.algorithms if name in usable]
    if not fits:
        raise ConfigurationError(
            f"{_SIGNING_KEY} is {_kind(key)}, which signs {sorted(usable)}, none of the configured algorithms "
            f"{list(settings.algorithms)} (AUTHMW_JWT_ALGORITHMS / JWTSettings.algorithms): set it to a key of the "
            "configured algorithms' type that matches the verification keys (with HS*, leave it unset to sign with "
            "the verification secret)"
        )
    return key, fits


def _same_public_key(a: Any, b: Any) -> bool:
    encoding, fmt = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(a.public_bytes(encoding, fmt) == b.public_bytes(encoding, fmt))


def signing_parameters(settings: JWTSettings, key: Any = None) -> tuple[Any, str, str | None]:
    """The key, algorithm and kid to sign tokens that `settings` will verify.

    `key` defaults to the configured signing key, else (HS* only) the verification secret. It must be a private key
    (or an HMAC secret) for one of the configured algorithms, and its public half (or the secret) must be among the
    verification keys; a `ConfigurationError` says which failed. The algorithm is the first configured one that
    both the key and its verification key allow; the kid is the verification key's.
    """
    if key is None:
        key = settings.signing_key
    if key is None:
        hmac_keys = [k for k in settings.keyset.keys if k.is_hmac]
        if not hmac_keys:
            raise ConfigurationError(
                "minting tokens needs a signing key: set AUTHMW_JWT_SIGNING_KEY (a PEM private key path)"
            )
        key = hmac_keys[0].material
    key, fits = _signing_key(settings, key)
    if isinstance(key, bytes):
        matches = [k for k in settings.keyset.keys if k.is_hmac and hmac.compare_digest(k.material, key)]
        if not matches:
            raise ConfigurationError(
                f"{_SIGNING_KEY} is an HMAC secret that is not among {_VERIFICATION_KEYS}, so the app would refuse "
                "the tokens it mints: leave it unset to sign with the verification secret, or make it equal to one"
            )
    else:
        public = key.public_key()
        matches = [
            k
            for k in settings.keyset.keys
            if not k.is_hmac and type(k.material) is type(public) and _same_public_key(k.material, public)
        ]
        if not matches:
            raise ConfigurationError(
                f"the public half of {_SIGNING_KEY} is not among {_VERIFICATION_KEYS}, so the app would refuse the "
                "tokens it mints: sign with the private key of a configured public key, or add this key's public "
                "half to the verification keys"
            )
    for match in matches:
        algorithm = next((name for name in fits if name in match.algorithms), None)
        if algorithm is not None:
            return key, algorithm, match.kid
    raise ConfigurationError(
        f"{_SIGNING_KEY} matches the verification key {matches[0].kid or '(no kid)'}, which allows only "
        f"{sorted(matches[0].algorithms)}: none of {fits}, the configured algorithms the key signs"
    )


def _b64url_decode(segment: str) -> bytes:
    """Strict base64url: no padding (already excluded by the syntax check) and canonical trailing bits."""
    remainder = len(segment) % 4
    if remainder == 1:
        raise InvalidToken("malformed token encoding", reason="bad_base64")
    if remainder:
        unused_bits_mask = 0x0F if remainder == 2 else 0x03
        if _B64_VALUES[segment[-1]] & unused_bits_mask:
            raise InvalidToken("malformed token encoding", reason="bad_base64")
    try:
        # The token syntax check allowed only [A-Za-z0-9_-]: map to the standard alphabet, decode in C.
        standard = segment.replace("-", "+").replace("_", "/")  # str.translate costs several times more
        return binascii.a2b_base64(standard + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("malformed token encoding", reason="bad_base64") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member name")
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


#: built once: `json.loads` with options builds a new decoder on every call
_TOKEN_JSON = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)


def _depth(value: Any, limit: int) -> bool:
    if limit < 0:
        return False
    if isinstance(value, dict):
        return all(_depth(v, limit - 1) for v in value.values())
    if isinstance(value, list):
        return all(_depth(v, limit - 1) for v in value)
    return True


def _json_object(segment: str, what: str) -> dict[str, Any]:
    """One JSON object: UTF-8 without BOM, no duplicate members, no NaN/Infinity, bounded depth (P12)."""
    raw = _b64url_decode(segment)
    try:
        text = raw.decode("utf-8")
        if text.startswith("\ufeff"):
            raise ValueError("byte order mark")
        value = _TOKEN_JSON.decode(text)
    except (ValueError, RecursionError):
        raise InvalidToken(f"the token {what} is not a valid JSON object", reason=f"bad_{what}") from None
    if not isinstance(value, dict):
        raise InvalidToken(f"the token {what} is not a JSON object", reason=f"bad_{what}")
    if ("{" in text[1:] or "[" in text) and not _depth(value, _MAX_DEPTH):
        raise InvalidToken(f"the token {what} is nested too deeply", reason=f"bad_{what}")
    return value


def _typed_header(segment: str) -> dict[str, Any]:
    """The JOSE header, each registered parameter present of its type (a `"kid": null` names no key: refused)."""
    header = _json_object(segment, "header")
    for name in _HEADER_STRINGS:
        if name in header and type(header[name]) is not str:
            raise InvalidToken(f"the token's {name} is not a string", reason=f"bad_{name}")
    for name in _HEADER_STRING_ARRAYS:
        if name in header:
            value = header[name]
            if type(value) is not list or not all(type(item) is str for item in value):
                raise InvalidToken(f"the token's {name} is not an array of strings", reason=f"bad_{name}")
    if "jwk" in header and type(header["jwk"]) is not dict:
        raise InvalidToken("the token's jwk is not a JSON object", reason="bad_jwk")
    return header


def _numeric_date(claims: Mapping[str, Any], name: str, required: bool) -> float | None:
    if name not in claims:
        if required:
            raise InvalidToken(f"the token has no {name} claim", reason=f"missing_{name}")
        return None
    value = claims[name]
    # NumericDate is a JSON number (RFC 7519 §2): no strings, booleans, or overflowed floats.
    if type(value) not in (int, float) or not math.isfinite(value):
        raise InvalidToken(f"the {name} claim is not a NumericDate", reason=f"bad_{name}")
    return float(value)


def _string_list(value: Any, name: str) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise InvalidToken(f"the {name} claim is malformed", reason=f"bad_{name}")


def scopes_from_claims(claims: Mapping[str, Any]) -> frozenset[str]:
    """Scopes from `scope` (space-separated, RFC 9068/8693), `scp` (string or list) or `scopes` (list)."""
    scopes: set[str] = set()
    for name in ("scope", "scp", "scopes"):
        if name in claims:
            scopes.update(_string_list(claims[name], name))
    return frozenset(scopes)


def default_principal(claims: Mapping[str, Any]) -> Principal:
    iat = claims.get("iat")
    jti = claims.get("jti")
    auth_time = claims.get("auth_time", iat)
    if auth_time is not None and (type(auth_time) not in (int, float) or not math.isfinite(auth_time)):
        raise InvalidToken("the auth_time claim is not a NumericDate", reason="bad_auth_time")
    return Principal(
        id=claims["sub"],
        source="jwt",
        scopes=scopes_from_claims(claims),
        claims=MappingProxyType(claims),
        token_id=jti,
        issuer=claims.get("iss"),
        issued_at=iat,
        auth_time=auth_time,
        expires_at=claims.get("exp"),
        revocation_key=None if jti is None else token_revocation_key(claims.get("iss"), jti),
    )


def token_revocation_key(issuer: Any, jti: Any) -> str:
    # The same derivation as authmw.issuer.jti_key (which imports this module): (iss, jti), hashed.
    return hashlib.sha256(f"{issuer or ''}\0{jti}".encode()).hexdigest()[:32]


class JWTVerifier:
    """Verifies bearer JWTs per `JWTSettings`; thread- and asyncio-safe (no awaits, GIL-atomic dict ops)."""

    def __init__(self, settings: JWTSettings) -> None:
        self.settings = settings
        self.keyset = settings.keyset
        self._algorithms = frozenset(settings.algorithms)
        self._issuers = _names(settings.issuer)
        self._audiences = _names(settings.audience)
        required = set(settings.required_claims)  # checked by JWTSettings, when the configuration is built
        if self._issuers is not None:
            required.add("iss")
        if self._audiences is not None:
            required.add("aud")
        self._required = frozenset(required)
        self._types = frozenset(t.lower() for t in settings.allowed_types)
        self._types |= {"application/" + t for t in self._types}
        self._leeway = settings.leeway
        self._max_lifetime = settings.max_lifetime
        self._max_bytes = settings.max_token_bytes
        self._to_principal = settings.to_principal or default_principal
        #: token -> (principal, exp, the key-set version it was verified with)
        self._cache: dict[str, tuple[Principal, float, int]] = {}
        self._headers: dict[str, dict[str, Any]] = {}  # encoded header -> parsed (read only, never changed)
        self._cache_size = settings.cache_size
        self._cache_version = self.keyset.version
        #: how many tokens were verified in full (not answered from the cache): a shell that reads it before
        #: deciding a request and finds it unchanged after knows the token came from the cache, i.e. was repeated.
        #: Shared by all requests: one verified by another meanwhile only delays remembering to a later request.
        self.verifications = 0

    def verify(self, token: str, now: float | None = None) -> Principal:
        """The principal for `token`, or `InvalidToken`/`ServiceUnavailable`. Never anything else (P1)."""
        if now is None:
            now = time.time()
        hit = self.cached(token, now)
        if hit is not None:
            return hit
        self.verifications += 1
        # The keys' version before verifying: if they change meanwhile (a rotation in another thread), the verdict
        # may rest on a key that is gone, and is kept under this version, which `cached` then no longer serves.
        version = self.keyset.version
        try:
            principal, expires = self._verify(token, now)
        except (InvalidToken, ServiceUnavailable):
            raise
        except Exception as exc:
            # P1: whatever goes wrong inside parsing or crypto is a bad token, never a 500.
            log.debug("authmw: unexpected %s while verifying a token", type(exc).__name__)
            raise InvalidToken("the token could not be verified", reason="verification_error") from None
        if expires is not None and self._cache_size:
            if len(self._cache) >= self._cache_size:
                self._evict()
            self._cache[token] = (principal, expires, version)
        return principal

    def cached(self, token: str, now: float | None = None) -> Principal | None:
        """The principal `token` was verified as, if that verdict is still cached (not past `exp`, keys unchanged);
        None otherwise. Never verifies anything itself."""
        version = self.keyset.version
        if self._cache_version != version:
            # Keys changed: a cached verdict may rest on a key that is gone.
            self._cache.clear()
            self._cache_version = version
            return None
        hit = self._cache.get(token)
        if hit is None:
            return None
        if hit[2] == version and (time.time() if now is None else now) < hit[1]:
            return hit[0]
        self._cache.pop(token, None)
        return None

    def _evict(self) -> None:
        # Drop the oldest quarter: insertion order approximates age; cheap and bounded.
        for key in list(self._cache)[: max(1, self._cache_size // 4)]:
            self._cache.pop(key, None)

    @property
    def verified_tokens(self) -> Container[str]:
        """Token strings verified before (and still cached): they passed every syntax check already."""
        return self._cache

    def clear_cache(self) -> None:
        self._cache.clear()

    def _verify(self, token: str, now: float) -> tuple[Principal, float | None]:
        if len(token) > self._max_bytes:
            raise InvalidToken("the token is too large", reason="token_too_large")
        parts = _COMPACT_JWS.fullmatch(token)
        if parts is None:
            if token.count(".") == 4:
                raise InvalidToken("encrypted tokens (JWE) are not accepted", reason="jwe")
            raise InvalidToken("the token is not a compact JWS", reason="malformed")
        header_b64, payload_b64, signature_b64 = parts.groups()
        # One issuer signs every token with the same few headers: parse each once (bounded; checks still run).
        header = self._headers.get(header_b64)
        if header is None:
            header = _typed_header(header_b64)  # raises before memoizing: the memo holds checked headers only
            if len(self._headers) >= 256:
                self._headers.clear()
            self._headers[header_b64] = header
        algorithm = header.get("alg")
        if type(algorithm) is not str or algorithm not in self._algorithms:
            raise InvalidToken("the token's algorithm is not allowed", reason="alg_not_allowed")
        self._check_header(header)
        key = self.keyset.select(header.get("kid"))  # absent or a string (`_typed_header`)
        if algorithm not in key.algorithms:
            raise InvalidToken("the token's algorithm does not match its key", reason="alg_key_mismatch")
        signature = _b64url_decode(signature_b64)
        signing_input = token[: parts.end(2)].encode("ascii")  # header.payload, as sent
        if not key.verify(algorithm, signing_input, signature):
            raise InvalidToken("the token signature is invalid", reason="bad_signature")
        claims = _json_object(payload_b64, "payload")
        expires = self._check_claims(claims, now)
        principal = self._to_principal(claims)
        return principal, expires

    def _check_header(self, header: Mapping[str, Any]) -> None:
        if "crit" in header or "b64" in header:
            raise InvalidToken("the token uses unsupported critical extensions", reason="crit")
        if "zip" in header or "enc" in header:
            raise InvalidToken("compressed or encrypted tokens are not accepted", reason="zip")
        cty = header.get("cty")
        if cty is not None and (type(cty) is not str or cty.lower() in ("jwt", "application/jwt")):
            raise InvalidToken("nested tokens are not accepted", reason="nested")
        typ = header.get("typ")
        if typ is not None and (type(typ) is not str or typ.lower() not in self._types):
            raise InvalidToken("the token type is not an access token", reason="bad_typ")

    def _check_claims(self, claims: Mapping[str, Any], now: float) -> float | None:
        required = self._required
        leeway = self._leeway
        exp = _numeric_date(claims, "exp", "exp" in required)
        iat = _numeric_date(claims, "iat", "iat" in required)
        nbf = _numeric_date(claims, "nbf", "nbf" in required)
        if exp is not None and now >= exp + leeway:
            raise InvalidToken("the token has expired", reason="expired")
        if iat is not None and iat > now + leeway:
            raise InvalidToken("the token was issued in the future", reason="iat_future")
        if nbf is not None and nbf > now + leeway:
            raise InvalidToken("the token is not valid yet", reason="nbf_future")
        if exp is not None and (exp - (iat if iat is not None else now)) > self._max_lifetime:
            raise InvalidToken("the token lifetime exceeds the allowed maximum", reason="lifetime")
        if "sub" in claims or "sub" in required:
            sub = claims.get("sub")
            if type(sub) is not str or not sub or CONTROL_CHARACTERS.search(sub):
                raise InvalidToken("the sub claim is missing or invalid", reason="bad_sub")
        self._check_issuer_audience(claims)
        if "jti" in claims or "jti" in required:
            jti = claims.get("jti")
            if type(jti) is not str or not jti:
                raise InvalidToken("the jti claim is missing or invalid", reason="bad_jti")
        # Spelt out, not any(...) over generators: this runs for every token verified in full.
        if (
            claims.get("token_use", "access") not in _ACCESS_TOKEN_USES
            or claims.get("token_type", "access") not in _ACCESS_TOKEN_USES
            or not _NOT_ACCESS_TOKEN_CLAIMS.isdisjoint(claims)
        ):
            raise InvalidToken("the token is not an access token", reason="not_access_token")
        # The verified-token cache may serve this token until `exp` (not past it, whatever the leeway).
        return exp

    def _check_issuer_audience(self, claims: Mapping[str, Any]) -> None:
        # Our own exact comparisons (P6): no substring, prefix or case folding, whatever the library does.
        if "iss" in self._required and "iss" not in claims:
            raise InvalidToken("the token has no iss claim", reason="missing_iss")
        if self._issuers is not None:
            iss = claims.get("iss")
            if type(iss) is not str or iss not in self._issuers:
                raise InvalidToken("the token issuer is not accepted", reason="bad_iss")
        elif "iss" in claims and type(claims["iss"]) is not str:
            raise InvalidToken("the iss claim is malformed", reason="bad_iss")
        if "aud" not in claims:
            if self._audiences is not None:
                raise InvalidToken("the token has no aud claim", reason="missing_aud")
            return
        aud = claims["aud"]
        values: Iterable[Any]
        if type(aud) is str:  # the common form: nothing more to check of its shape
            values = (aud,)
        else:
            values = aud if type(aud) is list else [None]
            if not values or not all(type(a) is str for a in values):
                raise InvalidToken("the aud claim is malformed", reason="bad_aud")
        if self._audiences is None:
            raise InvalidToken("the token is meant for an audience this service does not have", reason="bad_aud")
        if self._audiences.isdisjoint(values):
            raise InvalidToken("the token audience is not accepted", reason="bad_aud")
