"""The Starlette apps measured: bare, authmw, and the peers, each configured as its docs recommend.

Every app answers ``GET /p`` with the caller's id as plain text (the bare app: the same text, unauthenticated),
``GET /health`` publicly, and (session peers) ``GET /login`` to obtain a session cookie.
The `http_*` factories build the same apps for uvicorn (``--factory``), configured from the environment.
"""

from __future__ import annotations

import os
from typing import Any

import jwt as pyjwt
from starlette.applications import Starlette
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    AuthenticationError,
    SimpleUser,
    requires,
)
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from authmw import AuthConfig
from authmw.starlette import AuthMiddleware, jwt_required, session_required
from benchmarks.common import (
    AUDIENCE,
    HS_SECRET,
    ISSUER,
    SESSION_SECRET,
    USER,
    authmw_config,
    redis_url,
    rsa_private_key,
)


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


# ---- bare ----


def bare() -> Starlette:
    async def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse(USER)

    return Starlette(routes=[Route("/p", endpoint), Route("/health", health)])


# ---- authmw (the Starlette adapter, endpoint decorators) ----


def authmw_jwt(config: AuthConfig) -> Starlette:
    @jwt_required()
    async def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.user.id)

    return Starlette(
        routes=[Route("/p", endpoint), Route("/health", health)], middleware=[Middleware(AuthMiddleware, config=config)]
    )


def authmw_session(config: AuthConfig) -> Starlette:
    @session_required()
    async def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.user.id)

    return Starlette(
        routes=[Route("/p", endpoint), Route("/health", health)], middleware=[Middleware(AuthMiddleware, config=config)]
    )


# ---- the floor: the least any identity middleware of authmw's shape costs (it checks nothing) ----


class IdentityFloor:
    """Not an authenticator: a pure-ASGI middleware that looks the raw Authorization value up in a dict, attaches
    what it finds as ``scope["user"]`` and adds the two identity headers (``Vary``, ``Cache-Control: no-store``)
    in a send wrapper. What it costs is the floor under authmw's repeated-token case: no middleware that does
    those three things can cost less, however little it checks."""

    def __init__(self, app: Any, users: dict[bytes, Any]) -> None:
        self.app = app
        self.users = users

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"authorization":
                scope["user"] = self.users.get(value)
                break

        async def send_with_identity_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"vary", b"Cookie, Authorization"),
                    (b"cache-control", b"no-store"),
                ]
            await send(message)

        await self.app(scope, receive, send_with_identity_headers)


def floor(authorization: str) -> Starlette:
    """The bare app behind `IdentityFloor`, which knows one Authorization value (the case's)."""

    async def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.user.username)

    users = {authorization.encode("latin-1"): SimpleUser(USER)}
    return Starlette(
        routes=[Route("/p", endpoint), Route("/health", health)], middleware=[Middleware(IdentityFloor, users=users)]
    )


# ---- peer: Starlette AuthenticationMiddleware + a PyJWT backend (Starlette's authentication docs) ----


class PyJWTBackend(AuthenticationBackend):
    """The backend the Starlette docs sketch, with PyJWT doing the verification (key prepared once)."""

    def __init__(self, key: Any, algorithm: str) -> None:
        self.key = key
        self.algorithms = [algorithm]

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        header = conn.headers.get("authorization")
        if header is None:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        try:
            claims = pyjwt.decode(
                token,
                self.key,
                algorithms=self.algorithms,
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub"]},
            )
        except pyjwt.InvalidTokenError as exc:
            raise AuthenticationError("invalid token") from exc
        return AuthCredentials(["authenticated", *claims.get("scope", "").split()]), SimpleUser(claims["sub"])


def peer_pyjwt(algorithm: str) -> Starlette:
    key: Any = HS_SECRET if algorithm == "HS256" else rsa_private_key().public_key()

    @requires("authenticated")
    async def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.user.username)

    return Starlette(
        routes=[Route("/p", endpoint), Route("/health", health)],
        middleware=[Middleware(AuthenticationMiddleware, backend=PyJWTBackend(key, algorithm))],
    )


# ---- peers: session middlewares ----


async def _session_login(request: Request) -> PlainTextResponse:
    request.session["user"] = USER
    return PlainTextResponse("ok")


async def _session_user(request: Request) -> PlainTextResponse:
    user = request.session.get("user")
    if user is None:
        return PlainTextResponse("not logged in", status_code=401)
    return PlainTextResponse(user)


def peer_signed_cookie() -> Starlette:
    """Starlette's own `SessionMiddleware`: the session data lives in a signed cookie."""
    return Starlette(
        routes=[Route("/p", _session_user), Route("/login", _session_login), Route("/health", health)],
        middleware=[Middleware(SessionMiddleware, secret_key=SESSION_SECRET)],
    )


def peer_starsessions(url: str, prefix: str) -> tuple[Starlette, Any]:
    """starsessions with its Redis store (README: `SessionMiddleware` + `SessionAutoloadMiddleware`)."""
    import redis.asyncio
    from starsessions import SessionAutoloadMiddleware
    from starsessions import SessionMiddleware as StarSessionMiddleware
    from starsessions.stores.redis import RedisStore as StarRedisStore

    connection = redis.asyncio.Redis.from_url(url)
    store = StarRedisStore(connection=connection, prefix=f"{prefix}starsessions:")
    app = Starlette(
        routes=[Route("/p", _session_user), Route("/login", _session_login), Route("/health", health)],
        middleware=[
            Middleware(StarSessionMiddleware, store=store, lifetime=1800, rolling=True, cookie_https_only=False),
            Middleware(SessionAutoloadMiddleware),
        ],
    )
    return app, connection


# ---- uvicorn factories (python -m uvicorn --factory benchmarks.asgi_apps:http_…) ----


def _env_prefix() -> str:
    return os.environ["AUTHMW_BENCH_PREFIX"]


def http_bare() -> Starlette:
    return bare()


def http_floor() -> Starlette:
    return floor(os.environ["AUTHMW_BENCH_FLOOR_AUTHORIZATION"])


def http_peer_pyjwt() -> Starlette:
    return peer_pyjwt("HS256")


def http_authmw_jwt() -> Starlette:
    return authmw_jwt(authmw_config(algorithm="HS256"))


def http_authmw_session_local() -> Starlette:
    return authmw_session(authmw_config(store="redis-local", url=redis_url(), prefix=_env_prefix()))
