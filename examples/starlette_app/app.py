"""The Starlette example app of DESIGN.md §6, configured only through `AuthConfig.from_env()`.

Run from the repository root: ``make demo`` or ``uvicorn examples.starlette_app.app:app``.
"""

from __future__ import annotations

import html
import itertools
import threading

from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route as StarletteRoute

from authmw import AuthConfig, Policy, Principal, Route
from authmw.asgi import AuthMiddleware

ROUTES = [
    Route("/", Policy.public()),
    Route("/health", Policy.public()),
    Route("/api/me", Policy.either()),
    Route("/api/items", Policy.jwt(scopes={"items:read"}), methods={"GET"}),
    Route("/api/items", Policy.jwt(scopes={"items:write"}), methods={"POST"}),
]

_items: list[dict[str, object]] = [{"id": 1, "name": "tea"}, {"id": 2, "name": "biscuits"}]
_ids = itertools.count(3)
_lock = threading.Lock()

HOME = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>authmw demo</title></head>
<body>
<h1>authmw demo</h1>
<form method="post" action="/login">
  <label>Username <input name="username" autocomplete="username"></label>
  <label>Password <input name="password" type="password" autocomplete="current-password"></label>
  <button type="submit">Log in</button>
</form>
<p>{status}</p>
</body></html>
"""


async def home(request: Request) -> HTMLResponse:
    status = "Bearer tokens: send <code>Authorization: Bearer &lt;jwt&gt;</code> to <code>/api/me</code>."
    return HTMLResponse(HOME.format(status=html.escape(status, quote=False).replace("&lt;code&gt;", "")))


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def me(request: Request) -> JSONResponse:
    principal: Principal = request.user
    return JSONResponse(principal.to_dict())


@requires("items:read")
async def list_items(request: Request) -> JSONResponse:
    with _lock:
        return JSONResponse(list(_items))


@requires("items:write")
async def create_item(request: Request) -> JSONResponse:
    try:
        data = await request.json()
    except ValueError:
        return JSONResponse({"detail": "body must be JSON"}, status_code=400)
    name = data.get("name") if isinstance(data, dict) else None
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        return JSONResponse({"detail": "an item needs a non-empty 'name' string"}, status_code=400)
    with _lock:
        item = {"id": next(_ids), "name": name.strip(), "owner": request.user.identity}
        _items.append(item)
    return JSONResponse(item, status_code=201)


def create_app(config: AuthConfig | None = None) -> Starlette:
    config = config or AuthConfig.from_env(routes=ROUTES, default=Policy.optional())
    return Starlette(
        routes=[
            StarletteRoute("/", home),
            StarletteRoute("/health", health),
            StarletteRoute("/api/me", me),
            StarletteRoute("/api/items", list_items, methods=["GET"]),
            StarletteRoute("/api/items", create_item, methods=["POST"]),
        ],
        middleware=[Middleware(GZipMiddleware), Middleware(AuthMiddleware, config=config)],
    )


app = create_app()
