"""The ASGI shell: one pure-ASGI middleware class (no `BaseHTTPMiddleware`, never reads the body).

It attaches `scope["authmw"]` (an `AuthState`), `scope["authmw.session"]` (an `AsyncSessionHandle` when
sessions are on), and Starlette's `scope["user"]` / `scope["auth"]` so `request.user`, `request.auth` and
`starlette.authentication.requires` work unchanged. Response headers (identity `Vary`/`Cache-Control`,
session `Set-Cookie`) are changed in a `send` wrapper. Lifespan and other scope types pass straight through.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from authmw.config import AuthConfig
from authmw.engine import Authenticator, AuthState, Exchange
from authmw.errors import AuthError, ErrorResponse, PolicyNotApplied, ServiceUnavailable, render_error
from authmw.io import Pending, run_async
from authmw.policy import RouteTable
from authmw.principal import ANONYMOUS, AuthScopes, Principal
from authmw.request import ASGIRequestView, has_query_token, with_identity_headers
from authmw.sessions import AsyncSessionHandle

__all__ = ["AuthMiddleware", "get_session"]

log = logging.getLogger("authmw")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


#: what a request's scope gets: `scope["authmw"]`, `scope["user"]`, `scope["auth"]`
_Attached = tuple[AuthState, Principal, AuthScopes]
#: a remembered decision: principal and token, route table, what was attached, the store's revocation count
_Decision = tuple[Principal, str, RouteTable, _Attached, int | None]


def get_session(scope: Scope) -> AsyncSessionHandle:
    """The session handle of this request (`await get_session(scope).login(user_id, scopes)`)."""
    handle = scope.get("authmw.session")
    if handle is None:
        raise LookupError("authmw sessions are not enabled (configure AuthConfig.sessions)")
    assert isinstance(handle, AsyncSessionHandle)
    return handle


def _encode(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]


def _denial(response: ErrorResponse) -> ErrorResponse:
    """A refused websocket handshake's denial response: HTTP 403, as close-before-accept gives (a store that cannot
    be reached stays 503 + Retry-After), and a problem body whose `status` is the one sent (RFC 9457 §3.1.2)."""
    status = 503 if response.status == 503 else 403
    body = response.body
    if status != response.status and body.startswith(b"{"):
        try:
            problem = json.loads(body)
        except ValueError:  # an on_error hook's own body: sent as it is
            problem = None
        if isinstance(problem, dict) and problem.get("status") == response.status:
            problem["status"] = status
            body = json.dumps(problem, separators=(",", ":")).encode()
    headers = [(k, str(len(body)) if k.lower() == "content-length" else v) for k, v in response.headers]
    return ErrorResponse(status, headers, body)


async def _answer(send: Send, response: ErrorResponse) -> None:
    """Send one of authmw's own answers, in place of the app's response, as the whole response."""
    await send({"type": "http.response.start", "status": response.status, "headers": _encode(response.headers)})
    await send({"type": "http.response.body", "body": response.body})


def _started(exchange: Exchange, message: Message) -> Message:
    """The app's `http.response.start` with identity headers (P31) and session cookies added."""
    exchange.response_started = True
    changed = exchange.response_headers(message.get("headers", ()), b"")
    if changed is not None:
        message["headers"] = changed
    return message


