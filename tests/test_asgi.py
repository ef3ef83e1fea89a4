"""The ASGI shell: `authmw.asgi.AuthMiddleware` around Starlette apps, over httpx and at the raw ASGI message level.

Covers P1 (fail closed, no 500), P24 (RFC 6750 answers), P25, P26 (per-route kinds, no downgrade), P28 (nothing
reflected), P29 (websocket refused before accept), P31 (identity responses not cacheable), Starlette's
`request.user` / `request.auth` / `requires`, and composition with CORS, GZip, lifespan and mounts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import httpx
import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, WebSocketRoute
from starlette.routing import Route as StarletteRoute
from starlette.websockets import WebSocket

from authmw import AuthConfig, AuthState, JWTSettings, Policy, Principal, Route
from authmw.asgi import AuthMiddleware, get_session
from authmw.errors import InvalidToken
from authmw.io import inline, run_sync
from authmw.sessions import SessionSettings

SECRET = "authmw-asgi-test-secret-" + "0123456789abcdef" * 2
OTHER_SECRET = "another-secret-entirely-" + "fedcba9876543210" * 2
ORIGIN = "https://app.example"

Message = MutableMapping[str, Any]


def make_token(sub: str = "alice", scope: str = "items:read", *, key: str = SECRET, **claims: Any) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + 300, "jti": uuid.uuid4().hex, "scope": scope}
    payload.update(claims)
    return jwt.encode(payload, key, algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_config(**overrides: Any) -> AuthConfig:
    options: dict[str, Any] = {
        "jwt": JWTSettings(algorithms=["HS256"], keys=SECRET),
        "routes": [
            Route("/public", Policy.public()),
            Route("/api/items", Policy.jwt(scopes={"items:read"})),
            Route("/api/jwt", Policy.jwt()),
            Route("/api/sensitive", Policy.jwt(max_auth_age=60)),
            Route("/ws", Policy.jwt()),
        ],
        "default": Policy.optional(),
    }
    options.update(overrides)
    return AuthConfig(**options)


class Calls:
    """Records every request the protected app actually receives (P1: it must not be called on failure)."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.users: list[Any] = []

    def __bool__(self) -> bool:
        return bool(self.paths)


def starlette_app(calls: Calls, *, middleware: list[Middleware] | None = None) -> Starlette:
    async def whoami(request: Request) -> Response:
        calls.paths.append(request.url.path)
        calls.users.append(request.user)
        state: AuthState = request.scope["authmw"]
        return JSONResponse(
            {
                "authenticated": request.user.is_authenticated,
                "name": request.user.display_name,
                "scopes": list(request.auth.scopes),
                "principal": state.principal.id if state.principal else None,
            },
            headers={"Cache-Control": "public, max-age=60"},
        )

    @requires("items:read")
    async def guarded(request: Request) -> Response:
        calls.paths.append(request.url.path)
        return JSONResponse({"ok": True})

    async def big(request: Request) -> Response:
        calls.paths.append(request.url.path)
        return JSONResponse({"items": [{"id": i, "name": f"item {i}"} for i in range(300)]})

    async def socket(websocket: WebSocket) -> None:
        calls.paths.append(websocket.url.path)
        await websocket.accept()
        await websocket.send_json({"user": websocket.user.display_name, "scopes": websocket.auth.scopes})
        await websocket.close()

    paths = ["/", "/public", "/optional", "/api/items", "/api/jwt", "/api/sensitive", "/admin", "/administrator"]
    routes: list[Any] = [StarletteRoute(p, whoami, methods=["GET", "POST"]) for p in paths]
    routes += [StarletteRoute("/guarded", guarded), StarletteRoute("/big", big), WebSocketRoute("/ws", socket)]
    return Starlette(routes=routes, middleware=middleware)


def protected(calls: Calls | None = None, **config: Any) -> tuple[AuthMiddleware, Calls]:
    calls = calls if calls is not None else Calls()
    return AuthMiddleware(starlette_app(calls), make_config(**config)), calls


async def _send(app: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.request(method, path, **kwargs)


def call(app: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return asyncio.run(_send(app, method, path, **kwargs))


async def _raw(app: Any, scope: dict[str, Any], incoming: list[Message], final: Message) -> list[Message]:
    queue = list(incoming)
    sent: list[Message] = []

    async def receive() -> Message:
        return queue.pop(0) if queue else dict(final)

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def raw_http(app: Any, path: str, headers: list[tuple[bytes, bytes]], method: str = "GET") -> list[Message]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    request = {"type": "http.request", "body": b"", "more_body": False}
    return asyncio.run(_raw(app, scope, [request], {"type": "http.disconnect"}))


def ws_scope(
    headers: list[tuple[bytes, bytes]], *, extensions: dict[str, Any] | None = None, query: bytes = b""
) -> Any:
    return {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "ws",
        "path": "/ws",
        "raw_path": b"/ws",
        "root_path": "",
        "query_string": query,
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
        "subprotocols": [],
        "extensions": extensions or {},
    }


def raw_ws(app: Any, scope: dict[str, Any]) -> list[Message]:
    return asyncio.run(
        _raw(app, scope, [{"type": "websocket.connect"}], {"type": "websocket.disconnect", "code": 1000})
    )


def header_values(headers: Any, name: str) -> list[str]:
    if isinstance(headers, httpx.Headers):
        return headers.get_list(name)
    wanted = name.encode()
    return [v.decode("latin-1") for k, v in headers if k.lower() == wanted]


def vary_tokens(headers: Any) -> set[str]:
    return {t.strip().lower() for value in header_values(headers, "vary") for t in value.split(",")}


def challenge_params(response: httpx.Response) -> dict[str, str]:
    values = response.headers.get_list("www-authenticate")
    assert len(values) == 1, values
    scheme, _, params = values[0].partition(" ")
    assert scheme == "Bearer"
    return dict(re.findall(r'(\w+)="([^"]*)"', params))


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert isinstance(body["detail"], str) and body["detail"]
    assert "no-store" in response.headers["cache-control"]
    assert {"cookie", "authorization"} <= vary_tokens(response.headers)
    return body


# --- P24: RFC 6750 answers --------------------------------------------------------------------------------------


def test_p24_no_credentials_is_401_challenge_without_error() -> None:
    app, calls = protected()
    response = call(app, "GET", "/api/jwt")
    assert_problem(response, 401)
    assert response.headers["www-authenticate"] == 'Bearer realm="authmw"'
    assert "error" not in response.json()
    assert not calls


def test_p24_realm_comes_from_configuration() -> None:
    app, _ = protected(realm="my-app")
    assert call(app, "GET", "/api/jwt").headers["www-authenticate"] == 'Bearer realm="my-app"'


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(make_token(key=OTHER_SECRET), id="wrong-key"),
        pytest.param(make_token(exp=int(time.time()) - 3600, iat=int(time.time()) - 4000), id="expired"),
        pytest.param("abc.def.ghi", id="garbage-jws"),
        pytest.param("notajwt", id="not-jws"),
        pytest.param(make_token()[:-4] + "AAAA", id="tampered-signature"),
    ],
)
def test_p24_bad_token_is_401_invalid_token(token: str) -> None:
    app, calls = protected()
    response = call(app, "GET", "/api/jwt", headers=bearer(token))
    body = assert_problem(response, 401)
    params = challenge_params(response)
    assert params["realm"] == "authmw"
    assert params["error"] == "invalid_token"
    assert body["error"] == "invalid_token"
    assert not calls


@pytest.mark.parametrize(
    "value", ["Bearer", "Bearer ", "Bearer a b", "Bearer a,b", 'Bearer "abc"', "", "Bearer =abc"], ids=repr
)
def test_p24_malformed_authorization_is_400_invalid_request(value: str) -> None:
    app, calls = protected()
    response = call(app, "GET", "/api/jwt", headers={"Authorization": value})
    body = assert_problem(response, 400)
    assert challenge_params(response)["error"] == "invalid_request"
    assert body["error"] == "invalid_request"
    assert not calls


def test_p24_missing_scope_is_403_insufficient_scope_with_scope_attribute() -> None:
    app, calls = protected()
    response = call(app, "GET", "/api/items", headers=bearer(make_token(scope="items:write other")))
    body = assert_problem(response, 403)
    params = challenge_params(response)
    assert params["error"] == "insufficient_scope"
    assert params["scope"] == "items:read"
    assert body["error"] == "insufficient_scope"
    assert body["required_scopes"] == ["items:read"]
    assert not calls


