"""FastAPI through the Starlette adapter: FastAPI routes are Starlette routes, so the same endpoint decorators
compile to the same rules, `request.user` / `request.auth` work, and routers, path parameters and websockets
behave as in plain Starlette. In-process (TestClient); the memory store.
"""

from __future__ import annotations

from typing import Any

import pytest

fastapi = pytest.importorskip("fastapi")

from fastapi import APIRouter, FastAPI, Request, WebSocket  # noqa: E402
from starlette.testclient import TestClient, WebSocketDenialResponse  # noqa: E402

from authmw import AuthConfig, JWTSettings, Policy, Principal  # noqa: E402
from authmw.sessions import SessionSettings  # noqa: E402
from authmw.starlette import (  # noqa: E402
    AuthMiddleware,
    authenticated,
    jwt_required,
    login,
    policy,
    public,
    session_required,
)
from authmw.testing import mint_token  # noqa: E402

JWT_KEY = "j" * 40


def make_config() -> AuthConfig:
    return AuthConfig(
        jwt=JWTSettings(algorithms=["HS256"], keys=JWT_KEY),
        sessions=SessionSettings(secret_keys=["s" * 40], cookie_secure=False),
        default=Policy.required(),  # deny by default: only decorated endpoints say otherwise
    )


def bearer(config: AuthConfig, scopes: set[str], user: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(config, user, scopes)}"}


def build(config: AuthConfig) -> FastAPI:
    app = FastAPI()
    app.add_middleware(AuthMiddleware, config=config)
    items = APIRouter(prefix="/items")

    @items.get("/{item_id}")
    @jwt_required(scopes={"items:read"})
    async def read_item(item_id: int, request: Request) -> dict[str, Any]:
        return {"item": item_id, "by": request.user.id, "auth": list(request.auth.scopes)}

    @items.post("/")
    @policy(Policy.jwt(scopes={"items:write"}))
    async def create_item(request: Request) -> dict[str, Any]:
        return {"created": True, "by": request.user.id}

    admin = APIRouter()

    @admin.get("/stats")
    @jwt_required(scopes={"admin"})
    async def stats(request: Request) -> dict[str, Any]:
        return {"stats": True}

    reports = APIRouter(prefix="/reports")

    @reports.get("/{name:path}")
    @session_required()
    async def report(name: str) -> dict[str, str]:
        return {"report": name}

    admin.include_router(reports)
    app.include_router(items)
    app.include_router(admin, prefix="/v1/admin")  # nested, with a prefix added at inclusion

    @app.get("/health")
    @public
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/login")
    @public
    async def do_login(request: Request) -> dict[str, str]:
        principal = await login(request, "bob", {"items:read"})
        return {"id": principal.id}

    @app.get("/account")
    @session_required()
    async def account(request: Request) -> dict[str, Any]:
        user = request.user
        assert isinstance(user, Principal)
        return {"id": user.id, "source": user.source}

    @app.get("/me")
    @authenticated()
    def me(request: Request) -> dict[str, Any]:  # a sync endpoint (FastAPI runs it in a thread)
        return {"id": request.user.id, "source": request.user.source}

    @app.websocket("/ws")
    @jwt_required()
    async def socket(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json({"id": websocket.user.id})
        await websocket.close()

    return app


@pytest.fixture
def config() -> AuthConfig:
    return make_config()


@pytest.fixture
def client(config: AuthConfig) -> Any:
    with TestClient(build(config)) as test_client:
        yield test_client


def test_decorated_fastapi_routes_are_enforced(client: TestClient, config: AuthConfig) -> None:
    refused = client.get("/items/7")
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert refused.headers["content-type"] == "application/problem+json"
    assert client.get("/items/7", headers=bearer(config, set())).status_code == 403
    ok = client.get("/items/7", headers=bearer(config, {"items:read"}))
    assert ok.status_code == 200
    assert ok.json() == {"item": 7, "by": "alice", "auth": ["authenticated", "items:read"]}
    assert client.post("/items/", headers=bearer(config, {"items:read"})).status_code == 403
    assert client.post("/items/", headers=bearer(config, {"items:write"})).json() == {"created": True, "by": "alice"}


def test_undecorated_routes_get_the_default_policy(client: TestClient) -> None:
    # FastAPI's own routes (the OpenAPI schema) are plain routes: the configured default (required) applies.
    assert client.get("/openapi.json").status_code == 401
    assert client.get("/health").json() == {"status": "ok"}


def test_sessions_and_either_credential(client: TestClient, config: AuthConfig) -> None:
    assert client.get("/account").status_code == 401
    assert client.post("/login").json() == {"id": "bob"}
    assert client.get("/account").json() == {"id": "bob", "source": "session"}
    assert client.get("/me").json() == {"id": "bob", "source": "session"}
    client.cookies.clear()
    assert client.get("/me", headers=bearer(config, set(), "carol")).json() == {"id": "carol", "source": "jwt"}
    # A session cookie never opens a JWT-only route.
    client.post("/login")
    assert client.get("/items/1").status_code == 401


def test_websocket_is_refused_before_accept(client: TestClient, config: AuthConfig) -> None:
    with pytest.raises(WebSocketDenialResponse) as denied, client.websocket_connect("/ws"):
        pass
    assert denied.value.status_code == 403
    with client.websocket_connect("/ws", headers=bearer(config, set())) as socket:
        assert socket.receive_json() == {"id": "alice"}


def test_routers_included_with_a_prefix_keep_their_policies(client: TestClient, config: AuthConfig) -> None:
    assert client.get("/v1/admin/stats", headers=bearer(config, {"items:read"})).status_code == 403
    assert client.get("/v1/admin/stats", headers=bearer(config, {"admin"})).json() == {"stats": True}
    # The nested router's session-only route: a token does not open it, a session does.
    assert client.get("/v1/admin/reports/2026/q4", headers=bearer(config, {"admin"})).status_code == 401
    client.post("/login")
    assert client.get("/v1/admin/reports/2026/q4").json() == {"report": "2026/q4"}


def test_starlette_routes_websockets_and_mounts_inside_an_included_router(config: AuthConfig) -> None:
    # FastAPI rebuilds these at their prefixed path: the policies must follow them there.
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount
    from starlette.routing import Route as StarletteRoute

    from authmw.starlette import with_policy

    @jwt_required(scopes={"admin"})
    async def secret(request: Request) -> PlainTextResponse:
        return PlainTextResponse("secret")

    async def plain(request: Request) -> PlainTextResponse:
        return PlainTextResponse("plain")

    router = APIRouter()
    router.add_route("/secret", secret, methods=["GET"])
    router.routes.append(with_policy(StarletteRoute("/declared", plain), Policy.jwt(scopes={"admin"})))
    router.routes.append(with_policy(Mount("/files", routes=[StarletteRoute("/{name}", plain)]), Policy.session()))

    @router.websocket("/ws")
    @jwt_required(scopes={"admin"})
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("secret")
        await websocket.close()

    app = FastAPI()
    app.add_middleware(AuthMiddleware, config=config)
    app.include_router(router, prefix="/admin")
    with TestClient(app) as client:
        for path in ("/admin/secret", "/admin/declared"):
            assert client.get(path).status_code == 401
            assert client.get(path, headers=bearer(config, {"items:read"})).status_code == 403
            assert client.get(path, headers=bearer(config, {"admin"})).text in ("secret", "plain")
        assert client.get("/admin/files/a.txt", headers=bearer(config, {"admin"})).status_code == 401
        no_admin = bearer(config, set())
        with pytest.raises(WebSocketDenialResponse), client.websocket_connect("/admin/ws", headers=no_admin):
            pass
