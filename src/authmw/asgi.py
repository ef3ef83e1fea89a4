"""The ASGI shell: one pure-ASGI middleware class (no `BaseHTTPMiddleware`, never reads the body).

It attaches `scope["authmw"]` (an `AuthState`), `scope["authmw.session"]` (an `AsyncSessionHandle` when
sessions are on), and Starlette's `scope["user"]` / `scope["auth"]` so `request.user`, `request.auth` and
`starlette.authentication.requires` work unchanged. Response headers (identity `Vary`/`Cache-Control`,
session `Set-Cookie`) are changed in a `send` wrapper. Lifespan and other scope types pass straight through.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from authmw.config import AuthConfig
from authmw.engine import Authenticator, AuthState
from authmw.errors import AuthError, ErrorResponse, ServiceUnavailable, render_error
from authmw.flows import run_async
from authmw.policy import Policy
from authmw.principal import ANONYMOUS, AuthScopes, Principal
from authmw.request import ASGIRequestView, with_identity_headers
from authmw.sessions import AsyncSessionHandle, SessionState

__all__ = ["AuthMiddleware", "get_session"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def get_session(scope: Scope) -> AsyncSessionHandle:
    """The session handle of this request (`await get_session(scope).login(user_id, scopes)`)."""
    handle = scope.get("authmw.session")
    if handle is None:
        raise LookupError("authmw sessions are not enabled (configure AuthConfig.sessions)")
    assert isinstance(handle, AsyncSessionHandle)
    return handle


def _encode(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]


class AuthMiddleware:
    """Wrap an ASGI app: ``app = AuthMiddleware(app, AuthConfig(...))``."""

    def __init__(self, app: ASGIApp, config: AuthConfig | None = None) -> None:
        self.app = app
        self.config = config if config is not None else AuthConfig.from_env()
        self.authenticator = Authenticator(self.config)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        view = ASGIRequestView(scope)
        auth = self.authenticator
        policy = auth.table.match(view.method, view.path)
        state: SessionState | None = None
        if auth.sessions is not None:
            state = SessionState(auth.sessions, view)
            scope["authmw.session"] = AsyncSessionHandle(state)
        principal: Principal | None = None
        public = policy.is_public or auth.is_cors_preflight(view)
        if not public:
            try:
                principal = await run_async(auth.flow(view, policy, state))
            except AuthError as error:
                await self._refuse(error, view, policy, state, scope, receive, send)
                return
        scope["authmw"] = AuthState(policy, principal)
        scope["user"] = principal if principal is not None else ANONYMOUS
        scope["auth"] = AuthScopes.for_principal(principal)
        if kind == "websocket" or (public and state is None):
            await self.app(scope, receive, send)
            return

        async def send_with_auth_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = await self._finish_headers(message, public, principal is not None, state)
            await send(message)

        await self.app(scope, receive, send_with_auth_headers)

    async def _finish_headers(
        self, message: Message, public: bool, authenticated: bool, state: SessionState | None
    ) -> Message:
        cookies: list[str] = []
        if state is not None:
            if state.data_changed():
                try:
                    await run_async(state.manager.save_data(state))
                except ServiceUnavailable as error:
                    # The session data could not be saved: say so rather than pretend (fail closed).
                    response = render_error(error, realm=self.config.realm)
                    return {"type": "http.response.start", "status": 503, "headers": _encode(response.headers)}
            cookies = state.response_cookies()
        if public and not cookies:
            return message
        headers = with_identity_headers(message.get("headers", ()), authenticated or bool(cookies), b"")
        headers.extend((b"set-cookie", cookie.encode("latin-1")) for cookie in cookies)
        message["headers"] = headers
        return message

    async def _refuse(
        self,
        error: AuthError,
        view: ASGIRequestView,
        policy: Policy,
        state: SessionState | None,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        response: ErrorResponse = self.authenticator.error_response(error, view, policy)
        headers = _encode(response.headers)
        if state is not None:
            headers.extend((b"set-cookie", c.encode("latin-1")) for c in state.response_cookies())
        if scope["type"] == "websocket":
            # P29: refuse at the handshake, before any accept.
            await receive()  # websocket.connect
            if "websocket.http.response" in (scope.get("extensions") or {}):
                start = {"type": "websocket.http.response.start", "status": response.status, "headers": headers}
                await send(start)
                await send({"type": "websocket.http.response.body", "body": response.body})
            else:
                await send({"type": "websocket.close", "code": 1008, "reason": error.reason[:100]})
            return
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})
