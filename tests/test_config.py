"""AuthConfig from code, from a mapping and from AUTHMW_* variables; unsafe configurations fail at start-up."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import RSAAlgorithm

from authmw import AuthConfig, ConfigurationError, JWTSettings, Policy, RemoteKeySet
from authmw.issuer import TokenIssuer
from authmw.sessions import SessionSettings
from authmw.stores import MemoryStore, RedisStore
from authmw.tokens import JWTVerifier

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


# --- the signing key is checked when the configuration is built, never at a request --------------------------------


def _private_pem(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _jwks(*keys: Any) -> str:
    return json.dumps(
        {"keys": [json.loads(RSAAlgorithm.to_jwk(k.public_key())) | {"kid": f"k{i}"} for i, k in enumerate(keys)]}
    )


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory, rsa_key: rsa.RSAPrivateKey) -> dict[str, str]:
    """PEM and JWKS files, as a deployment has them: `AUTHMW_*` variables name their paths."""
    folder = tmp_path_factory.mktemp("keys")
    other_rsa = rsa.generate_private_key(65537, 2048)
    p256, ed = ec.generate_private_key(ec.SECP256R1()), ed25519.Ed25519PrivateKey.generate()
    files = {
        "rsa.pub.pem": _pem(rsa_key),
        "rsa.key.pem": _private_pem(rsa_key),
        "rsa.jwks.json": _jwks(rsa_key).encode(),
        "other-rsa.jwks.json": _jwks(other_rsa).encode(),
        "p256.pub.pem": _pem(p256),
        "p256.key.pem": _private_pem(p256),
        "ed25519.pub.pem": _pem(ed),
        "ed25519.key.pem": _private_pem(ed),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: str(folder / name) for name in files}


SIGNING_MISMATCHES = [
    # The report: the public half given as the signing key (the Starlette example then answered 500 to everything).
    pytest.param("RS256", "AUTHMW_JWT_KEY", "rsa.pub.pem", "rsa.pub.pem", "is a public key", id="public-key"),
    pytest.param("HS256", "AUTHMW_JWT_KEY", None, "rsa.key.pem", "none of the configured algorithms", id="rsa-hs256"),
    pytest.param(
        "RS256",
        "AUTHMW_JWT_JWKS",
        "rsa.jwks.json",
        "ed25519.key.pem",
        "none of the configured algorithms",
        id="ed25519-rs256-jwks",
    ),
    pytest.param(
        "RS256",
        "AUTHMW_JWT_JWKS",
        "other-rsa.jwks.json",
        "rsa.key.pem",
        "not among the verification keys",
        id="rsa-not-in-jwks",
    ),
    pytest.param("HS256", "AUTHMW_JWT_KEY", None, "q" * 40, "not among the verification keys", id="other-secret"),
]


@pytest.mark.parametrize(("algorithm", "source", "verify", "sign", "failure"), SIGNING_MISMATCHES)
def test_a_signing_key_that_does_not_fit_the_verification_side_fails_at_startup(
    key_files: dict[str, str], algorithm: str, source: str, verify: str | None, sign: str, failure: str
) -> None:
    env = {
        "AUTHMW_SECRET_KEYS": COOKIE_KEY,
        "AUTHMW_JWT_ALGORITHMS": algorithm,
        source: key_files[verify] if verify is not None else SECRET,
        "AUTHMW_JWT_SIGNING_KEY": key_files.get(sign, sign),
    }
    with pytest.raises(ConfigurationError) as raised:
        AuthConfig.from_env(env)
    message = str(raised.value)
    assert failure in message  # which check failed
    assert "AUTHMW_JWT_SIGNING_KEY" in message and "JWTSettings.signing_key" in message  # which setting
    assert any(advice in message for advice in ("set it to", "sign with", "leave it unset"))  # what to do


@pytest.mark.parametrize(
    ("algorithm", "verify", "sign"),
    [
        pytest.param("RS256", "rsa.pub.pem", "rsa.key.pem", id="RS256"),
        pytest.param("HS256", None, None, id="HS256-signs-with-AUTHMW_JWT_KEY"),
        pytest.param("HS256", None, SECRET, id="HS256-the-same-secret"),
        pytest.param("ES256", "p256.pub.pem", "p256.key.pem", id="ES256"),
        pytest.param("EdDSA", "ed25519.pub.pem", "ed25519.key.pem", id="EdDSA"),
        pytest.param("RS256", "rsa.jwks.json", "rsa.key.pem", id="RS256-jwks"),
    ],
)
def test_a_signing_key_that_fits_is_accepted_and_mints_tokens_the_app_accepts(
    key_files: dict[str, str], algorithm: str, verify: str | None, sign: str | None
) -> None:
    env = {"AUTHMW_SECRET_KEYS": COOKIE_KEY, "AUTHMW_JWT_ALGORITHMS": algorithm}
    env["AUTHMW_JWT_JWKS" if verify and verify.endswith(".json") else "AUTHMW_JWT_KEY"] = (
        key_files[verify] if verify else SECRET
    )
    if sign is not None:
        env["AUTHMW_JWT_SIGNING_KEY"] = key_files.get(sign, sign)
    config = AuthConfig.from_env(env)
    assert config.jwt is not None
    token, _ = TokenIssuer(config.jwt).mint("alice")
    assert JWTVerifier(config.jwt).verify(token).id == "alice"


def test_a_signing_key_is_checked_without_the_keys_of_a_jwks_url_not_fetched_yet(key_files: dict[str, str]) -> None:
    """The keys behind a JWKS URL come at the first fetch: the key itself is checked at start-up all the same."""
    env = {"AUTHMW_JWT_JWKS": "http://127.0.0.1:9/jwks.json", "AUTHMW_JWT_ALGORITHMS": "RS256"}
    with pytest.raises(ConfigurationError, match="is a public key"):
        AuthConfig.from_env(env | {"AUTHMW_JWT_SIGNING_KEY": key_files["rsa.pub.pem"]})
    with pytest.raises(ConfigurationError, match="none of the configured algorithms"):
        AuthConfig.from_env(env | {"AUTHMW_JWT_SIGNING_KEY": key_files["p256.key.pem"]})
    assert AuthConfig.from_env(env | {"AUTHMW_JWT_SIGNING_KEY": key_files["rsa.key.pem"]}).jwt is not None


def test_checks_the_middleware_made_when_built_are_made_when_the_config_is() -> None:
    """A Starlette app builds its middleware at its first request: every check that can fail on the configuration
    is made by the settings or `AuthConfig` instead, so that `from_env` at import stops the app."""
    with pytest.raises(ConfigurationError, match="unknown required claims"):
        JWTSettings(algorithms=["HS256"], keys=SECRET, required_claims=("exp", "role"))

    class TwoArgumentRevocations:
        def token_state(self, user_id: str, jti_key: str | None) -> tuple[float | None, bool]:
            return None, False

    jwt = JWTSettings(algorithms=["HS256"], keys=SECRET, revocation_store=TwoArgumentRevocations(), revocation_grace=5)
    with pytest.raises(ConfigurationError, match="grace"):
        AuthConfig(jwt=jwt)


# --- forwarded headers and CSRF origins ----------------------------------------------------------------------------


def test_from_env_proxies_and_origins() -> None:
    default = AuthConfig.from_env({"AUTHMW_SECRET_KEYS": COOKIE_KEY})
    assert default.trusted_proxies == 0 and default.sessions is not None
    assert default.sessions.origins == () and default.sessions.require_origin is False
    config = AuthConfig.from_env(
        {
            "AUTHMW_SECRET_KEYS": COOKIE_KEY,
            "AUTHMW_TRUSTED_PROXIES": "2",
            "AUTHMW_ORIGINS": "https://app.example:443, http://LOCALHOST:8000/",
            "AUTHMW_CSRF_REQUIRE_ORIGIN": "1",
        }
    )
    assert config.trusted_proxies == 2 and config.sessions is not None
    assert config.sessions.origins == ("https://app.example", "http://localhost:8000")
    assert config.sessions.require_origin is True
    mapped = AuthConfig.from_mapping({"trusted_proxies": 1, "sessions": {"secret_keys": [COOKIE_KEY], "origins": []}})
    assert mapped.trusted_proxies == 1


@pytest.mark.parametrize("value", ["-1", "one", "1.5", "33", "\u0661"])
def test_a_bad_proxy_count_fails_at_startup(value: str) -> None:
    with pytest.raises(ConfigurationError, match="AUTHMW_TRUSTED_PROXIES"):
        AuthConfig.from_env({"AUTHMW_TRUSTED_PROXIES": value})
    for bad in (-1, True, 1.0, 100):
        with pytest.raises(ConfigurationError, match="trusted_proxies"):
            AuthConfig(trusted_proxies=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "origin",
    [
        "app.example",
        "https://",
        "ftp://app.example",
        "https://app.example/path",
        "https://app.example?x=1",
        "https://app.example#top",
        "https://user@app.example",
        "https://app.example:99999",
        "null",
        "*",
    ],
)
def test_a_malformed_origin_fails_at_startup(origin: str) -> None:
    for variable in ("AUTHMW_ORIGINS", "AUTHMW_TRUSTED_ORIGINS"):
        with pytest.raises(ConfigurationError) as raised:
            AuthConfig.from_env({"AUTHMW_SECRET_KEYS": COOKIE_KEY, variable: f"https://ok.example, {origin}"})
        assert variable in str(raised.value) and repr(origin) in str(raised.value)
    with pytest.raises(ConfigurationError, match=r"SessionSettings\.origins"):
        SessionSettings(secret_keys=[COOKIE_KEY], origins=[origin])
