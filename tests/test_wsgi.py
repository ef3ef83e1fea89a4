"""The WSGI shell: `authmw.wsgi.AuthMiddleware` around a tiny WSGI app and a Flask app, via werkzeug's test client.

Covers P1 (app not called on failure, no 500), P24 (RFC 6750 answers), P25 (duplicate fields joined by the
server, header + query), P26, P31 (identity headers), the environ keys the shell attaches, and SCRIPT_NAME mounts.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import flask
import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client, TestResponse

from authmw import AuthConfig, AuthState, JWTSettings, Policy, Principal, Route
from authmw.wsgi import AuthMiddleware

SECRET = "authmw-wsgi-test-secret-" + "0123456789abcdef" * 2
OTHER_SECRET = "another-secret-entirely-" + "fedcba9876543210" * 2


def make_token(sub: str = "alice", scope: str = "items:read", *, key: str = SECRET, **claims: Any) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + 300, "jti": uuid.uuid4().hex, "scope": scope}
    payload.update(claims)
    return jwt.encode(payload, key, algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_config(**overrides: Any) -> AuthConfig:
    options: dict[str, Any] = {
        "jwt": JWTSettings(algorithms=["HS256"], keys=SECRET),
        "routes": [
            Route("/public", Policy.public()),
            Route("/api/items", Policy.jwt(scopes={"items:read"})),
            Route("/api/jwt", Policy.jwt()),
            Route("/café", Policy.jwt()),
        ],
        "default": Policy.optional(),
    }
    options.update(overrides)
    return AuthConfig(**options)


class TinyApp:
    """A plain WSGI app that reports what the middleware attached, and records every call."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        principal = environ.get("authmw.principal")
        state = environ.get("authmw")
        seen = {
            "path": environ.get("PATH_INFO"),
            "script_name": environ.get("SCRIPT_NAME"),
            "principal": principal.id if isinstance(principal, Principal) else None,
            "scopes": sorted(principal.scopes) if isinstance(principal, Principal) else [],
            "remote_user": environ.get("REMOTE_USER"),
            "state": isinstance(state, AuthState),
        }
        self.calls.append(seen)
        body = json.dumps(seen).encode()
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/json"),
                ("Cache-Control", "public, max-age=60"),
                ("Vary", "Accept-Encoding"),
                ("Content-Length", str(len(body))),
            ],
        )
        return [body]


def tiny(**config: Any) -> tuple[Client, TinyApp]:
    app = TinyApp()
    return Client(AuthMiddleware(app, make_config(**config))), app


def vary_tokens(response: TestResponse) -> list[str]:
    return [t.strip().lower() for v in response.headers.getlist("Vary") for t in v.split(",")]


def challenge_params(response: TestResponse) -> dict[str, str]:
    values = response.headers.getlist("WWW-Authenticate")
    assert len(values) == 1, values
    scheme, _, params = values[0].partition(" ")
    assert scheme == "Bearer"
    return dict(re.findall(r'(\w+)="([^"]*)"', params))


def assert_problem(response: TestResponse, status: int) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/problem+json"
    body = json.loads(response.get_data())
    assert body["status"] == status
    assert isinstance(body["detail"], str) and body["detail"]
    assert response.headers["Cache-Control"] == "no-store"
    assert {"cookie", "authorization"} <= set(vary_tokens(response))
    assert int(response.headers["Content-Length"]) == len(response.get_data())
    return body


# --- P24 ------------------------------------------------------------------------------------------------------


def test_p24_no_credentials_is_401_challenge_without_error() -> None:
    client, app = tiny()
    response = client.get("/api/jwt")
    body = assert_problem(response, 401)
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="authmw"'
    assert "error" not in body
    assert response.status == "401 Unauthorized"
    assert not app.calls


