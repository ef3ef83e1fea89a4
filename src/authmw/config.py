"""`AuthConfig`: everything the middleware needs, from code, from a mapping, or from `AUTHMW_*` variables."""

from __future__ import annotations

import inspect
import logging
import math
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from authmw.audit import AuditHook
from authmw.errors import AuthError, ConfigurationError, ErrorResponse
from authmw.keys import KeySet
from authmw.policy import Policy, Route
from authmw.request import RequestView
from authmw.sessions import SessionSettings
from authmw.stores import MemoryStore, RedisStore
from authmw.tokens import JWTSettings

__all__ = ["AuthConfig", "ErrorHook"]

log = logging.getLogger("authmw")

#: ``on_error(error, request_view, default_response) -> response``: customise or replace the default answer.
ErrorHook = Callable[[AuthError, RequestView, ErrorResponse], ErrorResponse]


@dataclass(slots=True)
class AuthConfig:
    """The middleware's configuration.

    `routes` are tried in order and the first match decides the policy; unmatched paths get `default`.
    """

    jwt: JWTSettings | None = None
    sessions: SessionSettings | None = None
    routes: Sequence[Route] = ()
    default: Policy = field(default_factory=Policy.optional)
    #: the realm named in `WWW-Authenticate` challenges
    realm: str = "authmw"
    #: customise error answers: ``on_error(error, request_view, default_response) -> response``
    on_error: ErrorHook | None = None
    #: receives every `authmw.audit.AuditEvent` (default: the ``authmw.audit`` logger)
    audit: AuditHook | None = None
    #: how many reverse proxies in front of the app add to `X-Forwarded-Proto`/`-Host`/`-For`: the value each header
    #: got from the proxy nearest the client is used (as werkzeug's ProxyFix does). 0: those headers are ignored
    trusted_proxies: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigurationError` for what the settings cannot check alone; the middleware calls it again when
        it is built (the fields may have been changed since)."""
        ConfigurationError.unless_count(self, "trusted_proxies", 0, 32)
        jwt = self.jwt
        if jwt is not None and jwt.revocation_grace:
            store = jwt.revocation_store or (self.sessions.store if self.sessions is not None else None)
            if store is not None and not _takes_grace(store):
                raise ConfigurationError("revocation_grace needs a store whose token_state() takes a grace argument")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], **overrides: Any) -> AuthConfig:
        """Build from plain data (e.g. parsed TOML/JSON)::

        {"jwt": {"algorithms": ["RS256"], "jwks": "https://...", "issuer": "...", "audience": "..."},
         "sessions": {"secret_keys": ["..."], "redis_url": "redis://127.0.0.1:6379/0", "idle_timeout": 1800},
         "routes": [{"path": "/api/{rest:path}", "policy": "jwt", "scopes": ["items:read"], "methods": ["GET"]}],
         "default": "optional", "realm": "my-app"}
        """
        known = {"jwt", "sessions", "routes", "default", "realm", "trusted_proxies"}
        unknown = set(data) - known
        if unknown:
            raise ConfigurationError(f"unknown configuration keys: {sorted(unknown)}")
        kwargs: dict[str, Any] = {}
        if data.get("jwt") is not None:
            kwargs["jwt"] = _jwt_from_mapping(data["jwt"])
        if data.get("sessions") is not None:
            options = dict(data["sessions"])
            redis_url = options.pop("redis_url", None)
            if redis_url:
                options["store"] = RedisStore.from_url(redis_url)
            try:
                kwargs["sessions"] = SessionSettings(**options)
            except TypeError as exc:
                raise ConfigurationError(f"invalid sessions settings: {exc}") from None
        routes = []
        for entry in data.get("routes", ()):
            policy = Policy.parse(entry.get("policy", "required"), entry.get("scopes", ()))
            routes.append(Route(entry["path"], policy, entry.get("methods")))
        kwargs["routes"] = routes
        if "default" in data:
            kwargs["default"] = Policy.parse(data["default"])
        if "realm" in data:
            kwargs["realm"] = data["realm"]
        if "trusted_proxies" in data:
            kwargs["trusted_proxies"] = data["trusted_proxies"]
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> AuthConfig:
        """Build from the `AUTHMW_*` variables (docs/CONFIGURATION.md lists them); keyword arguments (e.g. `routes`) are
        added as is.

        `AUTHMW_JWT_KEY` (a secret, or a path to / text of a PEM key) or `AUTHMW_JWT_JWKS` (a path or URL)
        enables bearer JWTs; `AUTHMW_JWT_ALGORITHMS` defaults to what the key's type allows (HS256 for a
        secret). `AUTHMW_JWT_ISSUER`, `AUTHMW_JWT_AUDIENCE`, `AUTHMW_JWT_LEEWAY`, `AUTHMW_JWT_MAX_LIFETIME`,
        `AUTHMW_JWT_SIGNING_KEY` and `AUTHMW_ACCESS_TOKEN_TTL` refine it.

        Sessions are always on: `AUTHMW_SECRET_KEYS` (unset: a random key, with a warning),
        `AUTHMW_REDIS_URL` (unset: the in-memory store), `AUTHMW_REDIS_PREFIX` (the Redis key prefix, default
        ``authmw:``), `AUTHMW_COOKIE_SECURE`,
        `AUTHMW_SESSION_IDLE_TIMEOUT`, `AUTHMW_SESSION_ABSOLUTE_TIMEOUT`, `AUTHMW_ORIGINS`, `AUTHMW_TRUSTED_ORIGINS`,
        `AUTHMW_CSRF_REQUIRE_ORIGIN`, `AUTHMW_LOGIN_URL`. `AUTHMW_TRUSTED_PROXIES`: the number of reverse proxies in
        front of the app whose `X-Forwarded-*` headers are believed (default 0: none).
        """
        env = os.environ if environ is None else environ
        kwargs: dict[str, Any] = {"jwt": _jwt_from_env(env), "sessions": _sessions_from_env(env)}
        if env.get("AUTHMW_REALM"):
            kwargs["realm"] = env["AUTHMW_REALM"]
        kwargs["trusted_proxies"] = _proxy_count(env)
        kwargs.update(overrides)
        return cls(**kwargs)


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def _flag(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    return value not in ("0", "false", "no", "off")


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    value = env.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        number = float(value)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number of seconds, not {value!r}") from None
    if not math.isfinite(number):  # "nan" and "inf" parse, and NaN passes every `<=` check
        raise ConfigurationError(f"{name} must be a finite number of seconds, not {value!r}")
    return number


def _proxy_count(env: Mapping[str, str]) -> int:
    value = (env.get("AUTHMW_TRUSTED_PROXIES") or "").strip()
    if not value:
        return 0
    if not (value.isascii() and value.isdigit()) or int(value) > 32:
        raise ConfigurationError(
            f"AUTHMW_TRUSTED_PROXIES must be the number of reverse proxies in front of the app (0 to 32), not "
            f"{value!r}: 1 behind one proxy that sets X-Forwarded-Proto/-Host/-For, or unset when clients reach the "
            "app directly"
        )
    return int(value)


def _key_material(value: str) -> str | bytes:
    """A PEM/secret given inline, or the contents of the file it names."""
    text = value.strip()
    if not text.startswith("-----BEGIN") and len(text) < 4096:
        path = Path(text).expanduser()
        try:
            if path.is_file():
                return path.read_bytes()
        except OSError:
            pass
        if text.startswith(("/", "./", "~")) or text.endswith((".pem", ".key", ".pub")):
            raise ConfigurationError(f"key file {text!r} does not exist")
    return value


def _keyset_from_source(key: Any = None, jwks: Any = None, keys: Any = None) -> KeySet:
    given = [v is not None for v in (key, jwks, keys)]
    if sum(given) != 1:
        raise ConfigurationError("configure exactly one of: a JWT key, a JWKS (path or URL), or keys by kid")
    if key is not None:
        return key if isinstance(key, KeySet) else KeySet.from_key(key)
    if keys is not None:
        return KeySet.from_keys(keys)
    if isinstance(jwks, Mapping):
        return KeySet.from_jwks(jwks)
    text = str(jwks).strip()
    if text.startswith(("http://", "https://")):
        return KeySet.from_jwks_url(text)
    path = Path(text).expanduser()
    if not path.is_file():
        raise ConfigurationError(f"JWKS file {text!r} does not exist")
    return KeySet.from_jwks_file(path)


def _default_algorithms(keyset: KeySet) -> list[str]:
    preferred = ("HS256", "RS256", "ES256", "ES384", "ES512", "EdDSA")
    found = {alg for key in keyset.keys for alg in key.algorithms}
    chosen = [alg for alg in preferred if alg in found]
    if not chosen:
        raise ConfigurationError("set AUTHMW_JWT_ALGORITHMS: no default algorithm fits the configured keys")
    if len({a[:2] == "HS" for a in chosen}) > 1:
        raise ConfigurationError("the configured keys mix HMAC secrets and asymmetric keys")
    return chosen


def _jwt_from_env(env: Mapping[str, str]) -> JWTSettings | None:
    key = env.get("AUTHMW_JWT_KEY") or None
    jwks = env.get("AUTHMW_JWT_JWKS") or None
    if key is None and jwks is None:
        log.warning("authmw: neither AUTHMW_JWT_KEY nor AUTHMW_JWT_JWKS is set; bearer tokens are refused")
        return None
    keyset = _keyset_from_source(key=_key_material(key) if key else None, jwks=jwks)
    algorithms = _split(env.get("AUTHMW_JWT_ALGORITHMS"))
    if not algorithms:
        if not keyset.keys:
            raise ConfigurationError("set AUTHMW_JWT_ALGORITHMS when the keys come from a JWKS URL")
        algorithms = _default_algorithms(keyset)
    signing = env.get("AUTHMW_JWT_SIGNING_KEY") or None
    return JWTSettings(
        algorithms=algorithms,
        keys=keyset,
        issuer=env.get("AUTHMW_JWT_ISSUER") or None,
        audience=env.get("AUTHMW_JWT_AUDIENCE") or None,
        leeway=_number(env, "AUTHMW_JWT_LEEWAY", 30.0),
        max_lifetime=_number(env, "AUTHMW_JWT_MAX_LIFETIME", 24 * 3600.0),
        signing_key=_key_material(signing) if signing else None,
        access_token_ttl=_number(env, "AUTHMW_ACCESS_TOKEN_TTL", 300.0),
        refresh_reuse_grace=_number(env, "AUTHMW_REFRESH_REUSE_GRACE", 0.0),
        revocation_grace=_number(env, "AUTHMW_REVOCATION_GRACE", 0.0),
    )


def _redis_prefix(env: Mapping[str, str]) -> str:
    """`AUTHMW_REDIS_PREFIX`, checked: every Redis key of the store starts with it."""
    value = env.get("AUTHMW_REDIS_PREFIX")
    if value is None:
        return "authmw:"
    if not value:
        problem = "is empty"
    elif not all("!" <= char <= "~" for char in value):
        problem = "must be printable ASCII without spaces or other whitespace"
    elif "{" in value or "}" in value:
        # The store puts a Redis Cluster hash tag `{...}` right after the prefix; a brace in the prefix changes
        # what the Cluster hashes (with `{x}` in it, every key of every user lands in one slot).
        problem = "must not contain '{' or '}' (the store adds its Redis Cluster hash tag after the prefix)"
    else:
        return value
    raise ConfigurationError(
        f"AUTHMW_REDIS_PREFIX {problem}, got {value!r}: set it to a key prefix such as 'myapp:' "
        "or unset it for the default 'authmw:'"
    )


def _sessions_from_env(env: Mapping[str, str]) -> SessionSettings:
    keys = _split(env.get("AUTHMW_SECRET_KEYS"))
    if not keys:
        log.warning(
            "authmw: AUTHMW_SECRET_KEYS is not set; using a random key, so sessions end when the process "
            "restarts and are not shared between processes"
        )
        keys = [secrets.token_urlsafe(48)]
    redis_url = env.get("AUTHMW_REDIS_URL") or None
    prefix = _redis_prefix(env)  # checked even without Redis: a wrong value is still a mistake to report
    secure = _flag(env, "AUTHMW_COOKIE_SECURE", True)
    idle = _number(env, "AUTHMW_SESSION_IDLE_TIMEOUT", 1800.0)
    return SessionSettings(
        secret_keys=keys,
        store=RedisStore.from_url(redis_url, prefix=prefix, local_cache=_flag(env, "AUTHMW_LOCAL_CACHE"))
        if redis_url
        else MemoryStore(),
        idle_timeout=idle,
        absolute_timeout=_number(env, "AUTHMW_SESSION_ABSOLUTE_TIMEOUT", 8 * 3600.0),
        touch_interval=_number(env, "AUTHMW_SESSION_TOUCH_INTERVAL", min(60.0, idle / 4)),
        cookie_secure=secure,
        origins=_split(env.get("AUTHMW_ORIGINS")),
        trusted_origins=_split(env.get("AUTHMW_TRUSTED_ORIGINS")),
        require_origin=_flag(env, "AUTHMW_CSRF_REQUIRE_ORIGIN"),
        login_url=env.get("AUTHMW_LOGIN_URL") or None,
    )


def _jwt_from_mapping(data: Mapping[str, Any]) -> JWTSettings:
    options = dict(data)
    keyset = _keyset_from_source(
        key=_key_material(options.pop("key")) if isinstance(options.get("key"), str) else options.pop("key", None),
        jwks=options.pop("jwks", None),
        keys=options.pop("keys", None),
    )
    algorithms = options.pop("algorithms", None) or _default_algorithms(keyset)
    try:
        return JWTSettings(algorithms=algorithms, keys=keyset, **options)
    except TypeError as exc:
        raise ConfigurationError(f"invalid jwt settings: {exc}") from None


def _takes_grace(store: Any) -> bool:
    try:
        parameters = inspect.signature(store.token_state).parameters
    except (TypeError, ValueError):  # no signature to read: trust it
        return True
    kinds = [p.kind for p in parameters.values()]
    positional = sum(k in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) for k in kinds)
    return positional >= 3 or inspect.Parameter.VAR_POSITIONAL in kinds
