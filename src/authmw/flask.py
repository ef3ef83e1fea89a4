"""Flask adapter with the Flask-Login feel.

    from authmw.flask import AuthMW, current_principal, login, logout

    auth = AuthMW(app)                       # or auth = AuthMW(); auth.init_app(app, config)

    @app.get("/account")
    @auth.session_required
    def account():
        return {"id": current_principal.id}

    @app.post("/api/items")
    @auth.jwt_required(scopes={"items:write"})
    def create_item(): ...

Per request, the policy is the view's decorator, else its blueprint's default (`auth.blueprint_policy`),
else the path rules of the `AuthConfig`. Failures are raised as `AuthFailed` (an HTTPException carrying
the authmw response) so the app's own error handlers (`@app.errorhandler(401)`, or `AuthFailed`) can
override them.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, overload

from flask import Blueprint, Flask, current_app, g, has_app_context, has_request_context, request
from flask import Response as FlaskResponse
from werkzeug.exceptions import BadRequest, Forbidden, HTTPException, Unauthorized
from werkzeug.exceptions import ServiceUnavailable as WerkzeugServiceUnavailable
from werkzeug.local import LocalProxy

from authmw.config import AuthConfig
from authmw.engine import Authenticator, AuthState, Exchange
from authmw.errors import AuthError, ErrorResponse, ServiceUnavailable
from authmw.io import Flow, run_sync
from authmw.issuer import MAX_REFRESH_BODY, NOT_CONFIGURED, SESSIONS_ELSEWHERE, TokenService
from authmw.policy import Policy
from authmw.principal import ANONYMOUS, Anonymous, Principal
from authmw.request import WSGIRequestView, has_query_token
from authmw.sessions import SessionHandle, SessionInfo
from authmw.wsgi import serve

__all__ = [
    "AuthFailed",
    "AuthMW",
    "client_address",
    "csrf_token",
    "current_principal",
    "list_sessions",
    "login",
    "logout",
    "logout_everywhere",
    "revoke_access_token",
    "revoke_all_tokens",
    "revoke_session",
    "session_data",
]

POLICY_ATTRIBUTE = "__authmw_policy__"
F = TypeVar("F", bound=Callable[..., Any])


class AuthFailed(HTTPException):
    """Authentication failed; `error` says why, `get_response()` is authmw's RFC 6750/9457 answer."""

    def __init__(self, error: AuthError, response: ErrorResponse) -> None:
        super().__init__(description=error.description)
        self.code = response.status
        self.error = error
        self.auth_response = response

    def get_response(self, environ: Any = None, scope: Any = None) -> FlaskResponse:
        answer = self.auth_response
        _answered_by_authmw()  # complete already: the response finisher leaves it alone
        return FlaskResponse(answer.body, status=answer.status, headers=answer.headers)


class AuthBadRequest(AuthFailed, BadRequest):
    pass


class AuthUnauthorized(AuthFailed, Unauthorized):
    pass


class AuthForbidden(AuthFailed, Forbidden):
    pass


class AuthServiceUnavailable(AuthFailed, WerkzeugServiceUnavailable):
    pass


# One class per status, each also the werkzeug exception of that code, so `@app.errorhandler(401)` catches it.
_FAILURES: dict[int, type[AuthFailed]] = {
    400: AuthBadRequest,
    401: AuthUnauthorized,
    403: AuthForbidden,
    503: AuthServiceUnavailable,
}


def _answered_by_authmw() -> None:
    """This request's response is one of authmw's own answers (a refusal, a 503), complete as it is."""
    if has_request_context():
        request.environ["authmw.answered"] = True


def _failure(error: AuthError, response: ErrorResponse) -> AuthFailed:
    return _FAILURES.get(response.status, AuthFailed)(error, response)


def _current_principal() -> Principal | Anonymous:
    principal = g.get("principal")
    return principal if principal is not None else ANONYMOUS


#: the caller of the current request: a `Principal`, or an anonymous user (``is_authenticated`` False)
current_principal: Principal | Anonymous = LocalProxy(_current_principal)  # type: ignore[assignment]


def _handle() -> SessionHandle:
    handle = request.environ.get("authmw.session")
    if handle is None:
        raise LookupError("authmw sessions are not enabled (configure AuthConfig.sessions)")
    assert isinstance(handle, SessionHandle)
    return handle