@pytest.mark.parametrize(
    "token",
    [make_token(key=OTHER_SECRET), "abc.def.ghi", make_token(exp=int(time.time()) - 3600, iat=int(time.time()) - 4000)],
    ids=["wrong-key", "garbage", "expired"],
)
def test_p24_bad_token_is_401_invalid_token(token: str) -> None:
    client, app = tiny()
    response = client.get("/api/jwt", headers=bearer(token))
    assert assert_problem(response, 401)["error"] == "invalid_token"
    assert challenge_params(response)["error"] == "invalid_token"
    assert token not in response.headers["WWW-Authenticate"]
    assert token not in response.get_data(as_text=True)
    assert not app.calls


@pytest.mark.parametrize("value", ["Bearer", "Bearer a b", "Bearer a,b", 'Bearer "x"', "Bearer =x"])
def test_p24_malformed_authorization_is_400_invalid_request(value: str) -> None:
    client, app = tiny()
    response = client.get("/api/jwt", headers={"Authorization": value})
    assert assert_problem(response, 400)["error"] == "invalid_request"
    assert challenge_params(response)["error"] == "invalid_request"
    assert response.status == "400 Bad Request"
    assert not app.calls


def test_p24_missing_scope_is_403_insufficient_scope_with_scope_attribute() -> None:
    client, app = tiny()
    response = client.get("/api/items", headers=bearer(make_token(scope="items:write")))
    body = assert_problem(response, 403)
    params = challenge_params(response)
    assert (params["error"], params["scope"]) == ("insufficient_scope", "items:read")
    assert body["required_scopes"] == ["items:read"]
    assert response.status == "403 Forbidden"
    assert not app.calls


def test_p28_error_description_is_rfc6750_safe() -> None:
    client, _ = tiny()
    response = client.get("/api/jwt", headers=bearer(make_token(key=OTHER_SECRET)))
    description = re.search(r'error_description="([^"]*)"', response.headers["WWW-Authenticate"])
    assert description is not None
    assert re.fullmatch(r"[\x20\x21\x23-\x5b\x5d-\x7e]*", description.group(1))


# --- P25 ------------------------------------------------------------------------------------------------------


def test_p25_comma_joined_duplicate_authorization_is_400() -> None:
    client, app = tiny()
    token = make_token()
    # werkzeug, like WSGI servers, joins the repeated field into one HTTP_AUTHORIZATION value.
    response = client.get("/api/jwt", headers=[("Authorization", f"Bearer {token}"), ("Authorization", "Bearer x")])
    assert_problem(response, 400)
    assert challenge_params(response)["error"] == "invalid_request"
    assert not app.calls


@pytest.mark.parametrize("path", ["/api/jwt", "/optional"])
def test_p25_joined_basic_and_bearer_is_400(path: str) -> None:
    client, app = tiny()
    headers = [("Authorization", "Basic YWxpY2U6d29uZGVybGFuZA=="), ("Authorization", f"Bearer {make_token()}")]
    response = client.get(path, headers=headers)
    assert response.status_code == 400
    assert not app.calls


def test_p25_header_and_query_token_is_400() -> None:
    client, app = tiny()
    token = make_token()
    response = client.get("/api/jwt", headers=bearer(token), query_string={"access_token": token})
    assert_problem(response, 400)
    assert not app.calls


def test_p25_query_token_alone_is_not_accepted() -> None:
    client, app = tiny()
    response = client.get("/api/jwt", query_string={"access_token": make_token()})
    assert response.status_code == 401
    assert "error=" not in response.headers["WWW-Authenticate"]
    assert not app.calls


# --- attached identity, P26 --------------------------------------------------------------------------------------


def test_principal_and_remote_user_are_attached() -> None:
    client, app = tiny()
    response = client.get("/api/items", headers=bearer(make_token(sub="bob", scope="items:read items:write")))
    assert response.status_code == 200
    assert response.json == {
        "path": "/api/items",
        "script_name": "",
        "principal": "bob",
        "scopes": ["items:read", "items:write"],
        "remote_user": "bob",
        "state": True,
    }
    assert len(app.calls) == 1


