"""The sans-IO heart of authmw: policy → credentials → principal → decision, for any shell.

`Authenticator.flow` is a generator. It yields an *effect* (a blocking callable such as a key-set
refresh) whenever it needs I/O, and returns the principal (or None) or raises an `AuthError`. The WSGI
shell runs effects inline, the ASGI shell off the event loop; the logic exists once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from authmw.config import AuthConfig
from authmw.errors import (
    AuthError,
    ErrorResponse,
    InsufficientScope,
    InvalidToken,
    MissingCredentials,
    render_error,
)
from authmw.keys import UnknownKeyId
from authmw.policy import Policy, RouteTable
from authmw.principal import Principal
from authmw.request import RequestView, bearer_token
from authmw.tokens import JWTVerifier

__all__ = ["AuthState", "Authenticator", "Effect", "Flow", "run_async", "run_sync"]

log = logging.getLogger("authmw")

Effect = Callable[[], Any]
T = TypeVar("T")
Flow = Generator[Effect, Any, T]


@dataclass(frozen=True, slots=True)
class AuthState:
    """What the middleware decided for a request: `scope["authmw"]` / `environ["authmw"]`."""

    policy: Policy
    principal: Principal | None


def run_sync(flow: Flow[T]) -> T:
    """Drive a flow in a synchronous (WSGI) world: effects run inline."""
    try:
        effect = flow.send(None)
        while True:
            effect = flow.send(effect())
    except StopIteration as stop:
        result: T = stop.value
        return result


async def run_async(flow: Flow[T]) -> T:
    """Drive a flow on an event loop: blocking effects run in a worker thread."""
    try:
        effect = flow.send(None)
        while True:
            effect = flow.send(await asyncio.to_thread(effect))
    except StopIteration as stop:
        result: T = stop.value
        return result


class Authenticator:
    """Decides, for one request, which principal (if any) is attached or which error is answered."""

    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self.table = RouteTable(config.routes, config.default)
        self.verifier = JWTVerifier(config.jwt) if config.jwt is not None else None
        self._max_token_bytes = config.jwt.max_token_bytes if config.jwt is not None else 8192
        self.sessions_enabled = False

    def policy_for(self, view: RequestView) -> Policy:
        return self.table.match(view.method, view.path)

    @staticmethod
    def is_cors_preflight(view: RequestView) -> bool:
        # Browsers never send credentials on a preflight; refusing it would break CORS for every route.
        return view.method == "OPTIONS" and bool(view.header_values("access-control-request-method"))

    def flow(self, view: RequestView, policy: Policy) -> Flow[Principal | None]:
        """Resolve and check the caller for a non-public `policy`."""
        principal: Principal | None = None
        if "jwt" in policy.accept:
            token = bearer_token(view, max_bytes=self._max_token_bytes)
            if token is not None:
                principal = yield from self._verify_jwt(token)
        self.decide(policy, principal)
        return principal

    def _verify_jwt(self, token: str) -> Flow[Principal]:
        verifier = self.verifier
        if verifier is None:
            raise InvalidToken("bearer tokens are not accepted by this service", reason="jwt_disabled")
        keyset = verifier.keyset
        if keyset.refresh_due():
            yield keyset.ensure_fresh
        try:
            return verifier.verify(token)
        except UnknownKeyId:
            # The issuer may have rotated keys: look once (rate-limited by the key set), then decide.
            if not (yield partial(keyset.ensure_fresh, force=True)):
                raise
            return verifier.verify(token)

    @staticmethod
    def decide(policy: Policy, principal: Principal | None) -> None:
        """Does `principal` satisfy `policy`? Raises the error to answer when it does not."""
        if principal is None:
            if policy.auth_required:
                raise MissingCredentials("authentication is required", reason="no_credentials")
            return
        if policy.scopes and not principal.scopes.issuperset(policy.scopes):
            raise InsufficientScope(
                "the credential lacks a required scope", required=policy.scopes, reason="insufficient_scope"
            )

    def error_response(self, error: AuthError, view: RequestView, policy: Policy | None) -> ErrorResponse:
        """The answer for `error`, after the user's `on_error` hook; logs the reason code, never a secret (P28)."""
        log.info(
            "authmw: refused %s %s: %s (%d)",
            view.method,
            view.path[:200],
            error.reason,
            error.status,
        )
        accept = policy.accept if policy is not None else frozenset(("jwt",))
        response = render_error(
            error,
            realm=self.config.realm,
            bearer="jwt" in accept,
            session="session" in accept and self.sessions_enabled,
        )
        hook = self.config.on_error
        if hook is not None:
            response = hook(error, view, response)
        return response