def login(
    user_id: str, scopes: Iterable[str] = (), *, remember: bool = False, data: dict[str, Any] | None = None
) -> Principal:
    """Start a session (always a new id); the response carries the cookie."""
    principal = _handle().login(user_id, scopes, remember=remember, data=data)
    g.principal = principal
    return principal


def logout() -> bool:
    g.principal = None
    return _handle().logout()


def logout_everywhere(user_id: str | None = None) -> int:
    g.principal = None
    return _handle().logout_everywhere(user_id)


def session_data() -> dict[str, Any]:
    """The session's small data bag; saved after the request if it changed."""
    return _handle().data


def list_sessions() -> list[SessionInfo]:
    return _handle().list_sessions()


def revoke_session(handle: str) -> bool:
    return _handle().revoke_session(handle)


def csrf_token() -> str | None:
    return _handle().csrf_token


def _tokens() -> TokenService:
    auth = current_app.extensions.get("authmw.authenticator")
    service = auth.tokens if isinstance(auth, Authenticator) else None
    if service is None:
        raise LookupError("token revocation needs JWT settings and a store")
    return service


def revoke_access_token() -> None:
    """Deny the bearer token of this request until it expires (and the verifier's clock-skew leeway has passed)."""
    principal = g.get("principal")
    if principal is None or principal.source != "jwt":
        raise LookupError("this request was not authenticated by a bearer token")
    run_sync(_tokens().revoke_access_token(principal))


def revoke_all_tokens(user_id: str) -> None:
    """Refuse every access token issued to `user_id` before now and end their refresh families."""
    run_sync(_tokens().revoke_all_tokens(user_id))


def cross_site_reason() -> str | None:
    return _handle().cross_site_reason()


def client_address() -> str | None:
    """The caller's address, after the trusted proxies (see `SessionHandle.client_address`)."""
    return _handle().client_address


