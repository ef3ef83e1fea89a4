"""The WSGI shell: one pure-WSGI middleware.

It attaches `environ["authmw"]` (an `AuthState`), `environ["authmw.principal"]`, `REMOTE_USER`, and
`environ["authmw.session"]` (a `SessionHandle` when sessions are on); response headers are changed in a
`start_response` wrapper.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from authmw.config import AuthConfig
from authmw.engine import Authenticator, AuthState
from authmw.errors import AuthError, ServiceUnavailable, render_error
from authmw.flows import run_sync
from authmw.principal import Principal
from authmw.request import WSGIRequestView, with_identity_headers
from authmw.sessions import SessionHandle, SessionState

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


def _status(code: int) -> str:
    return f"{code} {_STATUS_TEXT.get(code, 'Error')}"


class AuthMiddleware:
    """Wrap a WSGI app: ``app.wsgi_app = AuthMiddleware(app.wsgi_app, AuthConfig(...))``."""

    def __init__(self, app: WSGIApplication, config: AuthConfig | None = None) -> None:
        self.app = app
        self.config = config if config is not None else AuthConfig.from_env()
        self.authenticator = Authenticator(self.config)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        view = WSGIRequestView(environ)
        auth = self.authenticator
        policy = auth.table.match(view.method, view.path)
        state: SessionState | None = None
        if auth.sessions is not None:
            state = SessionState(auth.sessions, view)
            environ["authmw.session"] = SessionHandle(state)
        principal: Principal | None = None
        public = policy.is_public or auth.is_cors_preflight(view)
        if not public:
            try:
                principal = run_sync(auth.flow(view, policy, state))
            except AuthError as error:
                response = auth.error_response(error, view, policy)
                headers = list(response.headers)
                if state is not None:
                    headers.extend(("Set-Cookie", cookie) for cookie in state.response_cookies())
                start_response(_status(response.status), headers)
                return [response.body]
        environ["authmw"] = AuthState(policy, principal)
        environ["authmw.principal"] = principal
        if principal is not None:
            environ["REMOTE_USER"] = principal.id
        if public and state is None:
            return self.app(environ, start_response)
        authenticated = principal is not None

        def start_with_auth_headers(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            cookies: list[str] = []
            if state is not None:
                if state.data_changed():
                    try:
                        run_sync(state.manager.save_data(state))
                    except ServiceUnavailable as error:
                        failed = render_error(error, realm=self.config.realm)
                        return start_response(_status(503), failed.headers, exc_info)
                cookies = state.response_cookies()
            if public and not cookies:
                return start_response(status, headers, exc_info)
            out = with_identity_headers(headers, authenticated or bool(cookies), "")
            out.extend(("Set-Cookie", cookie) for cookie in cookies)
            return start_response(status, out, exc_info)

        return self.app(environ, start_with_auth_headers)