def test_p24_enough_scope_passes() -> None:
    app, calls = protected()
    response = call(app, "GET", "/api/items", headers=bearer(make_token(scope="items:write items:read")))
    assert response.status_code == 200
    assert response.json()["principal"] == "alice"
    assert calls.paths == ["/api/items"]


def test_p25_two_authorization_headers_is_400() -> None:
    app, calls = protected()
    token = make_token()
    headers = [("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")]
    response = call(app, "GET", "/api/jwt", headers=headers)
    assert_problem(response, 400)
    assert challenge_params(response)["error"] == "invalid_request"
    assert not calls


def test_p25_header_and_query_token_is_400() -> None:
    app, calls = protected()
    token = make_token()
    response = call(app, "GET", "/api/jwt", headers=bearer(token), params={"access_token": token})
    assert_problem(response, 400)
    assert not calls


def test_p25_query_token_alone_is_not_accepted() -> None:
    app, calls = protected()
    response = call(app, "GET", "/api/jwt", params={"access_token": make_token()})
    assert response.status_code == 401
    assert "error=" not in response.headers["www-authenticate"]
    assert not calls


_DESCRIPTION_SAFE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")


@pytest.mark.parametrize(
    "value",
    [
        "Bearer " + make_token(key=OTHER_SECRET),
        "Bearer " + make_token(exp=int(time.time()) - 3600, iat=int(time.time()) - 4000),
        "Bearer " + "Z" * 9000,
        'Bearer abc"def\\ghi',
        "Bearer SECRETTOKENVALUE%22%5C",
        "Bearer SECRETTOKENVALUE\x7f",
    ],
)
def test_p28_error_description_never_echoes_the_token(value: str) -> None:
    app, _ = protected()
    response = call(app, "GET", "/api/items", headers=[(b"authorization", value.encode("latin-1"))])
    assert response.status_code in (400, 401)
    token = value.partition(" ")[2]
    challenge = response.headers["www-authenticate"]
    description = re.search(r'error_description="([^"]*)"', challenge)
    assert description is not None
    assert _DESCRIPTION_SAFE.fullmatch(description.group(1))
    assert "\\" not in description.group(1)
    for needle in (token, token[:20], token[-20:], "SECRETTOKENVALUE"):
        assert needle not in challenge
        assert needle not in response.text
    assert "Traceback" not in response.text


# --- P26: per-route credential kinds, no downgrade --------------------------------------------------------------


def test_p26_jwt_route_ignores_cookies() -> None:
    app, calls = protected()
    cookies = {"Cookie": "__Host-session=forged.garbage; session=x"}
    response = call(app, "GET", "/api/jwt", headers=cookies)
    assert response.status_code == 401
    assert "error=" not in response.headers["www-authenticate"]
    response = call(app, "GET", "/api/jwt", headers={**cookies, **bearer(make_token())})
    assert response.status_code == 200
    assert response.json()["principal"] == "alice"
    assert calls.paths == ["/api/jwt"]


SESSION_KEY = "session-signing-key-" + "0123456789abcdef" * 2


def session_app() -> tuple[AuthMiddleware, Calls]:
    """Sessions on: a public /login that opens a session, a JWT-only and a session-only route."""
    calls = Calls()

    async def login(request: Request) -> Response:
        principal = await get_session(request.scope).login("sam", ["items:read"])
        return JSONResponse({"id": principal.id})

    async def whoami(request: Request) -> Response:
        calls.paths.append(request.url.path)
        user = request.user
        return JSONResponse({"id": getattr(user, "id", None), "source": getattr(user, "source", None)})

    paths = ["/api/jwt", "/account", "/optional"]
    inner = Starlette(routes=[StarletteRoute("/login", login), *[StarletteRoute(p, whoami) for p in paths]])
    config = make_config(
        sessions=SessionSettings(secret_keys=[SESSION_KEY], cookie_secure=False),
        routes=[Route("/login", Policy.public()), Route("/api/jwt", Policy.jwt()), Route("/account", Policy.session())],
    )
    return AuthMiddleware(inner, config), calls


def _session_flow(app: AuthMiddleware) -> dict[str, httpx.Response]:
    # A fresh client per request: nothing is sent but the headers each case names (no cookie jar).
    login = call(app, "GET", "/login")
    cookie = {"Cookie": login.headers["set-cookie"].split(";", 1)[0]}
    valid, invalid = bearer(make_token(sub="bob")), bearer(make_token(sub="bob", key=OTHER_SECRET))
    cases = {
        "optional+cookie": ("/optional", cookie),
        "jwt+cookie": ("/api/jwt", cookie),
        "jwt+cookie+token": ("/api/jwt", {**cookie, **valid}),
        "session+token": ("/account", valid),
        "session+cookie+token": ("/account", {**cookie, **valid}),
        "session+cookie+badtoken": ("/account", {**cookie, **invalid}),
        "optional+cookie+badtoken": ("/optional", {**cookie, **invalid}),
    }
    return {name: call(app, "GET", path, headers=headers) for name, (path, headers) in cases.items()}


def test_p26_jwt_route_ignores_a_valid_session_and_session_route_ignores_bearer() -> None:
    app, calls = session_app()
    r = _session_flow(app)
    # The session is real: an optional route accepting both kinds identifies it.
    assert r["optional+cookie"].json() == {"id": "sam", "source": "session"}
    # A JWT-only route does not read cookies: no credential of its kind, so 401 without an error code.
    assert r["jwt+cookie"].status_code == 401
    assert "error=" not in r["jwt+cookie"].headers["www-authenticate"]
    assert r["jwt+cookie+token"].json() == {"id": "bob", "source": "jwt"}
    # A session-only route does not read bearer tokens, valid or not.
    assert r["session+token"].status_code == 401
    assert r["session+cookie+token"].json() == {"id": "sam", "source": "session"}
    assert r["session+cookie+badtoken"].json() == {"id": "sam", "source": "session"}
    # Where both kinds are accepted, a presented but invalid bearer token is refused, never replaced by the cookie.
    assert r["optional+cookie+badtoken"].status_code == 401
    assert challenge_params(r["optional+cookie+badtoken"])["error"] == "invalid_token"
    assert calls.paths == ["/optional", "/api/jwt", "/account", "/account"]


@pytest.mark.parametrize(
    "token", [make_token(key=OTHER_SECRET), "abc.def.ghi", make_token(exp=int(time.time()) - 999, iat=0)]
)
def test_p26_optional_route_refuses_invalid_bearer_never_anonymous(token: str) -> None:
    app, calls = protected()
    response = call(app, "GET", "/optional", headers=bearer(token))
    assert response.status_code == 401
    assert challenge_params(response)["error"] == "invalid_token"
    assert not calls


def test_p26_optional_route_malformed_bearer_is_400_not_anonymous() -> None:
    app, calls = protected()
    assert call(app, "GET", "/optional", headers={"Authorization": "Bearer a b"}).status_code == 400
    assert not calls


def test_p26_optional_route_without_credentials_is_anonymous() -> None:
    app, calls = protected()
    response = call(app, "GET", "/optional")
    assert response.status_code == 200
    assert response.json() == {"authenticated": False, "name": "", "scopes": [], "principal": None}
    assert calls.paths == ["/optional"]


def test_p26_optional_route_other_scheme_is_anonymous() -> None:
    app, calls = protected()
    response = call(app, "GET", "/optional", headers={"Authorization": "Basic YWxpY2U6d29uZGVybGFuZA=="})
    assert response.status_code == 200
    assert response.json()["authenticated"] is False
    assert calls.paths == ["/optional"]


@pytest.mark.parametrize("value", ["Bearer " + make_token(key=OTHER_SECRET), "Bearer a b", "Bearer " + "x" * 9000])
def test_p26_public_route_never_reads_credentials(value: str) -> None:
    app, calls = protected()
    headers = [("Authorization", value), ("Authorization", value)]
    response = call(app, "GET", "/public", headers=headers)
    assert response.status_code == 200
    assert response.json()["authenticated"] is False
    assert calls.paths == ["/public"]


def test_p26_public_route_with_valid_token_stays_anonymous() -> None:
    app, _ = protected()
    response = call(app, "GET", "/public", headers=bearer(make_token()))
    assert response.json()["authenticated"] is False


