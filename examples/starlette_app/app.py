"""The Starlette example app, configured only through `AuthConfig.from_env()`: the same behaviour over HTTP as the
Flask one (docs/EXAMPLES.md). Browsers get pages, API clients JSON, by the `Accept` header.

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

from authmw import AuthConfig, Principal
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
from authmw.throttle import AsyncLoginThrottle
from examples.common import (
    LOGIN_ERROR,
    NOTICE_CLEARED,
    NOTICE_COOKIE,
    Items,
    account_page,
    after_login,
    check_password,
    config_from_env,
    home_page,
    login_page,
    notice_cookie,
    parse_form,
    parse_json,
    throttle_from,
    too_many_attempts,
    wants_html,
)

items = Items()


def _wants_html(request: Request) -> bool:
    return wants_html(",".join(request.headers.getlist("accept")))


async def home(request: Request) -> HTMLResponse:
    principal: Principal | None = request.user if request.user.is_authenticated else None
    sessions = await list_sessions(request) if principal is not None else []
    notice = request.cookies.get(NOTICE_COOKIE)
    response = HTMLResponse(home_page(principal, sessions, notice))
    if notice is not None:  # shown once
        response.headers.append("set-cookie", NOTICE_CLEARED)
    return response


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def login_form(request: Request) -> HTMLResponse:
    return HTMLResponse(login_page(next_path=request.query_params.get("next")))


def _login_refused(
    request: Request, fields: dict[str, str], error: str, detail: str, status: int, headers: dict[str, str] | None
) -> Response:
    """The login form again with `error` for browsers, `{"detail": detail}` for API clients."""
    if _wants_html(request):
        page = login_page(next_path=fields.get("next"), username=fields.get("username", ""), error=error)
        return HTMLResponse(page, status_code=status, headers=headers)
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def do_login(request: Request) -> Response:
    reason = session(request).cross_site_reason()
    if reason is not None:  # login CSRF: a foreign site must not log the browser in as someone else
        return JSONResponse({"detail": reason}, status_code=403)
    fields = parse_form(await request.body(), request.headers.get("content-type", ""))
    user, address = fields.get("username", ""), session(request).client_address
    throttle: AsyncLoginThrottle = request.app.state.throttle
    wait = await throttle.check(user, address)  # before the password: a locked name or address is not tried
    if wait:
        message = too_many_attempts(wait)
        return _login_refused(request, fields, message, message, 429, {"retry-after": str(wait)})
    scopes = check_password(user, fields.get("password", ""))
    if scopes is None:
        return _login_refused(request, fields, LOGIN_ERROR, "invalid username or password", 401, None)
    await throttle.success(user, address)
    await login(request, user, scopes, remember=fields.get("remember") == "1")
    return RedirectResponse(after_login(fields.get("next")), status_code=303)


async def account(request: Request) -> Response:
    principal: Principal = request.user
    if _wants_html(request):
        response: Response = HTMLResponse(account_page(principal, await list_sessions(request)))
    else:
        response = JSONResponse(principal.to_dict())
    response.headers.append("vary", "Accept")
    return response


async def whoami(request: Request) -> JSONResponse:
    principal: Principal = request.user
    return JSONResponse(principal.to_dict())


async def do_logout(request: Request) -> Response:
    await logout(request)
    response = RedirectResponse("/", status_code=303)
    response.headers.append("set-cookie", notice_cookie("logged-out"))
    return response


async def do_logout_everywhere(request: Request) -> Response:
    await logout_everywhere(request)  # every session of the user, and every token issued to them
    response = RedirectResponse("/", status_code=303)
    response.headers.append("set-cookie", notice_cookie("logged-out-everywhere"))
    return response


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
    config = config or config_from_env()
    app = Starlette(
        routes=[
            Route("/", home),
            Route("/health", health),
            Route("/login", login_form, methods=["GET"]),
            Route("/login", do_login, methods=["POST"]),
            Route("/account", account),
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
    app.state.throttle = throttle_from(config, AsyncLoginThrottle)
    return app


app = create_app()
