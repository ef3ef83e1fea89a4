"""The WSGI shell: one pure-WSGI middleware.

It attaches `environ["authmw"]` (an `AuthState`), `environ["authmw.principal"]`, `REMOTE_USER`, and
`environ["authmw.session"]` (a `SessionHandle` when sessions are on); response headers are changed in a
`start_response` wrapper.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from authmw.config import AuthConfig
from authmw.engine import Authenticator, Exchange
from authmw.errors import AuthError, ErrorResponse, ServiceUnavailable
from authmw.io import run_sync
from authmw.request import WSGIRequestView
from authmw.sessions import SessionHandle

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
else:
    StartResponse = WSGIApplication = WSGIEnvironment = Any

__all__ = ["AuthMiddleware", "get_session"]

_STATUS_TEXT = {303: "See Other", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 503: "Service Unavailable"}


def get_session(environ: WSGIEnvironment) -> SessionHandle:
    """The session handle of this request (`get_session(environ).login(user_id, scopes)`)."""
    handle = environ.get("authmw.session")
    if handle is None:
        raise LookupError("authmw sessions are not enabled (configure AuthConfig.sessions)")
    assert isinstance(handle, SessionHandle)
    return handle


def status_line(code: int) -> str:
    return f"{code} {_STATUS_TEXT.get(code, 'Error')}"


class AuthMiddleware:
    """Wrap a WSGI app: ``app.wsgi_app = AuthMiddleware(app.wsgi_app, AuthConfig(...))``."""

    def __init__(self, app: WSGIApplication, config: AuthConfig | None = None) -> None:
        self.app = app
        self.config = config if config is not None else AuthConfig.from_env()
        self.authenticator = Authenticator(self.config)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        auth = self.authenticator
        exchange = auth.begin(WSGIRequestView(environ))
        if exchange.state is not None:
            environ["authmw.session"] = SessionHandle(exchange.state)
        try:
            auth.authenticate(exchange)
        except AuthError as error:
            response = auth.error_response(error, exchange.view, exchange.policy)
            start_response(status_line(response.status), exchange.error_headers(response))
            return [response.body]
        exchange.attach_wsgi(environ)
        if exchange.passthrough:
            return self.app(environ, start_response)

        try:
            return serve(self.app, environ, start_response, auth, lambda: exchange)
        except ServiceUnavailable as error:
            # The app called login()/logout()… while the store was down: 503, never a 500 (fail closed).
            refused = auth.error_response(error, exchange.view, None)
            start_response(status_line(503), refused.headers, sys.exc_info())
            return [refused.body]


def serve(
    app: WSGIApplication,
    environ: WSGIEnvironment,
    start_response: StartResponse,
    auth: Authenticator,
    exchange_of: Callable[[], Exchange | None],
) -> Iterable[bytes]:
    """Run `app`; when it starts its response, save the session's data bag and add the identity headers and
    cookies of the exchange `exchange_of()` names then (None: leave the response alone).

    Session data that cannot be saved is answered with a 503 of our own, never the app's body under it.
    """
    failed: list[ErrorResponse] = []
    started: list[bool] = []

    def start_with_auth_headers(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started.append(True)
        exchange = exchange_of()
        if exchange is None:
            return start_response(status, headers, exc_info)
        if exchange.unsaved():
            try:
                run_sync(exchange.finish())
            except ServiceUnavailable as error:
                failed.append(auth.error_response(error, exchange.view, None))
                start_response(status_line(503), failed[0].headers, exc_info)
                return _discard
        changed = exchange.response_headers(headers, "")
        return start_response(status, headers if changed is None else changed, exc_info)

    def outage(error: ServiceUnavailable) -> ErrorResponse:
        """Our 503 for a store outage the app met before any of its body went out (PEP 3333: the headers are
        sent with the first chunk, so a start_response of the app's own can still be replaced, with exc_info)."""
        exchange = exchange_of()
        refused = auth.error_response(error, exchange.view if exchange is not None else WSGIRequestView(environ), None)
        start_response(status_line(503), refused.headers, sys.exc_info() if started else None)
        return refused

    result = app(environ, start_with_auth_headers)
    if failed:
        _close(result)
        return [failed[0].body]
    if not started:  # start_response may come with the first chunk (PEP 3333)
        return _LateStart(result, failed, outage)
    return result


def _close(result: Iterable[bytes]) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()


class _LateStart:
    """The response of an app that had not started it when it returned (PEP 3333 lets start_response come with
    the first chunk): the app's chunks, unless that late start turned into our 503 (its session data could not be
    saved), or the app met a store outage (`ServiceUnavailable`) before any of its body: then only our 503's body.
    `close()` reaches the app's iterable whether it was iterated or not (a server closes early when the client
    has gone)."""

    def __init__(
        self,
        result: Iterable[bytes],
        failed: list[ErrorResponse],
        outage: Callable[[ServiceUnavailable], ErrorResponse],
    ) -> None:
        self._result = result
        self._chunks = iter(result)
        self._failed = failed
        self._outage = outage
        self._done = False
        self._body_sent = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._done:
            raise StopIteration
        try:
            chunk = next(self._chunks)
            # Servers send the headers with the first chunk, even an empty one: hold empty ones back until there
            # is body, so that an outage met before it can still be answered with our 503.
            while not chunk and not self._body_sent and not self._failed:
                chunk = next(self._chunks)
        except StopIteration:
            self._done = True
            raise
        except ServiceUnavailable as error:
            if self._body_sent:  # the headers and some of the body are out: too late for a 503 of ours
                raise
            self._failed.append(self._outage(error))
            chunk = b""
        if self._failed:
            self._done = True
            return self._failed[0].body
        if chunk:
            self._body_sent = True
        return chunk

    def close(self) -> None:
        _close(self._result)


def _discard(data: bytes) -> None:
    """The `write` callable handed to an app whose response was replaced by a 503."""
