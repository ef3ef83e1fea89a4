"""The Starlette example app of DESIGN.md §6, configured only through `AuthConfig.from_env()`.

Run from the repository root: ``make demo`` or ``uvicorn examples.starlette_app.app:app``.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from authmw import AuthConfig, Policy, Principal
from authmw.starlette import (
    AuthMiddleware,
    jwks_endpoint,
    list_sessions,
    login,
    logout,
    logout_everywhere,
    refresh_endpoint,
    session,
    token_endpoint,
)
from examples.common import ROUTES, Items, check_password, home_page, parse_form, parse_json

items = Items()


async def home(request: Request) -> HTMLResponse:
    principal: Principal | None = request.user if request.user.is_authenticated else None
    sessions = await list_sessions(request) if principal is not None else []
    return HTMLResponse(home_page(principal, sessions))


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def do_login(request: Request) -> Response:
    reason = session(request).cross_site_reason()
    if reason is not None:  # login CSRF: a foreign site must not log the browser in as someone else
        return JSONResponse({"detail": reason}, status_code=403)
    fields = parse_form(await request.body(), request.headers.get("content-type", ""))
    scopes = check_password(fields.get("username", ""), fields.get("password", ""))
    if scopes is None:
        return JSONResponse({"detail": "invalid username or password"}, status_code=401)
    await login(request, fields["username"], scopes, remember=fields.get("remember") == "1")
    return RedirectResponse("/account", status_code=303)


async def whoami(request: Request) -> JSONResponse:
    principal: Principal = request.user
    return JSONResponse(principal.to_dict())


async def do_logout(request: Request) -> Response:
    await logout(request)
    return RedirectResponse("/", status_code=303)


async def do_logout_everywhere(request: Request) -> Response:
    await logout_everywhere(request)
    return RedirectResponse("/", status_code=303)


@requires("items:read")
async def list_items(request: Request) -> JSONResponse:
    return JSONResponse(items.all())


@requires("items:write")
async def create_item(request: Request) -> JSONResponse:
    data, ok = parse_json(await request.body())
    if not ok:
        return JSONResponse({"detail": "body must be JSON"}, status_code=400)
    body, status = items.create(data, request.user.identity)
    return JSONResponse(body, status_code=status)


async def ws(websocket: WebSocket) -> None:
    # authmw already refused unauthenticated handshakes before this point (P29).
    await websocket.accept()
    await websocket.send_json({"id": websocket.user.identity})
    await websocket.close()


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def create_app(config: AuthConfig | None = None) -> Starlette:
    config = config or AuthConfig.from_env(routes=ROUTES, default=Policy.optional())
    app = Starlette(
        routes=[
            Route("/", home),
            Route("/health", health),
            Route("/login", do_login, methods=["POST"]),
            Route("/account", whoami),
            Route("/logout", do_logout, methods=["POST"]),
            Route("/logout-everywhere", do_logout_everywhere, methods=["POST"]),
            Route("/api/me", whoami),
            Route("/api/items", list_items, methods=["GET"]),
            Route("/api/items", create_item, methods=["POST"]),
            Route("/api/token", token_endpoint, methods=["POST"]),
            Route("/api/token/refresh", refresh_endpoint, methods=["POST"]),
            Route("/.well-known/jwks.json", jwks_endpoint),
            WebSocketRoute("/ws", ws),
        ],
        middleware=[Middleware(GZipMiddleware), Middleware(AuthMiddleware, config=config)],
        exception_handlers={HTTPException: http_error},
    )
    app.router.redirect_slashes = False  # answer exactly what the Flask app answers: no slash redirects
    return app


app = create_app()
