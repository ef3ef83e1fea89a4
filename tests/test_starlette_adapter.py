"""The Starlette adapter (`authmw.starlette`): endpoint policies compiled at the first request (functions,
`with_policy` routes, `HTTPEndpoint` methods, mounts, typed paths), `request.user` / `request.auth` / `requires`,
the session helpers, websockets refused before accept, and composition with CORS and GZip middleware.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from examples.common import ROUTES as EXAMPLE_ROUTES
from examples.common import Items
from examples.starlette_app import app as starlette_example
from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.endpoints import HTTPEndpoint, WebSocketEndpoint
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Host, Mount, Router, WebSocketRoute
from starlette.routing import Route as StarletteRoute
from starlette.staticfiles import StaticFiles
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from authmw import AuthConfig, ConfigurationError, JWTSettings, Policy, Principal, Route
from authmw.io import run_sync
from authmw.principal import Anonymous
from authmw.sessions import SessionSettings
from authmw.starlette import (
    AuthMiddleware,
    authenticated,
    compile_routes,
    jwt_required,
    list_sessions,
    login,
    logout,
    logout_everywhere,
    policy,
    public,
    session,
    session_required,
    with_policy,
)
from authmw.stores import RedisStore
from authmw.testing import mint_token, session_cookie

JWT_KEY = "k" * 40
SECRET = "s" * 40
COOKIE = "authmw_session"
DOWN_REDIS = "redis://127.0.0.1:1/0"


def make_config(routes: list[Route] | None = None, **sessions: Any) -> AuthConfig:
    return AuthConfig(
        jwt=JWTSettings(algorithms=["HS256"], keys=JWT_KEY),
        sessions=SessionSettings(secret_keys=[SECRET], cookie_secure=False, **sessions),
        routes=routes or [],
        default=Policy.optional(),
    )


def bearer(config: AuthConfig, scopes: set[str] | None = None, user: str = "alice") -> dict[str, str]:
    token = mint_token(config, user, {"items:read"} if scopes is None else scopes)
    return {"Authorization": f"Bearer {token}"}


def who(request: Request) -> JSONResponse:
    user = request.user
    return JSONResponse(
        {
            "authenticated": user.is_authenticated,
            "id": user.id if isinstance(user, Principal) else None,
            "source": user.source if isinstance(user, Principal) else None,
            "auth": list(request.auth.scopes),
            "path_params": {k: str(v) for k, v in request.path_params.items()},
        }
    )


# ---- endpoints, one per way of declaring a policy ----


async def open_view(request: Request) -> JSONResponse:
    return who(request)


@session_required()
async def session_view(request: Request) -> JSONResponse:
    return who(request)


@session_required(scopes={"admin"})
async def session_admin(request: Request) -> JSONResponse:
    return who(request)


@session_required(max_auth_age=60)
async def session_fresh(request: Request) -> JSONResponse:
    return who(request)


@jwt_required(scopes={"items:read"})
async def jwt_read(request: Request) -> JSONResponse:
    return who(request)


@jwt_required()
async def jwt_any(request: Request) -> JSONResponse:
    return who(request)


@authenticated()
async def either(request: Request) -> JSONResponse:
    return who(request)


@authenticated(scopes={"items:write"})
async def either_write(request: Request) -> JSONResponse:
    return who(request)


@public
async def public_view(request: Request) -> JSONResponse:
    return who(request)


@policy(Policy.required(accept=("jwt",), scopes={"items:read"}))
async def custom(request: Request) -> JSONResponse:
    return who(request)


async def undecorated(request: Request) -> JSONResponse:
    return who(request)


@requires("items:read")
async def starlette_requires(request: Request) -> JSONResponse:
    return who(request)


@requires("authenticated", redirect=None)
async def starlette_requires_authenticated(request: Request) -> JSONResponse:
    return who(request)


@session_required()
async def typed(request: Request) -> JSONResponse:
    return who(request)


class ItemsEndpoint(HTTPEndpoint):
    @jwt_required(scopes={"items:read"})
    async def get(self, request: Request) -> JSONResponse:
        return who(request)

    @jwt_required(scopes={"items:write"})
    async def post(self, request: Request) -> JSONResponse:
        return who(request)

    async def delete(self, request: Request) -> JSONResponse:  # no policy: the path rules decide
        return who(request)


@session_required()
class AccountEndpoint(HTTPEndpoint):
    """A class-level policy for every method, and a per-method override."""

    async def get(self, request: Request) -> JSONResponse:
        return who(request)

    @public
    async def post(self, request: Request) -> JSONResponse:
        return who(request)


async def do_login(request: Request) -> JSONResponse:
    body = await request.json()
    principal = await login(request, body["user"], body.get("scopes", ()), remember=body.get("remember", False))
    return JSONResponse({"id": principal.id})


async def do_logout(request: Request) -> JSONResponse:
    return JSONResponse({"deleted": await logout(request)})


@session_required()
async def do_logout_everywhere(request: Request) -> JSONResponse:
    return JSONResponse({"count": await logout_everywhere(request)})


@session_required()
async def sessions_view(request: Request) -> JSONResponse:
    infos = await list_sessions(request)
    return JSONResponse([{"handle": s.handle, "current": s.current, "user": s.user_id} for s in infos])


@session_required()
async def data_view(request: Request) -> JSONResponse:
    bag = session(request).data
    if request.method == "POST":
        bag.update(await request.json())
    return JSONResponse(dict(bag))


@session_required()
async def ws_session(websocket: WebSocket) -> None:
    await websocket.accept()
    user = websocket.user
    await websocket.send_json({"id": user.id, "source": user.source, "auth": list(websocket.auth.scopes)})
    await websocket.close()


@jwt_required(scopes={"items:read"})
async def ws_jwt(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"id": websocket.user.id, "source": websocket.user.source})
    await websocket.close()


async def ws_open(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"authenticated": websocket.user.is_authenticated})
    await websocket.close()


PATH_RULES = [
    Route("/ruled/public-endpoint", Policy.jwt()),
    Route("/ruled/session-endpoint", Policy.public()),
    Route("/ruled/plain", Policy.jwt(scopes={"items:read"})),
    Route("/items", Policy.session()),  # only DELETE is left to this rule: the methods have their own
    Route("/ws/ruled", Policy.jwt()),
]

ROUTES = [
    StarletteRoute("/open", open_view),
    StarletteRoute("/session", session_view),
    StarletteRoute("/session/admin", session_admin),
    StarletteRoute("/session/fresh", session_fresh),
    StarletteRoute("/jwt", jwt_read),
    StarletteRoute("/jwt/any", jwt_any),
    StarletteRoute("/either", either),
    StarletteRoute("/either/write", either_write),
    StarletteRoute("/custom", custom),
    StarletteRoute("/requires", starlette_requires),
    StarletteRoute("/requires/authenticated", starlette_requires_authenticated),
    with_policy(StarletteRoute("/route-level", undecorated), Policy.jwt(scopes={"items:write"})),
    StarletteRoute("/ruled/public-endpoint", public_view),
    StarletteRoute("/ruled/session-endpoint", session_view),
    StarletteRoute("/ruled/plain", undecorated),
    StarletteRoute("/things/{id:int}", typed),
    StarletteRoute("/things/{name}/{rest:path}", typed),
    StarletteRoute("/items", ItemsEndpoint),
    StarletteRoute("/account", AccountEndpoint),
    StarletteRoute("/login", do_login, methods=["POST"]),
    StarletteRoute("/logout", do_logout, methods=["POST"]),
    StarletteRoute("/logout-everywhere", do_logout_everywhere, methods=["POST"]),
    StarletteRoute("/sessions", sessions_view),
    StarletteRoute("/data", data_view, methods=["GET", "POST"]),
    Mount(
        "/sub",
        routes=[
            StarletteRoute("/secret", jwt_read),
            StarletteRoute("/open", undecorated),
            StarletteRoute("/things/{id:int}", typed),
            Mount("/deeper", routes=[StarletteRoute("/secret", session_view)]),
        ],
    ),
    with_policy(Mount("/admin", routes=[StarletteRoute("/panel", undecorated)]), Policy.session(scopes={"admin"})),
    WebSocketRoute("/ws/session", ws_session),
    WebSocketRoute("/ws/jwt", ws_jwt),
    WebSocketRoute("/ws/open", ws_open),
    WebSocketRoute("/ws/ruled", ws_open),
]


def build(config: AuthConfig | None = None, *, routes: list[Any] | None = None, **kwargs: Any) -> Starlette:
    config = config or make_config(PATH_RULES)
    middleware = [*kwargs.pop("before", []), Middleware(AuthMiddleware, config=config), *kwargs.pop("after", [])]
    return Starlette(routes=ROUTES if routes is None else routes, middleware=middleware, **kwargs)


@pytest.fixture
def config() -> AuthConfig:
    return make_config(PATH_RULES)


@pytest.fixture
def client(config: AuthConfig) -> Iterator[TestClient]:
    with TestClient(build(config)) as test_client:
        yield test_client


def log_in(client: TestClient, user: str = "alice", scopes: tuple[str, ...] = ("items:read",), **extra: Any) -> str:
    response = client.post("/login", json={"user": user, "scopes": list(scopes), **extra})
    assert response.status_code == 200, response.text
    value = client.cookies.get(COOKIE)
    assert value
    return value


def fresh(client: TestClient) -> TestClient:
    """Another browser on the same app (no cookies)."""
    return TestClient(client.app)


# ---- endpoint decorators ----


@pytest.mark.parametrize(
    ("path", "credential", "status"),
    [
        ("/session", None, 401),
        ("/session", "session", 200),
        ("/session", "jwt", 401),
        ("/session/admin", "session", 403),
        ("/session/admin", "session-admin", 200),
        ("/jwt", None, 401),
        ("/jwt", "jwt", 200),
        ("/jwt", "jwt-write", 403),
        ("/jwt", "session", 401),
        ("/jwt/any", "jwt-none", 200),
        ("/either", None, 401),
        ("/either", "session", 200),
        ("/either", "jwt", 200),
        ("/either/write", "jwt", 403),
        ("/either/write", "jwt-write", 200),
        ("/custom", "jwt", 200),
        ("/custom", "session", 401),
        ("/route-level", None, 401),
        ("/route-level", "jwt", 403),
        ("/route-level", "jwt-write", 200),
        ("/open", None, 200),
        ("/open", "jwt", 200),
        ("/open", "session", 200),
    ],
)
def test_endpoint_decorators(
    client: TestClient, config: AuthConfig, path: str, credential: str | None, status: int
) -> None:
    headers: dict[str, str] = {}
    if credential == "session":
        log_in(client)
    elif credential == "session-admin":
        log_in(client, scopes=("admin",))
    elif credential == "jwt":
        headers = bearer(config)
    elif credential == "jwt-write":
        headers = bearer(config, {"items:write"})
    elif credential == "jwt-none":
        headers = bearer(config, set())
    response = client.get(path, headers=headers)
    assert response.status_code == status, response.text
    if status == 200 and credential is not None:
        assert response.json()["id"] == "alice"
        assert response.json()["source"] == credential.split("-")[0]


def test_max_auth_age(client: TestClient, config: AuthConfig) -> None:
    log_in(client)
    assert client.get("/session/fresh").status_code == 200
    store = config.sessions.store  # type: ignore[union-attr]
    (record,) = run_sync(store.list_user("alice"))
    record.auth_time = time.time() - 3600
    assert run_sync(store.save(record))
    response = client.get("/session/fresh")
    assert response.status_code == 401
    assert 'error="insufficient_user_authentication"' in response.headers["www-authenticate"]


def test_public_endpoint_reads_no_credential(client: TestClient, config: AuthConfig) -> None:
    response = client.get("/ruled/public-endpoint", headers={"Authorization": "Bearer not-even-a-jwt"})
    assert response.status_code == 200
    assert response.json()["authenticated"] is False


def test_endpoint_policies_beat_path_rules(client: TestClient, config: AuthConfig) -> None:
    assert client.get("/ruled/public-endpoint").status_code == 200  # rule: jwt; endpoint: public
    assert client.get("/ruled/session-endpoint").status_code == 401  # rule: public; endpoint: session
    log_in(client)
    assert client.get("/ruled/session-endpoint").status_code == 200
    anonymous = fresh(client)
    assert anonymous.get("/ruled/plain").status_code == 401  # no endpoint policy: the rule
    assert anonymous.get("/ruled/plain", headers=bearer(config, set())).status_code == 403
    assert anonymous.get("/ruled/plain", headers=bearer(config)).status_code == 200


def test_http_endpoint_methods_have_their_own_policies(client: TestClient, config: AuthConfig) -> None:
    assert client.get("/items").status_code == 401
    assert client.get("/items", headers=bearer(config)).status_code == 200
    assert client.head("/items", headers=bearer(config)).status_code == 200
    assert client.post("/items", headers=bearer(config)).status_code == 403
    assert client.post("/items", headers=bearer(config, {"items:write"})).status_code == 200
    # DELETE has no policy of its own: the path rule (session) applies.
    assert client.delete("/items", headers=bearer(config)).status_code == 401
    log_in(client)
    deleted = client.delete("/items")
    assert deleted.status_code == 200
    assert deleted.json()["source"] == "session"


def test_http_endpoint_class_policy_and_method_override(client: TestClient) -> None:
    assert client.get("/account").status_code == 401
    assert client.post("/account").status_code == 200
    log_in(client)
    assert client.get("/account").json()["id"] == "alice"


@pytest.mark.parametrize(
    ("path", "credential", "status"),
    [
        ("/sub/secret", None, 401),
        ("/sub/secret", "jwt", 200),
        ("/sub/open", None, 200),
        ("/sub/things/7", None, 401),
        ("/sub/things/7", "session", 200),
        ("/sub/deeper/secret", None, 401),
        ("/sub/deeper/secret", "session", 200),
        ("/admin/panel", None, 401),
        ("/admin/panel", "session", 403),
        ("/admin/panel", "session-admin", 200),
        ("/secret", None, 404),  # the mount prefix is part of the rule, the inner path alone is not covered
    ],
)
def test_mounted_routes_compile_with_their_prefix(
    client: TestClient, config: AuthConfig, path: str, credential: str | None, status: int
) -> None:
    headers: dict[str, str] = {}
    if credential == "session":
        log_in(client)
    elif credential == "session-admin":
        log_in(client, scopes=("admin",))
    elif credential == "jwt":
        headers = bearer(config)
    assert client.get(path, headers=headers).status_code == status


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/things/42", 401),
        ("/things/widget/a/b/c", 401),
        ("/things/widget/", 401),
        ("/sub/things/7", 401),
        ("/sub/things/seven", 404),  # not an int: neither the rule nor the route matches
    ],
)
def test_typed_paths_compile(client: TestClient, path: str, status: int) -> None:
    assert client.get(path).status_code == status


def test_typed_path_params_reach_the_endpoint(client: TestClient) -> None:
    log_in(client)
    assert client.get("/things/42").json()["path_params"] == {"id": "42"}
    assert client.get("/things/widget/a/b").json()["path_params"] == {"name": "widget", "rest": "a/b"}


def test_compile_routes_output() -> None:
    rules = compile_routes(ROUTES)
    by_path: dict[str, list[Route]] = {}
    for rule in rules:
        by_path.setdefault(rule.path, []).append(rule)
    assert by_path["/jwt"][0].policy == Policy.jwt(scopes={"items:read"})
    assert by_path["/jwt"][0].methods == frozenset({"GET", "HEAD"})
    assert {r.methods for r in by_path["/items"]} == {frozenset({"GET", "HEAD"}), frozenset({"POST"})}
    assert by_path["/sub/things/{id:int}"][0].policy == Policy.session()
    assert by_path["/sub/deeper/secret"][0].policy == Policy.session()
    assert by_path["/admin/{rest:path}"][0].policy == Policy.session(scopes={"admin"})
    assert by_path["/ws/session"][0].methods is None
    assert "/open" not in by_path and "/ruled/plain" not in by_path


def test_policies_compile_only_once_at_the_first_request(config: AuthConfig) -> None:
    app = build(config)
    with TestClient(app) as client:
        client.get("/health-does-not-exist")
        client.get("/open")
        middleware = app.middleware_stack
        while not isinstance(middleware, AuthMiddleware):
            middleware = middleware.app
        count = len(middleware.authenticator.table.routes)
        client.get("/jwt")
        assert len(middleware.authenticator.table.routes) == count == len(compile_routes(ROUTES)) + len(PATH_RULES)


def test_endpoint_policies_apply_when_the_middleware_is_wrapped_around_the_app(config: AuthConfig) -> None:
    """``AuthMiddleware(starlette_app, config)``, directly or around another middleware: Starlette sets
    ``scope["app"]`` only inside the app, so the routes are found through the wrapped app (found by review: no
    rule was compiled, and a ``@jwt_required`` endpoint answered anonymous callers)."""
    inner = Starlette(routes=[StarletteRoute("/secret", jwt_read), StarletteRoute("/open", public_view)])
    for app in (AuthMiddleware(inner, config), AuthMiddleware(GZipMiddleware(inner), config)):
        with TestClient(app) as client:
            assert client.get("/secret").status_code == 401
            assert client.get("/secret", headers=bearer(config, {"items:read"})).status_code == 200
            assert client.get("/open").status_code == 200


def test_a_sub_app_mounted_behind_middleware_keeps_its_endpoint_policies(config: AuthConfig) -> None:
    """Starlette's `Mount.routes` is empty for `Mount("/sub", app=GZipMiddleware(sub))`: the routes are found
    through the mounted app (found by review: no rule was compiled, nothing was checked, and the decorated
    endpoint answered anonymous callers)."""
    sub = Starlette(routes=[StarletteRoute("/secret", jwt_read)])
    for app in (
        Starlette(
            routes=[Mount("/sub", app=GZipMiddleware(sub))], middleware=[Middleware(AuthMiddleware, config=config)]
        ),
        AuthMiddleware(Starlette(routes=[Mount("/sub", app=GZipMiddleware(sub))]), config),
        Starlette(
            routes=[Host("api.example", app=GZipMiddleware(sub))],
            middleware=[Middleware(AuthMiddleware, config=config)],
        ),
    ):
        with TestClient(app, base_url="http://api.example") as client:
            path = "/secret" if isinstance(app, Starlette) and isinstance(app.routes[0], Host) else "/sub/secret"
            assert client.get(path).status_code == 401
            assert client.get(path, headers=bearer(config, {"items:read"})).status_code == 200


def test_a_mounted_app_authmw_cannot_look_into_has_its_answers_checked(
    config: AuthConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """A mounted ASGI app that routes by itself (to decorated endpoints authmw cannot see): reported, and an
    answer from an endpoint declaring another policy than the one enforced is withheld; a mounted `StaticFiles`
    serves files, has no such endpoints, and is neither reported nor checked."""

    class Dispatch:
        def __init__(self) -> None:
            self._router = Router(routes=[StarletteRoute("/secret", jwt_read), StarletteRoute("/plain", who)])

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await self._router(scope, receive, send)

    app = Starlette(routes=[Mount("/sub", app=Dispatch())], middleware=[Middleware(AuthMiddleware, config=config)])
    with caplog.at_level("WARNING", logger="authmw"), TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/sub/secret").status_code == 500
        assert client.get("/sub/plain").status_code == 200
    assert "cannot look inside Mount" in caplog.text
    caplog.clear()
    static = Starlette(
        routes=[Mount("/static", app=StaticFiles(directory=Path(__file__).parent)), StarletteRoute("/jwt", jwt_read)],
        middleware=[Middleware(AuthMiddleware, config=config)],
    )
    with caplog.at_level("WARNING", logger="authmw"), TestClient(static) as client:
        assert client.get(f"/static/{Path(__file__).name}").status_code == 200
        assert client.get("/jwt").status_code == 401
    assert "cannot look inside" not in caplog.text
    # A middleware inside a mount, around such an app: it compiles nothing of the outer app's (whose paths are
    # not the ones it sees), and checks answers instead.
    outer = Starlette(routes=[Mount("/api", app=AuthMiddleware(Dispatch(), config))])
    with TestClient(outer, raise_server_exceptions=False) as client:
        assert client.get("/api/secret").status_code == 500
        assert client.get("/api/plain").status_code == 200


def test_a_decorated_endpoint_behind_an_app_authmw_cannot_see_is_never_run_under_another_policy(
    config: AuthConfig,
) -> None:
    """The decorator itself checks, when it is called, that its policy is the one enforced: an endpoint in an app
    authmw cannot look into never runs under the default (found by review: it ran, and only its answer was
    withheld; and where that app passed on a copy of the scope, even the answer got out)."""
    ran: list[str] = []

    @jwt_required(scopes={"items:read"})
    async def delete_user(request: Request) -> JSONResponse:
        ran.append(request.path_params["name"])
        return JSONResponse({"deleted": request.path_params["name"]})

    @jwt_required()
    async def ws_secret(websocket: WebSocket) -> None:
        ran.append("ws")
        await websocket.accept()
        await websocket.close()

    class Opaque:
        """Routes by itself; `copy` hands its router a copy of the scope (a common way to rewrite a prefix)."""

        def __init__(self, copy: bool) -> None:
            self.copy = copy
            self._router = Router(
                routes=[
                    StarletteRoute("/users/{name}", delete_user, methods=["POST"]),
                    WebSocketRoute("/ws", ws_secret),
                ]
            )

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await self._router({**scope} if self.copy else scope, receive, send)

    for copy in (False, True):
        app = Starlette(
            routes=[Mount("/legacy", app=Opaque(copy))], middleware=[Middleware(AuthMiddleware, config=config)]
        )
        with TestClient(app, raise_server_exceptions=False) as client:
            refused = client.post("/legacy/users/bob")
            assert refused.status_code == 500 and "policy_not_applied" in refused.text
            with pytest.raises(WebSocketDisconnect), client.websocket_connect("/legacy/ws") as websocket:
                websocket.receive_text()
        assert ran == []
    # Without the middleware at all, the same: never served unprotected.
    with TestClient(Starlette(routes=[StarletteRoute("/users/{name}", delete_user, methods=["POST"])])) as client:
        assert client.post("/users/bob").status_code == 500
    assert ran == []
    # Where the policy is enforced, it runs as before (a token from the middleware in front of the same router).
    direct = Starlette(
        routes=[StarletteRoute("/users/{name}", delete_user, methods=["POST"])],
        middleware=[Middleware(AuthMiddleware, config=config)],
    )
    with TestClient(direct) as client:
        assert client.post("/users/bob", headers=bearer(config, {"items:read"})).status_code == 200
    assert ran == ["bob"]


def test_the_call_time_check_agrees_with_the_compiled_rules(config: AuthConfig) -> None:
    """What review found the endpoint check refusing, or letting run: stacked decorators (the outermost wins), an
    HTTPEndpoint's own HEAD handler, a WebSocketEndpoint's on_connect, and a request shaped like a CORS preflight
    (decided as public for a CORS middleware to answer) reaching an endpoint that needs a caller."""
    ran: list[str] = []

    @public
    @jwt_required()
    async def outer_wins(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    class Page(HTTPEndpoint):
        @jwt_required()
        async def get(self, request: Request) -> PlainTextResponse:
            return PlainTextResponse("get")

        @jwt_required(scopes={"items:write"})
        async def head(self, request: Request) -> PlainTextResponse:
            return PlainTextResponse("")

    class Socket(WebSocketEndpoint):
        @jwt_required()
        async def on_connect(self, websocket: WebSocket) -> None:
            await websocket.accept()
            await websocket.send_text("hi")

    @jwt_required()
    async def deletes(request: Request) -> PlainTextResponse:
        ran.append(request.method)
        return PlainTextResponse("ran")

    routes = [
        StarletteRoute("/outer", outer_wins),
        StarletteRoute("/page", Page),
        WebSocketRoute("/socket", Socket),
        StarletteRoute("/deletes", deletes, methods=["GET", "DELETE", "OPTIONS"]),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(AuthMiddleware, config=config)])
    token = bearer(config, {"items:read"})
    with TestClient(app) as client:
        assert client.get("/outer").status_code == 200
        assert client.get("/page", headers=token).status_code == 200
        assert client.head("/page", headers=token).status_code == 403  # its own handler's scope
        with client.websocket_connect("/socket", headers=token) as websocket:
            assert websocket.receive_text() == "hi"
        with pytest.raises(WebSocketDisconnect), client.websocket_connect("/socket") as websocket:
            websocket.receive_text()
        preflight = {"Origin": "https://other.example", "Access-Control-Request-Method": "DELETE"}
        assert client.options("/deletes", headers=preflight).status_code == 401
        assert ran == []
        assert client.delete("/deletes", headers=token).status_code == 200 and ran == ["DELETE"]


def test_policies_authmw_cannot_apply_faithfully_are_refused_when_declared() -> None:
    """Found by review: another decorator between two authmw ones was dropped with the inner one (a `requires`
    there never ran), and a policy on a WebSocketEndpoint's on_receive let the handshake in under another."""

    def audit(view: Any) -> Any:
        @functools.wraps(view)
        async def audited(request: Request) -> Any:
            return await view(request)

        return audited

    async def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    with pytest.raises(ConfigurationError, match="next to each other"):
        public(audit(jwt_required()(endpoint)))
    assert public(jwt_required()(endpoint)).__authmw_policy__ == Policy.public()  # type: ignore[attr-defined]

    class Echo(WebSocketEndpoint):
        @jwt_required()
        async def on_receive(self, websocket: WebSocket, data: Any) -> None:
            await websocket.send_text(str(data))

    with pytest.raises(ConfigurationError, match="handshake"):
        compile_routes([WebSocketRoute("/echo", Echo)])

    class Repeats(WebSocketEndpoint):  # the handshake's own policy, repeated on a later handler: fine
        @jwt_required()
        async def on_connect(self, websocket: WebSocket) -> None:
            await websocket.accept()

        @jwt_required()
        async def on_receive(self, websocket: WebSocket, data: Any) -> None:
            await websocket.send_text(str(data))

    assert compile_routes([WebSocketRoute("/echo", Repeats)]) == [Route("/echo", Policy.jwt(), transport="websocket")]


