"""The audit trail: every lifecycle event and failure reaches the hook, and no secret ever does (P28)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route as StarletteRoute
from starlette.testclient import TestClient

from authmw import AuthConfig, JWTSettings, Policy, Route
from authmw.audit import AuditEvent, log_event
from authmw.sessions import SessionSettings
from authmw.starlette import AuthMiddleware, login, logout, logout_everywhere, refresh_endpoint, session, token_endpoint
from authmw.stores import RedisStore
from authmw.testing import mint_token

SECRET = "audit-cookie-key-" + "a" * 40


def _app(events: list[AuditEvent], store: Any = None) -> tuple[Starlette, AuthConfig]:
    sessions = SessionSettings(secret_keys=[SECRET], cookie_secure=False)
    if store is not None:
        sessions = SessionSettings(secret_keys=[SECRET], cookie_secure=False, store=store)
    config = AuthConfig(
        jwt=JWTSettings(algorithms=["HS256"], keys="audit-jwt-key-" + "j" * 40),
        sessions=sessions,
        routes=[
            Route("/login", Policy.public()),
            Route("/account", Policy.session()),
            Route("/rotate", Policy.session()),
            Route("/logout", Policy.session()),
            Route("/everywhere", Policy.session()),
            Route("/api/token", Policy.session()),
            Route("/api/token/refresh", Policy.public()),
            Route("/api/me", Policy.jwt()),
        ],
        audit=events.append,
    )

    async def do_login(request: Request) -> JSONResponse:
        await login(request, "alice", {"items:read"})
        return JSONResponse({})

    async def ok(request: Request) -> JSONResponse:
        return JSONResponse({"id": request.user.identity})

    async def rotate(request: Request) -> JSONResponse:
        await session(request).rotate({"items:read", "admin"})
        return JSONResponse({})

    async def do_logout(request: Request) -> JSONResponse:
        await logout(request)
        return JSONResponse({})

    async def everywhere(request: Request) -> JSONResponse:
        await logout_everywhere(request)
        return JSONResponse({})

    app = Starlette(
        middleware=[Middleware(AuthMiddleware, config=config)],
        routes=[
            StarletteRoute("/login", do_login, methods=["POST"]),
            StarletteRoute("/account", ok),
            StarletteRoute("/api/me", ok),
            StarletteRoute("/rotate", rotate, methods=["POST"]),
            StarletteRoute("/logout", do_logout, methods=["POST"]),
            StarletteRoute("/everywhere", everywhere, methods=["POST"]),
            StarletteRoute("/api/token", token_endpoint, methods=["POST"]),
            StarletteRoute("/api/token/refresh", refresh_endpoint, methods=["POST"]),
        ],
    )
    return app, config


def _authenticator(app: Starlette) -> Any:
    """The Authenticator of the app's authmw middleware (built with the middleware stack, at the first request)."""
    layer: Any = app.middleware_stack
    while not isinstance(layer, AuthMiddleware):
        layer = layer.app
    return layer.authenticator


def test_p28_lifecycle_events_reach_the_hook_without_secrets(caplog: pytest.LogCaptureFixture) -> None:
    events: list[AuditEvent] = []
    app, config = _app(events)
    secrets_seen: list[str] = []
    with caplog.at_level(logging.DEBUG, logger="authmw"), TestClient(app, base_url="http://testserver") as client:
        client.post("/login")
        cookie = client.cookies.get("authmw_session")
        secrets_seen += [cookie, cookie.split(".")[0] + "." + cookie.split(".")[1]]
        client.post("/rotate")
        secrets_seen.append(client.cookies.get("authmw_session"))
        pair = client.post("/api/token").json()
        secrets_seen += [pair["access_token"], pair["refresh_token"]]
        again = client.post("/api/token/refresh", json={"refresh_token": pair["refresh_token"]})
        assert again.status_code == 200
        reused = client.post("/api/token/refresh", json={"refresh_token": pair["refresh_token"]})
        assert reused.status_code == 401
        bad = mint_token(config, "alice", key="a-foreign-key-" + "f" * 40, algorithm="HS256")
        secrets_seen.append(bad)
        assert client.get("/api/me", headers={"Authorization": f"Bearer {bad}"}).status_code == 401
        client.post("/logout")
        client.post("/login")
        client.post("/everywhere")
    kinds = [event.kind for event in events]
    for kind in ("login", "rotate", "refresh", "refresh_reuse", "auth_failure", "logout", "logout_everywhere"):
        assert kind in kinds, kinds
    failure = next(e for e in events if e.kind == "auth_failure" and e.path == "/api/me")
    assert failure.reason and failure.status == 401 and failure.path == "/api/me"
    assert all(e.user is None or (len(e.user) == 16 and e.user != "alice") for e in events)
    dumped = json.dumps([e.to_dict() for e in events]) + caplog.text
    for secret in secrets_seen:
        assert secret not in dumped


def test_default_hook_logs_to_the_audit_logger(caplog: pytest.LogCaptureFixture) -> None:
    app, _ = _app([])
    with caplog.at_level(logging.INFO, logger="authmw.audit"), TestClient(app) as client:
        client.get("/account")
        _authenticator(app).auditor.hook = log_event
        client.post("/login")
        client.get("/api/me")
    records = [r for r in caplog.records if r.name == "authmw.audit"]
    assert any(r.getMessage().startswith("authmw login") for r in records)
    assert any(getattr(r, "authmw", {}).get("reason") == "no_credentials" for r in records)


def test_p28_a_newline_in_the_request_path_cannot_forge_an_audit_line(caplog: pytest.LogCaptureFixture) -> None:
    """ASGI hands the path decoded: %0A is a newline, which the default hook wrote as is, so that one refusal
    logged a second, forged line (found by review). It is written as an escape now."""
    app, _ = _app([])
    with caplog.at_level(logging.INFO, logger="authmw.audit"), TestClient(app) as client:
        _authenticator(app).auditor.hook = log_event
        client.get("/account%0Aauthmw login user=forged%0D%5C")
    lines = [r.getMessage() for r in caplog.records if r.name == "authmw.audit"]
    assert lines and all("\n" not in line and "\r" not in line for line in lines)
    assert any("path=/account\\nauthmw login user=forged\\r\\\\" in line for line in lines), lines


def test_store_outage_is_an_event_and_a_broken_hook_is_not_a_500() -> None:
    events: list[AuditEvent] = []
    app, _ = _app(events, store=RedisStore.from_url("redis://127.0.0.1:1/0"))
    with TestClient(app, base_url="http://testserver") as client:
        client.cookies.set("authmw_session", "x")
        assert client.get("/account").status_code == 401  # a malformed cookie never reaches the store
        assert client.post("/login").status_code == 503
    assert any(e.kind == "store_unavailable" for e in events)

    def broken(event: AuditEvent) -> None:
        raise RuntimeError("the audit sink is down")

    app2, _ = _app([])
    with TestClient(app2, base_url="http://testserver") as client:
        client.get("/account")
        _authenticator(app2).auditor.hook = broken
        assert client.post("/login").status_code == 200
        assert client.get("/account").status_code == 200
        assert client.get("/api/me").status_code == 401
