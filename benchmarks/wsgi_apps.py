"""The Flask apps measured: bare, authmw (the `AuthMW` extension), and the peers as their docs set them up.

Every app answers ``GET /p`` with the caller's id as text (the bare app: the same text, unauthenticated),
``GET /health`` publicly, and (session peers) ``GET /login`` to obtain a session cookie.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from flask import Flask, request

from authmw import AuthConfig
from authmw.flask import AuthMW, current_principal
from benchmarks.common import AUDIENCE, HS_SECRET, ISSUER, SESSION_SECRET, USER


def _app() -> Flask:
    app = Flask("authmw_bench")

    @app.get("/health")
    def health() -> str:
        return "ok"

    return app


def bare() -> Flask:
    app = _app()

    @app.get("/p")
    def endpoint() -> str:
        return USER

    return app


# ---- authmw ----


def authmw_jwt(config: AuthConfig) -> Flask:
    app = _app()
    auth = AuthMW(app, config)

    @app.get("/p")
    @auth.jwt_required
    def endpoint() -> str:
        return current_principal.id

    return app


def authmw_session(config: AuthConfig) -> Flask:
    app = _app()
    auth = AuthMW(app, config)

    @app.get("/p")
    @auth.session_required
    def endpoint() -> str:
        return current_principal.id

    return app


# ---- the floor: the least any identity extension of authmw's shape costs (it checks nothing) ----


class _IdentityHeaders:
    """A WSGI wrapper adding the two identity headers in a start_response wrapper."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        def start_with_identity_headers(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            headers = [*headers, ("Vary", "Cookie, Authorization"), ("Cache-Control", "no-store")]
            return start_response(status, headers, exc_info)

        return self.app(environ, start_with_identity_headers)


def floor(authorization: str) -> Flask:
    """Not an authenticator: a `before_request` hook that looks the raw Authorization value up in a dict and keeps
    what it finds on `g`, a `current_*` proxy to read it, and a WSGI wrapper adding the identity headers (as
    authmw's extension is built). What it costs is the floor under authmw's repeated-token case on Flask."""
    from flask import g
    from werkzeug.local import LocalProxy

    users = {authorization: SimpleNamespace(id=USER)}
    current_user: Any = LocalProxy(lambda: g.get("user"))
    app = _app()

    @app.before_request
    def identify() -> None:
        g.user = users.get(request.environ.get("HTTP_AUTHORIZATION", ""))

    @app.get("/p")
    def endpoint() -> str:
        return str(current_user.id)

    app.wsgi_app = _IdentityHeaders(app.wsgi_app)  # type: ignore[method-assign]
    return app


# ---- peer: Flask-JWT-Extended (its "basic usage") ----


def peer_jwt_extended() -> Flask:
    from flask_jwt_extended import JWTManager, get_jwt_identity, jwt_required

    app = _app()
    app.config.update(
        JWT_SECRET_KEY=HS_SECRET,
        JWT_ENCODE_ISSUER=ISSUER,
        JWT_DECODE_ISSUER=ISSUER,
        JWT_ENCODE_AUDIENCE=AUDIENCE,
        JWT_DECODE_AUDIENCE=AUDIENCE,
    )
    JWTManager(app)

    @app.get("/p")
    @jwt_required()
    def endpoint() -> str:
        return str(get_jwt_identity())

    return app


def jwt_extended_tokens(app: Flask, count: int) -> list[str]:
    from flask_jwt_extended import create_access_token

    with app.app_context():
        return [create_access_token(identity=USER) for _ in range(count)]


# ---- peers: Flask-Login, on Flask's signed-cookie session or on Flask-Session's Redis store ----


def peer_flask_login(redis: tuple[str, str] | None = None) -> tuple[Flask, Any]:
    """Flask-Login (`login_required`, `current_user`); with `redis` = (url, prefix), Flask-Session on Redis."""
    from flask_login import LoginManager, UserMixin, current_user, login_required, login_user

    class User(UserMixin):
        def __init__(self, user_id: str) -> None:
            self.id = user_id

    app = _app()
    app.config["SECRET_KEY"] = SESSION_SECRET
    client = None
    if redis is not None:
        import redis as redis_py
        from flask_session import Session

        url, prefix = redis
        client = redis_py.Redis.from_url(url)
        app.config.update(SESSION_TYPE="redis", SESSION_REDIS=client, SESSION_KEY_PREFIX=f"{prefix}flask-session:")
        Session(app)
    manager = LoginManager(app)

    @manager.user_loader
    def load_user(user_id: str) -> User | None:
        return User(user_id) if user_id == USER else None

    @app.get("/login")
    def login() -> str:
        login_user(User(USER))
        return "ok"

    @app.get("/p")
    @login_required
    def endpoint() -> str:
        return str(current_user.id)

    return app, client