def test_anonymous_request_has_no_principal_and_no_remote_user() -> None:
    client, app = tiny()
    response = client.get("/optional")
    assert response.status_code == 200
    assert response.json is not None
    assert (response.json["principal"], response.json["remote_user"]) == (None, None)
    assert response.json["state"] is True
    assert len(app.calls) == 1


def test_p26_optional_route_refuses_invalid_bearer() -> None:
    client, app = tiny()
    assert client.get("/optional", headers=bearer(make_token(key=OTHER_SECRET))).status_code == 401
    assert client.get("/optional", headers={"Authorization": "Bearer a b"}).status_code == 400
    assert not app.calls


def test_p26_jwt_route_ignores_cookies() -> None:
    client, app = tiny()
    client.set_cookie("__Host-authmw", "forged.value")
    client.set_cookie("session", "x")
    response = client.get("/api/jwt")
    assert response.status_code == 401
    assert "error=" not in response.headers["WWW-Authenticate"]
    assert not app.calls
    assert client.get("/api/jwt", headers=bearer(make_token())).status_code == 200
    assert app.calls[0]["principal"] == "alice"


@pytest.mark.parametrize("value", ["Bearer " + make_token(key=OTHER_SECRET), "Bearer a b", "Bearer " + "x" * 9000])
def test_p26_public_route_never_reads_credentials(value: str) -> None:
    client, app = tiny()
    response = client.get("/public", headers={"Authorization": value})
    assert response.status_code == 200
    assert response.json is not None and response.json["principal"] is None
    assert len(app.calls) == 1


def test_cors_preflight_passes_through() -> None:
    client, app = tiny()
    headers = {"Origin": "https://app.example", "Access-Control-Request-Method": "GET"}
    assert client.options("/api/jwt", headers=headers).status_code == 200
    assert len(app.calls) == 1
    assert client.options("/api/jwt", headers={"Origin": "https://app.example"}).status_code == 401


# --- P31 ------------------------------------------------------------------------------------------------------


def test_p31_authenticated_response_is_no_store_and_varies() -> None:
    client, _ = tiny()
    response = client.get("/optional", headers=bearer(make_token()))
    assert response.headers.getlist("Cache-Control") == ["no-store"]
    tokens = vary_tokens(response)
    assert set(tokens) == {"accept-encoding", "cookie", "authorization"}
    assert len(response.headers.getlist("Vary")) == 1


def test_p31_anonymous_response_on_non_public_route_varies() -> None:
    client, _ = tiny()
    response = client.get("/optional")
    assert {"accept-encoding", "cookie", "authorization"} == set(vary_tokens(response))
    assert response.headers["Cache-Control"] == "public, max-age=60"


def test_p1_app_not_called_when_auth_fails() -> None:
    client, app = tiny()
    assert client.get("/api/jwt").status_code == 401
    assert client.post("/api/jwt", data=b"{}", headers=bearer("x.y.z")).status_code == 401
    assert client.get("/api/items", headers=bearer(make_token(scope=""))).status_code == 403
    assert not app.calls


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200), st.sampled_from(["/api/jwt", "/optional"]))
def test_p1_garbage_authorization_never_500(value: str, path: str) -> None:
    app = TinyApp()
    middleware = AuthMiddleware(app, make_config())
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "HTTP_AUTHORIZATION": value}
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        statuses.append(status)

    b"".join(middleware(environ, start_response))
    code = int(statuses[0].split()[0])
    assert code in (200, 400, 401)
    if code == 200:
        assert path == "/optional" and app.calls[0]["principal"] is None
    else:
        assert not app.calls


# --- mounts and paths -------------------------------------------------------------------------------------------