def test_step_up_route_refuses_old_authentication() -> None:
    app, calls = protected()
    now = int(time.time())
    response = call(app, "GET", "/api/sensitive", headers=bearer(make_token(iat=now, auth_time=now - 3600)))
    assert_problem(response, 401)
    assert challenge_params(response)["error"] == "insufficient_user_authentication"
    assert "max_age=60" in response.headers["www-authenticate"]
    assert not calls


def test_step_up_route_accepts_fresh_authentication() -> None:
    app, calls = protected()
    response = call(app, "GET", "/api/sensitive", headers=bearer(make_token()))
    assert response.status_code == 200
    assert calls


# --- P1: fail closed, never a 500 -------------------------------------------------------------------------------


def test_p1_app_not_called_when_auth_fails() -> None:
    app, calls = protected()
    assert call(app, "GET", "/api/jwt").status_code == 401
    assert call(app, "POST", "/api/jwt", headers=bearer("x.y.z"), content=b"{}").status_code == 401
    assert call(app, "GET", "/api/jwt", headers={"Authorization": "Bearer"}).status_code == 400
    assert call(app, "GET", "/api/items", headers=bearer(make_token(scope=""))).status_code == 403
    assert not calls


class RawApp:
    """A minimal ASGI app recording whether (and as whom) it was called."""

    def __init__(self) -> None:
        self.called: list[Any] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.called.append(scope.get("user"))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})


_HEADER_NAME = st.one_of(st.sampled_from([b"authorization", b"cookie", b"origin", b"x-x"]), st.binary(max_size=12))
_HEADER_VALUE = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda t: b"Bearer " + t, st.binary(max_size=300)),
    st.builds(lambda t: b"Bearer " + t.encode(), st.text(alphabet="abcXYZ019-._~+/= .\"'\\", max_size=80)),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_HEADER_NAME, _HEADER_VALUE), max_size=5), st.sampled_from(["/api/jwt", "/optional"]))
def test_p1_garbage_headers_never_500(headers: list[tuple[bytes, bytes]], path: str) -> None:
    inner = RawApp()
    app = AuthMiddleware(inner, make_config())
    sent = raw_http(app, path, headers)
    start = sent[0]
    assert start["type"] == "http.response.start"
    assert start["status"] in (200, 400, 401)
    if start["status"] == 200:
        assert path == "/optional"
        assert inner.called and not inner.called[0].is_authenticated
    else:
        assert not inner.called
        assert header_values(start["headers"], "www-authenticate")


# --- P31: identity responses are not cacheable ------------------------------------------------------------------


def test_p31_authenticated_response_is_no_store_and_varies() -> None:
    app, _ = protected()
    response = call(app, "GET", "/optional", headers=bearer(make_token()))
    assert response.status_code == 200
    assert response.headers.get_list("cache-control") == ["no-store"]
    assert {"cookie", "authorization"} <= vary_tokens(response.headers)


def test_p31_anonymous_response_on_non_public_route_varies() -> None:
    app, _ = protected()
    response = call(app, "GET", "/optional")
    assert response.status_code == 200
    assert {"cookie", "authorization"} <= vary_tokens(response.headers)
    assert response.headers["cache-control"] == "public, max-age=60"


def test_p31_error_responses_are_no_store() -> None:
    app, _ = protected()
    for response in (call(app, "GET", "/api/jwt"), call(app, "GET", "/api/jwt", headers=bearer("a.b.c"))):
        assert response.headers["cache-control"] == "no-store"
        assert {"cookie", "authorization"} <= vary_tokens(response.headers)


# --- scope["user"] / scope["auth"] and Starlette's requires ------------------------------------------------------


def test_request_user_and_auth_are_set_for_a_token() -> None:
    app, calls = protected()
    response = call(app, "GET", "/optional", headers=bearer(make_token(sub="bob", scope="items:read items:write")))
    assert response.json() == {
        "authenticated": True,
        "name": "bob",
        "scopes": ["authenticated", "items:read", "items:write"],
        "principal": "bob",
    }
    user = calls.users[0]
    assert isinstance(user, Principal)
    assert (user.id, user.source, user.scopes) == ("bob", "jwt", {"items:read", "items:write"})


def test_requires_passes_with_the_scope() -> None:
    app, calls = protected()
    response = call(app, "GET", "/guarded", headers=bearer(make_token(scope="items:read")))
    assert response.status_code == 200
    assert response.json() == {"ok": True}
    assert calls.paths == ["/guarded"]


@pytest.mark.parametrize("headers", [{}, bearer(make_token(scope="items:write"))], ids=["anonymous", "other-scope"])
def test_requires_refuses_without_the_scope(headers: dict[str, str]) -> None:
    app, calls = protected()
    response = call(app, "GET", "/guarded", headers=headers)
    assert response.status_code == 403
    assert not calls


# --- composition: CORS, GZip, lifespan, mounts ------------------------------------------------------------------

PREFLIGHT = {
    "Origin": ORIGIN,
    "Access-Control-Request-Method": "GET",
    "Access-Control-Request-Headers": "authorization",
}
CORS = {"allow_origins": [ORIGIN], "allow_methods": ["GET", "POST"], "allow_headers": ["Authorization"]}


def test_cors_outside_preflight_to_jwt_route_passes() -> None:
    calls = Calls()
    app = CORSMiddleware(AuthMiddleware(starlette_app(calls), make_config()), **CORS)
    response = call(app, "OPTIONS", "/api/jwt", headers=PREFLIGHT)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "GET" in response.headers["access-control-allow-methods"]
    # The refusal of the real request still carries CORS headers, so the browser can read the 401.
    refused = call(app, "GET", "/api/jwt", headers={"Origin": ORIGIN})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == ORIGIN
    allowed = call(app, "GET", "/api/jwt", headers={"Origin": ORIGIN, **bearer(make_token())})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert calls.paths == ["/api/jwt"]


def test_cors_inside_preflight_passes_through_unauthenticated() -> None:
    calls = Calls()
    app = AuthMiddleware(starlette_app(calls, middleware=[Middleware(CORSMiddleware, **CORS)]), make_config())
    response = call(app, "OPTIONS", "/api/jwt", headers=PREFLIGHT)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    # An OPTIONS without Access-Control-Request-Method is no preflight: authenticated as usual.
    assert call(app, "OPTIONS", "/api/jwt", headers={"Origin": ORIGIN}).status_code == 401


def _check_gzip(app: Any) -> None:
    response = call(app, "GET", "/big", headers={**bearer(make_token()), "Accept-Encoding": "gzip"})
    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"
    assert len(response.json()["items"]) == 300
    assert {"accept-encoding", "cookie", "authorization"} <= vary_tokens(response.headers)
    assert response.headers["cache-control"] == "no-store"
    assert len(response.headers.get_list("vary")) == 1


def test_gzip_inside_keeps_identity_headers() -> None:
    app = AuthMiddleware(
        starlette_app(Calls(), middleware=[Middleware(GZipMiddleware, minimum_size=500)]), make_config()
    )
    _check_gzip(app)


def test_gzip_outside_keeps_identity_headers() -> None:
    app = GZipMiddleware(AuthMiddleware(starlette_app(Calls()), make_config()), minimum_size=500)
    _check_gzip(app)


def test_lifespan_passes_straight_through() -> None:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    app = AuthMiddleware(Starlette(routes=[], lifespan=lifespan), make_config(default=Policy.required()))
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    incoming: list[Message] = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent = asyncio.run(_raw(app, scope, incoming, {"type": "lifespan.shutdown"}))
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert events == ["startup", "shutdown"]
    assert "user" not in scope and "authmw" not in scope


def test_mounted_app_rules_match_the_inner_router_path() -> None:
    calls = Calls()
    config = make_config(routes=[Route("/admin", Policy.jwt())])
    outer = Starlette(routes=[Mount("/sub", app=AuthMiddleware(starlette_app(calls), config))])
    assert call(outer, "GET", "/sub/admin").status_code == 401
    assert call(outer, "GET", "/sub/admin/").status_code in (401, 307)
    assert not calls
    assert call(outer, "GET", "/sub/administrator").status_code == 200
    response = call(outer, "GET", "/sub/admin", headers=bearer(make_token()))
    assert response.status_code == 200
    assert response.json()["principal"] == "alice"
    assert calls.paths == ["/sub/administrator", "/sub/admin"]


