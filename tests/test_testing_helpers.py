"""`authmw.testing`: helpers for app authors' own tests — `mint_token`, `session_cookie`, `login_client` and
`override_principal` — checked against real Starlette and Flask apps in-process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route as StarletteRoute
from starlette.testclient import TestClient

from authmw import AuthConfig, Authenticator, InvalidToken, JWTSettings, KeySet, Policy, Principal, Route
from authmw.flask import AuthMW, current_principal
from authmw.io import run_sync
from authmw.sessions import SessionSettings
from authmw.starlette import AuthMiddleware
from authmw.testing import login_client, mint_token, override_principal, session_cookie
from authmw.tokens import JWTVerifier

JWT_KEY = "k" * 40
SECRET = "s" * 40

ROUTES = [
    Route("/public", Policy.public()),
    Route("/read", Policy.jwt(scopes={"items:read"})),
    Route("/session", Policy.session()),
    Route("/either", Policy.either()),
    Route("/admin", Policy.either(scopes={"admin"})),
]


def make_config(jwt_settings: JWTSettings | None = None, **sessions: Any) -> AuthConfig:
    options: dict[str, Any] = {"cookie_secure": False, **sessions}
    return AuthConfig(
        jwt=jwt_settings or JWTSettings(algorithms=["HS256"], keys=JWT_KEY),
        sessions=SessionSettings(secret_keys=[SECRET], **options),
        routes=ROUTES,
        default=Policy.optional(),
    )


def verify(config: AuthConfig, token: str) -> Principal:
    assert config.jwt is not None
    return JWTVerifier(config.jwt).verify(token)


async def whoami(request: Request) -> JSONResponse:
    user = request.user
    if not user.is_authenticated:
        return JSONResponse({"id": None})
    return JSONResponse({"id": user.id, "source": user.source, "scopes": sorted(user.scopes)})


def starlette_app(config: AuthConfig) -> Starlette:
    routes = [StarletteRoute(path, whoami) for path in ("/public", "/read", "/session", "/either", "/admin", "/open")]
    return Starlette(routes=routes, middleware=[Middleware(AuthMiddleware, config=config)])


def flask_app(config: AuthConfig) -> Flask:
    app = Flask(__name__)
    AuthMW(app, config)

    def view() -> Any:
        principal = current_principal
        if not isinstance(principal, Principal):
            return {"id": None}
        return {"id": principal.id, "source": principal.source, "scopes": sorted(principal.scopes)}

    for path in ("/public", "/read", "/session", "/either", "/admin", "/open"):
        app.add_url_rule(path, path, view)
    return app


@pytest.fixture
def config() -> AuthConfig:
    return make_config()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


# ---- mint_token ----


def test_mint_token_hs256_claims(config: AuthConfig) -> None:
    before = time.time()
    token = mint_token(config, "alice", {"items:write", "items:read"})
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256"
    claims = jwt.decode(token, JWT_KEY, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["scope"] == "items:read items:write"
    assert before <= claims["iat"] <= time.time()
    assert claims["exp"] - int(claims["iat"]) == 300
    assert isinstance(claims["jti"], str) and claims["jti"]
    assert "iss" not in claims and "aud" not in claims
    principal = verify(config, token)
    assert (principal.id, principal.source, principal.scopes) == ("alice", "jwt", frozenset(claims["scope"].split()))


def test_mint_token_without_scopes_and_unique_ids(config: AuthConfig) -> None:
    first, second = mint_token(config, "alice"), mint_token(config, "alice")
    claims = jwt.decode(first, JWT_KEY, algorithms=["HS256"])
    assert "scope" not in claims
    assert claims["jti"] != jwt.decode(second, JWT_KEY, algorithms=["HS256"])["jti"]
    assert verify(config, first).scopes == frozenset()


def test_mint_token_ttl(config: AuthConfig) -> None:
    claims = jwt.decode(mint_token(config, "alice", ttl=60), JWT_KEY, algorithms=["HS256"])
    assert claims["exp"] - int(claims["iat"]) == 60


def test_mint_token_fills_in_issuer_and_audience() -> None:
    settings = JWTSettings(algorithms=["HS256"], keys=JWT_KEY, issuer="https://id.example", audience="my-api")
    config = make_config(settings)
    token = mint_token(config, "alice", {"items:read"})
    claims = jwt.decode(token, JWT_KEY, algorithms=["HS256"], audience="my-api")
    assert claims["iss"] == "https://id.example" and claims["aud"] == "my-api"
    assert verify(config, token).id == "alice"


def test_mint_token_with_several_accepted_audiences() -> None:
    settings = JWTSettings(algorithms=["HS256"], keys=JWT_KEY, issuer=["https://a.example"], audience=["x", "y"])
    config = make_config(settings)
    token = mint_token(config, "alice")
    assert verify(config, token).id == "alice"


def test_mint_token_extra_claims_and_headers(config: AuthConfig) -> None:
    token = mint_token(config, "alice", {"items:read"}, tenant="acme", auth_time=1234, headers={"typ": "at+jwt"})
    assert jwt.get_unverified_header(token)["typ"] == "at+jwt"
    claims = jwt.decode(token, JWT_KEY, algorithms=["HS256"])
    assert claims["tenant"] == "acme" and claims["auth_time"] == 1234
    principal = verify(config, token)
    assert principal.claims["tenant"] == "acme"
    assert principal.auth_time == 1234


def test_mint_token_extra_claims_override_the_defaults(config: AuthConfig) -> None:
    past = int(time.time()) - 3600
    token = mint_token(config, "alice", iat=past - 60, exp=past)
    assert jwt.decode(token, options={"verify_signature": False})["exp"] == past
    with pytest.raises(InvalidToken, match="expired"):
        verify(config, token)


def test_mint_token_kid_header_with_a_kid_keyed_set() -> None:
    config = make_config(JWTSettings(algorithms=["HS256"], keys=KeySet.from_keys({"one": JWT_KEY})))
    token = mint_token(config, "alice", headers={"kid": "one"})
    assert jwt.get_unverified_header(token)["kid"] == "one"
    assert verify(config, token).id == "alice"


def test_mint_token_sets_the_kid_of_the_key_it_signs_with() -> None:
    keys = KeySet.from_keys({"old": "o" * 40, "new": "n" * 40})
    config = make_config(JWTSettings(algorithms=["HS256"], keys=keys))
    assert verify(config, mint_token(config, "alice")).id == "alice"


@pytest.mark.filterwarnings("ignore")  # PyJWT warns about the short HS512 key this bug produces
def test_mint_token_picks_an_algorithm_the_key_allows() -> None:
    config = make_config(JWTSettings(algorithms=["HS512", "HS256"], keys=JWT_KEY))
    assert verify(config, mint_token(config, "alice")).id == "alice"


def test_mint_token_explicit_algorithm(config: AuthConfig) -> None:
    settings = JWTSettings(algorithms=["HS256", "HS384"], keys="q" * 48)
    cfg = make_config(settings)
    token = mint_token(cfg, "alice", algorithm="HS384")
    assert jwt.get_unverified_header(token)["alg"] == "HS384"
    assert verify(cfg, token).id == "alice"


def test_mint_token_rs256_with_a_private_key(rsa_key: rsa.RSAPrivateKey) -> None:
    config = make_config(JWTSettings(algorithms=["RS256"], keys=public_pem(rsa_key), issuer="iss", audience="aud"))
    token = mint_token(config, "alice", {"items:read"}, key=rsa_key)
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    claims = jwt.decode(token, public_pem(rsa_key), algorithms=["RS256"], audience="aud")
    assert claims["iss"] == "iss"
    assert verify(config, token).scopes == frozenset({"items:read"})
    with TestClient(starlette_app(config)) as client:
        assert client.get("/read", headers={"Authorization": f"Bearer {token}"}).json()["id"] == "alice"


def test_mint_token_rs256_with_a_kid(rsa_key: rsa.RSAPrivateKey) -> None:
    config = make_config(JWTSettings(algorithms=["RS256"], keys=KeySet.from_keys({"rsa-1": public_pem(rsa_key)})))
    token = mint_token(config, "alice", key=rsa_key, headers={"kid": "rsa-1"})
    assert verify(config, token).id == "alice"


def test_mint_token_rs256_uses_the_configured_signing_key(rsa_key: rsa.RSAPrivateKey) -> None:
    private_pem = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    config = make_config(JWTSettings(algorithms=["RS256"], keys=public_pem(rsa_key), signing_key=private_pem))
    assert verify(config, mint_token(config, "alice")).id == "alice"


def test_mint_token_rs256_without_a_private_key_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    config = make_config(JWTSettings(algorithms=["RS256"], keys=public_pem(rsa_key)))
    with pytest.raises(LookupError, match="key="):
        mint_token(config, "alice")


def test_mint_token_without_jwt_settings() -> None:
    config = AuthConfig(sessions=SessionSettings(secret_keys=[SECRET]))
    with pytest.raises(LookupError):
        mint_token(config, "alice")


def test_minted_tokens_work_on_both_adapters(config: AuthConfig) -> None:
    headers = {"Authorization": "Bearer " + mint_token(config, "alice", {"items:read"})}
    with TestClient(starlette_app(config)) as client:
        assert client.get("/read", headers=headers).json() == {"id": "alice", "source": "jwt", "scopes": ["items:read"]}
    flask_client = flask_app(config).test_client()
    assert flask_client.get("/read", headers=headers).json == {"id": "alice", "source": "jwt", "scopes": ["items:read"]}


# ---- session_cookie and login_client ----


def test_session_cookie_names_a_real_session(config: AuthConfig) -> None:
    name, value = session_cookie(config, "alice", {"items:read"})
    assert name == "authmw_session"
    assert value and ";" not in value and "=" not in name
    (record,) = run_sync(config.sessions.store.list_user("alice"))  # type: ignore[union-attr]
    assert record.scopes == ("items:read",) and not record.remember
    with TestClient(starlette_app(config)) as client:
        response = client.get("/session", headers={"Cookie": f"{name}={value}"})
        assert response.json() == {"id": "alice", "source": "session", "scopes": ["items:read"]}


def test_session_cookie_remember_and_secure_name() -> None:
    config = make_config(cookie_secure=True)
    name, _ = session_cookie(config, "alice", remember=True)
    assert name == "__Host-authmw"
    (record,) = run_sync(config.sessions.store.list_user("alice"))  # type: ignore[union-attr]
    assert record.remember


def test_session_cookie_each_call_is_a_new_session(config: AuthConfig) -> None:
    first, second = session_cookie(config, "alice")[1], session_cookie(config, "alice")[1]
    assert first != second
    assert len(run_sync(config.sessions.store.list_user("alice"))) == 2  # type: ignore[union-attr]


def test_session_cookie_without_session_settings() -> None:
    config = AuthConfig(jwt=JWTSettings(algorithms=["HS256"], keys=JWT_KEY))
    with pytest.raises(LookupError):
        session_cookie(config, "alice")


def test_login_client_starlette_test_client(config: AuthConfig) -> None:
    with TestClient(starlette_app(config)) as client:
        assert client.get("/session").status_code == 401
        name, value = login_client(client, config, "alice", {"items:read"})
        assert client.cookies.get(name) == value
        assert client.get("/session").json() == {"id": "alice", "source": "session", "scopes": ["items:read"]}
        assert client.get("/either").json()["source"] == "session"


def test_login_client_flask_test_client(config: AuthConfig) -> None:
    client = flask_app(config).test_client()
    assert client.get("/session").status_code == 401
    name, value = login_client(client, config, "bob", {"items:read"})
    cookie = client.get_cookie(name)
    assert cookie is not None and cookie.value == value
    assert client.get("/session").json == {"id": "bob", "source": "session", "scopes": ["items:read"]}


def test_login_client_httpx_over_wsgi(config: AuthConfig) -> None:
    transport = httpx.WSGITransport(app=flask_app(config))
    with httpx.Client(transport=transport, base_url="http://testserver") as client:
        login_client(client, config, "alice")
        assert client.get("/session").json()["id"] == "alice"


def test_login_client_httpx_async_over_asgi(config: AuthConfig) -> None:
    async def scenario() -> dict[str, Any]:
        transport = httpx.ASGITransport(app=starlette_app(config))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            login_client(client, config, "alice", {"admin"})
            return (await client.get("/admin")).json()

    assert asyncio.run(scenario()) == {"id": "alice", "source": "session", "scopes": ["admin"]}


def test_login_client_remember(config: AuthConfig) -> None:
    with TestClient(starlette_app(config)) as client:
        login_client(client, config, "alice", remember=True)
        assert client.get("/session").status_code == 200
    (record,) = run_sync(config.sessions.store.list_user("alice"))  # type: ignore[union-attr]
    assert record.remember


# ---- override_principal ----

ADMIN = Principal(id="root", source="jwt", scopes=frozenset({"admin", "items:read"}))
READER = Principal(id="reader", source="session", scopes=frozenset({"items:read"}))


@pytest.fixture(params=["starlette", "flask"])
def get(request: pytest.FixtureRequest, config: AuthConfig) -> Iterator[Any]:
    """``get(path) -> (status, json)`` against either adapter."""
    if request.param == "starlette":
        with TestClient(starlette_app(config)) as client:

            def fetch(path: str, **kwargs: Any) -> tuple[int, Any]:
                response = client.get(path, **kwargs)
                return response.status_code, response.json()

            yield fetch
    else:
        flask_client = flask_app(config).test_client()

        def fetch(path: str, **kwargs: Any) -> tuple[int, Any]:
            response = flask_client.get(path, **kwargs)
            return response.status_code, response.json

        yield fetch


def test_override_principal_authenticates_without_credentials(get: Any) -> None:
    assert get("/admin")[0] == 401
    with override_principal(ADMIN) as principal:
        assert principal is ADMIN
        assert get("/admin") == (200, {"id": "root", "source": "jwt", "scopes": ["admin", "items:read"]})
        assert get("/read")[1]["id"] == "root"
        assert get("/open")[1]["id"] == "root"  # optional routes see the principal too
    assert get("/admin")[0] == 401
    assert get("/open")[1] == {"id": None}


def test_override_principal_still_enforces_route_scopes(get: Any) -> None:
    with override_principal(READER):
        assert get("/read")[0] == 200
        status, body = get("/admin")
        assert status == 403
        assert body["required_scopes"] == ["admin"]


def test_override_principal_leaves_public_routes_anonymous(get: Any) -> None:
    with override_principal(ADMIN):
        assert get("/public") == (200, {"id": None})


def test_override_principal_beats_presented_credentials(get: Any, config: AuthConfig) -> None:
    headers = {"Authorization": "Bearer " + mint_token(config, "alice", {"items:read"})}
    with override_principal(READER):
        assert get("/read", headers=headers)[1]["id"] == "reader"
    assert get("/read", headers=headers)[1]["id"] == "alice"


def test_override_principal_is_restored_after_an_exception(get: Any) -> None:
    with pytest.raises(ZeroDivisionError), override_principal(ADMIN):
        assert get("/admin")[0] == 200
        _ = 1 / 0
    assert Authenticator.principal_override is None
    assert get("/admin")[0] == 401


def test_override_principal_nests(get: Any) -> None:
    with override_principal(ADMIN):
        with override_principal(READER):
            assert get("/either")[1]["id"] == "reader"
        assert get("/either")[1]["id"] == "root"
    assert Authenticator.principal_override is None
    assert get("/either")[0] == 401