def test_script_name_mount_rules_match_path_info() -> None:
    inner = TinyApp()
    protected = AuthMiddleware(inner, make_config(routes=[Route("/admin", Policy.jwt())]))
    outer = TinyApp()
    client = Client(DispatcherMiddleware(outer, {"/sub": protected}))
    assert client.get("/sub/admin").status_code == 401
    assert not inner.calls
    assert client.get("/sub/administrator").status_code == 200
    response = client.get("/sub/admin", headers=bearer(make_token()))
    assert response.status_code == 200
    assert response.json is not None
    assert (response.json["script_name"], response.json["path"], response.json["principal"]) == (
        "/sub",
        "/admin",
        "alice",
    )


def test_percent_encoded_path_is_matched_decoded() -> None:
    client, app = tiny()
    assert client.get("/%61pi/jwt").status_code == 401
    assert client.get("/api//jwt/").status_code == 401
    assert not app.calls


# --- Flask ----------------------------------------------------------------------------------------------------


def flask_app() -> tuple[flask.Flask, list[str]]:
    app = flask.Flask(__name__)
    calls: list[str] = []

    @app.route("/api/items")
    @app.route("/optional")
    @app.route("/café")
    def whoami() -> Any:
        calls.append(flask.request.path)
        principal = flask.request.environ.get("authmw.principal")
        return flask.jsonify(
            id=principal.id if principal else None,
            remote_user=flask.request.remote_user,
            scopes=sorted(principal.scopes) if principal else [],
        )

    app.wsgi_app = AuthMiddleware(app.wsgi_app, make_config())  # type: ignore[method-assign]
    return app, calls


def test_flask_principal_and_headers() -> None:
    app, calls = flask_app()
    client = app.test_client()
    response = client.get("/api/items", headers=bearer(make_token(sub="carol")))
    assert response.status_code == 200
    assert response.json == {"id": "carol", "remote_user": "carol", "scopes": ["items:read"]}
    assert response.headers["Cache-Control"] == "no-store"
    assert {"cookie", "authorization"} <= {t.strip().lower() for t in response.headers["Vary"].split(",")}
    assert calls == ["/api/items"]


def test_flask_refusals() -> None:
    app, calls = flask_app()
    client = app.test_client()
    assert client.get("/api/items").status_code == 401
    assert client.get("/api/items", headers={"Authorization": "Bearer a b"}).status_code == 400
    scoped = client.get("/api/items", headers=bearer(make_token(scope="other")))
    assert scoped.status_code == 403
    assert 'scope="items:read"' in scoped.headers["WWW-Authenticate"]
    assert scoped.headers["Content-Type"] == "application/problem+json"
    assert client.get("/optional", headers=bearer(make_token(key=OTHER_SECRET))).status_code == 401
    assert not calls
    anonymous = client.get("/optional")
    assert anonymous.json == {"id": None, "remote_user": None, "scopes": []}
    assert calls == ["/optional"]


def test_non_ascii_path_rule_is_enforced_under_wsgi() -> None:
    app, calls = flask_app()
    response = app.test_client().get("/café")
    assert response.status_code == 401
    assert not calls


@pytest.mark.parametrize("method", ["delete", "Delete", "pOST"])
def test_p26_lower_case_method_meets_the_rule_written_for_the_upper_case_one(method: str) -> None:
    # werkzeug upper-cases the method before routing, so `delete` reaches the DELETE view: the rules must agree.
    client, app = tiny(routes=[Route("/things", Policy.jwt(), methods=["DELETE", "POST"])])  # default: optional
    assert client.open("/things", method=method).status_code == 401
    assert client.open("/things", method="get").status_code == 200
    assert len(app.calls) == 1


def test_cors_preflight_must_be_spelt_as_browsers_send_it() -> None:
    client, app = tiny()
    asked = {"Origin": "https://app.example", "Access-Control-Request-Method": "GET"}
    assert client.open("/api/jwt", method="options", headers=asked).status_code == 401
    assert client.options("/api/jwt", headers={"Access-Control-Request-Method": "GET"}).status_code == 401
    assert app.calls == []