def test_mounted_app_with_full_path_rule_does_not_match() -> None:
    # Rules name the path the app's router sees, so a rule spelled with the mount prefix never applies.
    calls = Calls()
    config = make_config(routes=[Route("/sub/admin", Policy.jwt())])
    outer = Starlette(routes=[Mount("/sub", app=AuthMiddleware(starlette_app(calls), config))])
    assert call(outer, "GET", "/sub/admin").status_code == 200


def test_percent_encoded_and_non_ascii_paths_are_matched_decoded() -> None:
    app, calls = protected(routes=[Route("/api/jwt", Policy.jwt()), Route("/café", Policy.jwt())])
    assert call(app, "GET", "/%61pi/jwt").status_code == 401
    assert call(app, "GET", "/api//jwt/").status_code == 401
    assert call(app, "GET", "/caf%C3%A9").status_code == 401
    assert not calls


# --- P29: websockets -------------------------------------------------------------------------------------------


class RawSocketApp:
    def __init__(self) -> None:
        self.called: list[Any] = []

    async def __call__(self, scope: Any, receive: Callable[[], Awaitable[Message]], send: Any) -> None:
        self.called.append(scope.get("user"))
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": json.dumps({"user": scope["user"].display_name})})
        await send({"type": "websocket.close", "code": 1000})


@pytest.mark.parametrize(
    "headers",
    [[], [(b"authorization", b"Bearer " + make_token(key=OTHER_SECRET).encode())], [(b"authorization", b"Bearer")]],
    ids=["none", "invalid", "malformed"],
)
def test_p29_websocket_refused_with_close_before_accept(headers: list[tuple[bytes, bytes]]) -> None:
    inner = RawSocketApp()
    sent = raw_ws(AuthMiddleware(inner, make_config()), ws_scope(headers))
    assert len(sent) == 1
    assert sent[0]["type"] == "websocket.close"
    assert sent[0]["code"] == 1008
    assert not inner.called


def test_p29_websocket_query_token_is_not_accepted() -> None:
    inner = RawSocketApp()
    sent = raw_ws(AuthMiddleware(inner, make_config()), ws_scope([], query=f"access_token={make_token()}".encode()))
    assert [m["type"] for m in sent] == ["websocket.close"]
    assert not inner.called


@pytest.mark.parametrize(
    ("headers", "error"),
    [([], None), ([(b"authorization", b"Bearer " + make_token(key=OTHER_SECRET).encode())], "invalid_token")],
    ids=["none", "invalid"],
)
def test_p29_websocket_denial_response_extension(headers: list[tuple[bytes, bytes]], error: str | None) -> None:
    inner = RawSocketApp()
    scope = ws_scope(headers, extensions={"websocket.http.response": {}})
    sent = raw_ws(AuthMiddleware(inner, make_config()), scope)
    assert [m["type"] for m in sent] == ["websocket.http.response.start", "websocket.http.response.body"]
    assert sent[0]["status"] == 403  # a refused handshake is HTTP 403, as a close before accept gives
    assert header_values(sent[0]["headers"], "www-authenticate")
    problem = json.loads(sent[1]["body"])
    assert problem["status"] == 403  # the status sent, not the 401 an HTTP request gets (it said 401)
    assert problem.get("error") == error  # and why
    assert header_values(sent[0]["headers"], "content-length") == [str(len(sent[1]["body"]))]
    assert not inner.called


def test_p29_websocket_with_valid_token_runs_the_app() -> None:
    inner = RawSocketApp()
    sent = raw_ws(AuthMiddleware(inner, make_config()), ws_scope(bearer_header(make_token(sub="carol"))))
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert json.loads(sent[1]["text"]) == {"user": "carol"}
    assert inner.called[0].is_authenticated


def test_p29_starlette_websocket_sees_user_and_auth() -> None:
    calls = Calls()
    app = AuthMiddleware(starlette_app(calls), make_config())
    sent = raw_ws(app, ws_scope(bearer_header(make_token(scope="items:read"))))
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert json.loads(sent[1]["text"]) == {"user": "alice", "scopes": ["authenticated", "items:read"]}
    assert calls.paths == ["/ws"]


