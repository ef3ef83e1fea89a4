"""The Flask adapter (`authmw.flask`): the extension, view and blueprint policies, `current_principal`, the session
helpers, error handlers, fail-closed 503, `REMOTE_USER`, P31 headers and CORS preflights — all in-process through
Flask's test client.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from examples.common import ROUTES as EXAMPLE_ROUTES
from examples.common import Items
from examples.flask_app import app as flask_example
from flask import Blueprint, Flask, current_app, g, jsonify, request
from flask.views import MethodView, View
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authmw import AuthConfig, JWTSettings, Policy, Principal, Route
from authmw.flask import (
    AuthFailed,
    AuthMW,
    csrf_token,
    current_principal,
    list_sessions,
    login,
    logout,
    logout_everywhere,
    revoke_session,
    session_data,
)
from authmw.io import run_sync
from authmw.sessions import SessionSettings
from authmw.stores import MemoryStore, RedisStore
from authmw.testing import login_client, mint_token, session_cookie

JWT_KEY = "k" * 40
SECRET = "s" * 40
COOKIE = "authmw_session"
#: nothing listens on port 1: every store call fails at once (connection refused)
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


def who() -> dict[str, Any]:
    principal = current_principal
    g_principal = g.get("principal")
    return {
        "authenticated": principal.is_authenticated,
        "id": principal.id if isinstance(principal, Principal) else None,
        "source": principal.source if isinstance(principal, Principal) else None,
        "scopes": sorted(principal.scopes),
        "g": g_principal.id if g_principal is not None else None,
        "remote_user": request.environ.get("REMOTE_USER"),
    }


PATH_RULES = [
    Route("/ruled/public-view", Policy.jwt()),
    Route("/ruled/session-view", Policy.public()),
    Route("/ruled/plain", Policy.jwt(scopes={"items:read"})),
    Route("/bp/{rest:path}", Policy.public()),
]


def build(config: AuthConfig | None = None, *, mode: str = "direct") -> tuple[Flask, AuthMW]:
    """A Flask app with one view per decorator; `mode` is how the extension is attached."""
    config = config or make_config(PATH_RULES)
    app = Flask(__name__)
    if mode == "direct":
        auth = AuthMW(app, config)
    elif mode == "init_app":
        auth = AuthMW()
        auth.init_app(app, config)
    else:  # "app.config"
        app.config["AUTHMW_CONFIG"] = config
        auth = AuthMW()
        auth.init_app(app)

    @app.get("/open")
    def open_view() -> Any:
        return who()

    @app.get("/session")
    @auth.session_required
    def session_view() -> Any:
        return who()

    @app.get("/session/admin")
    @auth.session_required(scopes={"admin"})
    def session_admin() -> Any:
        return who()

    @app.get("/session/fresh")
    @auth.session_required(max_auth_age=60)
    def session_fresh() -> Any:
        return who()

    @app.post("/session/no-csrf")
    @auth.session_required(csrf=False)
    def session_no_csrf() -> Any:
        return who()

    @app.post("/session/post")
    @auth.session_required
    def session_post() -> Any:
        return who()

    @app.get("/jwt")
    @auth.jwt_required
    def jwt_view() -> Any:
        return who()

    @app.get("/jwt/write")
    @auth.jwt_required(scopes={"items:write"})
    def jwt_write() -> Any:
        return who()

    @app.get("/either")
    @auth.login_required
    def either() -> Any:
        return who()

    @app.get("/either/read")
    @auth.login_required(scopes={"items:read"})
    def either_read() -> Any:
        return who()

    @app.get("/custom")
    @auth.policy(Policy.required(accept=("jwt",), scopes={"items:read"}))
    def custom() -> Any:
        return who()

    @auth.public  # decorator order does not matter: the marked function is the registered one
    @app.get("/ruled/public-view")
    def ruled_public() -> Any:
        return who()

    @app.get("/ruled/session-view")
    @auth.session_required
    def ruled_session() -> Any:
        return who()

    @app.get("/ruled/plain")
    def ruled_plain() -> Any:
        return who()

    @app.post("/login")
    @auth.public
    def do_login() -> Any:
        body = request.get_json()
        principal = login(body["user"], body.get("scopes", ()), remember=body.get("remember", False))
        return {"id": principal.id, "current": current_principal.id}  # type: ignore[union-attr]

    @app.post("/logout")
    def do_logout() -> Any:
        return {"deleted": logout(), "authenticated": current_principal.is_authenticated}

    @app.post("/logout-everywhere")
    @auth.session_required
    def do_logout_everywhere() -> Any:
        return {"count": logout_everywhere()}

    @app.route("/data", methods=["GET", "POST"])
    @auth.session_required
    def data() -> Any:
        bag = session_data()
        if request.method == "POST":
            bag.update(request.get_json())
        return dict(bag)

    @app.get("/sessions")
    @auth.session_required
    def sessions() -> Any:
        return jsonify([{"handle": s.handle, "current": s.current, "user": s.user_id} for s in list_sessions()])

    @app.post("/sessions/revoke")
    @auth.session_required
    def revoke() -> Any:
        return {"revoked": revoke_session(request.get_json()["handle"])}

    @app.get("/csrf")
    def csrf() -> Any:
        return {"token": csrf_token()}

    return app, auth


@pytest.fixture
def config() -> AuthConfig:
    return make_config(PATH_RULES)


@pytest.fixture
def app(config: AuthConfig) -> Flask:
    return build(config)[0]


def cookie_value(response: Any) -> str | None:
    for header in response.headers.getlist("Set-Cookie"):
        name, _, rest = header.partition("=")
        if name == COOKIE:
            return rest.split(";", 1)[0]
    return None


def log_in(client: Any, user: str = "alice", scopes: tuple[str, ...] = ("items:read",), **extra: Any) -> str:
    response = client.post("/login", json={"user": user, "scopes": list(scopes), **extra})
    assert response.status_code == 200, response.get_data(as_text=True)
    value = cookie_value(response)
    assert value
    return value


# ---- the extension: three ways to attach it ----


@pytest.mark.parametrize("mode", ["direct", "init_app", "app.config"])
def test_extension_attaches_in_every_way(mode: str) -> None:
    config = make_config(PATH_RULES)
    app, auth = build(config, mode=mode)
    assert app.extensions["authmw"] is auth
    assert auth.authenticator is not None and auth.authenticator.config is config
    client = app.test_client()
    assert client.get("/jwt").status_code == 401
    ok = client.get("/jwt", headers=bearer(config))
    assert ok.status_code == 200
    assert ok.json["id"] == "alice"


# ---- decorators ----


@pytest.mark.parametrize(
    ("path", "credential", "status"),
    [
        ("/session", None, 401),
        ("/session", "session", 200),
        ("/session", "jwt", 401),  # a session route ignores bearer tokens
        ("/session/admin", "session", 403),
        ("/session/admin", "session-admin", 200),
        ("/jwt", None, 401),
        ("/jwt", "jwt", 200),
        ("/jwt", "session", 401),  # a JWT route ignores cookies
        ("/jwt/write", "jwt", 403),
        ("/jwt/write", "jwt-write", 200),
        ("/either", None, 401),
        ("/either", "session", 200),
        ("/either", "jwt", 200),
        ("/either/read", "jwt", 200),
        ("/either/read", "session-admin", 403),
        ("/custom", "jwt", 200),
        ("/custom", "jwt-write", 403),
        ("/custom", "session", 401),
        ("/open", None, 200),
        ("/open", "jwt", 200),
    ],
)
def test_view_decorators(app: Flask, config: AuthConfig, path: str, credential: str | None, status: int) -> None:
    client = app.test_client()
    headers: dict[str, str] = {}
    if credential == "session":
        log_in(client, scopes=("items:read",))
    elif credential == "session-admin":
        log_in(client, scopes=("admin",))
    elif credential == "jwt":
        headers = bearer(config, {"items:read"})
    elif credential == "jwt-write":
        headers = bearer(config, {"items:write"})
    response = client.get(path, headers=headers)
    assert response.status_code == status, response.get_data(as_text=True)
    if status == 200 and credential is not None:
        assert response.json["id"] == "alice"
        assert response.json["source"] == credential.split("-")[0]


def test_max_auth_age_asks_for_a_fresh_login(config: AuthConfig) -> None:
    app, _ = build(config)
    client = app.test_client()
    log_in(client)
    assert client.get("/session/fresh").status_code == 200
    store = config.sessions.store  # type: ignore[union-attr]
    (record,) = run_sync(store.list_user("alice"))
    record.auth_time = time.time() - 3600
    assert run_sync(store.save(record))
    response = client.get("/session/fresh")
    assert response.status_code == 401
    assert 'error="insufficient_user_authentication"' in response.headers["WWW-Authenticate"]
    assert client.get("/session").status_code == 200  # routes without max_auth_age are unaffected


def test_session_csrf_checks_and_opt_out(app: Flask) -> None:
    client = app.test_client()
    log_in(client)
    foreign = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    refused = client.post("/session/post", headers=foreign)
    assert refused.status_code == 403
    assert refused.json["error"] == "csrf_failed"
    assert client.post("/session/post").status_code == 200
    assert client.post("/session/no-csrf", headers=foreign).status_code == 200


# ---- view policies beat path rules ----


def test_view_decorator_beats_path_rules(app: Flask, config: AuthConfig) -> None:
    client = app.test_client()
    # Path rule says JWT, the view says public.
    public = client.get("/ruled/public-view", headers=bearer(config))
    assert public.status_code == 200
    assert public.json["authenticated"] is False  # public: no credential is even read
    # Path rule says public, the view says session.
    assert client.get("/ruled/session-view").status_code == 401
    log_in(client)
    assert client.get("/ruled/session-view").status_code == 200
    # No decorator: the path rule applies.
    assert client.get("/ruled/plain").status_code == 401
    assert client.get("/ruled/plain", headers=bearer(config, set())).status_code == 403
    assert client.get("/ruled/plain", headers=bearer(config)).status_code == 200


def test_unknown_path_uses_path_rules() -> None:
    cfg = make_config([Route("/nowhere", Policy.jwt())])
    app, _ = build(cfg)
    client = app.test_client()
    assert client.get("/nowhere").status_code == 401
    assert client.get("/nowhere", headers=bearer(cfg)).status_code == 404


# ---- blueprint policies ----


def build_blueprints(config: AuthConfig) -> Flask:
    app = Flask(__name__)
    auth = AuthMW(app, config)
    admin = Blueprint("admin", __name__, url_prefix="/admin")
    reports = Blueprint("reports", __name__, url_prefix="/reports")
    open_bp = Blueprint("open_bp", __name__, url_prefix="/open-bp")

    @admin.get("/plain")
    def admin_plain() -> Any:
        return who()

    @admin.get("/jwt")
    @auth.jwt_required
    def admin_jwt() -> Any:
        return who()

    @admin.get("/public")
    @auth.public
    def admin_public() -> Any:
        return who()

    @reports.get("/plain")
    def report_plain() -> Any:
        return who()

    @open_bp.get("/plain")
    def open_plain() -> Any:
        return who()

    admin.register_blueprint(reports)
    auth.blueprint_policy(admin, Policy.session(scopes={"admin"}))
    auth.blueprint_policy("open_bp", Policy.jwt())  # by name
    app.register_blueprint(admin)
    app.register_blueprint(open_bp)

    @app.post("/login")
    @auth.public
    def do_login() -> Any:
        body = request.get_json()
        login(body["user"], body.get("scopes", ()))
        return {}

    return app


def test_blueprint_policy_applies_to_undecorated_views(config: AuthConfig) -> None:
    app = build_blueprints(config)
    client = app.test_client()
    assert client.get("/admin/plain").status_code == 401
    assert client.get("/open-bp/plain").status_code == 401  # registered by name
    assert client.get("/open-bp/plain", headers=bearer(config)).status_code == 200
    log_in(client, scopes=("items:read",))
    assert client.get("/admin/plain").status_code == 403
    log_in(client, scopes=("admin",))
    response = client.get("/admin/plain")
    assert response.status_code == 200
    assert response.json["source"] == "session"


def test_blueprint_policy_covers_nested_blueprints(config: AuthConfig) -> None:
    app = build_blueprints(config)
    client = app.test_client()
    assert client.get("/admin/reports/plain").status_code == 401
    log_in(client, scopes=("admin",))
    assert client.get("/admin/reports/plain").status_code == 200


def test_view_decorator_beats_blueprint_policy(config: AuthConfig) -> None:
    app = build_blueprints(config)
    client = app.test_client()
    assert client.get("/admin/public").status_code == 200
    assert client.get("/admin/jwt").status_code == 401
    assert client.get("/admin/jwt", headers=bearer(config)).status_code == 200  # no admin session needed


def test_blueprint_policy_of_a_nested_blueprint_itself(config: AuthConfig) -> None:
    app = Flask(__name__)
    auth = AuthMW(app, config)
    parent = Blueprint("parent", __name__, url_prefix="/parent")
    child = Blueprint("child", __name__, url_prefix="/child")

    @child.get("/plain")
    def child_plain() -> Any:
        return who()

    parent.register_blueprint(child)
    auth.blueprint_policy(child, Policy.jwt())
    app.register_blueprint(parent)
    client = app.test_client()
    assert client.get("/parent/child/plain").status_code == 401


# ---- class-based views, several apps ----


def test_method_view_with_decorators_attribute(config: AuthConfig) -> None:
    app = Flask(__name__)
    auth = AuthMW(app, config)

    class Items(MethodView):
        decorators = [auth.jwt_required(scopes={"items:read"})]

        def get(self) -> Any:
            return who()

    app.add_url_rule("/items", view_func=Items.as_view("items"))
    client = app.test_client()
    assert client.get("/items").status_code == 401
    assert client.get("/items", headers=bearer(config, {"items:write"})).status_code == 403
    assert client.get("/items", headers=bearer(config)).status_code == 200


def test_method_view_with_decorated_methods(config: AuthConfig) -> None:
    app = Flask(__name__)
    auth = AuthMW(app, config)

    class Items(MethodView):
        @auth.jwt_required(scopes={"items:read"})
        def get(self) -> Any:
            return who()

        @auth.jwt_required(scopes={"items:write"})
        def post(self) -> Any:
            return who()

    app.add_url_rule("/items", view_func=Items.as_view("items"))
    client = app.test_client()
    assert client.get("/items").status_code == 401
    assert client.post("/items", headers=bearer(config)).status_code == 403
    assert client.get("/items", headers=bearer(config)).status_code == 200


def test_one_extension_object_serves_several_apps() -> None:
    auth = AuthMW()
    first_config = make_config()
    second_config = AuthConfig(
        jwt=JWTSettings(algorithms=["HS256"], keys="j" * 40),
        sessions=SessionSettings(secret_keys=[SECRET], cookie_secure=False),
    )
    apps = []
    for cfg in (first_config, second_config):
        app = Flask(__name__)
        auth.init_app(app, cfg)

        @app.get("/jwt")
        @auth.jwt_required
        def jwt_view() -> Any:
            return who()

        apps.append(app)
    assert apps[0].test_client().get("/jwt", headers=bearer(first_config)).status_code == 200
    assert apps[1].test_client().get("/jwt", headers=bearer(second_config)).status_code == 200


# ---- the caller: current_principal, g.principal, REMOTE_USER ----


def test_current_principal_is_anonymous_without_credentials(app: Flask) -> None:
    response = app.test_client().get("/open")
    assert response.status_code == 200
    assert response.json == {
        "authenticated": False,
        "id": None,
        "source": None,
        "scopes": [],
        "g": None,
        "remote_user": None,
    }


def test_current_principal_g_principal_and_remote_user(app: Flask, config: AuthConfig) -> None:
    response = app.test_client().get("/open", headers=bearer(config, {"items:read", "items:write"}))
    assert response.json == {
        "authenticated": True,
        "id": "alice",
        "source": "jwt",
        "scopes": ["items:read", "items:write"],
        "g": "alice",
        "remote_user": "alice",
    }


def test_current_principal_outside_a_request_context_raises() -> None:
    with pytest.raises(RuntimeError):
        _ = current_principal.is_authenticated


# ---- session helpers ----


def test_login_sets_cookie_and_current_principal(app: Flask) -> None:
    client = app.test_client()
    response = client.post("/login", json={"user": "alice", "scopes": ["items:read"]})
    assert response.json == {"id": "alice", "current": "alice"}
    (cookie,) = response.headers.getlist("Set-Cookie")
    assert cookie.startswith(COOKIE + "=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    assert "Max-Age" not in cookie
    who_am_i = client.get("/session").json
    assert (who_am_i["id"], who_am_i["source"], who_am_i["remote_user"]) == ("alice", "session", "alice")


def test_login_remember_sets_a_persistent_cookie(app: Flask) -> None:
    response = app.test_client().post("/login", json={"user": "alice", "remember": True})
    assert "Max-Age=" in response.headers["Set-Cookie"]


def test_login_always_issues_a_new_session_id(app: Flask) -> None:
    client = app.test_client()
    first = log_in(client)
    second = log_in(client)
    assert first != second
    client.set_cookie(COOKIE, first)
    assert client.get("/session").status_code == 401  # the old session was dropped by the new login


def test_logout_deletes_the_session_and_clears_the_cookie(app: Flask) -> None:
    client = app.test_client()
    old = log_in(client)
    response = client.post("/logout")
    assert response.json == {"deleted": True, "authenticated": False}
    cleared = response.headers["Set-Cookie"]
    assert cleared.startswith(COOKIE + "=;") and "Max-Age=0" in cleared
    assert client.get("/session").status_code == 401
    client.set_cookie(COOKIE, old)  # replaying the old cookie
    assert client.get("/session").status_code == 401


def test_logout_everywhere_ends_every_session_of_the_user(app: Flask) -> None:
    first, second, bob = app.test_client(), app.test_client(), app.test_client()
    log_in(first)
    log_in(second)
    log_in(bob, user="bob")
    response = first.post("/logout-everywhere")
    assert response.json == {"count": 2}
    assert "Max-Age=0" in response.headers["Set-Cookie"]
    assert first.get("/session").status_code == 401
    assert second.get("/session").status_code == 401
    assert bob.get("/session").status_code == 200


def test_session_data_persists_across_requests(app: Flask) -> None:
    client = app.test_client()
    log_in(client)
    assert client.get("/data").json == {}
    assert client.post("/data", json={"cart": [1, 2]}).json == {"cart": [1, 2]}
    assert client.get("/data").json == {"cart": [1, 2]}
    assert client.post("/data", json={"theme": "dark"}).json == {"cart": [1, 2], "theme": "dark"}
    other = app.test_client()
    log_in(other)
    assert other.get("/data").json == {}  # per session, not per user
    assert client.get("/data").json == {"cart": [1, 2], "theme": "dark"}


def test_list_sessions_and_revoke_session(app: Flask) -> None:
    laptop, phone = app.test_client(), app.test_client()
    log_in(laptop)
    log_in(phone)
    listed = laptop.get("/sessions").json
    assert len(listed) == 2
    assert {s["user"] for s in listed} == {"alice"}
    assert sorted(s["current"] for s in listed) == [False, True]
    other = next(s["handle"] for s in listed if not s["current"])
    assert laptop.post("/sessions/revoke", json={"handle": other}).json == {"revoked": True}
    assert phone.get("/session").status_code == 401
    assert laptop.get("/session").status_code == 200
    assert laptop.post("/sessions/revoke", json={"handle": other}).json == {"revoked": False}
    assert len(laptop.get("/sessions").json) == 1


def test_csrf_token_is_stable_per_session(app: Flask) -> None:
    client = app.test_client()
    assert client.get("/csrf").json == {"token": None}  # no session yet
    log_in(client)
    token = client.get("/csrf").json["token"]
    assert isinstance(token, str) and len(token) >= 20
    assert client.get("/csrf").json["token"] == token
    other = app.test_client()
    log_in(other)
    assert other.get("/csrf").json["token"] != token


def test_csrf_token_double_submit() -> None:
    config = make_config(PATH_RULES, csrf_require_token=True)
    app, _ = build(config)
    client = app.test_client()
    assert client.get("/csrf").json == {"token": None}  # no session yet
    log_in(client)
    token = client.get("/csrf").json["token"]
    assert isinstance(token, str) and token
    assert client.get("/csrf").json["token"] == token  # stable for the session
    refused = client.post("/session/post")
    assert refused.status_code == 403
    assert refused.json["error"] == "csrf_failed"
    assert client.post("/session/post", headers={"X-CSRF-Token": "forged"}).status_code == 403
    assert client.post("/session/post", headers={"X-CSRF-Token": token}).status_code == 200


# ---- errors ----


def test_default_error_answer_is_problem_json_with_a_challenge(app: Flask, config: AuthConfig) -> None:
    client = app.test_client()
    missing = client.get("/jwt")
    assert missing.status_code == 401
    assert missing.content_type == "application/problem+json"
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="authmw"'
    body = json.loads(missing.get_data())
    assert body["status"] == 401 and body["type"] == "urn:authmw:problem:authentication_required"
    invalid = client.get("/jwt", headers={"Authorization": "Bearer " + mint_token(config, "alice")[:-4] + "AAAA"})
    assert invalid.status_code == 401
    assert 'error="invalid_token"' in invalid.headers["WWW-Authenticate"]
    scope = client.get("/jwt/write", headers=bearer(config))
    assert scope.status_code == 403
    assert 'error="insufficient_scope"' in scope.headers["WWW-Authenticate"]
    assert 'scope="items:write"' in scope.headers["WWW-Authenticate"]
    assert scope.json["required_scopes"] == ["items:write"]
    malformed = client.get("/jwt", headers={"Authorization": "Bearer a b"})
    assert malformed.status_code == 400
    assert 'error="invalid_request"' in malformed.headers["WWW-Authenticate"]
    session_only = client.get("/session")
    assert session_only.headers.getlist("WWW-Authenticate") == ['Session realm="authmw"']
    both = client.get("/either")
    assert sorted(both.headers.getlist("WWW-Authenticate")) == ['Bearer realm="authmw"', 'Session realm="authmw"']


@pytest.mark.parametrize(
    ("code", "path", "headers"),
    [
        (401, "/jwt", {}),
        (403, "/jwt/write", "read-token"),
        (400, "/jwt", {"Authorization": "Bearer a b"}),
    ],
)
def test_app_error_handlers_by_status_override_authmw(config: AuthConfig, code: int, path: str, headers: Any) -> None:
    app, _ = build(config)

    @app.errorhandler(code)
    def handler(error: Any) -> Any:
        assert isinstance(error, AuthFailed)
        return {"mine": True, "code": error.code, "reason": error.error.reason}, code

    if headers == "read-token":
        headers = bearer(config)
    response = app.test_client().get(path, headers=headers)
    assert response.status_code == code
    assert response.json["mine"] is True and response.json["code"] == code
    assert response.json["reason"] in {"no_credentials", "insufficient_scope", "malformed_authorization"}


def test_app_error_handler_for_auth_failed_reads_the_reason(config: AuthConfig) -> None:
    app, _ = build(config)
    seen: list[str] = []

    @app.errorhandler(AuthFailed)
    def handler(error: AuthFailed) -> Any:
        seen.append(error.error.reason)
        return {"reason": error.error.reason}, 418

    client = app.test_client()
    assert client.get("/jwt").json == {"reason": "no_credentials"}
    assert client.get("/jwt/write", headers=bearer(config)).status_code == 418
    assert seen == ["no_credentials", "insufficient_scope"]


def test_auth_failed_response_of_a_handler_can_reuse_authmws_answer(config: AuthConfig) -> None:
    app, _ = build(config)

    @app.errorhandler(AuthFailed)
    def handler(error: AuthFailed) -> Any:
        response = error.get_response()
        response.headers["X-Reason"] = error.error.reason
        return response

    response = app.test_client().get("/jwt")
    assert response.status_code == 401
    assert response.headers["X-Reason"] == "no_credentials"
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="authmw"'


@pytest.mark.parametrize("value", ["garbage", "a" * 60, "x.y.z"])
def test_error_response_clears_a_bad_session_cookie(app: Flask, value: str) -> None:
    client = app.test_client()
    client.set_cookie(COOKIE, value)
    response = client.get("/session")
    assert response.status_code == 401
    cleared = response.headers["Set-Cookie"]
    assert cleared.startswith(COOKIE + "=;") and "Max-Age=0" in cleared
    assert response.headers["Cache-Control"] == "no-store"


def test_error_response_clears_a_cookie_of_a_deleted_session(app: Flask) -> None:
    client = app.test_client()
    log_in(client)
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None
    client.post("/logout")
    client.set_cookie(COOKIE, cookie.value)
    response = client.get("/session")
    assert response.status_code == 401
    assert "Max-Age=0" in response.headers["Set-Cookie"]


def test_error_handler_response_still_clears_a_bad_cookie(config: AuthConfig) -> None:
    app, _ = build(config)

    @app.errorhandler(401)
    def handler(error: Any) -> Any:
        return {"mine": True}, 401

    client = app.test_client()
    client.set_cookie(COOKIE, "garbage")
    response = client.get("/session")
    assert response.json == {"mine": True}
    assert "Max-Age=0" in response.headers["Set-Cookie"]


# ---- fail closed when the store is down ----


@pytest.fixture
def down_app() -> Iterator[tuple[Flask, str]]:
    """An app on an unreachable Redis, and a correctly signed cookie (made with a memory store, same keys)."""
    good = make_config(PATH_RULES)
    _, value = session_cookie(good, "alice", {"items:read"})
    config = make_config(PATH_RULES, store=RedisStore.from_url(DOWN_REDIS, socket_timeout=0.5))
    yield build(config)[0], value


@pytest.mark.parametrize("path", ["/session", "/either", "/open"])
def test_store_down_is_503_with_retry_after(down_app: tuple[Flask, str], path: str) -> None:
    app, value = down_app
    client = app.test_client()
    client.set_cookie(COOKIE, value)
    started = time.monotonic()
    response = client.get(path)
    assert time.monotonic() - started < 5
    assert response.status_code == 503
    assert response.headers["Retry-After"].isdigit()
    assert response.json["error"] == "temporarily_unavailable"
    assert "WWW-Authenticate" not in response.headers


def test_store_down_fails_closed_on_jwt_routes_but_not_on_public_ones(down_app: tuple[Flask, str]) -> None:
    app, value = down_app
    client = app.test_client()
    # Token revocations (jti denylist, per-user not-before) live in the same store: JWTs cannot be checked either.
    refused = client.get("/jwt", headers=bearer(make_config()))
    assert refused.status_code == 503 and "Retry-After" in refused.headers
    client.set_cookie(COOKIE, value)
    assert client.get("/ruled/public-view").status_code == 200


def test_store_down_503_can_be_overridden_by_an_error_handler(down_app: tuple[Flask, str]) -> None:
    app, value = down_app

    @app.errorhandler(503)
    def handler(error: Any) -> Any:
        return {"later": error.error.reason}, 503

    client = app.test_client()
    client.set_cookie(COOKIE, value)
    response = client.get("/session")
    assert response.json == {"later": "store_unavailable"}


def test_login_while_the_store_is_down_is_503(down_app: tuple[Flask, str]) -> None:
    app, _ = down_app
    app.config["PROPAGATE_EXCEPTIONS"] = False
    response = app.test_client().post("/login", json={"user": "alice"})
    assert response.status_code == 503
    assert "Retry-After" in response.headers


def test_session_data_that_cannot_be_saved_is_503(config: AuthConfig) -> None:
    app, auth = build(config)
    down = RedisStore.from_url(DOWN_REDIS, socket_timeout=0.5)

    @app.post("/data/store-fails")
    @auth.session_required
    def store_fails() -> Any:
        session_data()["lost"] = True
        current_app.extensions["authmw"].authenticator.sessions.store = down  # the store goes away mid-request
        return {"saved": "maybe"}

    client = app.test_client()
    log_in(client)
    response = client.post("/data/store-fails")
    assert response.status_code == 503
    assert "Retry-After" in response.headers
    assert response.json is not None and "saved" not in response.json  # our problem document, not the view's


# ---- P31 headers, CORS preflight ----


def test_authenticated_responses_are_not_cacheable(app: Flask, config: AuthConfig) -> None:
    client = app.test_client()
    response = client.get("/jwt", headers=bearer(config))
    assert response.headers["Cache-Control"] == "no-store"
    vary = {v.strip().lower() for v in response.headers["Vary"].split(",")}
    assert {"cookie", "authorization"} <= vary
    log_in(client)
    session = client.get("/session")
    assert session.headers["Cache-Control"] == "no-store"
    assert {"cookie", "authorization"} <= {v.strip().lower() for v in session.headers["Vary"].split(",")}


def test_identity_headers_keep_the_apps_vary_and_override_its_cache_control(config: AuthConfig) -> None:
    app, auth = build(config)

    @app.get("/cached")
    @auth.jwt_required
    def cached() -> Any:
        return {"ok": True}, 200, {"Cache-Control": "public, max-age=600", "Vary": "Accept-Encoding"}

    response = app.test_client().get("/cached", headers=bearer(config))
    assert response.headers.getlist("Cache-Control") == ["no-store"]
    vary = {v.strip().lower() for v in ",".join(response.headers.getlist("Vary")).split(",")}
    assert vary == {"accept-encoding", "cookie", "authorization"}


def test_anonymous_optional_response_varies_but_stays_cacheable(app: Flask) -> None:
    response = app.test_client().get("/open")
    assert "no-store" not in response.headers.get("Cache-Control", "")
    assert {"cookie", "authorization"} <= {v.strip().lower() for v in response.headers["Vary"].split(",")}


def test_public_view_response_is_left_alone(app: Flask) -> None:
    response = app.test_client().get("/ruled/public-view")
    assert "Cache-Control" not in response.headers
    assert "Set-Cookie" not in response.headers


@pytest.mark.parametrize("path", ["/jwt", "/session", "/either", "/ruled/plain"])
def test_cors_preflight_passes_unauthenticated(app: Flask, path: str) -> None:
    response = app.test_client().options(
        path, headers={"Origin": "https://other.example", "Access-Control-Request-Method": "GET"}
    )
    assert response.status_code == 200
    assert "WWW-Authenticate" not in response.headers


def test_plain_options_is_not_a_preflight(app: Flask) -> None:
    assert app.test_client().options("/jwt").status_code == 401


def test_login_client_helper_works_with_the_flask_test_client(app: Flask, config: AuthConfig) -> None:
    client = app.test_client()
    login_client(client, config, "carol", {"admin"})
    response = client.get("/session/admin")
    assert response.status_code == 200
    assert response.json["id"] == "carol"


# ---- the Flask example app (the example-app contract), in-process ----

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


def example_config() -> AuthConfig:
    return AuthConfig.from_env(EXAMPLE_ENV, routes=EXAMPLE_ROUTES, default=Policy.optional())


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> tuple[Flask, AuthConfig]:
    monkeypatch.setattr(flask_example, "items", Items())  # fresh demo items for every test
    config = example_config()
    return flask_example.create_app(config), config


def example_login(app: Flask, user: str = "alice", password: str = "wonderland") -> Any:
    client = app.test_client()
    response = client.post("/login", data={"username": user, "password": password})
    assert response.status_code == 303, response.get_data(as_text=True)
    assert response.headers["Location"] == "/account"
    return client


def test_flask_example_walks_the_design_table(example: tuple[Flask, AuthConfig]) -> None:
    app, config = example
    alice_jwt = {"Authorization": "Bearer " + mint_token(config, "alice", set(ALICE_SCOPES))}
    bob_jwt = {"Authorization": "Bearer " + mint_token(config, "bob", {"items:read"})}
    no_scope_jwt = {"Authorization": "Bearer " + mint_token(config, "alice")}
    anon = app.test_client()

    # GET / — the login form
    home = anon.get("/")
    assert home.status_code == 200 and home.content_type.startswith("text/html")
    page = home.get_data(as_text=True)
    assert re.search(r'<form[^>]*method="post"[^>]*action="/login"', page)
    assert 'name="username"' in page and 'name="password"' in page
    # GET /health
    health = anon.get("/health")
    assert (health.status_code, health.json) == (200, {"status": "ok"})
    # POST /login — bad
    for user, password in [("alice", "nope"), ("mallory", "wonderland"), ("", "")]:
        bad = anon.post("/login", data={"username": user, "password": password})
        assert bad.status_code == 401
        assert "Set-Cookie" not in bad.headers
    assert (
        anon.post("/login", data={"username": "alice", "password": "wonderland"}, headers=CROSS_SITE).status_code == 403
    )
    # POST /login — good: new session, cookie, 303 to /account
    browser = app.test_client()
    good = browser.post("/login", data={"username": "alice", "password": "wonderland"})
    assert good.status_code == 303 and good.headers["Location"] == "/account"
    cookie = good.headers["Set-Cookie"]
    assert cookie.startswith(COOKIE + "=") and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    # GET /account
    account = browser.get("/account")
    assert (account.status_code, account.json) == (200, {"id": "alice", "source": "session", "scopes": ALICE_SCOPES})
    assert account.headers["Cache-Control"] == "no-store"
    refused = anon.get("/account")
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == 'Session realm="authmw"'
    assert anon.get("/account", headers=alice_jwt).status_code == 401  # a bearer token is not a session
    assert 'id="user">alice<' in browser.get("/").get_data(as_text=True)
    # GET /api/me — session or JWT
    assert browser.get("/api/me").json == {"id": "alice", "source": "session", "scopes": ALICE_SCOPES}
    assert anon.get("/api/me", headers=bob_jwt).json == {"id": "bob", "source": "jwt", "scopes": ["items:read"]}
    assert browser.get("/api/me", headers=bob_jwt).json["id"] == "bob"  # the bearer token is the credential used
    me = anon.get("/api/me")
    assert me.status_code == 401
    assert sorted(me.headers.getlist("WWW-Authenticate")) == ['Bearer realm="authmw"', 'Session realm="authmw"']
    # GET /api/items — JWT with items:read
    listed = anon.get("/api/items", headers=bob_jwt)
    assert (listed.status_code, listed.json) == (200, [{"id": 1, "name": "tea"}, {"id": 2, "name": "biscuits"}])
    assert anon.get("/api/items").status_code == 401
    assert browser.get("/api/items").status_code == 401  # the session is not accepted here
    scope = anon.get("/api/items", headers=no_scope_jwt)
    assert scope.status_code == 403 and 'error="insufficient_scope"' in scope.headers["WWW-Authenticate"]
    # POST /api/items — JWT with items:write
    created = anon.post("/api/items", headers=alice_jwt, json={"name": "jam"})
    assert (created.status_code, created.json) == (201, {"id": 3, "name": "jam", "owner": "alice"})
    assert anon.post("/api/items", headers=bob_jwt, json={"name": "x"}).status_code == 403
    assert anon.post("/api/items", json={"name": "x"}).status_code == 401
    assert anon.post("/api/items", headers=alice_jwt, json={}).status_code == 400
    assert anon.get("/api/items", headers=bob_jwt).json[-1] == {"id": 3, "name": "jam", "owner": "alice"}
    # POST /api/token — session, CSRF-checked
    assert anon.post("/api/token").status_code == 401
    assert anon.post("/api/token", headers=alice_jwt).status_code == 401  # a session, not a bearer token
    assert browser.post("/api/token", headers=CROSS_SITE).status_code == 403
    issued = browser.post("/api/token")
    assert issued.status_code == 200 and issued.headers["Cache-Control"] == "no-store"
    pair = issued.json
    assert {"access_token", "token_type", "expires_in", "refresh_token"} <= set(pair)
    assert pair["token_type"] == "Bearer" and pair["expires_in"] == 300
    minted = {"Authorization": "Bearer " + pair["access_token"]}
    assert anon.get("/api/me", headers=minted).json == {"id": "alice", "source": "jwt", "scopes": ALICE_SCOPES}
    assert anon.post("/api/items", headers=minted, json={"name": "scones"}).status_code == 201
    # POST /api/token/refresh — a new pair; a used refresh token is refused and its family revoked
    refreshed = anon.post("/api/token/refresh", json={"refresh_token": pair["refresh_token"]})
    assert refreshed.status_code == 200
    assert refreshed.json["refresh_token"] != pair["refresh_token"]
    assert refreshed.json["access_token"] != pair["access_token"]
    reused = anon.post("/api/token/refresh", json={"refresh_token": pair["refresh_token"]})
    assert reused.status_code == 401 and 'error="invalid_token"' in reused.headers["WWW-Authenticate"]
    family = anon.post("/api/token/refresh", json={"refresh_token": refreshed.json["refresh_token"]})
    assert family.status_code == 401
    assert anon.post("/api/token/refresh", json={}).status_code == 400
    assert anon.post("/api/token/refresh", json={"refresh_token": "nonsense"}).status_code == 401
    # POST /logout — session, CSRF-checked
    assert anon.post("/logout").status_code == 401
    assert browser.post("/logout", headers=CROSS_SITE).status_code == 403
    assert browser.get("/account").status_code == 200
    old = browser.get_cookie(COOKIE)
    assert old is not None
    out = browser.post("/logout")
    assert out.status_code == 303 and out.headers["Location"] == "/"
    assert any(c.startswith(COOKIE + "=") and "Max-Age=0" in c for c in out.headers.getlist("Set-Cookie"))
    assert browser.get("/account").status_code == 401
    replay = app.test_client()
    replay.set_cookie(COOKIE, old.value)
    assert replay.get("/account").status_code == 401
    # POST /logout-everywhere — session, CSRF-checked; every session and every token of the user
    laptop, phone, bob = example_login(app), example_login(app), example_login(app, "bob", "builder")
    phone_pair = phone.post("/api/token").json
    time.sleep(0.01)  # the per-user not-before must be later than the tokens issued so far
    assert anon.post("/logout-everywhere").status_code == 401
    assert laptop.post("/logout-everywhere", headers=CROSS_SITE).status_code == 403
    everywhere = laptop.post("/logout-everywhere")
    assert everywhere.status_code == 303 and everywhere.headers["Location"] == "/"
    assert any(c.startswith(COOKIE + "=") and "Max-Age=0" in c for c in everywhere.headers.getlist("Set-Cookie"))
    assert laptop.get("/account").status_code == 401
    assert phone.get("/account").status_code == 401
    assert bob.get("/account").json["id"] == "bob"
    assert anon.get("/api/me", headers=alice_jwt).status_code == 401  # minted by the test, before the logout
    assert anon.get("/api/me", headers={"Authorization": "Bearer " + phone_pair["access_token"]}).status_code == 401
    assert anon.post("/api/token/refresh", json={"refresh_token": phone_pair["refresh_token"]}).status_code == 401
    assert anon.get("/api/me", headers=bob_jwt).status_code == 200  # other users keep their tokens


# ---- both example apps, the same requests, the same answers ----

Step = tuple[str, str, str, dict[str, Any]]
#: a step and the status the example-app contract expects of it
Expected = tuple[str, str, str, dict[str, Any], int]


def parity_steps(config: AuthConfig) -> list[Expected]:
    """(browser, method, path, httpx options, status): one sequence, replayed on each app with its own browsers."""
    now = int(time.time())
    tokens = {
        "bob": mint_token(config, "bob", {"items:read"}),
        "alice": mint_token(config, "alice", set(ALICE_SCOPES)),
        "none": mint_token(config, "alice"),
        "expired": mint_token(config, "alice", {"items:read"}, iat=now - 4000, exp=now - 3600),
    }

    def auth(name: str, **headers: str) -> dict[str, Any]:
        return {"headers": {"Authorization": f"Bearer {tokens[name]}", **headers}}

    def form(user: str, password: str, **extra: Any) -> dict[str, Any]:
        return {"data": {"username": user, "password": password}, **extra}

    garbage = {"headers": {"Cookie": f"{COOKIE}=garbage"}}
    return [
        ("anon", "GET", "/health", {}, 200),
        ("anon", "GET", "/", {}, 200),
        ("anon", "GET", "/account", {}, 401),
        ("anon", "GET", "/api/me", {}, 401),
        ("anon", "GET", "/api/items", {}, 401),
        ("anon", "POST", "/api/items", {"json": {"name": "x"}}, 401),
        ("anon", "POST", "/logout", {}, 401),
        ("anon", "POST", "/logout-everywhere", {}, 401),
        ("anon", "POST", "/api/token", {}, 401),
        ("anon", "POST", "/api/token/refresh", {"json": {"refresh_token": "x"}}, 401),
        ("anon", "POST", "/login", form("alice", "nope"), 401),
        ("anon", "POST", "/login", form("mallory", "wonderland"), 401),
        ("anon", "POST", "/login", {}, 401),
        ("anon", "POST", "/login", form("alice", "wonderland", headers={"Origin": "https://evil.example"}), 403),
        ("anon", "GET", "/ws", {}, 401),
        ("anon", "GET", "/no-such-page", {}, 404),
        ("anon", "DELETE", "/health", {}, 405),
        ("anon", "GET", "/api/items", {"headers": {"Authorization": "Bearer abc.def.ghi"}}, 401),
        ("anon", "GET", "/api/items", {"headers": {"Authorization": "Bearer"}}, 400),
        ("anon", "GET", "/api/items", {"headers": {"Authorization": "Bearer a b"}}, 400),
        ("anon", "GET", "/api/items", auth("bob"), 200),
        ("anon", "GET", "/api/items", auth("none"), 403),
        ("anon", "GET", "/api/me", auth("expired"), 401),
        ("anon", "POST", "/api/items", {**auth("bob"), "json": {"name": "x"}}, 403),
        ("anon", "POST", "/api/items", {**auth("alice"), "json": {"name": "jam"}}, 201),
        ("anon", "POST", "/api/items", {**auth("alice"), "json": {}}, 400),
        ("anon", "POST", "/api/items", {**auth("alice"), "json": {"name": "  "}}, 400),
        (
            "anon",
            "POST",
            "/api/items",
            {**auth("alice", **{"Content-Type": "application/json"}), "content": b"{no"},
            400,
        ),
        ("anon", "GET", "/api/items", auth("bob"), 200),
        ("anon", "GET", "/api/me", auth("bob"), 200),
        ("anon", "GET", "/account", auth("alice"), 401),
        ("a", "POST", "/login", form("alice", "wonderland"), 303),
        ("a", "GET", "/account", {}, 200),
        ("a", "HEAD", "/account", {}, 200),
        ("a", "GET", "/api/me", {}, 200),
        ("a", "GET", "/api/me", auth("bob"), 200),
        ("a", "GET", "/api/items", {}, 401),
        ("a", "POST", "/api/token", {"headers": {"Sec-Fetch-Site": "cross-site"}}, 403),
        ("a", "POST", "/api/token", {}, 200),
        ("anon", "GET", "/api/me", {"headers": {"Authorization": "Bearer {access:0}"}}, 200),
        (
            "anon",
            "POST",
            "/api/items",
            {"headers": {"Authorization": "Bearer {access:0}"}, "json": {"name": "pie"}},
            201,
        ),
        ("anon", "POST", "/api/token/refresh", {"json": {"refresh_token": "{refresh:0}"}}, 200),
        ("anon", "GET", "/api/me", {"headers": {"Authorization": "Bearer {access:1}"}}, 200),
        ("anon", "POST", "/api/token/refresh", {"json": {"refresh_token": "{refresh:0}"}}, 401),
        ("anon", "POST", "/api/token/refresh", {"json": {"refresh_token": "{refresh:1}"}}, 401),
        ("anon", "POST", "/api/token/refresh", {"json": {}}, 400),
        ("anon", "POST", "/api/token/refresh", {"content": b"not json"}, 400),
        ("anon", "POST", "/api/token/refresh", {"json": {"refresh_token": "nonsense"}}, 401),
        ("anon", "GET", "/.well-known/jwks.json", {}, 200),
        ("a", "POST", "/api/token", {}, 200),
        ("a", "POST", "/logout", {"headers": {"Origin": "https://evil.example"}}, 403),
        ("a", "POST", "/account", {}, 405),
        ("b", "POST", "/login", {"json": {"username": "alice", "password": "wonderland", "remember": "1"}}, 303),
        ("c", "POST", "/login", form("bob", "builder"), 303),
        ("b", "GET", "/account", {}, 200),
        ("c", "GET", "/api/me", {}, 200),
        ("a", "POST", "/logout-everywhere", {"headers": {"Sec-Fetch-Site": "cross-site"}}, 403),
        ("a", "POST", "/logout-everywhere", {}, 303),
        ("a", "GET", "/account", {}, 401),
        ("b", "GET", "/account", {}, 401),
        ("c", "GET", "/account", {}, 200),
        ("anon", "GET", "/api/me", {"headers": {"Authorization": "Bearer {access:2}"}}, 401),
        ("anon", "POST", "/api/token/refresh", {"json": {"refresh_token": "{refresh:2}"}}, 401),
        ("anon", "GET", "/api/me", auth("alice"), 401),
        ("anon", "GET", "/api/me", auth("bob"), 200),
        ("c", "POST", "/logout", {}, 303),
        ("c", "GET", "/account", {}, 401),
        ("c", "POST", "/logout", {}, 401),
        ("anon", "GET", "/account", garbage, 401),
        ("anon", "GET", "/", garbage, 200),
        ("anon", "GET", "/api/me", garbage, 401),
    ]


#: edge cases on which the two examples once answered differently (kept as regression tests)
DIVERGENT_STEPS: dict[str, Step] = {
    "json-null-body": (
        "anon",
        "POST",
        "/api/items",
        {"headers": {"Content-Type": "application/json"}, "content": b"null"},
    ),
    "json-body-as-text-plain": (
        "anon",
        "POST",
        "/api/items",
        {"headers": {"Content-Type": "text/plain"}, "content": b'{"name": "tea"}'},
    ),
    "trailing-slash": ("a", "GET", "/account/", {}),
}


def snapshot(response: httpx.Response) -> dict[str, Any]:
    """What must be identical: status, challenges, JSON body, redirect target, caching and cookie attributes."""
    content_type = response.headers.get("content-type", "")
    body = response.json() if "json" in content_type and response.content else None
    if isinstance(body, dict):  # minted tokens differ by nature: compare their presence and shape
        for name in ("access_token", "refresh_token"):
            if isinstance(body.get(name), str) and body[name]:
                body[name] = "<token>"
    vary = {v.strip().lower() for v in ",".join(response.headers.get_list("vary")).split(",") if v.strip()}
    cookies = sorted(  # name, set or cleared, and the attributes; never the (random) value
        (
            c.split("=", 1)[0],
            "cleared" if "Max-Age=0" in c else "set",
            *sorted(part for part in c.split("; ")[1:] if not part.startswith("Expires=")),
        )
        for c in response.headers.get_list("set-cookie")
    )
    return {
        "status": response.status_code,
        "www-authenticate": sorted(response.headers.get_list("www-authenticate")),
        "json": body,
        "json-or-problem": content_type.split(";")[0] if "json" in content_type else None,
        "location": response.headers.get("location"),
        "cache-control": response.headers.get("cache-control"),
        "vary-identity": sorted(vary & {"cookie", "authorization"}),
        "set-cookie": cookies,
    }


def fill_in(value: Any, pairs: list[dict[str, Any]]) -> Any:
    """Options with ``{access:N}`` / ``{refresh:N}`` replaced by the N-th token pair this app issued."""
    if isinstance(value, dict):
        return {key: fill_in(item, pairs) for key, item in value.items()}
    if isinstance(value, str):
        return re.sub(r"\{(access|refresh):(\d+)\}", lambda m: pairs[int(m[2])][m[1] + "_token"], value)
    return value


def replay(steps: list[Step], new_browser: Any) -> list[dict[str, Any]]:
    browsers: dict[str, httpx.Client] = {}
    pairs: list[dict[str, Any]] = []
    results = []
    for name, method, path, options in steps:
        browser = browsers.get(name)
        if browser is None:
            browser = browsers[name] = new_browser()
        response = browser.request(method, path, **fill_in(options, pairs))
        if response.status_code == 200 and "refresh_token" in response.text:
            pairs.append(response.json())
        results.append(snapshot(response))
    for browser in browsers.values():
        browser.close()
    return results


def both_examples(monkeypatch: pytest.MonkeyPatch, steps: list[Step]) -> tuple[list[Any], list[Any]]:
    from examples.starlette_app import app as starlette_example
    from starlette.testclient import TestClient

    answers = []
    for module in (starlette_example, flask_example):
        monkeypatch.setattr(module, "items", Items())
    starlette_app = starlette_example.create_app(example_config())
    answers.append(replay(steps, lambda: TestClient(starlette_app, follow_redirects=False)))
    flask_app = flask_example.create_app(example_config())
    transport = httpx.WSGITransport(app=flask_app)
    answers.append(replay(steps, lambda: httpx.Client(transport=transport, base_url="http://testserver")))
    return answers[0], answers[1]


def test_examples_answer_the_same_sequence_identically(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = parity_steps(example_config())
    steps: list[Step] = [step[:4] for step in expected]
    starlette_answers, flask_answers = both_examples(monkeypatch, steps)
    differences = [
        f"{step[0]} {step[1]} {step[2]}: starlette={s} flask={f}"
        for step, s, f in zip(steps, starlette_answers, flask_answers, strict=True)
        if s != f
    ]
    assert not differences, "\n".join(differences)
    # Identical, and right: each answer has the status the contract asks for.
    wrong = [
        f"{step[0]} {step[1]} {step[2]}: {answer['status']} (expected {step[4]})"
        for step, answer in zip(expected, flask_answers, strict=True)
        if answer["status"] != step[4]
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    "case",
    [
        "json-null-body",
        "json-body-as-text-plain",
        "trailing-slash",
    ],
)
def test_examples_answer_edge_cases_identically(monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    config = example_config()
    login_step: Step = ("a", "POST", "/login", {"data": {"username": "alice", "password": "wonderland"}})
    name, method, path, options = DIVERGENT_STEPS[case]
    if name == "anon":
        headers = {"Authorization": "Bearer " + mint_token(config, "alice", set(ALICE_SCOPES))}
        options = {**options, "headers": {**options.get("headers", {}), **headers}}
    steps = [login_step, (name, method, path, options)]
    starlette_answers, flask_answers = both_examples(monkeypatch, steps)
    assert starlette_answers == flask_answers


def test_the_view_policy_memo_is_bounded_by_views_not_by_requests(config: AuthConfig) -> None:
    app, auth = build(config)
    client = app.test_client()
    for i in range(300):  # unknown paths and made-up methods: no view, nothing remembered
        client.open(f"/nowhere/{i}", method=f"M{i}")
        client.open("/jwt", method=f"X{i}")  # a known path, a method it does not allow (405)
    client.get("/jwt")
    assert sum(len(memo) for memo in auth._policy_memos) <= 2


def test_a_refusal_carries_one_clearing_cookie_and_the_identity_headers(config: AuthConfig) -> None:
    app, _ = build(config)
    seen: list[int] = []

    @app.after_request
    def mine(response: Any) -> Any:  # the app's own hooks still run on every response
        seen.append(response.status_code)
        return response

    client = app.test_client()
    client.set_cookie(COOKIE, "garbage")
    response = client.get("/session")
    assert response.status_code == 401
    (cookie,) = response.headers.getlist("Set-Cookie")
    assert "Max-Age=0" in cookie
    assert response.headers.getlist("Vary") == ["Cookie, Authorization"]
    assert response.headers.getlist("Cache-Control") == ["no-store"]
    assert seen == [401]


# ---- decisions remembered for repeated bearer requests ----


def _memo_apps() -> tuple[Flask, Flask, Any]:
    """Two Flask apps on one config and one revocation store: one remembers decisions, the other decides every
    request afresh."""
    from authmw.stores import MemoryStore

    store = MemoryStore()
    config = AuthConfig(
        jwt=JWTSettings(algorithms=["HS256"], keys=JWT_KEY, revocation_store=store),
        routes=[Route("/ruled/plain", Policy.jwt(scopes={"items:read"}))],
        default=Policy.optional(),
    )
    apps = []
    for remember in (True, False):
        app = Flask(__name__)
        auth = AuthMW(app, config)
        auth.remember_decisions = remember

        @app.route("/api/jwt", methods=["GET", "POST"])
        @auth.jwt_required
        def jwt_view() -> Any:
            return who()

        @app.get("/api/admin")
        @auth.jwt_required(scopes={"admin"})
        def admin_view() -> Any:
            return who()

        @app.get("/either")
        @auth.login_required
        def either_view() -> Any:
            return who()

        @app.get("/ruled/plain")
        def ruled_view() -> Any:
            return who()

        @app.get("/open")
        def open_view() -> Any:
            return who()

        apps.append(app)
    return apps[0], apps[1], store


def _flask_answer(app: Flask, method: str, path: str, headers: dict[str, str], query: str) -> str:
    response = app.test_client().open(path, method=method, headers=headers, query_string=query)
    wanted = ("vary", "cache-control", "www-authenticate")
    names = sorted((k.lower(), v) for k, v in response.headers.items() if k.lower() in wanted)
    return f"{response.status_code} {response.get_data()[:120]!r} {names}"


_F_METHODS = st.sampled_from(["GET", "POST", "OPTIONS", "HEAD"])
_F_PATHS = st.sampled_from(["/api/jwt", "/api/admin", "/either", "/ruled/plain", "/open", "/nowhere"])
_F_AUTH = st.sampled_from(["alice", "bob", "alice-spaces", "joined", "none"])
_F_QUERIES = st.sampled_from(["", "access_token=x", "a=b"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests=st.lists(st.tuples(_F_METHODS, _F_PATHS, _F_AUTH, _F_QUERIES, st.booleans()), min_size=1, max_size=4),
    order=st.lists(st.integers(-2, 3), min_size=1, max_size=14),
)
def test_remembered_decisions_answer_exactly_as_deciding_every_request(requests: list[Any], order: list[int]) -> None:
    """Whatever the sequence of requests (methods, paths, token spellings, fields a server joined, query tokens,
    preflights, each sent again and again) and revocations between them, the app that reuses decisions answers
    each request as the one that decides every request afresh."""
    import jwt as pyjwt

    from authmw.issuer import jti_key

    remembering, deciding, store = _memo_apps()
    config = remembering.extensions["authmw.authenticator"].config
    tokens = {"alice": mint_token(config, "alice", {"items:read", "admin"}), "bob": mint_token(config, "bob")}
    for index in order:
        if index == -1:
            claims = pyjwt.decode(tokens["alice"], options={"verify_signature": False})
            run_sync(store.revoke_jti("alice", jti_key(claims.get("iss"), claims["jti"]), claims["exp"]))
            continue
        if index == -2:
            run_sync(store.revoke_tokens("bob", time.time() + 1, 3600))
            continue
        method, path, who_, query, preflight = requests[index % len(requests)]
        headers = {
            "alice": {"Authorization": f"Bearer {tokens['alice']}"},
            "bob": {"Authorization": f"Bearer {tokens['bob']}"},
            "alice-spaces": {"Authorization": f"Bearer  {tokens['alice']}"},
            "joined": {"Authorization": f"Bearer {tokens['alice']}, Bearer {tokens['bob']}"},
            "none": {},
        }[who_]
        if preflight:
            headers = {**headers, "Origin": "https://app.example", "Access-Control-Request-Method": "GET"}
        expected = _flask_answer(deciding, method, path, headers, query)
        assert _flask_answer(remembering, method, path, headers, query) == expected


def test_repeated_bearer_requests_are_decided_once_and_still_see_revocations(monkeypatch: pytest.MonkeyPatch) -> None:
    import authmw.flask as adapter

    remembering, _, store = _memo_apps()
    reused: list[bool] = []
    recall = adapter._remembered

    def counting(*args: Any) -> Any:
        found = recall(*args)
        reused.append(found is not None)
        return found

    monkeypatch.setattr(adapter, "_remembered", counting)
    config = remembering.extensions["authmw.authenticator"].config
    headers = bearer(config)
    client = remembering.test_client()
    answers = [client.get("/api/jwt", headers=headers) for _ in range(3)]
    assert [r.status_code for r in answers] == [200] * 3
    assert (
        answers[2].json is not None and answers[2].json["id"] == "alice" and answers[2].json["remote_user"] == "alice"
    )
    assert answers[2].headers["Cache-Control"] == "no-store" and "Authorization" in answers[2].headers["Vary"]
    run_sync(store.revoke_tokens("alice", time.time() + 1, 3600))
    assert client.get("/api/jwt", headers=headers).status_code == 401
    # The first verified the token in full (not remembered: it may never come back), the second came from the
    # verifier's cache and was remembered, the third reused it; the revoked one was refused afresh.
    assert reused == [True, False]


def test_a_remembered_decision_is_not_reused_when_the_request_also_carries_a_query_token() -> None:
    """Same endpoint, method, path and Authorization value as a remembered request, plus an access_token in the
    query: a second credential method (P25), refused as when deciding afresh."""
    remembering, deciding, _ = _memo_apps()
    config = remembering.extensions["authmw.authenticator"].config
    headers = bearer(config)
    for app in (remembering, deciding):
        client = app.test_client()
        assert [client.get("/api/jwt", headers=headers).status_code for _ in range(2)] == [200, 200]
        assert client.get("/api/jwt?access_token=x", headers=headers).status_code == 400
        assert client.get("/api/jwt?a=b", headers=headers).status_code == 200


def _reports_app(config: AuthConfig) -> tuple[Flask, AuthMW, Blueprint]:
    app = Flask(__name__)
    auth = AuthMW(app, config)
    reports = Blueprint("reports", __name__)

    @reports.get("/reports")
    def report_view() -> Any:
        return who()

    app.register_blueprint(reports)
    auth.blueprint_policy(reports, Policy.jwt())
    return app, auth, reports


def test_a_remembered_decision_gives_way_to_a_new_blueprint_policy() -> None:
    config = make_config()
    app, auth, reports = _reports_app(config)
    client = app.test_client()
    headers = bearer(config)
    assert [client.get("/reports", headers=headers).status_code for _ in range(2)] == [200, 200]
    auth.blueprint_policy(reports, Policy.jwt(scopes={"admin"}))
    assert client.get("/reports", headers=headers).status_code == 403


def test_policies_reach_class_views_blueprints_registered_twice_and_token_endpoints() -> None:
    """Found by review: a policy on a class-based View's dispatch_request was never read (open to anyone), a
    blueprint registered a second time under another name lost its policy, and a policy could not be given to
    `auth.token_view` (a bound method)."""
    app = Flask(__name__)
    config = make_config()
    auth = AuthMW(app, config)

    class Secret(View):
        @auth.jwt_required
        def dispatch_request(self) -> Any:
            return who()

    app.add_url_rule("/secret", view_func=Secret.as_view("secret"))
    admin = Blueprint("admin", __name__)

    @admin.get("/users")
    def users() -> Any:
        return who()

    auth.blueprint_policy(admin, Policy.jwt())
    app.register_blueprint(admin, url_prefix="/admin")
    app.register_blueprint(admin, name="admin_v2", url_prefix="/v2/admin")
    app.add_url_rule("/api/token", view_func=auth.session_required(auth.token_view), methods=["POST"])
    client = app.test_client()
    for path in ("/secret", "/admin/users", "/v2/admin/users"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers=bearer(config)).status_code == 200, path
    assert client.post("/api/token").status_code == 401
    # A policy set by the registered name beats one set on the blueprint object (found by review: the object's
    # public policy opened the view its second registration's name had made jwt-only).
    auth.blueprint_policy(admin, Policy.public())
    auth.blueprint_policy("admin_v2", Policy.jwt())
    assert client.get("/admin/users").status_code == 200
    assert client.get("/v2/admin/users").status_code == 401
    # Two blueprint objects sharing a name (one nested as "api.admin"): each keeps its own policy, and a policy
    # set by the short name "admin" belongs to the top-level one only (found by review).
    nested_app = Flask(__name__)
    nested_auth = AuthMW(nested_app, config)
    top, inner, api = Blueprint("admin", __name__), Blueprint("admin", __name__), Blueprint("api", __name__)
    for blueprint in (top, inner):

        @blueprint.get("/users")
        def listed() -> Any:
            return who()

    api.register_blueprint(inner, url_prefix="/admin")
    nested_app.register_blueprint(top, url_prefix="/admin")
    nested_app.register_blueprint(api, url_prefix="/api")
    nested_auth.blueprint_policy(top, Policy.jwt())
    nested_auth.blueprint_policy(inner, Policy.public())
    nested = nested_app.test_client()
    assert nested.get("/admin/users").status_code == 401
    assert nested.get("/api/admin/users").status_code == 200
    nested_auth.blueprint_policy(inner, Policy.jwt())
    nested_auth.blueprint_policy("admin", Policy.public())  # the top-level one
    assert nested.get("/admin/users").status_code == 200
    assert nested.get("/api/admin/users").status_code == 401


def _status_in_a_thread(app: Flask, headers: dict[str, str]) -> tuple[threading.Thread, list[int]]:
    statuses: list[int] = []
    thread = threading.Thread(
        target=lambda: statuses.append(app.test_client().get("/reports", headers=headers).status_code)
    )
    thread.start()
    return thread, statuses


def test_a_decision_made_while_the_blueprint_policy_changed_is_not_reused() -> None:
    """A threaded server: one request is deciding under the old blueprint policy (paused in its revocation lookup)
    when another thread tightens it. That request's answer stands, but its decision is not reused under the new
    policy (found by review: remembered after the change cleared the memos, it answered 200 instead of 403)."""
    paused, release = threading.Event(), threading.Event()
    armed = [False]

    class PausingStore(MemoryStore):
        def token_state(self, user_id: str, jti_key: str | None, grace: float = 0.0) -> Any:
            if armed[0]:
                armed[0] = False
                paused.set()
                release.wait(5)
            return super().token_state(user_id, jti_key, grace)

    config = make_config(store=PausingStore())
    app, auth, reports = _reports_app(config)
    headers = bearer(config)
    assert app.test_client().get("/reports", headers=headers).status_code == 200  # verified in full
    armed[0] = True
    thread, statuses = _status_in_a_thread(app, headers)  # from the verifier's cache: would be remembered
    assert paused.wait(5)
    auth.blueprint_policy(reports, Policy.jwt(scopes={"admin"}))
    release.set()
    thread.join(5)
    assert statuses == [200]  # decided under the policy of when it arrived
    assert [app.test_client().get("/reports", headers=headers).status_code for _ in range(2)] == [403, 403]


def test_a_policy_read_while_the_blueprint_policy_changed_is_not_kept() -> None:
    """The per-endpoint policy memo, the same race without remembered decisions: a policy read just before the
    change must not be kept for later requests (found by review: the old policy then applied to every token)."""
    config = make_config()
    app, auth, reports = _reports_app(config)
    auth.remember_decisions = False
    read, release = threading.Event(), threading.Event()
    endpoint_policy = auth._endpoint_policy

    def paused_after_reading(app_: Flask, req: Any) -> Any:
        found = endpoint_policy(app_, req)
        read.set()
        release.wait(5)
        return found

    auth._endpoint_policy = paused_after_reading  # type: ignore[method-assign]
    thread, statuses = _status_in_a_thread(app, bearer(config))
    assert read.wait(5)
    auth.blueprint_policy(reports, Policy.jwt(scopes={"admin"}))
    release.set()
    thread.join(5)
    auth._endpoint_policy = endpoint_policy  # type: ignore[method-assign]
    assert statuses == [200]
    assert app.test_client().get("/reports", headers=bearer(config, user="bob")).status_code == 403


def test_a_token_seen_once_is_not_remembered_a_repeated_one_is() -> None:
    remembering, _, _ = _memo_apps()
    config = remembering.extensions["authmw.authenticator"].config
    client = remembering.test_client()
    firsts = [bearer(config, user=f"user{i}") for i in range(5)]
    assert [client.get("/api/jwt", headers=h).status_code for h in firsts] == [200] * 5
    memo = remembering.extensions["authmw"]._decision_memos[-1]
    assert memo == {}
    assert client.get("/api/jwt", headers=firsts[0]).status_code == 200
    assert len(memo) == 1