def test_without_routes_to_compile_a_declared_policy_that_was_not_enforced_is_withheld(
    config: AuthConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """Routes authmw cannot find (a router of another kind in between): it does not serve an endpoint whose
    declared policy it could not apply, it withholds that answer (500) and says why."""

    class Dispatch:
        """An ASGI app of its own that hands every request to a Starlette router it keeps to itself."""

        def __init__(self) -> None:
            self._router = Router(routes=[StarletteRoute("/secret", jwt_read), StarletteRoute("/plain", who)])

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await self._router(scope, receive, send)

    app = AuthMiddleware(Dispatch(), config)
    with caplog.at_level("WARNING", logger="authmw"), TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/secret").status_code == 500
        assert client.get("/plain").status_code == 200  # declares nothing: the path rules and default apply
    assert "found no Starlette routes" in caplog.text


def test_routes_inside_a_host_compile(config: AuthConfig) -> None:
    routes = [Host("api.example", app=Router(routes=[StarletteRoute("/secret", jwt_read)]))]
    with TestClient(build(config, routes=routes), base_url="http://api.example") as client:
        assert client.get("/secret").status_code == 401


def test_each_host_keeps_its_own_policies(config: AuthConfig) -> None:
    # The same path is public on one host and needs a token on another: the first host's rule must not
    # decide for the second (a flattened table would let /page through anonymously on api.example).
    routes = [
        Host("open.example", app=Router(routes=[StarletteRoute("/page", public_view)])),
        Host("api.example", app=Router(routes=[StarletteRoute("/page", jwt_read)])),
        with_policy(Host("admin.example", app=Router(routes=[StarletteRoute("/page", public_view)])), Policy.jwt()),
        Host("{tenant}.example", app=Router(routes=[with_policy(Mount("/t", routes=[]), Policy.session())])),
    ]
    app = build(config, routes=routes)
    with TestClient(app, base_url="http://open.example") as client:
        assert client.get("/page").status_code == 200
    with TestClient(app, base_url="http://api.example:8443") as client:
        assert client.get("/page").status_code == 401
        assert client.get("/page", headers={"Host": "open.example"}).status_code == 200
        assert client.get("/page", headers=bearer(config, {"items:read"})).status_code == 200
    with TestClient(app, base_url="http://acme.example") as client:
        assert client.get("/t/anything").status_code == 401
    with TestClient(app, base_url="http://admin.example") as client:
        # The endpoint's own policy comes first; the Host's policy covers the rest of that host.
        assert client.get("/page").status_code == 200
        assert client.get("/elsewhere").status_code == 401


def test_a_route_type_authmw_cannot_look_into_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    class Opaque(BaseRoute):
        pass

    with caplog.at_level("WARNING", logger="authmw"):
        compiled = compile_routes([Opaque(), StarletteRoute("/x", jwt_any)])
    assert compiled == [Route("/x", Policy.jwt(), ["GET"], transport="http")]
    assert "cannot look inside Opaque" in caplog.text


def test_a_route_table_that_cannot_be_compiled_fails_every_request(config: AuthConfig) -> None:
    # A Host inside a Host cannot be compiled: every request is refused with a 500, none runs unprotected.
    inner = Router([Host("api.example", app=Router([StarletteRoute("/admin", jwt_read)]))])
    app = build(config, routes=[Host("{sub}.example", app=inner)])
    with TestClient(app, raise_server_exceptions=False, base_url="http://api.example") as client:
        assert client.get("/admin").status_code == 500
        assert client.get("/admin").status_code == 500


def test_a_policy_on_a_root_mount(config: AuthConfig) -> None:
    app = build(config, routes=[with_policy(Mount("/", routes=[StarletteRoute("/x", undecorated)]), Policy.jwt())])
    with TestClient(app) as client:
        assert client.get("/x").status_code == 401
        assert client.get("/x", headers=bearer(config)).status_code == 200


@pytest.mark.parametrize("container", ["host", "mount"])
def test_a_host_or_mount_keeps_later_endpoint_rules_off_its_paths(container: str) -> None:
    # Starlette's Host (every path of its host) and Mount (every path under it) swallow those paths: a route
    # after them never runs for them, so its policy (here a public catch-all) must not decide for them either.
    config = AuthConfig(
        jwt=JWTSettings(algorithms=["HS256"], keys=JWT_KEY),
        routes=[Route("/app/open", Policy.public()), Route("/open", Policy.public())],
        default=Policy.jwt(),
    )
    inner = [StarletteRoute("/dashboard", undecorated), StarletteRoute("/open", undecorated)]
    swallowing: Any = Host("admin.example", app=Router(inner)) if container == "host" else Mount("/app", routes=inner)
    app = build(config, routes=[swallowing, with_policy(StarletteRoute("/{rest:path}", undecorated), Policy.public())])
    prefix = "" if container == "host" else "/app"
    with TestClient(app, base_url="http://admin.example") as client:
        assert client.get(f"{prefix}/dashboard").status_code == 401  # the default, not the later public route
        assert client.get(f"{prefix}/dashboard", headers=bearer(config)).status_code == 200
        assert client.get(f"{prefix}/open").status_code == 200  # the path rules still apply inside
    with TestClient(app, base_url="http://elsewhere.example") as client:
        if container == "host":
            assert client.get("/dashboard").status_code == 200  # another host: the public catch-all serves it


def _raw_get(app: Any, path: str, method: str = "GET", host: str = "testserver") -> int:
    """A request with the path, method and Host exactly as given (httpx would normalise them), in process."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
        "headers": [(b"host", host.encode())], "client": ("127.0.0.1", 1), "server": ("testserver", 80),
    }  # fmt: skip
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return int(next(m["status"] for m in sent if m["type"] == "http.response.start"))


def test_compiled_rules_cover_exactly_what_the_router_sends_there() -> None:
    # A public default; the protected catch-all must decide wherever Starlette sends a request to it: `/static`
    # (the Mount matches `/static/...` only) and `//static/x` (not under the Mount either).
    config = AuthConfig(jwt=JWTSettings(algorithms=["HS256"], keys=JWT_KEY), default=Policy.public())
    app = build(
        config,
        routes=[
            Mount("/static", routes=[StarletteRoute("/{name:path}", undecorated)]),
            with_policy(StarletteRoute("/open", undecorated), Policy.public()),
            StarletteRoute("/{rest:path}", jwt_any),
        ],
    )
    assert _raw_get(app, "/static/x") == 200
    assert _raw_get(app, "/open") == 200
    for path in ("/static", "//static/x", "//open", "/dashboard"):
        assert _raw_get(app, path) == 401, path


def test_requests_the_router_reads_differently_are_decided_as_it_reads_them(config: AuthConfig) -> None:
    class Panel:  # an ASGI app (not a function): Starlette routes every method to it
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await PlainTextResponse("panel")(scope, receive, send)

    asgi_panel = Panel()

    app = build(
        AuthConfig(jwt=JWTSettings(algorithms=["HS256"], keys=JWT_KEY), default=Policy.public()),
        routes=[
            Host("api.example", app=Router([StarletteRoute("/open", undecorated)])),
            with_policy(StarletteRoute("/panel", undecorated, methods=["GET"]), Policy.public()),
            with_policy(StarletteRoute("/panel", asgi_panel), Policy.jwt()),
            Mount("/api", routes=[StarletteRoute("/admin", jwt_any)]),
            StarletteRoute("/admin", jwt_any),
        ],
    )
    # Starlette compares methods as sent: `get` is no GET, so the router moves on to the protected ASGI app.
    assert _raw_get(app, "/panel") == 200
    assert _raw_get(app, "/panel", method="get") == 401
    # A Host header Starlette cannot parse matches no Host route: the router moves on to /admin.
    assert _raw_get(app, "/admin", host="api.example:") == 401
    assert _raw_get(app, "/admin", host="api.example:80a") == 401
    # A regex `$` also matches before a final newline: paths with control characters are refused outright.
    assert _raw_get(app, "/api//admin\n") == 400
    assert _raw_get(app, "/admin\n") == 400


def test_an_http_route_and_a_websocket_route_on_one_path_keep_their_own_policies(config: AuthConfig) -> None:
    async def socket(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("ws")
        await websocket.close()

    app = build(
        config,
        routes=[
            with_policy(StarletteRoute("/chat", undecorated), Policy.public()),
            with_policy(WebSocketRoute("/chat", socket), Policy.jwt()),
            with_policy(WebSocketRoute("/feed", socket), Policy.public()),
            with_policy(StarletteRoute("/feed", undecorated), Policy.jwt()),
        ],
    )
    with TestClient(app) as client:
        assert client.get("/chat").status_code == 200
        with pytest.raises(WebSocketDenialResponse), client.websocket_connect("/chat"):
            pass
        assert client.get("/feed").status_code == 401
        with client.websocket_connect("/feed") as ws:
            assert ws.receive_text() == "ws"


def test_nested_containers_keep_the_policy_around_them(config: AuthConfig) -> None:
    inner = Mount("/users", routes=[StarletteRoute("/list", undecorated)])
    app = build(
        config,
        routes=[
            with_policy(Mount("/admin", routes=[inner]), Policy.jwt()),
            with_policy(Host("ops.example", app=Router([Mount("/tools", routes=[StarletteRoute("/x", undecorated)])])),
                        Policy.jwt()),
            Mount("/{tenant}", routes=[StarletteRoute("/home", undecorated)]),
            StarletteRoute("/billing", jwt_any),
        ],
    )  # fmt: skip
    with TestClient(app) as client:
        assert client.get("/admin/users/list").status_code == 401
        assert client.get("/admin/users/list", headers=bearer(config)).status_code == 200
        assert client.get("/billing").status_code == 401  # not under Mount("/{tenant}"): it needs a segment more
    with TestClient(app, base_url="http://ops.example") as client:
        assert client.get("/tools/x").status_code == 401


def test_an_endpoint_whose_route_was_not_compiled_never_answers(caplog: pytest.LogCaptureFixture) -> None:
    # A route type authmw cannot look into: its endpoint declares `jwt_required` but the default (public) was
    # enforced. Its answers are withheld (500), never served.
    class Opaque(BaseRoute):
        def __init__(self, route: StarletteRoute) -> None:
            self.route = route

        def matches(self, scope: Any) -> Any:
            return self.route.matches(scope)

        async def handle(self, scope: Any, receive: Any, send: Any) -> None:
            await self.route.handle(scope, receive, send)

    config = AuthConfig(jwt=JWTSettings(algorithms=["HS256"], keys=JWT_KEY), default=Policy.public())
    app = build(config, routes=[Opaque(StarletteRoute("/hidden", jwt_any)), StarletteRoute("/open", undecorated)])
    with TestClient(app, raise_server_exceptions=False) as client, caplog.at_level("ERROR", logger="authmw"):
        assert client.get("/open").status_code == 200
        response = client.get("/hidden")
        assert response.status_code == 500
        assert response.headers["content-type"] == "application/problem+json"
        assert client.get("/hidden", headers=bearer(make_config())).status_code == 500  # even with a token
    assert "declares" in caplog.text


# ---- request.user, request.auth, requires ----


def test_request_user_and_auth(client: TestClient, config: AuthConfig) -> None:
    anonymous = client.get("/open").json()
    assert anonymous["authenticated"] is False and anonymous["auth"] == []
    body = client.get("/open", headers=bearer(config, {"items:read", "items:write"})).json()
    assert body["authenticated"] is True
    assert body["auth"] == ["authenticated", "items:read", "items:write"]


def test_anonymous_request_user_is_an_unauthenticated_user(config: AuthConfig) -> None:
    seen: list[Any] = []

    async def capture(request: Request) -> Response:
        seen.append(request.user)
        return PlainTextResponse("ok")

    with TestClient(build(config, routes=[StarletteRoute("/", capture)])) as client:
        client.get("/")
    assert isinstance(seen[0], Anonymous)
    assert seen[0].is_authenticated is False and seen[0].display_name == ""


def test_starlette_requires_keeps_working(client: TestClient, config: AuthConfig) -> None:
    assert client.get("/requires").status_code == 403
    assert client.get("/requires", headers=bearer(config, {"items:write"})).status_code == 403
    assert client.get("/requires", headers=bearer(config)).status_code == 200
    assert client.get("/requires/authenticated").status_code == 403
    log_in(client, scopes=())
    assert client.get("/requires/authenticated").status_code == 200
    assert client.get("/requires").status_code == 403


# ---- session helpers ----


def test_login_logout_cycle(client: TestClient) -> None:
    response = client.post("/login", json={"user": "alice", "scopes": ["items:read"]})
    assert response.json() == {"id": "alice"}
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(COOKIE + "=") and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Max-Age" not in cookie
    old = client.cookies.get(COOKIE)
    assert client.get("/session").json()["source"] == "session"
    out = client.post("/logout")
    assert out.json() == {"deleted": True}
    assert "Max-Age=0" in out.headers["set-cookie"]
    assert client.cookies.get(COOKIE) is None
    assert client.get("/session").status_code == 401
    replay = fresh(client)
    replay.cookies.set(COOKIE, old)
    refused = replay.get("/session")
    assert refused.status_code == 401
    assert "Max-Age=0" in refused.headers["set-cookie"]  # the dead cookie is cleared


def test_login_remember(client: TestClient) -> None:
    response = client.post("/login", json={"user": "alice", "remember": True})
    assert "Max-Age=" in response.headers["set-cookie"]


def test_login_issues_a_new_id_and_drops_the_old_session(client: TestClient) -> None:
    first = log_in(client)
    second = log_in(client)
    assert first != second
    other = fresh(client)
    other.cookies.set(COOKIE, first)
    assert other.get("/session").status_code == 401


def test_logout_everywhere(client: TestClient) -> None:
    phone, bob = fresh(client), fresh(client)
    log_in(client)
    log_in(phone)
    log_in(bob, user="bob")
    response = client.post("/logout-everywhere")
    assert response.json() == {"count": 2}
    assert client.get("/session").status_code == 401
    assert phone.get("/session").status_code == 401
    assert bob.get("/session").status_code == 200


def test_list_sessions(client: TestClient) -> None:
    phone = fresh(client)
    log_in(client)
    log_in(phone)
    listed = client.get("/sessions").json()
    assert len(listed) == 2
    assert sorted(s["current"] for s in listed) == [False, True]
    assert {s["user"] for s in listed} == {"alice"}


def test_session_data_persists(client: TestClient) -> None:
    log_in(client)
    assert client.get("/data").json() == {}
    assert client.post("/data", json={"cart": [1]}).json() == {"cart": [1]}
    assert client.get("/data").json() == {"cart": [1]}
    other = fresh(client)
    log_in(other)
    assert other.get("/data").json() == {}


def test_bad_cookie_is_cleared_on_the_error_response(client: TestClient) -> None:
    client.cookies.set(COOKIE, "garbage")
    response = client.get("/session")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == 'Session realm="authmw"'
    assert "Max-Age=0" in response.headers["set-cookie"]


def test_store_down_is_503(config: AuthConfig) -> None:
    _, value = session_cookie(config, "alice")
    down = make_config(PATH_RULES, store=RedisStore.from_url(DOWN_REDIS, socket_timeout=0.5))
    with TestClient(build(down)) as client:
        client.cookies.set(COOKIE, value)
        response = client.get("/session")
        assert response.status_code == 503
        assert response.headers["retry-after"].isdigit()
        assert "www-authenticate" not in response.headers
        # Revocations live in the same store: a JWT cannot be checked either (fail closed).
        assert client.get("/jwt", headers=bearer(config)).status_code == 503
        assert client.get("/ruled/public-endpoint").status_code == 200
        assert expect_refused(client, "/ws/session") in (503, 1008)


def test_login_while_the_store_is_down_is_503() -> None:
    down = make_config(PATH_RULES, store=RedisStore.from_url(DOWN_REDIS, socket_timeout=0.5))
    with TestClient(build(down), raise_server_exceptions=False) as client:
        response = client.post("/login", json={"user": "alice"})
        assert response.status_code == 503
        assert "retry-after" in response.headers


def test_authenticated_responses_are_not_cacheable(client: TestClient, config: AuthConfig) -> None:
    response = client.get("/jwt", headers=bearer(config))
    assert response.headers["cache-control"] == "no-store"
    assert {"cookie", "authorization"} <= {v.strip().lower() for v in response.headers["vary"].split(",")}


# ---- websockets ----


def expect_refused(client: TestClient, path: str, **kwargs: Any) -> int:
    """The handshake is refused before accept: a denial response (403/401) or close code 1008."""
    with (
        pytest.raises((WebSocketDisconnect, WebSocketDenialResponse)) as refused,
        client.websocket_connect(path, **kwargs) as ws,
    ):
        ws.receive_json()
    error = refused.value
    if isinstance(error, WebSocketDenialResponse):
        return error.status_code
    assert error.code == 1008
    return 1008


@pytest.mark.parametrize("path", ["/ws/session", "/ws/jwt", "/ws/ruled"])
def test_websocket_refused_before_accept(client: TestClient, path: str) -> None:
    assert expect_refused(client, path) in (403, 1008)


def test_websocket_with_the_wrong_credential_kind_is_refused(client: TestClient, config: AuthConfig) -> None:
    log_in(client)
    assert expect_refused(client, "/ws/jwt") in (403, 1008)
    assert expect_refused(client, "/ws/jwt", headers=bearer(config, set())) in (403, 1008)


def test_websocket_with_a_session(client: TestClient) -> None:
    log_in(client, scopes=("items:read",))
    with client.websocket_connect("/ws/session") as ws:
        assert ws.receive_json() == {"id": "alice", "source": "session", "auth": ["authenticated", "items:read"]}


def test_websocket_with_a_jwt(client: TestClient, config: AuthConfig) -> None:
    with client.websocket_connect("/ws/jwt", headers=bearer(config)) as ws:
        assert ws.receive_json() == {"id": "alice", "source": "jwt"}
    with client.websocket_connect("/ws/ruled", headers=bearer(config)) as ws:
        assert ws.receive_json() == {"authenticated": True}


def test_websocket_cross_site_session_handshake_is_refused(client: TestClient) -> None:
    log_in(client)
    assert expect_refused(client, "/ws/session", headers={"Origin": "https://evil.example"}) in (403, 1008)
    with client.websocket_connect("/ws/session", headers={"Origin": "http://testserver"}) as ws:
        assert ws.receive_json()["id"] == "alice"


def test_websocket_denial_response_carries_authmws_answer(client: TestClient) -> None:
    with pytest.raises(WebSocketDenialResponse) as refused, client.websocket_connect("/ws/session"):
        pass  # pragma: no cover - never accepted
    assert refused.value.status_code == 403  # a refused handshake is HTTP 403, and its body says so
    assert refused.value.headers["www-authenticate"] == 'Session realm="authmw"'
    assert refused.value.json()["status"] == 403


def test_websocket_without_the_denial_extension_closes_with_1008(config: AuthConfig) -> None:
    """At the ASGI level: a server without websocket.http.response gets a close 1008 and never an accept."""
    app = build(config)
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "websocket",
        "path": "/ws/session",
        "raw_path": b"/ws/session",
        "root_path": "",
        "scheme": "ws",
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
        "subprotocols": [],
        "extensions": {},
    }

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    assert [m["type"] for m in sent] == ["websocket.close"]
    assert sent[0]["code"] == 1008


def test_websocket_open_route(client: TestClient) -> None:
    with client.websocket_connect("/ws/open") as ws:
        assert ws.receive_json() == {"authenticated": False}


# ---- composition with CORS and GZip ----

CORS = Middleware(
    CORSMiddleware,
    allow_origins=["https://front.example"],
    allow_methods=["*"],
    allow_headers=["Authorization", "Content-Type"],
    allow_credentials=True,
)


async def big(request: Request) -> JSONResponse:
    return JSONResponse({"id": request.user.id, "padding": "x" * 4000})


BIG_ROUTES = [StarletteRoute("/big", jwt_required()(big)), StarletteRoute("/open", open_view)]


@pytest.mark.parametrize("order", ["cors-outside", "cors-inside"])
def test_cors_preflight_and_actual_requests(config: AuthConfig, order: str) -> None:
    placement = {"before": [CORS]} if order == "cors-outside" else {"after": [CORS]}
    with TestClient(build(config, routes=BIG_ROUTES, **placement)) as client:
        origin = {"Origin": "https://front.example"}
        preflight = client.options(
            "/big",
            headers={
                **origin,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://front.example"
        assert "www-authenticate" not in preflight.headers
        ok = client.get("/big", headers={**origin, **bearer(config)})
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == "https://front.example"
        assert ok.headers["cache-control"] == "no-store"
        refused = client.get("/big", headers=origin)
        assert refused.status_code == 401
        if order == "cors-outside":  # CORS wraps authmw's answer too, so the browser can read the 401
            assert refused.headers["access-control-allow-origin"] == "https://front.example"


@pytest.mark.parametrize("order", ["gzip-outside", "gzip-inside"])
def test_gzip_composes(config: AuthConfig, order: str) -> None:
    gzip = Middleware(GZipMiddleware, minimum_size=500)
    placement = {"before": [gzip]} if order == "gzip-outside" else {"after": [gzip]}
    with TestClient(build(config, routes=BIG_ROUTES, **placement)) as client:
        response = client.get("/big", headers={"Accept-Encoding": "gzip", **bearer(config)})
        assert response.status_code == 200
        assert response.headers["content-encoding"] == "gzip"
        assert response.json()["id"] == "alice"
        vary = {v.strip().lower() for v in ",".join(response.headers.get_list("vary")).split(",")}
        assert {"accept-encoding", "cookie", "authorization"} <= vary
        assert response.headers["cache-control"] == "no-store"
        assert client.get("/big", headers={"Accept-Encoding": "gzip"}).status_code == 401


# ---- httpx ASGITransport, without the TestClient ----


def test_over_httpx_asgi_transport(config: AuthConfig) -> None:
    async def scenario() -> None:
        transport = httpx.ASGITransport(app=build(config))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            assert (await client.get("/jwt")).status_code == 401
            assert (await client.get("/jwt", headers=bearer(config))).json()["id"] == "alice"
            response = await client.post("/login", json={"user": "alice"})
            assert response.status_code == 200
            assert (await client.get("/session")).json()["source"] == "session"

    asyncio.run(scenario())


# ---- the Starlette example app (the example-app contract), in-process ----

EXAMPLE_ENV = {
    "AUTHMW_SECRET_KEYS": SECRET,
    "AUTHMW_JWT_ALGORITHMS": "HS256",
    "AUTHMW_JWT_KEY": JWT_KEY,
    "AUTHMW_JWT_ISSUER": "https://issuer.example",
    "AUTHMW_JWT_AUDIENCE": "authmw-demo",
    "AUTHMW_COOKIE_SECURE": "0",
}
ALICE_SCOPES = ["items:read", "items:write"]
CROSS_SITE = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> tuple[Starlette, AuthConfig]:
    monkeypatch.setattr(starlette_example, "items", Items())  # fresh demo items for every test
    config = AuthConfig.from_env(EXAMPLE_ENV, routes=EXAMPLE_ROUTES, default=Policy.optional())
    return starlette_example.create_app(config), config


def example_login(app: Starlette, user: str = "alice", password: str = "wonderland") -> TestClient:
    client = TestClient(app, follow_redirects=False)
    response = client.post("/login", data={"username": user, "password": password})
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/account"
    return client


def test_starlette_example_walks_the_design_table(example: tuple[Starlette, AuthConfig]) -> None:
    app, config = example
    alice_jwt = {"Authorization": "Bearer " + mint_token(config, "alice", set(ALICE_SCOPES))}
    bob_jwt = {"Authorization": "Bearer " + mint_token(config, "bob", {"items:read"})}
    no_scope_jwt = {"Authorization": "Bearer " + mint_token(config, "alice")}
    anon = TestClient(app, follow_redirects=False)

    # GET / — the login form
    home = anon.get("/")
    assert home.status_code == 200 and home.headers["content-type"].startswith("text/html")
    assert re.search(r'<form[^>]*method="post"[^>]*action="/login"', home.text)
    assert 'name="username"' in home.text and 'name="password"' in home.text
    # GET /health
    health = anon.get("/health")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    # POST /login — bad
    for user, password in [("alice", "nope"), ("mallory", "wonderland"), ("", "")]:
        bad = anon.post("/login", data={"username": user, "password": password})
        assert bad.status_code == 401
        assert "set-cookie" not in bad.headers
    assert (
        anon.post("/login", data={"username": "alice", "password": "wonderland"}, headers=CROSS_SITE).status_code == 403
    )
    # POST /login — good: new session, cookie, 303 to /account
    browser = TestClient(app, follow_redirects=False)
    good = browser.post("/login", data={"username": "alice", "password": "wonderland"})
    assert good.status_code == 303 and good.headers["location"] == "/account"
    cookie = good.headers["set-cookie"]
    assert cookie.startswith(COOKIE + "=") and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    # GET /account
    account = browser.get("/account")
    assert (account.status_code, account.json()) == (200, {"id": "alice", "source": "session", "scopes": ALICE_SCOPES})
    assert account.headers["cache-control"] == "no-store"
    refused = anon.get("/account")
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == 'Session realm="authmw"'
    assert anon.get("/account", headers=alice_jwt).status_code == 401
    assert 'id="user">alice<' in browser.get("/").text
    # GET /api/me — session or JWT
    assert browser.get("/api/me").json() == {"id": "alice", "source": "session", "scopes": ALICE_SCOPES}
    assert anon.get("/api/me", headers=bob_jwt).json() == {"id": "bob", "source": "jwt", "scopes": ["items:read"]}
    assert browser.get("/api/me", headers=bob_jwt).json()["id"] == "bob"
    me = anon.get("/api/me")
    assert me.status_code == 401
    assert sorted(me.headers.get_list("www-authenticate")) == ['Bearer realm="authmw"', 'Session realm="authmw"']
    # GET /api/items — JWT with items:read
    listed = anon.get("/api/items", headers=bob_jwt)
    assert (listed.status_code, listed.json()) == (200, [{"id": 1, "name": "tea"}, {"id": 2, "name": "biscuits"}])
    assert anon.get("/api/items").status_code == 401
    assert browser.get("/api/items").status_code == 401
    scope = anon.get("/api/items", headers=no_scope_jwt)
    assert scope.status_code == 403 and 'error="insufficient_scope"' in scope.headers["www-authenticate"]
    # POST /api/items — JWT with items:write
    created = anon.post("/api/items", headers=alice_jwt, json={"name": "jam"})
    assert (created.status_code, created.json()) == (201, {"id": 3, "name": "jam", "owner": "alice"})
    assert anon.post("/api/items", headers=bob_jwt, json={"name": "x"}).status_code == 403
    assert anon.post("/api/items", json={"name": "x"}).status_code == 401
    assert anon.post("/api/items", headers=alice_jwt, json={}).status_code == 400
    assert anon.get("/api/items", headers=bob_jwt).json()[-1] == {"id": 3, "name": "jam", "owner": "alice"}
    # POST /api/token — session, CSRF-checked
    assert anon.post("/api/token").status_code == 401
    assert anon.post("/api/token", headers=alice_jwt).status_code == 401
    assert browser.post("/api/token", headers=CROSS_SITE).status_code == 403
    issued = browser.post("/api/token")
    assert issued.status_code == 200 and issued.headers["cache-control"] == "no-store"
    pair = issued.json()
    assert {"access_token", "token_type", "expires_in", "refresh_token"} <= set(pair)
    assert pair["token_type"] == "Bearer" and pair["expires_in"] == 300
    minted = {"Authorization": "Bearer " + pair["access_token"]}
    assert anon.get("/api/me", headers=minted).json() == {"id": "alice", "source": "jwt", "scopes": ALICE_SCOPES}
    assert anon.post("/api/items", headers=minted, json={"name": "scones"}).status_code == 201
    # POST /api/token/refresh — a new pair; a used refresh token is refused and its family revoked
    refreshed = anon.post("/api/token/refresh", json={"refresh_token": pair["refresh_token"]})
    assert refreshed.status_code == 200
    assert refreshed.json()["refresh_token"] != pair["refresh_token"]
    reused = anon.post("/api/token/refresh", json={"refresh_token": pair["refresh_token"]})
    assert reused.status_code == 401 and 'error="invalid_token"' in reused.headers["www-authenticate"]
    assert anon.post("/api/token/refresh", json={"refresh_token": refreshed.json()["refresh_token"]}).status_code == 401
    assert anon.post("/api/token/refresh", json={}).status_code == 400
    # WS /ws — session or JWT; otherwise refused before accept
    assert expect_refused(anon, "/ws") in (403, 1008)
    assert expect_refused(anon, "/ws", headers={"Authorization": "Bearer abc.def.ghi"}) in (403, 1008)
    assert expect_refused(browser, "/ws", headers={"Origin": "https://evil.example"}) in (403, 1008)
    with browser.websocket_connect("/ws") as ws:
        assert ws.receive_json() == {"id": "alice"}
    with anon.websocket_connect("/ws", headers=bob_jwt) as ws:
        assert ws.receive_json() == {"id": "bob"}
    # POST /logout — session, CSRF-checked
    assert anon.post("/logout").status_code == 401
    assert browser.post("/logout", headers=CROSS_SITE).status_code == 403
    assert browser.get("/account").status_code == 200
    old = browser.cookies.get(COOKIE)
    out = browser.post("/logout")
    assert out.status_code == 303 and out.headers["location"] == "/"
    assert "Max-Age=0" in out.headers["set-cookie"]
    assert browser.get("/account").status_code == 401
    replay = TestClient(app)
    replay.cookies.set(COOKIE, old)
    assert replay.get("/account").status_code == 401
    assert expect_refused(replay, "/ws") in (403, 1008)
    # POST /logout-everywhere — session, CSRF-checked; every session and every token of the user
    laptop, phone, bob = example_login(app), example_login(app), example_login(app, "bob", "builder")
    phone_pair = phone.post("/api/token").json()
    time.sleep(0.01)  # the per-user not-before must be later than the tokens issued so far
    assert anon.post("/logout-everywhere").status_code == 401
    assert laptop.post("/logout-everywhere", headers=CROSS_SITE).status_code == 403
    everywhere = laptop.post("/logout-everywhere")
    assert everywhere.status_code == 303 and everywhere.headers["location"] == "/"
    assert "Max-Age=0" in everywhere.headers["set-cookie"]
    assert laptop.get("/account").status_code == 401
    assert phone.get("/account").status_code == 401
    assert bob.get("/account").json()["id"] == "bob"
    assert anon.get("/api/me", headers=alice_jwt).status_code == 401
    assert anon.get("/api/me", headers={"Authorization": "Bearer " + phone_pair["access_token"]}).status_code == 401
    assert anon.post("/api/token/refresh", json={"refresh_token": phone_pair["refresh_token"]}).status_code == 401
    assert expect_refused(anon, "/ws", headers=alice_jwt) in (403, 1008)
    assert anon.get("/api/me", headers=bob_jwt).status_code == 200
