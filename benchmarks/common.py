"""What every part of the suite shares: bench-only secrets and keys, authmw configurations, Redis namespaces,
and the statistics (median [min-max]) the report prints.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import statistics
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from authmw import AuthConfig, JWTSettings
from authmw.sessions import SessionSettings
from authmw.stores import MemoryStore, RedisStore

# Bench-only secrets: never used anywhere else.
HS_SECRET = "authmw-bench-only-hs256-secret-0123456789abcdef"
SESSION_SECRET = "authmw-bench-only-session-secret-0123456789abcdef"
ISSUER = "https://issuer.bench.invalid"
AUDIENCE = "authmw-bench"
USER = "alice"
SCOPES = ("items:read",)
TOKEN_TTL = 3600

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/9"

DASH = "\u2013"  # an en dash, between min and max
TIMES = "\u00d7"  # multiplication sign
#: the "floor" cases: an identity middleware of authmw's shape that checks nothing (see `asgi_apps.IdentityFloor`)
FLOOR_LABEL = "floor: identity middleware checking nothing (dict lookup + identity headers)"


def is_loopback(url: str) -> bool:
    """Whether a redis:// URL names this machine (a remote Redis would time the network, not authmw)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme != "redis":
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redis_url() -> str:
    """Redis on loopback (`--redis-url` or AUTHMW_BENCH_REDIS_URL; 127.0.0.1:6379 db 9 by default); every run
    also uses its own key prefix and deletes exactly its keys."""
    url = os.environ.get("AUTHMW_BENCH_REDIS_URL") or DEFAULT_REDIS_URL
    if not is_loopback(url):
        raise SystemExit(f"the benchmarks' Redis URL must point at loopback (redis://127.0.0.1:...), not {url!r}")
    return url


def run_prefix() -> str:
    """This run's Redis key prefix (inherited by the HTTP servers and worker processes through the env)."""
    value = os.environ.get("AUTHMW_BENCH_PREFIX")
    if not value:
        value = os.environ["AUTHMW_BENCH_PREFIX"] = f"authmw-bench:{os.getpid()}-{uuid.uuid4().hex[:8]}:"
    return value


def redis_cleanup(url: str, prefix: str) -> int:
    """Delete every key this run created (all of them carry `prefix`) and nothing else: never a FLUSHDB, since the
    Redis may hold someone's data."""
    import redis

    if not prefix:
        raise ValueError("an empty prefix would match every key")
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        literal = re.sub(r"([*?\[\]\\])", r"\\\1", prefix)  # glob characters in the prefix match only themselves
        keys = list(client.scan_iter(match=f"{literal}*", count=1000))
        for start in range(0, len(keys), 500):
            client.unlink(*keys[start : start + 500])
        return len(keys)
    finally:
        client.close()


def redis_check(url: str) -> str | None:
    """None when Redis answers at `url`, else why not."""
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
        client.ping()
        client.close()
    except Exception as exc:
        return f"Redis is not reachable at {url} ({type(exc).__name__})"
    return None


# ---- keys ----


@functools.cache
def rsa_private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def ec_private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(private: Any) -> bytes:
    return bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


# ---- authmw configurations ----


def jwt_settings(algorithm: str) -> JWTSettings:
    """Bearer JWTs as a service would configure them: one algorithm, its key, issuer and audience checked."""
    if algorithm == "HS256":
        keys: Any = HS_SECRET
        signing: Any = None
    elif algorithm == "RS256":
        keys, signing = public_pem(rsa_private_key()), rsa_private_key()
    elif algorithm == "ES256":
        keys, signing = public_pem(ec_private_key()), ec_private_key()
    else:
        raise ValueError(algorithm)
    return JWTSettings(algorithms=[algorithm], keys=keys, signing_key=signing, issuer=ISSUER, audience=AUDIENCE)


def session_settings(store: Any) -> SessionSettings:
    return SessionSettings(secret_keys=[SESSION_SECRET], store=store)


def authmw_config(
    *, algorithm: str = "HS256", store: str = "memory", url: str | None = None, prefix: str | None = None
) -> AuthConfig:
    """The example apps' shape: sessions always on (revocations of JWTs live in the session store) plus JWTs.

    `store` is ``memory``, ``redis`` or ``redis-local`` (``RedisStore.from_url(url, local_cache=True)``).
    """
    if store == "memory":
        backend: Any = MemoryStore()
    else:
        assert url is not None and prefix is not None
        backend = RedisStore.from_url(url, prefix=prefix, local_cache=store == "redis-local")
    return AuthConfig(jwt=jwt_settings(algorithm), sessions=session_settings(backend))


# ---- statistics ----


@dataclass(frozen=True)
class Spread:
    """median [min-max] of per-round values."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            return cls(float("nan"), float("nan"), float("nan"))
        return cls(statistics.median(values), min(values), max(values))

    def fmt(self, digits: int = 1, signed: bool = False) -> str:
        if self.median != self.median:  # NaN
            return "—"
        sign = "+" if signed else ""
        return f"{self.median:{sign}.{digits}f} [{self.low:{sign}.{digits}f} {DASH} {self.high:{sign}.{digits}f}]"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    lower = int(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)
