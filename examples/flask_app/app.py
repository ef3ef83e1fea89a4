"""The Flask example app of DESIGN.md §6: the same behaviour over HTTP as the Starlette one.

Run from the repository root: ``gunicorn examples.flask_app.app:app`` (or ``flask --app examples.flask_app.app run``).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify, redirect, request
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from authmw import AuthConfig, Policy
from authmw.flask import AuthFailed, AuthMW, current_principal, list_sessions, login, logout, logout_everywhere
from authmw.flask import cross_site_reason as login_cross_site_reason
from examples.common import ROUTES, Items, check_password, home_page, parse_form, parse_json

items = Items()


def create_app(config: AuthConfig | None = None) -> Flask:
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]  # same JSON as the Starlette app
    auth = AuthMW(app, config or AuthConfig.from_env(routes=ROUTES, default=Policy.optional()))

    @app.get("/")
    def home() -> Response:
        principal = current_principal if current_principal.is_authenticated else None
        sessions = list_sessions() if principal is not None else []
        return Response(home_page(principal, sessions), content_type="text/html; charset=utf-8")  # type: ignore[arg-type]

    @app.get("/health")
    def health() -> Any:
        return jsonify(status="ok")

    @app.post("/login")
    def do_login() -> Any:
        reason = login_cross_site_reason()
        if reason is not None:  # login CSRF: a foreign site must not log the browser in as someone else
            return jsonify(detail=reason), 403
        fields = parse_form(request.get_data(), request.content_type or "")
        scopes = check_password(fields.get("username", ""), fields.get("password", ""))
        if scopes is None:
            return jsonify(detail="invalid username or password"), 401
        login(fields["username"], scopes, remember=fields.get("remember") == "1")
        return redirect("/account", code=303)

    @app.get("/account")
    @auth.session_required
    def account() -> Any:
        return jsonify(current_principal.to_dict())  # type: ignore[union-attr]

    @app.post("/logout")
    def do_logout() -> Any:
        logout()
        return redirect("/", code=303)

    @app.post("/logout-everywhere")
    def do_logout_everywhere() -> Any:
        logout_everywhere()
        return redirect("/", code=303)

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
# Behind a reverse proxy, trust one hop of X-Forwarded-* (scheme and host feed the CSRF origin check).
app.wsgi_app = ProxyFix(app.wsgi_app, x_proto=1, x_host=1)  # type: ignore[method-assign]