def bearer_header(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


def spelt(method: str, app: Any) -> Any:
    """An ASGI app that rewrites the method as a server would pass it on (httpx upper-cases what it sends)."""

    async def respell(scope: Any, receive: Any, send: Any) -> None:
        await app({**scope, "method": method}, receive, send)

    return respell


@pytest.mark.parametrize("method", ["delete", "Post"])
def test_p26_lower_case_method_meets_the_rule_written_for_the_upper_case_one(method: str) -> None:
    calls = Calls()
    config = make_config(routes=[Route("/api/jwt", Policy.jwt(), methods=["DELETE", "POST"])])  # default: optional
    app = spelt(method, AuthMiddleware(starlette_app(calls), config))
    assert call(app, "GET", "/api/jwt").status_code == 401
    assert calls.paths == []


def test_cors_preflight_must_be_spelt_as_browsers_send_it() -> None:
    calls = Calls()
    app = AuthMiddleware(starlette_app(calls, middleware=[Middleware(CORSMiddleware, **CORS)]), make_config())
    assert call(spelt("options", app), "OPTIONS", "/api/jwt", headers=PREFLIGHT).status_code == 401
    assert call(app, "OPTIONS", "/api/jwt", headers={"Access-Control-Request-Method": "GET"}).status_code == 401
    assert calls.paths == []


# ---- no reference cycles per request ----


async def _plain_app(scope: Message, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": scope["user"].id.encode()})


def test_a_request_leaves_no_reference_cycle_for_the_garbage_collector() -> None:
    """Each request's objects are freed by reference counting as it ends: a cycle (the scope holding the session
    handle, which held a view holding the scope) left thousands of them per second to the cyclic collector."""
    import gc

    from authmw.testing import mint_token, session_cookie

    config = make_config(
        sessions=SessionSettings(secret_keys=["gc-test-session-secret-0123456789abcdef"], cookie_secure=False),
        routes=[Route("/jwt", Policy.jwt()), Route("/session", Policy.session())],
    )
    app = AuthMiddleware(_plain_app, config)
    name, value = session_cookie(config, "alice")
    token = mint_token(config, "alice")
    requests = [
        ("/jwt", [(b"authorization", f"Bearer {token}".encode())]),
        ("/session", [(b"cookie", f"{name}={value}".encode())]),
    ]

    async def run() -> list[int]:
        statuses: list[int] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        for path, headers in requests * 50:
            scope = {"type": "http", "method": "GET", "path": path, "headers": list(headers), "query_string": b""}
            await app(scope, receive, send)
        return statuses

    asyncio.run(run())  # warm up: caches, memos
    loop = asyncio.new_event_loop()
    gc.disable()
    try:
        gc.collect()
        statuses = loop.run_until_complete(run())
        found = gc.collect()
    finally:
        gc.enable()
        loop.close()
    assert statuses == [200] * 100
    assert found == 0, f"{found} objects were only freed by the cycle collector"


def test_request_auth_is_shared_read_only_so_one_request_cannot_change_anothers() -> None:
    """`scope["auth"]` is one object per set of scopes (built once): it refuses changes instead of passing them on."""
    from authmw.principal import AuthScopes

    alice = Principal(id="alice", source="jwt", scopes=frozenset({"read"}))
    bob = Principal(id="bob", source="jwt", scopes=frozenset({"read"}))
    shared = AuthScopes.for_principal(alice)
    assert AuthScopes.for_principal(bob) is shared and shared.scopes == ("authenticated", "read")
    with pytest.raises(AttributeError):
        shared.scopes = (*shared.scopes, "admin")  # type: ignore[misc]
    with pytest.raises(AttributeError):
        shared.scopes.append("admin")  # type: ignore[attr-defined]
    assert AuthScopes.for_principal(bob).scopes == ("authenticated", "read")


def test_a_bearer_request_that_needs_the_store_is_verified_once(redis_url: str) -> None:
    """The ASGI shell tries without I/O first, then goes on from the I/O point it reached: the token is verified
    (and `to_principal` called) once per request, not once per attempt, even with the verified-token cache off."""
    from authmw.stores import RedisStore
    from authmw.testing import mint_token
    from authmw.tokens import default_principal

    calls: list[str] = []

    def to_principal(claims: dict[str, Any]) -> Principal:
        calls.append(claims["sub"])
        return default_principal(claims)

    prefix = f"authmw-test-once-{uuid.uuid4().hex[:8]}:"
    store = RedisStore.from_url(redis_url, prefix=prefix)
    try:
        jwt_settings = JWTSettings(
            algorithms=["HS256"], keys=SECRET, to_principal=to_principal, cache_size=0, revocation_store=store
        )
        config = AuthConfig(jwt=jwt_settings, routes=[Route("/", Policy.jwt())])
        app = AuthMiddleware(_plain_app, config)
        token = mint_token(config, "alice")
        statuses: list[int] = []

        async def run() -> None:
            async def receive() -> Message:
                return {"type": "http.request", "body": b""}

            async def send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    statuses.append(message["status"])

            headers = [(b"authorization", f"Bearer {token}".encode())]
            for _ in range(3):
                await app({"type": "http", "method": "GET", "path": "/", "headers": headers}, receive, send)
            await store.async_client.aclose()

        asyncio.run(run())
        assert statuses == [200, 200, 200]
        assert calls == ["alice"] * 3
    finally:
        for key in store.client.scan_iter(match=prefix + "*"):
            store.client.delete(key)
        store.client.close()


def test_one_pass_through_the_decision_per_request_under_asgi_with_redis(redis_url: str) -> None:
    """With Redis and no local cache every JWT and session request needs I/O: the decision asks for it once, in one
    place, and goes on from the point it reached, never deciding again from the start. Per request, first sight and
    repeated alike: one `resolve`, one `verify` (a JWT) or one record -> principal step (a session), one command."""
    from collections import Counter

    from authmw.stores import RedisStore, user_tag
    from authmw.testing import mint_token, session_cookie

    prefix = f"authmw-test-one-pass-{uuid.uuid4().hex[:8]}:"
    store = RedisStore.from_url(redis_url, prefix=prefix)
    try:
        config = make_config(
            sessions=SessionSettings(secret_keys=[SESSION_KEY], store=store, cookie_secure=False),
            routes=[Route("/api/jwt", Policy.jwt()), Route("/account", Policy.session())],
        )
        app = AuthMiddleware(_plain_app, config)
        auth = app.authenticator
        assert auth.verifier is not None and auth.sessions is not None and auth._peek_token_state is None
        counts: Counter[str] = Counter()

        def counted(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
            def call(*args: Any, **kwargs: Any) -> Any:
                counts[name] += 1
                return function(*args, **kwargs)

            return call

        auth.verifier.verify = counted("verify", auth.verifier.verify)  # type: ignore[method-assign]
        auth.sessions.principal_for = counted("record -> principal", auth.sessions.principal_for)  # type: ignore[method-assign]
        auth.resolve = counted("resolve", auth.resolve)  # type: ignore[method-assign]
        commands: list[str] = []
        execute = store.async_client.execute_command

        async def counted_command(*args: Any, **options: Any) -> Any:
            commands.append(str(args[0]))
            return await execute(*args, **options)

        store.async_client.execute_command = counted_command
        run_sync(store.load(f"{user_tag('nobody')}.{'x' * 43}", 60))  # the server knows the load script from here on
        name, value = session_cookie(config, "alice")
        credentials = {
            "jwt": ("/api/jwt", (b"authorization", f"Bearer {mint_token(config, 'alice')}".encode())),
            "session": ("/account", (b"cookie", f"{name}={value}".encode())),
        }

        async def run() -> list[tuple[str, str, dict[str, int], list[str]]]:
            seen = []
            for kind, (path, header) in credentials.items():
                for _ in range(3):  # first sight, then repeated (the verifier's cache, the principal cache)
                    counts.clear()
                    commands.clear()
                    status = (await _answer(app, "GET", path, [header], b"")).split()[0]
                    seen.append((kind, status, dict(counts), list(commands)))
            await store.async_client.aclose()
            return seen

        jwt_pass = ("jwt", "200", {"resolve": 1, "verify": 1}, ["MGET"])
        session_pass = ("session", "200", {"resolve": 1, "record -> principal": 1}, ["EVALSHA"])
        assert asyncio.run(run()) == [jwt_pass] * 3 + [session_pass] * 3
    finally:
        for key in store.client.scan_iter(match=prefix + "*"):
            store.client.delete(key)
        store.client.close()


# ---- decisions remembered for repeated bearer requests ----

_MEMO_TOKENS: dict[str, str] = {}


def _memo_pair() -> tuple[AuthMiddleware, AuthMiddleware, Any]:
    """Two middlewares on one config and one store: one remembers decisions, the other decides every request."""
    from authmw.stores import MemoryStore

    store = MemoryStore()
    config = make_config(
        jwt=JWTSettings(algorithms=["HS256"], keys=SECRET, revocation_store=store),
        routes=[
            *make_config().routes,
            Route("/api/admin", Policy.jwt(scopes={"admin"})),
            Route("/either", Policy.either()),
        ],
    )
    remembering = AuthMiddleware(_echo_app, config)
    deciding = AuthMiddleware(_echo_app, config)
    deciding.remember_decisions = False
    return remembering, deciding, store


async def _echo_app(scope: Message, receive: Any, send: Any) -> None:
    user = scope["user"]
    body = (user.id if user.is_authenticated else "-").encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


async def _answer(app: AuthMiddleware, method: str, path: str, headers: list[tuple[bytes, bytes]], query: bytes) -> str:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": headers, "query_string": query}
    await app(scope, receive, send)
    start = sent[0]
    names = sorted(k for k, _ in start["headers"] if k in (b"vary", b"cache-control", b"www-authenticate"))
    return f"{start['status']} {sent[-1]['body'][:60]!r} {names}"


# Small alphabets, so that the few requests of an example often share method, path and Authorization value and
# differ in what else the decision reads (the query, a second field, a preflight's headers).
_METHODS = st.sampled_from(["GET", "OPTIONS", "get"])
_PATHS = st.sampled_from(["/api/jwt", "/api/admin", "/api/sensitive", "/either", "/api/./jwt"])
_AUTH = st.sampled_from(["alice", "bob", "alice-spaces", "two", "none"])
_QUERIES = st.sampled_from([b"", b"access_token=x", b"a=b"])
_REQUESTS = st.tuples(_METHODS, _PATHS, _AUTH, _QUERIES, st.booleans())


def _headers(auth: str, tokens: dict[str, str], preflight: bool) -> list[tuple[bytes, bytes]]:
    value = {
        "alice": f"Bearer {tokens['alice']}",
        "bob": f"Bearer {tokens['bob']}",
        "alice-lower": f"bearer {tokens['alice']}",
        "alice-spaces": f"Bearer  {tokens['alice']}",
        "garbage": "Bearer not.a.token",
    }.get(auth)
    headers = [] if value is None else [(b"authorization", value.encode())]
    if auth == "two":
        headers = [(b"authorization", f"Bearer {tokens['alice']}".encode())] * 2
    if preflight:
        headers += [(b"origin", ORIGIN.encode()), (b"access-control-request-method", b"GET")]
    return headers


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests=st.lists(_REQUESTS, min_size=1, max_size=4),
    order=st.lists(st.integers(-2, 3), min_size=1, max_size=16),
)
def test_remembered_decisions_answer_exactly_as_deciding_every_request(requests: list[Any], order: list[int]) -> None:
    """Whatever the sequence of requests (methods, paths, token spellings, duplicates, query tokens, preflights,
    each sent again and again in any order) and revocations between them, a middleware that reuses decisions
    answers each request as one that decides every request afresh: same status, same caller, same headers."""
    from authmw.issuer import jti_key

    remembering, deciding, store = _memo_pair()
    tokens = {"alice": make_token("alice", "items:read admin"), "bob": make_token("bob", "items:read")}

    async def run() -> None:
        for index in order:
            if index == -1:  # revoke alice's token
                claims = jwt.decode(tokens["alice"], SECRET, algorithms=["HS256"])
                run_sync(store.revoke_jti("alice", jti_key(None, claims["jti"]), claims["exp"]))
                continue
            if index == -2:  # revoke every token issued to bob so far
                run_sync(store.revoke_tokens("bob", time.time() + 1, 3600))
                continue
            method, path, auth, query, preflight = requests[index % len(requests)]
            headers = _headers(auth, tokens, preflight)
            expected = await _answer(deciding, method, path, list(headers), query)
            assert await _answer(remembering, method, path, list(headers), query) == expected

    asyncio.run(run())


def _count_reuse(app: AuthMiddleware) -> list[int]:
    """A list that gets one entry per request `app` answers from a remembered decision."""
    reused: list[int] = []
    recall = app._remembered

    def counting(scope: Any) -> Any:
        found = recall(scope)
        reused.extend([1] if found is not None else [])
        return found

    app._remembered = counting  # type: ignore[method-assign]
    return reused


def test_repeated_bearer_requests_are_decided_once_and_still_see_revocations() -> None:
    from authmw.issuer import jti_key

    remembering, _, store = _memo_pair()
    token = make_token("alice")
    reused = _count_reuse(remembering)
    headers = [(b"authorization", f"Bearer {token}".encode())]

    async def run() -> list[str]:
        answers = [await _answer(remembering, "GET", "/api/jwt", list(headers), b"") for _ in range(3)]
        claims = jwt.decode(token, SECRET, algorithms=["HS256"])
        run_sync(store.revoke_jti("alice", jti_key(None, claims["jti"]), claims["exp"]))
        answers.append(await _answer(remembering, "GET", "/api/jwt", list(headers), b""))
        return answers

    answers = asyncio.run(run())
    assert [a.split()[0] for a in answers] == ["200", "200", "200", "401"]
    # The first verified the token in full (it may never come back: not remembered), the second was answered from
    # the verifier's cache and remembered, the third reused that; the one after the revocation was refused afresh.
    assert len(reused) == 1


def test_a_remembered_decision_is_not_reused_when_the_request_differs_in_what_else_it_reads() -> None:
    """Same method, path and Authorization value as a remembered request, but a query access_token or a second
    Authorization field (both refused, P25), new route rules, a test override, or rotated keys: decided afresh."""
    from authmw.testing import override_principal

    remembering, _, _ = _memo_pair()
    token = make_token("alice")
    header = (b"authorization", f"Bearer {token}".encode())

    async def run() -> list[str]:
        answers = [await _answer(remembering, "GET", "/api/jwt", [header], b"")]
        answers.append(await _answer(remembering, "GET", "/api/jwt", [header], b"access_token=x"))
        answers.append(await _answer(remembering, "GET", "/api/jwt", [header, header], b""))
        remembering.authenticator.add_routes([Route("/api/jwt", Policy.jwt(scopes={"admin"}))])
        answers.append(await _answer(remembering, "GET", "/api/jwt", [header], b""))
        remembering.authenticator.add_routes([])
        answers.append(await _answer(remembering, "GET", "/api/jwt", [header], b""))
        with override_principal(Principal(id="test-user", source="jwt")):
            answers.append(await _answer(remembering, "GET", "/api/jwt", [header], b""))
        keyset = remembering.authenticator.verifier.keyset  # type: ignore[union-attr]
        keyset.version += 1  # as a key rotation does: every verdict made with the old keys is dropped
        answers.append(await _answer(remembering, "GET", "/api/jwt", [header], b""))
        return [a.split()[0] + (" " + a.split()[1] if a.startswith("200") else "") for a in answers]

    assert asyncio.run(run()) == [
        "200 b'alice'",
        "400",
        "400",
        "403",
        "200 b'alice'",
        "200 b'test-user'",
        "200 b'alice'",
    ]


def test_remembered_decisions_on_a_redis_local_cache_still_see_a_revocation_made_elsewhere(redis_url: str) -> None:
    """With revocations in Redis behind the local cache, a remembered decision is reused only on a local-cache
    hit; a revocation made by another process reaches the cache over pub/sub and the next request is refused."""
    from authmw.issuer import jti_key
    from authmw.stores import RedisStore

    prefix = f"authmw-test-memo-{uuid.uuid4().hex[:8]}:"
    local = RedisStore.from_url(redis_url, prefix=prefix, local_cache=True)
    elsewhere = RedisStore.from_url(redis_url, prefix=prefix)
    try:
        config = make_config(jwt=JWTSettings(algorithms=["HS256"], keys=SECRET, revocation_store=local))
        app = AuthMiddleware(_echo_app, config)
        token = make_token("alice")
        header = (b"authorization", f"Bearer {token}".encode())
        reused = _count_reuse(app)

        async def run() -> list[str]:
            answers = []
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:  # until the local cache serves (its channel is up)
                answers.append(await _answer(app, "GET", "/api/jwt", [header], b""))
                if reused:
                    break
                await asyncio.sleep(0.05)
            claims = jwt.decode(token, SECRET, algorithms=["HS256"])
            run_sync(elsewhere.revoke_jti("alice", jti_key(None, claims["jti"]), claims["exp"]))
            while time.monotonic() < deadline:
                answer = await _answer(app, "GET", "/api/jwt", [header], b"")
                answers.append(answer)
                if answer.startswith("401"):
                    break
                await asyncio.sleep(0.01)
            await local.async_client.aclose()
            return answers

        answers = asyncio.run(run())
        assert reused  # some requests were answered from what was remembered
        assert all(a.startswith("200") for a in answers[:-1]) and answers[-1].startswith("401")
    finally:
        if local.local_cache is not None:
            local.local_cache.close()
        for key in elsewhere.client.scan_iter(match=prefix + "*"):
            elsewhere.client.delete(key)
        elsewhere.client.close()
        local.client.close()


def test_decisions_are_not_remembered_past_a_patched_step_a_store_error_or_switching_it_off() -> None:
    """A decision step overridden or patched (it may check more than authmw's own), a store that fails while a
    remembered decision is confirmed (503 as deciding afresh, never a 500), the switch turned off: decided afresh."""
    from authmw.engine import Authenticator
    from authmw.stores import StoreUnavailable

    remembering, deciding, store = _memo_pair()
    token = make_token("alice")
    header = (b"authorization", f"Bearer {token}".encode())

    async def twice(app: AuthMiddleware) -> list[str]:
        return [(await _answer(app, "GET", "/api/jwt", [header], b"")).split()[0] for _ in range(2)]

    # a store that fails once the decision is remembered (one without a revocation count, which is looked up)
    remembering.authenticator.revocation_counter = None
    assert asyncio.run(twice(remembering)) == ["200", "200"]
    real = store.peek_token_state

    def failing(*args: Any) -> Any:
        raise StoreUnavailable("the store went away", retry_after=1)

    store.peek_token_state = failing  # type: ignore[method-assign]
    remembering.authenticator._peek_token_state = failing
    deciding.authenticator._peek_token_state = failing
    assert asyncio.run(twice(remembering)) == asyncio.run(twice(deciding)) == ["503", "503"]
    store.peek_token_state = real  # type: ignore[method-assign]
    remembering.authenticator._peek_token_state = real

    # switched off at run time
    assert asyncio.run(twice(remembering)) == ["200", "200"]
    remembering.remember_decisions = False
    tenant: list[str] = []
    original = remembering.authenticator.resolve

    def checking(*args: Any, **kwargs: Any) -> Any:
        tenant.append("checked")
        return original(*args, **kwargs)

    remembering.authenticator.resolve = checking  # type: ignore[method-assign]
    assert asyncio.run(twice(remembering)) == ["200", "200"] and len(tenant) == 2

    # a subclass overriding a step, and a step patched on the object: every request decided
    class Tenanted(Authenticator):
        def resolve(self, *args: Any, **kwargs: Any) -> Any:
            tenant.append("subclass")
            return super().resolve(*args, **kwargs)

    assert not Tenanted(remembering.config).rememberable.__self__._stock  # type: ignore[attr-defined]
    fresh, _, _ = _memo_pair()
    fresh.authenticator.decide = lambda policy, principal: tenant.append("patched")  # type: ignore[method-assign]
    tenant.clear()
    assert asyncio.run(twice(fresh)) == ["200", "200"] and tenant == ["patched", "patched"]


def test_a_decision_is_remembered_with_the_route_table_it_was_made_with() -> None:
    """Route rules replaced while a request awaits I/O (a key-set refresh in a worker thread): that request's
    decision belongs to the old rules and must not be reused under the new ones."""
    from authmw.keys import KeySet
    from authmw.stores import MemoryStore

    class SlowToRefresh(KeySet):
        due = True

        def refresh_due(self) -> bool:
            return self.due

        def ensure_fresh(self, *, force: bool = False) -> bool:
            time.sleep(0.2)  # the fetch, in a worker thread
            self.due = False
            return False  # the same keys

    keys = SlowToRefresh(KeySet.from_key(SECRET).keys)
    jwt_settings = JWTSettings(algorithms=["HS256"], keys=keys, revocation_store=MemoryStore())
    config = AuthConfig(jwt=jwt_settings, routes=[Route("/api/x", Policy.jwt())], default=Policy.optional())
    app = AuthMiddleware(_echo_app, config)
    header = (b"authorization", f"Bearer {make_token('alice', 'items:read')}".encode())

    async def run() -> list[str]:
        async def tighten() -> None:
            await asyncio.sleep(0.05)  # while the first request awaits the refresh
            app.authenticator.add_routes([Route("/api/x", Policy.jwt(scopes={"admin"}))])

        first, _ = await asyncio.gather(_answer(app, "GET", "/api/x", [header], b""), tighten())
        later = [await _answer(app, "GET", "/api/x", [header], b"") for _ in range(2)]
        return [a.split()[0] for a in (first, *later)]

    assert asyncio.run(run()) == ["200", "403", "403"]


def test_a_patched_class_step_or_verifier_stops_reuse_even_after_decisions_were_remembered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tests patch classes: a decision step patched on `Authenticator` (before or after the app was built), or a
    `verify` of the verifier's own, must be called on every request, as when deciding afresh."""
    from authmw.engine import Authenticator

    token = make_token("alice")
    header = (b"authorization", f"Bearer {token}".encode())
    suspended: list[str] = []

    async def twice(app: AuthMiddleware) -> list[str]:
        return [(await _answer(app, "GET", "/api/jwt", [header], b"")).split()[0] for _ in range(2)]

    original = Authenticator._verify_jwt

    def suspending(self: Authenticator, token: str) -> Any:
        principal = original(self, token)  # a Principal: the store here (in-process) never needs I/O
        if principal.id in suspended:
            raise InvalidToken("suspended", reason="suspended")
        return principal

    app, _, _ = _memo_pair()
    assert asyncio.run(twice(app)) == ["200", "200"]  # remembered
    monkeypatch.setattr(Authenticator, "_verify_jwt", suspending)  # after the app was built
    suspended.append("alice")
    assert asyncio.run(twice(app)) == ["401", "401"]
    built_after, _, _ = _memo_pair()  # built while patched
    suspended.clear()
    assert asyncio.run(twice(built_after)) == ["200", "200"]
    suspended.append("alice")
    assert asyncio.run(twice(built_after)) == ["401", "401"]
    monkeypatch.undo()

    fresh, _, _ = _memo_pair()
    assert asyncio.run(twice(fresh)) == ["200", "200"]
    verifier = fresh.authenticator.verifier
    assert verifier is not None
    verify = verifier.verify

    def strict(token: str, now: float | None = None) -> Principal:
        raise InvalidToken("not today", reason="strict")

    verifier.verify = strict  # type: ignore[method-assign]
    assert asyncio.run(twice(fresh)) == ["401", "401"]
    verifier.verify = verify  # type: ignore[method-assign]


def test_revocations_in_redis_without_a_local_cache_are_never_confirmed_from_memory(redis_url: str) -> None:
    """Without a local cache every revocation lookup is a round trip: nothing is remembered (it could never be
    confirmed without I/O, so remembering would only cost)."""
    from authmw.engine import Authenticator
    from authmw.stores import RedisStore

    store = RedisStore.from_url(redis_url, prefix=f"authmw-test-nocache-{uuid.uuid4().hex[:8]}:")
    try:
        auth = Authenticator(make_config(jwt=JWTSettings(algorithms=["HS256"], keys=SECRET, revocation_store=store)))
        assert auth._peek_token_state is None
    finally:
        store.client.close()


# ---- the response of a bearer request (no session state): identity headers, and a store outage as 503 ----


def _bearer_app_doing(behaviour: str) -> AuthMiddleware:
    """A middleware (remembering decisions) around an app that answers a bearer request per `behaviour`."""
    from authmw.stores import MemoryStore, StoreUnavailable

    async def app(scope: Message, receive: Any, send: Any) -> None:
        if behaviour == "ok":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"cache-control", b"max-age=60")]})
            await send({"type": "http.response.body", "body": scope["user"].id.encode()})
            return
        if behaviour == "500 then outage":  # what Starlette's ServerErrorMiddleware does with an error: 500, re-raise
            await send({"type": "http.response.start", "status": 500, "headers": []})
            await send({"type": "http.response.body", "body": b"Internal Server Error"})
        if behaviour == "500 then other error":
            await send({"type": "http.response.start", "status": 500, "headers": []})
            await send({"type": "http.response.body", "body": b"Internal Server Error"})
            raise KeyError("the app's own bug")
        if behaviour == "plain 500":
            await send({"type": "http.response.start", "status": 500, "headers": []})
            await send({"type": "http.response.body", "body": b"oops"})
            return
        if behaviour == "started then outage":
            await send({"type": "http.response.start", "status": 200, "headers": []})
        raise StoreUnavailable("the revocation store went away", retry_after=2)

    store = MemoryStore()
    config = make_config(jwt=JWTSettings(algorithms=["HS256"], keys=SECRET, revocation_store=store))
    return AuthMiddleware(app, config)