class AuthMW:
    """The Flask extension: ``AuthMW(app, config)`` or ``AuthMW()`` then ``init_app(app, config)``.

    Without a config it reads ``app.config["AUTHMW_CONFIG"]`` (an `AuthConfig`), else `AuthConfig.from_env()`.
    """

    def __init__(self, app: Flask | None = None, config: AuthConfig | None = None) -> None:
        self._blueprints: dict[str, Policy] = {}
        self._blueprint_objects: dict[Blueprint, Policy] = {}
        #: bumped by `blueprint_policy` after it changed a policy: what was memoised or remembered under an earlier
        #: generation is not used again (a request may read the old policy while another thread changes it)
        self._policy_generation = 0
        self._last_authenticator: Authenticator | None = None
        # Per app: (endpoint, method) -> the decorator's or blueprint's policy (None: the path rules decide), and
        # the policy generation it was read under.
        self._policy_memos: list[dict[tuple[str | None, str], tuple[Policy | None, int]]] = []
        # Per app: remembered decisions for repeated bearer requests (cleared with the policy memos).
        self._decision_memos: list[dict[tuple[Any, ...], Any]] = []
        if app is not None:
            self.init_app(app, config)

    #: reuse decisions for repeated bearer requests (tests compare with it off)
    remember_decisions = True

    def init_app(self, app: Flask, config: AuthConfig | None = None) -> None:
        config = config or app.config.get("AUTHMW_CONFIG") or AuthConfig.from_env()
        # One Authenticator per app: an extension object may serve several apps with different configs.
        app.extensions["authmw"] = self
        auth = app.extensions["authmw.authenticator"] = self._last_authenticator = Authenticator(config)
        # Hooks bound to this app's Authenticator and views: no proxy lookups on the hot path.
        policies: dict[tuple[str | None, str], tuple[Policy | None, int]] = {}
        self._policy_memos.append(policies)

        # Decisions for repeated bearer requests, as in the ASGI shell (see `authmw.asgi.AuthMiddleware._remembered`):
        # (endpoint, method, path, script name, Authorization value) -> what was decided, the route table and the
        # policy generation it was decided with, what was attached, and the store's revocation count read before.
        decisions: _Decisions = {}
        self._decision_memos.append(decisions)

        def before_request() -> None:
            # Flask's proxies resolved once; the view's policy from the per-app memo (see `_policy_for`).
            req = request._get_current_object()  # type: ignore[attr-defined]
            environ = req.environ
            globals_ = g._get_current_object()
            authorization = environ.get("HTTP_AUTHORIZATION")
            generation = self._policy_generation  # read before the policy is
            if authorization is not None and decisions and self.remember_decisions:
                known = _remembered(auth, decisions, req, environ, authorization, generation)
                if known is not None:  # a repeated bearer request whose decision still holds: attach it
                    policy, caller, attached = known
                    exchange = Exchange(WSGIRequestView(environ), policy, False, None)
                    exchange.principal = globals_.principal = caller
                    globals_.authmw_exchange = exchange
                    exchange.attach_wsgi(environ, attached)
                    return
            table = auth.table  # the one this request is decided with
            counter, verifier = auth.revocation_counter, auth.verifier  # their counts read before deciding
            revocations = counter.revocations if counter is not None else None
            verifications = verifier.verifications if verifier is not None else 0
            view = WSGIRequestView(environ)
            exchange = auth.begin(view, self._policy_for(view, auth, app, req, policies, generation))
            environ["authmw.exchange"] = exchange  # also for a refusal the app re-renders
            globals_.authmw_exchange = exchange
            if exchange.state is not None:
                environ["authmw.session"] = SessionHandle(exchange.state)
            try:
                principal = auth.authenticate(exchange)
            except AuthError as error:
                globals_.principal = None
                response = auth.error_response(error, view, exchange.policy)
                response.headers = exchange.error_headers(response)
                raise _failure(error, response) from None
            globals_.principal = principal
            exchange.attach_wsgi(environ)
            if (
                principal is not None
                and authorization is not None
                and self.remember_decisions
                and auth.rememberable(exchange, table, verifications)
            ):
                _remember(auth, decisions, req, environ, authorization, exchange, (table, generation), revocations)

        def exchange_of_response(environ: dict[str, Any]) -> Exchange | None:
            exchange: Exchange | None = environ.get("authmw.exchange")
            return None if exchange is None or environ.get("authmw.answered") else exchange

        app.before_request(before_request)
        # Identity headers, session cookies and the data bag where the WSGI shell does them, as the response
        # starts: a WSGI wrapper costs less per request than Flask's after-request hook and werkzeug's Headers.
        app.wsgi_app = _ResponseFinisher(app.wsgi_app, auth, exchange_of_response)  # type: ignore[method-assign]
        app.register_error_handler(ServiceUnavailable, self._store_down)

    @property
    def authenticator(self) -> Authenticator | None:
        """The current app's Authenticator (outside a request: the one `init_app` built last)."""
        if has_app_context():
            found = current_app.extensions.get("authmw.authenticator")
            if isinstance(found, Authenticator):
                return found
        return self._last_authenticator

    def _store_down(self, error: ServiceUnavailable) -> FlaskResponse:
        """`login()`, `logout()`… in a view with the store unreachable: 503 + Retry-After, never a 500."""
        auth = self.authenticator
        assert auth is not None
        answer = auth.error_response(error, WSGIRequestView(request.environ), None)
        _answered_by_authmw()
        return FlaskResponse(answer.body, status=answer.status, headers=answer.headers)

    # ---- per-view and per-blueprint policies ----

    def policy(self, value: Policy) -> Callable[[F], F]:
        def mark(view: F) -> F:
            try:
                setattr(view, POLICY_ATTRIBUTE, value)
            except AttributeError:  # e.g. a bound method (``auth.session_required(auth.token_view)``): wrap it
                bound = view

                @functools.wraps(bound)
                def view(*args: Any, **kwargs: Any) -> Any:
                    return bound(*args, **kwargs)

                setattr(view, POLICY_ATTRIBUTE, value)
            return view

        return mark

    @overload
    def session_required(self, view: F) -> F: ...
    @overload
    def session_required(
        self, *, scopes: Iterable[str] = (), max_auth_age: float | None = None, csrf: bool = True
    ) -> Callable[[F], F]: ...
    def session_required(
        self, view: Any = None, *, scopes: Iterable[str] = (), max_auth_age: float | None = None, csrf: bool = True
    ) -> Any:
        decorator = self.policy(Policy.session(scopes=scopes, max_auth_age=max_auth_age, csrf=csrf))
        return decorator(view) if view is not None else decorator

    @overload
    def jwt_required(self, view: F) -> F: ...
    @overload
    def jwt_required(self, *, scopes: Iterable[str] = (), max_auth_age: float | None = None) -> Callable[[F], F]: ...
    def jwt_required(self, view: Any = None, *, scopes: Iterable[str] = (), max_auth_age: float | None = None) -> Any:
        decorator = self.policy(Policy.jwt(scopes=scopes, max_auth_age=max_auth_age))
        return decorator(view) if view is not None else decorator

    @overload
    def login_required(self, view: F) -> F: ...
    @overload
    def login_required(self, *, scopes: Iterable[str] = (), max_auth_age: float | None = None) -> Callable[[F], F]: ...
    def login_required(self, view: Any = None, *, scopes: Iterable[str] = (), max_auth_age: float | None = None) -> Any:
        """A session cookie or a bearer JWT is required."""
        decorator = self.policy(Policy.either(scopes=scopes, max_auth_age=max_auth_age))
        return decorator(view) if view is not None else decorator

    def public(self, view: F) -> F:
        return self.policy(Policy.public())(view)

    def blueprint_policy(self, blueprint: Blueprint | str, value: Policy) -> None:
        """The default policy of every view of `blueprint` that has no decorator of its own."""
        if isinstance(blueprint, str):
            self._blueprints[blueprint] = value
        else:  # found under every name it is registered with (name=... in Flask), never by a name alone
            self._blueprint_objects[blueprint] = value
        self._policy_generation += 1  # after the change: a request that read this generation reads the new policy
        for memo in self._policy_memos:
            memo.clear()
        for decided in self._decision_memos:
            decided.clear()

    def _policy_for(
        self,
        view_state: WSGIRequestView,
        auth: Authenticator,
        app: Flask,
        req: Any,
        memo: dict[tuple[str | None, str], tuple[Policy | None, int]],
        generation: int,
    ) -> Policy:
        """The request's policy; `generation` is `_policy_generation` as read before it (see `blueprint_policy`)."""
        endpoint = req.endpoint
        if endpoint is None:  # no view matched (404/405): the path rules decide; nothing to remember
            return auth.policy_for(view_state)
        key = (endpoint, req.method)
        entry = memo.get(key)
        if entry is not None and entry[1] == generation:
            found = entry[0]
        else:
            if len(memo) >= 4096:  # views x methods: small, but never let requests grow it without bound
                memo.clear()
            found = self._endpoint_policy(app, req)
            memo[key] = (found, generation)
        return found if found is not None else auth.policy_for(view_state)

    def _endpoint_policy(self, app: Flask, req: Any) -> Policy | None:
        """The view's decorator, else its blueprint's default; None leaves it to the path rules."""
        view = app.view_functions.get(req.endpoint)
        candidates: list[Any] = [view]
        view_class = getattr(view, "view_class", None)
        if view_class is not None:  # a MethodView/View: the method handler, then the class
            method = req.method.lower()
            handler = getattr(view_class, method, None)
            if handler is None and method == "head":
                handler = getattr(view_class, "get", None)
            candidates = [handler, getattr(view_class, "dispatch_request", None), view_class, view]
        for candidate in candidates:
            value = getattr(candidate, POLICY_ATTRIBUTE, None)
            if isinstance(value, Policy):
                return value
        for name in req.blueprints:  # innermost first; nested ones are named "parent.child"
            # The name it is registered under, then the blueprint object (registered again under another name),
            # then its own short name, unless another blueprint of the app is registered under that name.
            if name in self._blueprints:
                return self._blueprints[name]
            registered = app.blueprints.get(name)
            if registered is not None and registered in self._blueprint_objects:
                return self._blueprint_objects[registered]
            short = name.rsplit(".", 1)[-1]
            if short in self._blueprints and app.blueprints.get(short, registered) is registered:
                return self._blueprints[short]
        return None

    # ---- token endpoints (register them with app.add_url_rule) ----

    def _token_response(self, flow: Flow[dict[str, Any]]) -> FlaskResponse:
        assert self.authenticator is not None
        exchange: Exchange = g.authmw_exchange
        try:
            body = run_sync(flow)
        except AuthError as error:
            answer = self.authenticator.error_response(error, exchange.view, exchange.policy)
            raise _failure(error, answer) from None
        response = FlaskResponse(json.dumps(body), content_type="application/json")
        response.headers["Cache-Control"] = "no-store"
        response.headers["Pragma"] = "no-cache"
        return response

    def _service(self) -> TokenService | None:
        return self.authenticator.tokens if self.authenticator is not None else None

    @staticmethod
    def _not_configured(problem: dict[str, Any] = NOT_CONFIGURED) -> FlaskResponse:
        return FlaskResponse(json.dumps(problem), status=501, content_type="application/problem+json")

    def token_view(self) -> FlaskResponse:
        """``POST /api/token``: the session's caller gets an access token and a refresh token."""
        service = self._service()
        if service is None:
            return self._not_configured()
        if not service.binds_sessions:
            return self._not_configured(SESSIONS_ELSEWHERE)
        exchange: Exchange = g.authmw_exchange
        record = exchange.state.record if exchange.state is not None else None
        return self._token_response(service.issue_for_session(g.get("principal"), record.sid if record else None))

    def refresh_view(self) -> FlaskResponse:
        """``POST /api/token/refresh`` with JSON ``{"refresh_token": ...}``."""
        service = self._service()
        if service is None:
            return self._not_configured()
        return self._token_response(service.refresh(_bounded_body()))

    def jwks_view(self) -> FlaskResponse:
        service = self._service()
        if service is None:
            return self._not_configured()
        response = FlaskResponse(json.dumps(service.issuer.jwks()), content_type="application/json")
        response.headers["Cache-Control"] = "public, max-age=300"
        return response


