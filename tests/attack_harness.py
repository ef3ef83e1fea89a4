"""Shared harness for the attack corpus and the shell fuzzer: one configuration, both shells, faithful transports.

Two things about httpx's in-process transports would hide real attacks, so they are corrected here:

* `httpx.URL` resolves dot segments (``/x/../admin`` becomes ``/admin``) before any transport sees the path. A
  request may carry the private header ``x-test-raw-path``: the transports strip it and put that exact path on
  the wire instead, decoded the way real servers decode it (uvicorn: ``unquote``; gunicorn: PEP 3333 latin-1 of
  the percent-decoded bytes). Real clients send such paths too (``curl --path-as-is``).
* `httpx.WSGITransport` keeps only the *last* of repeated header fields and decodes values as ASCII.
  `ServerLikeWSGITransport` joins repeated fields with ``,`` as gunicorn and Werkzeug do (RFC 9110 §5.3) and
  decodes them as latin-1 (PEP 3333), so a second ``Authorization`` field is seen, as it would be in production.

The protected apps record every call that reaches them (`Recorder`) with the principal authmw attached, so a
test can assert that a refused request never reached the app, and which endpoint the router picked.
"""

from __future__ import annotations

import asyncio
import io
import sys
import time
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, unquote_to_bytes

import flask
import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as StarletteRoute

import authmw.asgi
import authmw.wsgi
from authmw import AuthConfig, JWTSettings, Policy, Route
from authmw.io import run_sync
from authmw.keys import KeySet
from authmw.principal import Principal
from authmw.request import WSGIRequestView
from authmw.sessions import SessionManager, SessionSettings, SessionState
from authmw.stores import MemoryStore

BASE = "http://testserver"
RAW_PATH_HEADER = "x-test-raw-path"
REALM = "authmw"
ISSUER = "https://issuer.example"
AUDIENCE = "authmw-api"
#: 64 bytes: long enough for every HS* algorithm (P32)
HS_SECRET = b"attack-corpus: the one configured HMAC secret, 64 bytes long...!"
WRONG_SECRET = b"attack-corpus: a different secret the attacker guessed, 64 byte!"
HS_KID = "hs-2027"
RS_KID = "rs-2027"
SESSION_KEY = "attack-corpus-session-signing-key-" + "0123456789abcdef" * 2
OTHER_SESSION_KEY = "attack-corpus-some-other-signing-key" + "fedcba9876543210" * 2
COOKIE_NAME = "__Host-authmw"
IDLE_TIMEOUT = 1800.0
ABSOLUTE_TIMEOUT = 8 * 3600.0
TOUCH_INTERVAL = 60.0

assert len(HS_SECRET) == 64 and len(WRONG_SECRET) == 64

#: the configured RSA key (RS256 routes) and keys the attacker owns
RSA_KEY = rsa.generate_private_key(65537, 2048)
ATTACKER_RSA_KEY = rsa.generate_private_key(65537, 2048)
ATTACKER_EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_PUBLIC_PEM = RSA_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)

#: the endpoints of the protected apps (same names and paths for Starlette and Flask)
ENDPOINTS: dict[str, list[str]] = {
    "items": ["/api/items"],
    "admin": ["/admin", "/admin/{rest:path}"],
    "account": ["/account"],
    "me": ["/api/me"],
    "maybe": ["/maybe"],
    "administrator": ["/administrator"],
    "public": ["/public"],
}


def auth_routes() -> list[Route]:
    """The per-route rules the corpus attacks (the default is `Policy.public()`)."""
    return [
        Route("/api/items", Policy.jwt(scopes={"items:read"})),
        Route("/admin", Policy.jwt(scopes={"admin"})),
        Route("/admin/{rest:path}", Policy.jwt(scopes={"admin"})),
        Route("/account", Policy.session()),
        Route("/api/me", Policy.either()),
        Route("/maybe", Policy.optional()),
    ]