async def _exchange(app: AuthMiddleware, headers: list[tuple[bytes, bytes]]) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    await app({"type": "http", "method": "GET", "path": "/api/jwt", "headers": headers}, receive, send)
    return sent


@pytest.mark.parametrize("behaviour", ["500 then outage", "outage"])
def test_a_store_outage_raised_by_the_app_on_a_bearer_request_is_503_first_time_and_remembered(behaviour: str) -> None:
    """The app's 500 (its error middleware's) is held back and replaced by our 503 + Retry-After, on a request
    decided afresh and on one answered from a remembered decision alike; nothing of the app's 500 goes out."""
    app = _bearer_app_doing(behaviour)
    reused = _count_reuse(app)
    headers = [(b"authorization", f"Bearer {make_token('alice')}".encode())]
    for _ in range(3):  # the third is answered from the decision the second (a repeated token) remembered
        sent = asyncio.run(_exchange(app, list(headers)))
        assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
        start = sent[0]
        assert start["status"] == 503
        assert dict(start["headers"])[b"retry-after"] == b"2"
        assert b"Internal Server Error" not in sent[1]["body"]
    assert len(reused) == 1


@pytest.mark.parametrize("behaviour", ["ok", "plain 500"])
def test_a_bearer_response_gets_the_identity_headers_first_time_and_remembered(behaviour: str) -> None:
    """P31 on both paths: Vary: Cookie, Authorization and Cache-Control: no-store (replacing the app's own), a
    500 the app ends with included."""
    app = _bearer_app_doing(behaviour)
    reused = _count_reuse(app)
    headers = [(b"authorization", f"Bearer {make_token('alice')}".encode())]
    for _ in range(3):
        sent = asyncio.run(_exchange(app, list(headers)))
        start = sent[0]
        assert start["status"] == (200 if behaviour == "ok" else 500)
        assert [v for k, v in start["headers"] if k == b"cache-control"] == [b"no-store"]
        assert (b"vary", b"Cookie, Authorization") in start["headers"]
        assert sent[-1]["body"] == (b"alice" if behaviour == "ok" else b"oops")
    assert len(reused) == 1


