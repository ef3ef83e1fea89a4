"""The Starlette example app of DESIGN.md §6, configured only through `AuthConfig.from_env()`.

Run from the repository root: ``make demo`` or ``uvicorn examples.starlette_app.app:app``.
"""

from __future__ import annotations

import hmac
import html
import itertools
import json
import threading
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route as StarletteRoute

from authmw import AuthConfig, Policy, Principal, Route
from authmw.asgi import AuthMiddleware, get_session

ROUTES = [
    Route("/", Policy.public()),
    Route("/health", Policy.public()),
    Route("/login", Policy.public()),
    Route("/account", Policy.session()),
    Route("/logout", Policy.session()),
    Route("/logout-everywhere", Policy.session()),
    Route("/api/me", Policy.either()),
    Route("/api/items", Policy.jwt(scopes={"items:read"}), methods={"GET"}),
    Route("/api/items", Policy.jwt(scopes={"items:write"}), methods={"POST"}),
]

USERS = {
    "alice": ("wonderland", ("items:read", "items:write")),
    "bob": ("builder", ("items:read",)),
}

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
<p>Demo users: alice / wonderland, bob / builder.</p>
</body></html>
"""


def check_password(username: str, password: str) -> tuple[str, ...] | None:
    """The user's scopes if the password is right (constant-time comparison), else None."""
    expected, scopes = USERS.get(username, ("\0" * 16, ()))
    ok = hmac.compare_digest(password.encode(), expected.encode())
    return scopes if ok and username in USERS else None


async def form_fields(request: Request) -> dict[str, str]:
    body = await request.body()
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            return {}
        return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {key: values[0] for key, values in parsed.items()}


async def home(request: Request) -> HTMLResponse:
    return HTMLResponse(HOME)


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def login(request: Request) -> Response:
    session = get_session(request.scope)
    reason = session.cross_site_reason()
    if reason is not None:  # login CSRF: a foreign site must not log the browser in as someone else
        return JSONResponse({"detail": reason}, status_code=403)
    fields = await form_fields(request)
    scopes = check_password(fields.get("username", ""), fields.get("password", ""))
    if scopes is None:
        return JSONResponse({"detail": "invalid username or password"}, status_code=401)
    await session.login(fields["username"], scopes, remember=fields.get("remember") == "1")
    return RedirectResponse("/account", status_code=303)


async def account(request: Request) -> JSONResponse:
    principal: Principal = request.user
    return JSONResponse(principal.to_dict())


async def logout(request: Request) -> Response:
    await get_session(request.scope).logout()
    return RedirectResponse("/", status_code=303)


async def logout_everywhere(request: Request) -> Response:
    await get_session(request.scope).logout_everywhere()
    return RedirectResponse("/", status_code=303)


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
        item = {"id": next(_ids), "name": html.escape(name.strip()), "owner": request.user.identity}
        _items.append(item)
    return JSONResponse(item, status_code=201)


def create_app(config: AuthConfig | None = None) -> Starlette:
    config = config or AuthConfig.from_env(routes=ROUTES, default=Policy.optional())
    return Starlette(
        routes=[
            StarletteRoute("/", home),
            StarletteRoute("/health", health),
            StarletteRoute("/login", login, methods=["POST"]),
            StarletteRoute("/account", account),
            StarletteRoute("/logout", logout, methods=["POST"]),
            StarletteRoute("/logout-everywhere", logout_everywhere, methods=["POST"]),
            StarletteRoute("/api/me", me),
            StarletteRoute("/api/items", list_items, methods=["GET"]),
            StarletteRoute("/api/items", create_item, methods=["POST"]),
        ],
        middleware=[Middleware(GZipMiddleware), Middleware(AuthMiddleware, config=config)],
    )


app = create_app()