class FakeClock:
    """Real time plus an offset the test moves forward: the memory store's notion of now."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def make_config(kind: str = "hs", *, store: Any = None, clock: FakeClock | None = None) -> AuthConfig:
    """HS256 (`kind="hs"`) or RS256 (`kind="rs"`) bearer JWTs with issuer and audience, plus sessions."""
    if kind == "hs":
        jwt_settings = JWTSettings(
            algorithms=["HS256"], keys=KeySet.from_keys({HS_KID: HS_SECRET}), issuer=ISSUER, audience=AUDIENCE
        )
    elif kind == "rs":
        jwt_settings = JWTSettings(
            algorithms=["RS256"], keys=KeySet.from_keys({RS_KID: RSA_PUBLIC_PEM}), issuer=ISSUER, audience=AUDIENCE
        )
    else:
        raise ValueError(kind)
    if store is None:
        store = MemoryStore(clock=clock or FakeClock())
    sessions = SessionSettings(
        secret_keys=[SESSION_KEY],
        store=store,
        idle_timeout=IDLE_TIMEOUT,
        absolute_timeout=ABSOLUTE_TIMEOUT,
        touch_interval=TOUCH_INTERVAL,
        cookie_secure=True,
    )
    return AuthConfig(jwt=jwt_settings, sessions=sessions, routes=auth_routes(), default=Policy.public(), realm=REALM)


# ---- the protected apps ----


@dataclass
class Call:
    """One request that reached the app behind authmw."""

    path: str
    principal: Principal | None
    endpoint: str | None = None


@dataclass
class Recorder:
    calls: list[Call] = field(default_factory=list)

    def endpoints(self) -> list[str | None]:
        return [c.endpoint for c in self.calls]

    def clear(self) -> None:
        self.calls.clear()


def _summary(principal: Principal | None) -> dict[str, Any] | None:
    if principal is None:
        return None
    return {"id": principal.id, "source": principal.source, "scopes": sorted(principal.scopes)}


def starlette_app(recorder: Recorder) -> Callable[..., Any]:
    """A Starlette router (the endpoints of `ENDPOINTS`), wrapped so every call that reaches it is recorded."""

    def endpoint(name: str) -> Callable[[Request], Any]:
        async def handler(request: Request) -> Response:
            recorder.calls[-1].endpoint = name
            state = request.scope.get("authmw")
            principal = state.principal if state is not None else None
            return JSONResponse({"endpoint": name, "principal": _summary(principal)})

        return handler

    routes = [
        StarletteRoute(path, endpoint(name), methods=["GET", "POST"])
        for name, paths in ENDPOINTS.items()
        for path in paths
    ]
    router = Starlette(routes=routes)

    async def recorded(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            state = scope.get("authmw")
            recorder.calls.append(Call(scope["path"], state.principal if state is not None else None))
        await router(scope, receive, send)

    return recorded


def flask_app(recorder: Recorder) -> Callable[..., Any]:
    """The same endpoints on Flask (Werkzeug's router), wrapped so every call that reaches it is recorded."""
    app = flask.Flask("attack_corpus")

    def endpoint(name: str) -> Callable[..., Any]:
        def handler(**_: Any) -> Any:
            recorder.calls[-1].endpoint = name
            principal = flask.request.environ.get("authmw.principal")
            return flask.jsonify({"endpoint": name, "principal": _summary(principal)})

        return handler

    for name, paths in ENDPOINTS.items():
        for index, path in enumerate(paths):
            rule = path.replace("{rest:path}", "<path:rest>")
            app.add_url_rule(rule, f"{name}_{index}", endpoint(name), methods=["GET", "POST"])
    inner = app.wsgi_app

    def recorded(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        recorder.calls.append(Call(environ.get("PATH_INFO", ""), environ.get("authmw.principal")))
        return inner(environ, start_response)

    return recorded


# ---- transports ----


def _raw_path(headers: Iterable[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
    kept, raw = [], None
    for name, value in headers:
        if name.lower() == RAW_PATH_HEADER.encode():
            raw = value
        else:
            kept.append((name, value))
    return kept, raw


class RawPathASGI:
    """ASGI shim: honour ``x-test-raw-path`` (strip it, and put that path in the scope the way uvicorn does)."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers, raw = _raw_path(scope["headers"])
            if raw is not None:
                scope = {**scope, "headers": headers, "raw_path": raw, "path": unquote(raw.decode("latin-1"))}
        await self.app(scope, receive, send)


class ServerLikeWSGITransport(httpx.WSGITransport):
    """`httpx.WSGITransport`, but building the environ as gunicorn does (see the module docstring)."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        headers, raw = _raw_path(request.headers.raw)
        raw_path = raw if raw is not None else request.url.raw_path.split(b"?")[0]
        environ: dict[str, Any] = {
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": request.url.scheme,
            "wsgi.input": io.BytesIO(request.content),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "REQUEST_METHOD": request.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(raw_path).decode("latin-1"),
            "QUERY_STRING": request.url.query.decode("latin-1"),
            "SERVER_NAME": request.url.host,
            "SERVER_PORT": str(request.url.port or 80),
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
        }
        for name, value in headers:
            key = name.decode("latin-1").upper().replace("-", "_")
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = "HTTP_" + key
            text = value.decode("latin-1")
            environ[key] = f"{environ[key]},{text}" if key in environ else text
        status_seen: list[str] = []
        headers_seen: list[list[tuple[str, str]]] = []

        def start_response(status: str, response_headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status_seen[:] = [status]
            headers_seen[:] = [response_headers]
            return lambda _: None

        result = self.app(environ, start_response)
        try:
            body = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        assert status_seen, "the WSGI app never called start_response"
        return httpx.Response(
            int(status_seen[0].split(" ", 1)[0]),
            headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers_seen[0]],
            content=body,
            request=request,
        )


@dataclass
class Shells:
    """Both shells over one `AuthConfig` (one store, one set of keys), each in front of its own recorded app."""

    config: AuthConfig
    asgi_recorder: Recorder = field(default_factory=Recorder)
    wsgi_recorder: Recorder = field(default_factory=Recorder)

    def __post_init__(self) -> None:
        self.asgi = authmw.asgi.AuthMiddleware(starlette_app(self.asgi_recorder), self.config)
        self.wsgi = authmw.wsgi.AuthMiddleware(flask_app(self.wsgi_recorder), self.config)
        assert self.config.sessions is not None
        self.sessions = SessionManager(self.config.sessions)

    def recorder(self, shell: str) -> Recorder:
        return self.asgi_recorder if shell == "asgi" else self.wsgi_recorder

    def request(
        self,
        shell: str,
        method: str,
        path: str,
        headers: list[tuple[bytes, bytes]] | None = None,
        *,
        raw_path: bool = False,
        query: str = "",
    ) -> httpx.Response:
        """One request through `shell` ("asgi" or "wsgi"). With `raw_path`, `path` goes on the wire as is."""
        all_headers = list(headers or [])
        url = BASE + ("/" if raw_path else path) + (f"?{query}" if query else "")
        if raw_path:
            all_headers.append((RAW_PATH_HEADER.encode(), path.encode("latin-1")))
        if shell == "wsgi":
            with httpx.Client(transport=ServerLikeWSGITransport(app=self.wsgi), base_url=BASE) as client:
                return client.request(method, url, headers=all_headers)

        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=RawPathASGI(self.asgi))
            async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
                return await client.request(method, url, headers=all_headers)

        return asyncio.run(go())

    # ---- sessions, minted the way the app's login would ----

    def new_state(self, cookie: str | None = None) -> SessionState:
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": "127.0.0.1"}
        if cookie is not None:
            environ["HTTP_COOKIE"] = f"{COOKIE_NAME}={cookie}"
        return SessionState(self.sessions, WSGIRequestView(environ))

    def login(self, user: str = "alice", scopes: Iterable[str] = ("items:read",)) -> str:
        """Log `user` in and return the signed cookie value."""
        state = self.new_state()
        run_sync(self.sessions.login(state, user, scopes))
        return cookie_value(state.set_cookie)

    def logout(self, cookie: str) -> None:
        run_sync(self.sessions.logout(self.new_state(cookie)))

    def rotate(self, cookie: str) -> str:
        state = self.new_state(cookie)
        assert run_sync(self.sessions.resolve(state)) is not None
        run_sync(self.sessions.rotate(state))
        return cookie_value(state.set_cookie)

    def logout_everywhere(self, user: str) -> None:
        run_sync(self.sessions.logout_everywhere(self.new_state(), user))


def cookie_value(set_cookie: str | None) -> str:
    assert set_cookie is not None and set_cookie.startswith(COOKIE_NAME + "=")
    return set_cookie.split(";", 1)[0].split("=", 1)[1]


def clearing_cookie() -> str:
    return f"{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Lax; Secure; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT"