def test_a_bearer_apps_own_error_after_its_500_goes_out_as_its_500_and_is_raised() -> None:
    app = _bearer_app_doing("500 then other error")
    headers = [(b"authorization", f"Bearer {make_token('alice')}".encode())]
    sent: list[Message] = []

    async def run() -> None:
        async def receive() -> Message:
            return {"type": "http.request", "body": b""}

        async def send(message: Message) -> None:
            sent.append(message)

        await app({"type": "http", "method": "GET", "path": "/api/jwt", "headers": list(headers)}, receive, send)

    for _ in range(2):
        sent.clear()
        with pytest.raises(KeyError):
            asyncio.run(run())
        assert sent[0]["status"] == 500 and (b"cache-control", b"no-store") in sent[0]["headers"]
        assert sent[1]["body"] == b"Internal Server Error"


def test_a_store_outage_after_a_bearer_response_started_is_raised_not_answered() -> None:
    """Once the app's response is on its way, there is no 503 to give: the error goes to the server."""
    from authmw.stores import StoreUnavailable

    app = _bearer_app_doing("started then outage")
    headers = [(b"authorization", f"Bearer {make_token('alice')}".encode())]
    for _ in range(2):
        with pytest.raises(StoreUnavailable):
            asyncio.run(_exchange(app, list(headers)))


