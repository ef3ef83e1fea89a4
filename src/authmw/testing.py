"""Helpers for app authors' own tests: mint a token, log a test client in, override the principal.

from authmw.testing import login_client, mint_token, override_principal

token = mint_token(config, "alice", scopes={"items:read"})
client.get("/api/items", headers={"Authorization": f"Bearer {token}"})

login_client(client, config, "alice", scopes={"items:read"})   # a real session in the configured store

with override_principal(Principal(id="alice", source="jwt", scopes=frozenset({"admin"}))):
    client.get("/admin")                                      # no credential needed
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import jwt as pyjwt

from authmw.config import AuthConfig
from authmw.engine import Authenticator
from authmw.errors import ConfigurationError
from authmw.io import run_sync
from authmw.issuer import signing_parameters
from authmw.principal import Principal
from authmw.request import WSGIRequestView
from authmw.sessions import SessionManager, SessionState

__all__ = ["login_client", "mint_token", "override_principal", "session_cookie"]


def mint_token(
    config: AuthConfig,
    subject: str,
    scopes: Iterable[str] = (),
    *,
    ttl: float = 300.0,
    key: Any = None,
    algorithm: str | None = None,
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    """A bearer JWT the configured verifier accepts: `iss`/`aud` filled in, signed with `key`, else the
    configured signing key, else (HS* only) the verification secret.
    """
    settings = config.jwt
    if settings is None:
        raise LookupError("the config has no JWT settings")
    try:
        signing_key, chosen, kid = signing_parameters(settings, key)
    except ConfigurationError as exc:
        if key is None:
            raise LookupError(f"{exc}; or pass key=<private key> to sign test tokens") from None
        if algorithm is None:
            raise
        signing_key, chosen, kid = key, algorithm, None  # a deliberately foreign key: tests of refusals
    algorithm = algorithm or chosen
    headers = dict(headers or {})
    if kid is not None:
        headers.setdefault("kid", kid)
    key = signing_key
    now = time.time()
    # iat keeps its fraction (a NumericDate may): a token minted right after a revocation is not "before" it.
    body: dict[str, Any] = {"sub": subject, "iat": now, "exp": int(now + ttl), "jti": uuid.uuid4().hex}
    if scopes:
        body["scope"] = " ".join(sorted(scopes))
    for name, value in (("iss", settings.issuer), ("aud", settings.audience)):
        if value is not None:
            body[name] = value if isinstance(value, str) else next(iter(value))
    body.update(claims)
    return pyjwt.encode(body, key, algorithm=algorithm, headers=headers)


def session_cookie(
    config: AuthConfig, user_id: str, scopes: Iterable[str] = (), *, remember: bool = False
) -> tuple[str, str]:
    """Create a real session in the configured store; the ``(cookie name, cookie value)`` that names it."""
    if config.sessions is None:
        raise LookupError("the config has no session settings")
    manager = SessionManager(config.sessions)
    state = SessionState(manager, WSGIRequestView({"REQUEST_METHOD": "POST", "PATH_INFO": "/login"}))
    run_sync(manager.login(state, user_id, scopes, remember=remember))
    assert state.set_cookie is not None
    name, _, rest = state.set_cookie.partition("=")
    return name, rest.split(";", 1)[0]


def login_client(
    client: Any, config: AuthConfig, user_id: str, scopes: Iterable[str] = (), *, remember: bool = False
) -> tuple[str, str]:
    """Log an httpx / Starlette `TestClient` / Flask test client in as `user_id` (a real session)."""
    name, value = session_cookie(config, user_id, scopes, remember=remember)
    cookies = getattr(client, "cookies", None)
    if cookies is not None and hasattr(cookies, "set"):
        cookies.set(name, value)
    else:  # Flask's test client
        client.set_cookie(name, value)
    return name, value


@contextmanager
def override_principal(principal: Principal) -> Iterator[Principal]:
    """Within the block, every non-public request is authenticated as `principal` (route scopes still apply)."""
    previous = Authenticator.principal_override
    Authenticator.principal_override = principal
    try:
        yield principal
    finally:
        Authenticator.principal_override = previous
