"""The Flask example app: the same behaviour over HTTP as the Starlette one (docs/EXAMPLES.md).
Browsers get pages, API clients JSON, by the `Accept` header.

Run from the repository root: ``gunicorn examples.flask_app.app:app`` (or ``flask --app examples.flask_app.app run``).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify, redirect, request
from werkzeug.exceptions import HTTPException

from authmw import AuthConfig
from authmw.flask import (
    AuthFailed,
    AuthMW,
    client_address,
    current_principal,
    list_sessions,
    login,
    logout,
    logout_everywhere,
)
from authmw.flask import cross_site_reason as login_cross_site_reason
from authmw.throttle import LoginThrottle
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


def _html(page: str, status: int = 200) -> Response:
    return Response(page, status, content_type="text/html; charset=utf-8")


def _wants_html() -> bool:
    return wants_html(request.headers.get("Accept"))


def _login_refused(fields: dict[str, str], error: str, detail: str, status: int, headers: dict[str, str] | None) -> Any:
    """The login form again with `error` for browsers, `{"detail": detail}` for API clients."""
    if _wants_html():
        page = login_page(next_path=fields.get("next"), username=fields.get("username", ""), error=error)
        return _html(page, status), headers or {}
    return jsonify(detail=detail), status, headers or {}


def create_app(config: AuthConfig | None = None) -> Flask:
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]  # same JSON as the Starlette app
    # No automatic OPTIONS answers (200 + Allow): like the Starlette app, OPTIONS is 405 where a route does not
    # serve it. CORS preflights pass authmw unauthenticated; neither app answers them, a CORS middleware would.
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    config = config or config_from_env()
    auth = AuthMW(app, config)
    throttle = throttle_from(config, LoginThrottle)

    @app.get("/")
    def home() -> Response:
        principal = current_principal if current_principal.is_authenticated else None
        sessions = list_sessions() if principal is not None else []
        notice = request.cookies.get(NOTICE_COOKIE)
        response = _html(home_page(principal, sessions, notice))  # type: ignore[arg-type]
        if notice is not None:  # shown once
            response.headers.add("Set-Cookie", NOTICE_CLEARED)
        return response

    @app.get("/health")
    def health() -> Any:
        return jsonify(status="ok")

    @app.get("/login")
    def login_form() -> Response:
        return _html(login_page(next_path=request.args.get("next")))

    @app.post("/login")
    def do_login() -> Any:
        reason = login_cross_site_reason()
        if reason is not None:  # login CSRF: a foreign site must not log the browser in as someone else
            return jsonify(detail=reason), 403
        fields = parse_form(request.get_data(), request.content_type or "")
        user, address = fields.get("username", ""), client_address()
        wait = throttle.check(user, address)  # before the password: a locked name or address is not tried
        if wait:
            message = too_many_attempts(wait)
            return _login_refused(fields, message, message, 429, {"Retry-After": str(wait)})
        scopes = check_password(user, fields.get("password", ""))
        if scopes is None:
            return _login_refused(fields, LOGIN_ERROR, "invalid username or password", 401, None)
        throttle.success(user, address)
        login(user, scopes, remember=fields.get("remember") == "1")
        return redirect(after_login(fields.get("next")), code=303)

    @app.get("/account")
    @auth.session_required
    def account() -> Any:
        if _wants_html():
            response = _html(account_page(current_principal, list_sessions()))  # type: ignore[arg-type]
        else:
            response = jsonify(current_principal.to_dict())  # type: ignore[union-attr]
        response.headers.add("Vary", "Accept")
        return response

    @app.post("/logout")
    def do_logout() -> Any:
        logout()
        response = redirect("/", code=303)
        response.headers.add("Set-Cookie", notice_cookie("logged-out"))
        return response

    @app.post("/logout-everywhere")
    def do_logout_everywhere() -> Any:
        logout_everywhere()  # every session of the user, and every token issued to them
        response = redirect("/", code=303)
        response.headers.add("Set-Cookie", notice_cookie("logged-out-everywhere"))
        return response

    @app.get("/api/me")
    def me() -> Any:
        return jsonify(current_principal.to_dict())  # type: ignore[union-attr]

    @app.get("/api/items")
    def list_items() -> Any:
        return jsonify(items.all())

    @app.post("/api/items")
    def create_item() -> Any:
        data, ok = parse_json(request.get_data())
        if not ok:
            return jsonify(detail="body must be JSON"), 400
        body, status = items.create(data, current_principal.identity)
        return jsonify(body), status

    app.add_url_rule("/api/token", "token", auth.token_view, methods=["POST"])
    app.add_url_rule("/api/token/refresh", "token_refresh", auth.refresh_view, methods=["POST"])
    app.add_url_rule("/.well-known/jwks.json", "jwks", auth.jwks_view)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Any:
        if isinstance(error, AuthFailed):
            return error.get_response()  # authmw's own RFC 6750 / problem+json answer
        response = jsonify(detail=error.name)
        response.status_code = error.code or 500
        return response

    return app


app = create_app()