class AuthMiddleware:
    """Wrap an ASGI app: ``app = AuthMiddleware(app, AuthConfig(...))``."""

    def __init__(self, app: ASGIApp, config: AuthConfig | None = None) -> None:
        self.app = app
        self.config = config if config is not None else AuthConfig.from_env()
        self.authenticator = Authenticator(self.config)
        # Decisions for repeated bearer requests (see `_remembered`): (method, path, root path, Authorization value)
        # -> the principal and token decided, the route table they were decided with, what was attached to the
        # scope, and the store's revocation count read before deciding (see `Authenticator.still_holds`).
        self._decisions: dict[tuple[Any, Any, Any, bytes], _Decision] = {}

    #: reuse decisions for repeated bearer requests (tests compare with it off)
    remember_decisions = True

    #: set by a subclass that must look at its first request before deciding (see `_prepare`)
    _needs_prepare = False
    #: set by a subclass that can tell, once the app has routed a request, which policy the endpoint declares
    _checks_endpoints = False

    def _prepare(self, scope: Scope) -> None:
        """Called once, on the first HTTP or websocket request, when `_needs_prepare` is set."""

    def _undeclared_policy(self, scope: Scope, exchange: Exchange) -> str | None:
        """Why the endpoint the app routed to declares another policy than the one enforced (None: it does not)."""
        return None

    def _guarded(self, scope: Scope, exchange: Exchange, send: Send) -> Send:
        """`send`, refusing to let a response (or a websocket accept) out from an endpoint whose declared policy
        was not the one enforced: a route authmw could not compile ran; its answer must not reach the caller."""
        blocked: list[bool] = []

        async def checked(message: Message) -> None:
            if blocked:
                return
            kind = message["type"]
            if kind in ("http.response.start", "websocket.accept"):
                reason = self._undeclared_policy(scope, exchange)
                if reason is not None:
                    blocked.append(True)
                    log.error("authmw: %s; the response was withheld", reason)
                    if kind == "websocket.accept":
                        await send({"type": "websocket.close", "code": 1011})
                        return
                    error = PolicyNotApplied("the endpoint declares a policy that was not applied to this request")
                    await _answer(send, render_error(error, realm=self.config.realm, bearer=False))  # a 500
                    return
            await send(message)

        return checked

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        if self._needs_prepare:
            # Done only once it has worked: a failure answers every request with the error (fail closed),
            # never serves them without what preparing was for.
            self._prepare(scope)
            self._needs_prepare = False
        auth = self.authenticator
        if kind == "http" and self._decisions and self.remember_decisions:
            known = self._remembered(scope)
            if known is not None:  # a repeated bearer request whose decision still holds: attach it, call the app
                scope["authmw.authenticator"] = auth
                scope["authmw"], scope["user"], scope["auth"] = known
                await self._call_without_session(scope, receive, send, True)
                return
        table = auth.table  # the one this request is decided with (routes may be added while it awaits I/O)
        counter, verifier = auth.revocation_counter, auth.verifier  # their counts read before deciding
        revocations = counter.revocations if counter is not None else None
        verifications = verifier.verifications if verifier is not None else 0
        exchange = auth.begin(ASGIRequestView(scope))
        scope["authmw.authenticator"] = auth
        if exchange.state is not None:
            scope["authmw.session"] = AsyncSessionHandle(exchange.state)
        try:
            if not exchange.public:
                # Most requests need no I/O (a cached token, a local session): decided at once, no flow, no coroutine.
                outcome = auth.resolve(exchange.view, exchange.policy, exchange.state)
                if type(outcome) is Pending:  # finish this decision from where it stopped, once its I/O is done
                    outcome = await run_async(outcome.flow)
                exchange.principal = outcome
                if (
                    exchange.state is None
                    and kind == "http"
                    and self.remember_decisions
                    and auth.rememberable(exchange, table, verifications)
                ):
                    self._remember(scope, exchange, table, revocations)
        except AuthError as error:
            await self._refuse(error, exchange, scope, receive, send)
            return
        principal = exchange.principal
        # AuthState(policy, principal) without the Python-level __new__ a NamedTuple has: every call counts here.
        scope["authmw"] = tuple.__new__(AuthState, (exchange.policy, principal))
        scope["user"] = principal if principal is not None else ANONYMOUS
        scope["auth"] = AuthScopes.for_principal(principal)
        if self._checks_endpoints:
            send = self._guarded(scope, exchange, send)
        if exchange.state is None:
            if kind == "websocket" or exchange.public:  # nothing to add to the response
                await self.app(scope, receive, send)
            else:
                await self._call_without_session(scope, receive, send, principal is not None)
            return
        if kind == "websocket":
            await self.app(scope, receive, send)
            return

        # A 500 is held back until the app returns: an app's own error middleware (Starlette's) turns a store
        # outage raised by login()/logout() into a 500 before re-raising it, and that must become a 503.
        held: list[Message] = []
        replaced: list[bool] = []  # set when our 503 replaced the app's response: its body must not follow

        async def send_with_auth_headers(message: Message) -> None:
            if replaced:  # our 503 replaced the app's response: nothing more of the app's goes out
                return
            if held:
                held.append(message)
            elif message["type"] != "http.response.start":
                await send(message)
            elif message.get("status") == 500:
                held.append(message)
            elif exchange.unsaved():
                await self._save_then_start(exchange, message, send, replaced)
            else:  # nothing to save (most responses)
                await send(_started(exchange, message))

        try:
            await self.app(scope, receive, send_with_auth_headers)
        except ServiceUnavailable as error:
            # The app called login()/logout()… while the store was down: 503, never a 500 (fail closed).
            if exchange.response_started:
                raise
            await _answer(send, auth.error_response(error, exchange.view, None))
            return
        except BaseException:
            await self._release_held(exchange, held, send, replaced)
            raise
        if held:
            await self._release_held(exchange, held, send, replaced)

    # The session case's helpers: methods, not closures, so that a request that needs them creates none.

    async def _save_then_start(self, exchange: Exchange, message: Message, send: Send, replaced: list[bool]) -> None:
        """Save the session data the app changed, then start the response; our 503 instead if it cannot be saved."""
        try:
            await run_async(exchange.finish())
        except ServiceUnavailable as error:
            # The session data could not be saved: say so rather than pretend (fail closed), with a
            # body of our own (the app's may say the change was made).
            exchange.response_started = True
            replaced.append(True)
            await _answer(send, self.authenticator.error_response(error, exchange.view, None))
            return
        await send(_started(exchange, message))

    async def _release_held(self, exchange: Exchange, held: list[Message], send: Send, replaced: list[bool]) -> None:
        """The app returned (or raised something else) after a 500: that 500 goes out after all."""
        for message in held:
            if replaced:
                return
            if message["type"] != "http.response.start":
                await send(message)
            elif exchange.unsaved():
                await self._save_then_start(exchange, message, send, replaced)
            else:
                await send(_started(exchange, message))

    async def _call_without_session(self, scope: Scope, receive: Receive, send: Send, identified: bool) -> None:
        """The app, for an HTTP request on a non-public route without session state (a bearer request): all its
        response needs is the identity headers (P31). The lean twin of the session case above: no data to save,
        no cookie to set; a 500 is held back the same way, in case the app then raises `ServiceUnavailable`."""
        held: list[Message] = []
        started: list[bool] = []
        # What the request view is built from, as it arrived: routers rewrite the scope (a Mount its root_path).
        arrived = scope["path"], scope.get("root_path", "")

        async def send_with_identity_headers(message: Message) -> None:
            if held:
                held.append(message)
            elif message["type"] != "http.response.start":
                await send(message)
            elif message.get("status") == 500:
                held.append(message)
            else:
                started.append(True)
                message["headers"] = with_identity_headers(message.get("headers", ()), identified, b"")
                await send(message)

        try:
            await self.app(scope, receive, send_with_identity_headers)
        except ServiceUnavailable as error:
            if started:
                raise
            held.clear()  # our 503 replaces the app's 500
            view = ASGIRequestView({**scope, "path": arrived[0], "root_path": arrived[1]})
            await _answer(send, self.authenticator.error_response(error, view, None))
            return
        finally:
            for message in held:  # the app returned or raised something else: its held 500 goes out after all
                if message["type"] == "http.response.start":
                    message["headers"] = with_identity_headers(message.get("headers", ()), identified, b"")
                await send(message)

    # ---- repeated bearer requests ----
    # A client sends the same token to the same paths again and again. What `Authenticator.begin` and `resolve`
    # decided for one (method, path, Authorization value) holds for the next request with the same three, as long
    # as `Authenticator.still_holds` says so (the verified token still cached as the same principal, no key
    # refresh due, not revoked) and the request adds nothing they read: a second Authorization field, an
    # access_token in the query (refused as a second credential), a host rule, a CORS preflight, session state,
    # a step-up policy — requests with those are never remembered or never served from here. Everything else
    # they decide from (the route table, the policy's scopes, `decide`) is the same objects as then.

    def _remembered(self, scope: Scope) -> _Attached | None:
        """What was attached earlier for this request's method, path and Authorization value (`scope["authmw"]`,
        `["user"]` and `["auth"]`), if that decision still holds; None: decide afresh."""
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                if authorization is not None:
                    return None  # two fields: the full path refuses it (P25)
                authorization = value
        if authorization is None:
            return None
        key = (scope["method"], scope["path"], scope.get("root_path", ""), authorization)
        entry = self._decisions.get(key)
        if entry is None:
            return None
        principal, token, table, attached, revocations = entry
        query = scope.get("query_string")
        if query and has_query_token(query):
            return None  # refused by the full path as a second credential (P25)
        if not self.authenticator.still_holds(principal, token, table, revocations):
            self._decisions.pop(key, None)
            return None
        return attached

    def _remember(self, scope: Scope, exchange: Exchange, table: RouteTable, revocations: int | None) -> None:
        method = scope["method"]
        if method == "OPTIONS" or self._checks_endpoints:  # a preflight is decided by more than method, path and
            return  # Authorization; a checked endpoint needs the whole exchange
        values = [value for name, value in scope["headers"] if name == b"authorization"]
        if len(values) != 1 or not values[0].startswith(b"Bearer "):
            return
        token = values[0][7:].decode("latin-1")
        principal = exchange.principal
        verifier = self.authenticator.verifier
        if principal is None or verifier is None or verifier.cached(token) is not principal:
            return  # e.g. a token the verifier does not cache (no exp, cache off): nothing to confirm it with
        if len(self._decisions) >= 4096:  # tokens x paths: never let requests grow it without bound
            self._decisions.clear()
        key = (method, scope["path"], scope.get("root_path", ""), values[0])
        attached = (
            tuple.__new__(AuthState, (exchange.policy, principal)),
            principal,
            AuthScopes.for_principal(principal),
        )
        self._decisions[key] = (principal, token, table, attached, revocations)

    async def _refuse(self, error: AuthError, exchange: Exchange, scope: Scope, receive: Receive, send: Send) -> None:
        response = self.authenticator.error_response(error, exchange.view, exchange.policy)
        websocket = scope["type"] == "websocket"
        denial = websocket and "websocket.http.response" in (scope.get("extensions") or {})
        if denial:
            response = _denial(response)
        headers = _encode(exchange.error_headers(response))
        if websocket:
            # P29: refuse at the handshake, before any accept.
            await receive()  # websocket.connect
            if denial:
                start = {"type": "websocket.http.response.start", "status": response.status, "headers": headers}
                await send(start)
                await send({"type": "websocket.http.response.body", "body": response.body})
            else:
                await send({"type": "websocket.close", "code": 1008, "reason": error.reason[:100]})
            return
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})