class _ResponseFinisher:
    """The Flask app's WSGI callable, wrapped: see `authmw.wsgi.serve`."""

    def __init__(self, app: Any, auth: Authenticator, exchange_of: Callable[[dict[str, Any]], Exchange | None]) -> None:
        self.app = app
        self.auth = auth
        self.exchange_of = exchange_of

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        return serve(self.app, environ, start_response, self.auth, lambda: self.exchange_of(environ))


# ---- repeated bearer requests (see `authmw.asgi.AuthMiddleware._remembered` for what may be reused, and why) ----

#: (route table, policy generation): what a decision was made with, both unchanged when it is reused
_MadeWith = tuple[Any, int]
_Decisions = dict[tuple[Any, ...], tuple[Policy, Principal, str, _MadeWith, AuthState, "int | None"]]


def _decision_key(req: Any, environ: dict[str, Any], authorization: str) -> tuple[Any, ...]:
    """What a remembered decision is kept under: endpoint, method, path, script name and Authorization value."""
    return (
        req.endpoint,
        environ.get("REQUEST_METHOD", "GET"),
        environ.get("PATH_INFO"),
        environ.get("SCRIPT_NAME"),
        authorization,
    )


def _remembered(
    auth: Authenticator,
    decisions: _Decisions,
    req: Any,
    environ: dict[str, Any],
    authorization: str,
    generation: int,
) -> tuple[Policy, Principal, AuthState] | None:
    """The policy, principal and `environ["authmw"]` decided earlier for this request's endpoint, method, path and
    Authorization value, if that decision still holds (and was made under policy generation `generation`); None:
    decide afresh."""
    key = _decision_key(req, environ, authorization)
    entry = decisions.get(key)
    if entry is None:
        return None
    query = environ.get("QUERY_STRING")
    if query and has_query_token(query.encode("latin-1")):
        return None  # refused by the full path as a second credential (P25)
    policy, principal, token, (table, made_under), attached, revocations = entry
    if made_under != generation or not auth.still_holds(principal, token, table, revocations):
        decisions.pop(key, None)
        return None
    return policy, principal, attached