def test_a_store_outage_under_a_mount_is_reported_with_the_path_as_it_arrived() -> None:
    """The audit event and the `on_error` hook of the 503 see the request's path, not the one a Mount rewrote the
    scope to while routing (first request and remembered alike)."""
    from authmw.stores import MemoryStore, StoreUnavailable

    seen: list[tuple[str, str]] = []

    async def endpoint(request: Request) -> Response:
        raise StoreUnavailable("the store went away", retry_after=2)

    def on_error(error: Any, view: Any, response: Any) -> Any:
        seen.append(("on_error", view.path))
        return response

    def audit(event: Any) -> None:
        if event.kind == "store_unavailable":
            seen.append(("audit", event.path))

    inner = Starlette(routes=[Mount("/api", routes=[StarletteRoute("/jwt", endpoint)])])
    config = make_config(
        jwt=JWTSettings(algorithms=["HS256"], keys=SECRET, revocation_store=MemoryStore()),
        routes=[Route("/api/jwt", Policy.jwt())],
        on_error=on_error,
        audit=audit,
    )
    app = AuthMiddleware(inner, config)
    reused = _count_reuse(app)
    headers = [(b"authorization", f"Bearer {make_token('alice')}".encode())]
    for _ in range(3):
        sent = asyncio.run(_exchange(app, list(headers)))
        assert sent[0]["status"] == 503
    assert len(reused) == 1
    assert seen == [("audit", "/api/jwt"), ("on_error", "/api/jwt")] * 3


def test_a_revocation_landing_while_a_decision_is_made_is_seen_by_the_next_request() -> None:
    """The store's revocation count is read before the decision's own revocation lookup: a revocation written
    after that lookup (but before the decision is remembered) changes the count, so the next request with the
    same token is decided afresh and refused."""
    from authmw.issuer import jti_key

    remembering, _, store = _memo_pair()
    token = make_token("alice")
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    auth = remembering.authenticator
    assert auth.revocation_counter is store
    looked_up = auth._peek_token_state

    def revoked_right_after(user_id: str, key: str | None) -> Any:
        answer = looked_up(user_id, key)  # not revoked yet...
        run_sync(store.revoke_jti("alice", jti_key(None, claims["jti"]), claims["exp"]))  # ...and now it is
        auth._peek_token_state = looked_up
        return answer

    headers = [(b"authorization", f"Bearer {token}".encode())]
    reused = _count_reuse(remembering)

    async def run() -> list[str]:
        first = await _answer(remembering, "GET", "/api/jwt", list(headers), b"")  # verified in full
        auth._peek_token_state = revoked_right_after  # the second (a repeated token) is the one remembered
        return [(await _answer(remembering, "GET", "/api/jwt", list(headers), b"")).split()[0] for _ in range(2)] + [
            first.split()[0]
        ]

    assert asyncio.run(run()) == ["200", "401", "200"]
    assert reused == []


def test_an_unchanged_revocation_count_spares_the_lookup_and_a_changed_one_decides_afresh() -> None:
    remembering, _, store = _memo_pair()
    auth = remembering.authenticator
    lookups: list[str] = []
    looked_up = auth._peek_token_state

    def counted(user_id: str, key: str | None) -> Any:
        lookups.append(user_id)
        return looked_up(user_id, key)

    auth._peek_token_state = counted
    reused = _count_reuse(remembering)
    headers = [(b"authorization", f"Bearer {make_token('alice')}".encode())]

    async def run(times: int) -> list[str]:
        return [(await _answer(remembering, "GET", "/api/jwt", list(headers), b"")).split()[0] for _ in range(times)]

    assert asyncio.run(run(4)) == ["200"] * 4
    # verified in full, then decided from the cache and remembered, then reused twice without a lookup
    assert lookups == ["alice", "alice"] and len(reused) == 2
    run_sync(store.revoke_tokens("bob", time.time(), 3600))  # someone else's revocation: the count changes
    assert asyncio.run(run(2)) == ["200"] * 2
    assert lookups == ["alice"] * 3 and len(reused) == 3  # decided afresh once (and remembered), then reused


def test_a_store_whose_token_state_reads_more_than_it_counts_is_looked_up_on_every_reuse() -> None:
    """A MemoryStore subclass with a token_state of its own (say, one that also asks an external denylist): its
    revocation count does not cover what that reads, so remembered decisions keep looking the token up."""
    from authmw.stores import MemoryStore

    external: set[str] = set()

    class AlsoExternal(MemoryStore):
        def peek_token_state(self, user_id: str, jti_key: str | None, grace: float = 0.0) -> tuple[float | None, bool]:
            not_before, denied = super().peek_token_state(user_id, jti_key, grace)
            return not_before, denied or user_id in external

        token_state = inline(peek_token_state)

    store = AlsoExternal()
    config = make_config(jwt=JWTSettings(algorithms=["HS256"], keys=SECRET, revocation_store=store))
    app = AuthMiddleware(_echo_app, config)
    assert app.authenticator.revocation_counter is None
    reused = _count_reuse(app)
    headers = [(b"authorization", f"Bearer {make_token('alice')}".encode())]

    async def run() -> list[str]:
        return [(await _answer(app, "GET", "/api/jwt", list(headers), b"")).split()[0] for _ in range(3)]

    assert asyncio.run(run()) == ["200", "200", "200"]
    external.add("alice")
    assert asyncio.run(run()) == ["401", "401", "401"]
    assert len(reused) == 1


def test_a_token_seen_once_is_not_remembered_a_repeated_one_is() -> None:
    """Remembering costs (≈ 2.5 µs, and memory): a token verified in full may never come back, so only a token the
    verifier's cache answered — one seen before — is remembered. A run of first-sight tokens remembers nothing."""
    remembering, _, _ = _memo_pair()
    tokens = [make_token(f"user{i}") for i in range(5)]

    async def send(token: str) -> str:
        headers = [(b"authorization", f"Bearer {token}".encode())]
        return (await _answer(remembering, "GET", "/api/jwt", headers, b"")).split()[0]

    async def run() -> None:
        assert [await send(t) for t in tokens] == ["200"] * 5
        assert remembering._decisions == {}
        assert await send(tokens[0]) == "200"
        assert len(remembering._decisions) == 1

    asyncio.run(run())


@pytest.mark.parametrize("how", ["subclass", "replaced on the object later", "replaced on the class later"])
def test_revocations_written_by_any_code_end_a_remembered_decision(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The count is kept by the store's revocation maps, not by its methods: a subclass's revoke_jti, or one put in
    place after the middleware was built, that writes the denylist its own way still ends reuse."""
    from authmw.issuer import jti_key
    from authmw.stores import MemoryStore

    @inline
    def own_way(self: MemoryStore, user_id: str, key: str, expires_at: float) -> None:
        with self._lock:
            self._denied[(user_id, key)] = expires_at

    class OwnWay(MemoryStore):
        revoke_jti = own_way  # type: ignore[assignment]

    store = OwnWay() if how == "subclass" else MemoryStore()
    config = make_config(jwt=JWTSettings(algorithms=["HS256"], keys=SECRET, revocation_store=store))
    app = AuthMiddleware(_echo_app, config)
    assert app.authenticator.revocation_counter is store
    if how == "replaced on the object later":
        store.revoke_jti = own_way.__get__(store)  # type: ignore[method-assign]
    elif how == "replaced on the class later":
        monkeypatch.setattr(MemoryStore, "revoke_jti", own_way)
    reused = _count_reuse(app)
    token = make_token("alice")
    headers = [(b"authorization", f"Bearer {token}".encode())]

    async def run() -> list[str]:
        return [(await _answer(app, "GET", "/api/jwt", list(headers), b"")).split()[0] for _ in range(3)]

    assert asyncio.run(run()) == ["200", "200", "200"] and len(reused) == 1
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    run_sync(store.revoke_jti("alice", jti_key(None, claims["jti"]), claims["exp"]))
    assert asyncio.run(run()) == ["401", "401", "401"]
