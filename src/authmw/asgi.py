"""The ASGI shell: one pure-ASGI middleware class (no `BaseHTTPMiddleware`, never reads the body).

It attaches `scope["authmw"]` (an `AuthState`), and Starlette's `scope["user"]` / `scope["auth"]` so
`request.user`, `request.auth` and `starlette.authentication.requires` work unchanged. Lifespan and
other scope types pass straight through.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from authmw.config import AuthConfig
from authmw.engine import Authenticator, AuthState, run_async
from authmw.errors import AuthError
from authmw.policy import Policy
from authmw.principal import ANONYMOUS, AuthScopes, Principal
from authmw.request import ASGIRequestView, with_identity_headers

__all__ = ["AuthMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


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
        if policy.is_public or auth.is_cors_preflight(view):
            self._attach(scope, policy, None)
            await self.app(scope, receive, send)
            return
        try:
            principal = await run_async(auth.flow(view, policy))
        except AuthError as error:
            await self._refuse(error, view, policy, scope, receive, send)
            return
        self._attach(scope, policy, principal)
        if kind == "websocket":
            await self.app(scope, receive, send)
            return
        authenticated = principal is not None

        async def send_with_identity_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = with_identity_headers(message.get("headers", ()), authenticated, b"")
            await send(message)

        await self.app(scope, receive, send_with_identity_headers)

    @staticmethod
    def _attach(scope: Scope, policy: Policy, principal: Principal | None) -> None:
        scope["authmw"] = AuthState(policy, principal)
        scope["user"] = principal if principal is not None else ANONYMOUS
        scope["auth"] = AuthScopes.for_principal(principal)

    async def _refuse(
        self,
        error: AuthError,
        view: ASGIRequestView,
        policy: Policy,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        response = self.authenticator.error_response(error, view, policy)
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        if scope["type"] == "websocket":
            # P29: refuse at the handshake, before any accept.
            await receive()  # websocket.connect
            if "websocket.http.response" in (scope.get("extensions") or {}):
                await send({"type": "websocket.http.response.start", "status": response.status, "headers": headers})
                await send({"type": "websocket.http.response.body", "body": response.body})
            else:
                await send({"type": "websocket.close", "code": 1008, "reason": error.reason[:100]})
            return
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})