def _remember(
    auth: Authenticator,
    decisions: _Decisions,
    req: Any,
    environ: dict[str, Any],
    authorization: str,
    exchange: Exchange,
    made_with: _MadeWith,
    revocations: int | None,
) -> None:
    method = environ.get("REQUEST_METHOD", "GET")
    if method == "OPTIONS" or not authorization.startswith("Bearer "):  # a preflight reads more than these
        return
    token = authorization[7:]
    principal = exchange.principal
    verifier = auth.verifier
    if principal is None or verifier is None or verifier.cached(token) is not principal:
        return  # e.g. a token the verifier does not cache (no exp, cache off): nothing to confirm it with
    if len(decisions) >= 4096:  # tokens x paths: never let requests grow it without bound
        decisions.clear()
    key = _decision_key(req, environ, authorization)
    attached = AuthState(exchange.policy, principal)
    decisions[key] = (exchange.policy, principal, token, made_with, attached, revocations)


def _bounded_body() -> bytes:
    """At most one byte more than a refresh request may have: enough to refuse a larger one, never all of it."""
    length = request.content_length
    if length is not None:
        # A declared length: refuse a large one unread; a small one through get_data(), which also returns a
        # body the app (or a hook) has read already.
        return b" " * (MAX_REFRESH_BODY + 1) if length > MAX_REFRESH_BODY else request.get_data(cache=True)
    body = b""
    while len(body) <= MAX_REFRESH_BODY:
        chunk = request.stream.read(MAX_REFRESH_BODY + 1 - len(body))
        if not chunk:
            break
        body += chunk
    return body
