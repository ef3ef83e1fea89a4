"""The WSGI shell: one pure-WSGI middleware; attaches `environ["authmw.principal"]` and `REMOTE_USER`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from authmw.config import AuthConfig
from authmw.engine import Authenticator, AuthState, run_sync
from authmw.errors import AuthError
from authmw.request import WSGIRequestView, with_identity_headers

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
else:
    StartResponse = WSGIApplication = WSGIEnvironment = Any

__all__ = ["AuthMiddleware"]

_STATUS_TEXT = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    503: "Service Unavailable",
}


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
        if policy.is_public or auth.is_cors_preflight(view):
            environ["authmw"] = AuthState(policy, None)
            environ["authmw.principal"] = None
            return self.app(environ, start_response)
        try:
            principal = run_sync(auth.flow(view, policy))
        except AuthError as error:
            response = auth.error_response(error, view, policy)
            status = f"{response.status} {_STATUS_TEXT.get(response.status, 'Error')}"
            start_response(status, response.headers)
            return [response.body]
        environ["authmw"] = AuthState(policy, principal)
        environ["authmw.principal"] = principal
        if principal is not None:
            environ["REMOTE_USER"] = principal.id
        authenticated = principal is not None

        def start_with_identity_headers(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, with_identity_headers(headers, authenticated, ""), exc_info)

        return self.app(environ, start_with_identity_headers)
