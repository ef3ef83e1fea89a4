"""AuthConfig from code, from a mapping and from AUTHMW_* variables; unsafe configurations fail at start-up."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import RSAAlgorithm

from authmw import AuthConfig, ConfigurationError, JWTSettings, Policy, RemoteKeySet
from authmw.sessions import SessionSettings
from authmw.stores import MemoryStore, RedisStore

SECRET = "a-jwt-secret-of-enough-length-0123456789"
COOKIE_KEY = "a-cookie-key-of-enough-length-0123456789"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_from_env_hmac_defaults() -> None:
    config = AuthConfig.from_env({"AUTHMW_JWT_KEY": SECRET, "AUTHMW_SECRET_KEYS": COOKIE_KEY})
    assert config.jwt is not None and config.sessions is not None
    assert list(config.jwt.algorithms) == ["HS256"]
    assert config.jwt.leeway == 30 and config.jwt.max_lifetime == 86400
    assert isinstance(config.sessions.store, MemoryStore)
    assert config.sessions.cookie_secure and config.sessions.cookie_name == "__Host-authmw"
    assert config.sessions.idle_timeout == 1800 and config.sessions.absolute_timeout == 28800


def test_from_env_pem_path_and_algorithms(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(_pem(rsa_key))
    config = AuthConfig.from_env(
        {
            "AUTHMW_JWT_KEY": str(path),
            "AUTHMW_JWT_ALGORITHMS": "RS256,ES256",
            "AUTHMW_JWT_ISSUER": "https://issuer.example",
            "AUTHMW_JWT_AUDIENCE": "api",
            "AUTHMW_SECRET_KEYS": COOKIE_KEY,
        }
    )
    assert config.jwt is not None
    assert config.jwt.algorithms == ("RS256", "ES256")
    assert config.jwt.issuer == "https://issuer.example" and config.jwt.audience == "api"
    assert config.jwt.keyset.keys[0].algorithms >= {"RS256"}


def test_from_env_default_algorithm_follows_the_key_type(tmp_path: Path) -> None:
    path = tmp_path / "ec.pem"
    path.write_bytes(_pem(ec.generate_private_key(ec.SECP384R1())))
    config = AuthConfig.from_env({"AUTHMW_JWT_KEY": str(path)})
    assert config.jwt is not None and list(config.jwt.algorithms) == ["ES384"]


def test_from_env_jwks_file_and_url(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    jwk = json.loads(RSAAlgorithm.to_jwk(rsa_key.public_key()))
    jwk |= {"kid": "k1", "alg": "RS256", "use": "sig"}
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    config = AuthConfig.from_env({"AUTHMW_JWT_JWKS": str(path), "AUTHMW_JWT_ALGORITHMS": "RS256"})
    assert config.jwt is not None and config.jwt.keyset.keys[0].kid == "k1"
    remote = AuthConfig.from_env({"AUTHMW_JWT_JWKS": "http://127.0.0.1:9/jwks.json", "AUTHMW_JWT_ALGORITHMS": "RS256"})
    assert remote.jwt is not None and isinstance(remote.jwt.keyset, RemoteKeySet)


def test_from_env_without_jwt_key_warns_and_disables_bearer(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="authmw"):
        config = AuthConfig.from_env({})
    assert config.jwt is None
    assert "AUTHMW_JWT_KEY" in caplog.text and "AUTHMW_SECRET_KEYS" in caplog.text


def test_from_env_session_variables() -> None:
    config = AuthConfig.from_env(
        {
            "AUTHMW_SECRET_KEYS": f"{COOKIE_KEY}, old-{COOKIE_KEY}",
            "AUTHMW_COOKIE_SECURE": "0",
            "AUTHMW_SESSION_IDLE_TIMEOUT": "600",
            "AUTHMW_SESSION_ABSOLUTE_TIMEOUT": "3600",
            "AUTHMW_REDIS_URL": "redis://127.0.0.1:6379/3",
            "AUTHMW_TRUSTED_ORIGINS": "https://app.example:443, https://other.example:8443",
        },
        routes=[],
    )
    sessions = config.sessions
    assert sessions is not None
    assert [bytes(k) for k in sessions.secret_keys] == [COOKIE_KEY.encode(), f"old-{COOKIE_KEY}".encode()]
    assert sessions.cookie_name == "authmw_session" and not sessions.cookie_secure
    assert sessions.idle_timeout == 600 and sessions.absolute_timeout == 3600
    assert sessions.touch_interval is not None and sessions.touch_interval <= 150
    assert isinstance(sessions.store, RedisStore)
    assert tuple(sessions.trusted_origins) == ("https://app.example", "https://other.example:8443")


def test_from_env_redis_prefix_names_the_stores_keys() -> None:
    """AUTHMW_REDIS_PREFIX is the prefix of every key of the Redis store (nothing connects here)."""
    base = {"AUTHMW_SECRET_KEYS": COOKIE_KEY, "AUTHMW_REDIS_URL": "redis://127.0.0.1:1/0"}
    default = AuthConfig.from_env(base).sessions
    assert default is not None and isinstance(default.store, RedisStore) and default.store.prefix == "authmw:"
    mine = AuthConfig.from_env(base | {"AUTHMW_REDIS_PREFIX": "shop-1:sessions:"}).sessions
    assert mine is not None and isinstance(mine.store, RedisStore)
    assert mine.store.prefix == "shop-1:sessions:" and mine.store.channel == "shop-1:sessions:invalidate"
    assert mine.store._session_key("abcd.xyz") == "shop-1:sessions:{abcd}:s:xyz"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "is empty"),
        ("my app:", "whitespace"),
        ("app:\t", "whitespace"),
        ("app:\n", "whitespace"),
        ("caf\u00e9:", "printable ascii"),
        ("app:\x00", "printable ascii"),
        ("app{x}:", "'{' or '}'"),
        ("app}:", "'{' or '}'"),
    ],
)
def test_a_bad_redis_prefix_fails_at_startup_saying_what_to_fix(value: str, problem: str) -> None:
    env = {"AUTHMW_SECRET_KEYS": COOKIE_KEY, "AUTHMW_REDIS_URL": "redis://127.0.0.1:1/0"}
    for environ in (env, {"AUTHMW_SECRET_KEYS": COOKIE_KEY}):  # with Redis, and with the in-memory store
        with pytest.raises(ConfigurationError) as raised:
            AuthConfig.from_env(environ | {"AUTHMW_REDIS_PREFIX": value})
        message = str(raised.value)
        assert "AUTHMW_REDIS_PREFIX" in message and problem in message.lower()
        assert repr(value) in message and "'authmw:'" in message  # what was given, and what would do


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AUTHMW_JWT_KEY": "short"}, "too short"),
        ({"AUTHMW_JWT_KEY": SECRET, "AUTHMW_JWT_ALGORITHMS": "HS256,RS256"}, "mixed"),
        ({"AUTHMW_JWT_KEY": SECRET, "AUTHMW_JWT_ALGORITHMS": "none"}, "unsupported"),
        ({"AUTHMW_JWT_KEY": SECRET, "AUTHMW_JWT_ALGORITHMS": "RS256"}, "none of which"),
        ({"AUTHMW_JWT_KEY": SECRET, "AUTHMW_JWT_LEEWAY": "600"}, "leeway"),
        ({"AUTHMW_JWT_KEY": SECRET, "AUTHMW_JWT_LEEWAY": "soon"}, "number"),
        ({"AUTHMW_JWT_KEY": "/no/such/key.pem"}, "does not exist"),
        ({"AUTHMW_JWT_JWKS": "/no/such/jwks.json", "AUTHMW_JWT_ALGORITHMS": "RS256"}, "does not exist"),
        ({"AUTHMW_JWT_JWKS": "file:///etc/passwd", "AUTHMW_JWT_ALGORITHMS": "RS256"}, "does not exist"),
        ({"AUTHMW_SECRET_KEYS": "short"}, "at least 32"),
        ({"AUTHMW_SECRET_KEYS": COOKIE_KEY, "AUTHMW_SESSION_IDLE_TIMEOUT": "0"}, "positive"),
        # NaN passes every `<=` check and would turn the limit off (found by review); infinity is no limit either.
        ({"AUTHMW_JWT_KEY": SECRET, "AUTHMW_JWT_MAX_LIFETIME": "nan"}, "finite"),
        ({"AUTHMW_JWT_KEY": SECRET, "AUTHMW_JWT_LEEWAY": "NaN"}, "finite"),
        ({"AUTHMW_SECRET_KEYS": COOKIE_KEY, "AUTHMW_SESSION_ABSOLUTE_TIMEOUT": "nan"}, "finite"),
        ({"AUTHMW_SECRET_KEYS": COOKIE_KEY, "AUTHMW_SESSION_IDLE_TIMEOUT": "inf"}, "finite"),
    ],
)
def test_unsafe_or_broken_configuration_fails_at_startup(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        AuthConfig.from_env(env)
    assert message in str(raised.value).lower().replace("must not be mixed", "mixed")


def test_p3_public_key_pem_as_hmac_secret_is_refused_at_startup(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ConfigurationError):
        JWTSettings(algorithms=["HS256"], keys=_pem(rsa_key).decode().replace("-----BEGIN", " -----BEGIN"))
    with pytest.raises(ConfigurationError):
        AuthConfig.from_env({"AUTHMW_JWT_KEY": _pem(rsa_key).decode(), "AUTHMW_JWT_ALGORITHMS": "HS256"})


def test_from_mapping_builds_everything() -> None:
    config = AuthConfig.from_mapping(
        {
            "jwt": {"algorithms": ["HS256"], "key": SECRET, "issuer": "iss", "leeway": 10},
            "sessions": {"secret_keys": [COOKIE_KEY], "idle_timeout": 900, "cookie_secure": False},
            "routes": [
                {"path": "/api/items", "policy": "jwt", "scopes": ["items:read"], "methods": ["GET"]},
                {"path": "/account", "policy": "session"},
                {"path": "/health", "policy": "public"},
            ],
            "default": "required",
            "realm": "shop",
        }
    )
    assert config.jwt is not None and config.jwt.leeway == 10 and config.jwt.issuer == "iss"
    assert config.sessions is not None and config.sessions.idle_timeout == 900
    assert [r.path for r in config.routes] == ["/api/items", "/account", "/health"]
    assert config.routes[0].policy == Policy.jwt(scopes={"items:read"})
    assert config.routes[0].methods == frozenset({"GET", "HEAD"})
    assert config.default == Policy.required()
    assert config.realm == "shop"


@pytest.mark.parametrize(
    "data",
    [
        {"nonsense": 1},
        {"jwt": {"algorithms": ["HS256"], "key": SECRET, "unknown_option": 1}},
        {"jwt": {"algorithms": ["HS256"]}},
        {"sessions": {"secret_keys": [COOKIE_KEY], "colour": "blue"}},
        {"routes": [{"path": "/x", "policy": "sometimes"}]},
        {"routes": [{"path": "no-slash", "policy": "jwt"}]},
    ],
)
def test_from_mapping_rejects_bad_data(data: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        AuthConfig.from_mapping(data)


def test_code_configuration_validates_session_settings() -> None:
    with pytest.raises(ConfigurationError):
        SessionSettings(secret_keys=[COOKIE_KEY], idle_timeout=100, touch_interval=50)
    for name in ("idle_timeout", "absolute_timeout", "touch_interval", "remember_absolute_timeout"):
        with pytest.raises(ConfigurationError, match="finite"):
            SessionSettings(secret_keys=[COOKIE_KEY], **{name: float("nan")})
    for name in ("leeway", "max_lifetime", "access_token_ttl", "refresh_token_ttl", "revocation_grace"):
        with pytest.raises(ConfigurationError, match="finite"):
            JWTSettings(algorithms=["HS256"], keys=SECRET, **{name: float("nan")})
    # Sizes and counts: whole numbers within their bounds (found by review: NaN, from TOML say, turned the token
    # size limit and the cache bound off, and cookies of any size were accepted, against P13).
    for name, value in (("max_token_bytes", float("nan")), ("max_token_bytes", 10**7), ("cache_size", float("inf"))):
        with pytest.raises(ConfigurationError, match="whole number"):
            JWTSettings(algorithms=["HS256"], keys=SECRET, **{name: value})
    for name, value in (("max_cookie_bytes", 5000), ("max_cookie_bytes", float("nan")), ("max_data_bytes", True)):
        with pytest.raises(ConfigurationError, match="whole number"):
            SessionSettings(secret_keys=[COOKIE_KEY], **{name: value})
    with pytest.raises(ConfigurationError, match="whole number"):
        AuthConfig.from_mapping({"jwt": {"key": SECRET, "max_token_bytes": float("nan")}})
    with pytest.raises(ConfigurationError):
        SessionSettings(secret_keys=[COOKIE_KEY], cookie_name="__Host-x", cookie_secure=False)
    assert SessionSettings(secret_keys=[COOKIE_KEY], idle_timeout=100).touch_interval == 25
