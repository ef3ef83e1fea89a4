"""Starlette (and FastAPI) adapter: policies on endpoints, and session helpers that take the `Request`.

    from authmw.starlette import AuthMiddleware, jwt_required, login, logout, session_required

    @jwt_required(scopes={"items:read"})
    async def list_items(request): ...

    app = Starlette(routes=[...], middleware=[Middleware(AuthMiddleware, config=AuthConfig.from_env())])

`request.user` is the `Principal` (or an anonymous user), `request.auth.scopes` its scopes, and
`starlette.authentication.requires(...)` keeps working. Endpoint policies compile, at the first request,
to the same `Route`/`Policy` rules as path configuration, ahead of them.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, TypeVar

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Host, Mount, WebSocketRoute, compile_path
from starlette.routing import Route as StarletteRoute
from starlette.staticfiles import StaticFiles

from authmw.asgi import AuthMiddleware as _ASGIAuthMiddleware
from authmw.asgi import Scope
from authmw.engine import Authenticator, Exchange
from authmw.errors import AuthError, ConfigurationError, MissingCredentials, PolicyNotApplied, render_error
from authmw.io import Flow, run_async
from authmw.issuer import MAX_REFRESH_BODY, NOT_CONFIGURED, SESSIONS_ELSEWHERE, TokenService
from authmw.policy import DEFER, Policy, Route
from authmw.principal import Principal
from authmw.request import ASGIRequestView
from authmw.sessions import AsyncSessionHandle, SessionInfo

__all__ = [
    "AuthMiddleware",
    "authenticated",
    "compile_routes",
    "jwks_endpoint",
    "jwt_required",
    "list_sessions",
    "login",
    "logout",
    "logout_everywhere",
    "policy",
    "public",
    "refresh_endpoint",
    "revoke_access_token",
    "revoke_all_tokens",
    "session",
    "session_required",
    "token_endpoint",
    "with_policy",
]

log = logging.getLogger("authmw")

POLICY_ATTRIBUTE = "__authmw_policy__"
F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R", bound=BaseRoute)


def policy(value: Policy) -> Callable[[F], F]:
    """Attach `value` to an endpoint (function, `HTTPEndpoint` class or one of its methods).

    The middleware compiles it into a rule at the first request. A function (or method) that takes the
    request or websocket (a parameter named ``request`` or ``websocket``, as `starlette.authentication.requires`
    asks) also checks, when it is called, that its policy is the one the middleware enforced; when it is not (an
    app authmw could not look into routed there, or no authmw middleware ran), its body does not run: the answer
    is a 500 (`PolicyNotApplied`), or a websocket close (1011)."""

    def mark(endpoint: F) -> F:
        # Stacked directly on another authmw decorator: the outermost wins, for the rule and the check alike.
        enforced = getattr(endpoint, _ENFORCED, None)
        if enforced is not None:
            if enforced[0] is not endpoint:
                # Another decorator in between (its functools.wraps copied our attribute): which policy it
                # expects cannot be told, and dropping it would drop its own checks (a `requires`, say).
                raise ConfigurationError(
                    f"{getattr(endpoint, '__qualname__', endpoint)!s}: authmw policy decorators must be stacked"
                    " next to each other (or use one)"
                )
            endpoint = enforced[1]
        setattr(endpoint, POLICY_ATTRIBUTE, value)
        return _enforcing(endpoint, value)

    return mark


#: on an enforcing wrapper: (that wrapper, the endpoint it wraps)
_ENFORCED = "__authmw_enforced__"


def _enforcing(endpoint: F, declared: Policy) -> F:
    """`endpoint`, refusing to run unless the middleware enforced its policy (see `policy`)."""
    if isinstance(endpoint, type) or not callable(endpoint):
        return endpoint  # an HTTPEndpoint class: its rule, and the response check of `AuthMiddleware._guarded`
    try:
        parameters = list(inspect.signature(endpoint).parameters)
    except (TypeError, ValueError):
        return endpoint
    names = [name for name in ("request", "websocket") if name in parameters]
    if not names:
        return endpoint  # e.g. a FastAPI endpoint that does not take the request: its rule alone
    name, index = names[0], parameters.index(names[0])

    def refusal(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """None when the enforced policy is `declared`; else what to answer instead of running the endpoint."""
        conn = kwargs[name] if name in kwargs else args[index] if len(args) > index else None
        scope = getattr(conn, "scope", None)
        if not isinstance(scope, dict):
            return None  # not called by Starlette with a connection: nothing to check against
        state = scope.get("authmw")
        enforced = state.policy if state is not None else None
        # As `compile_routes` ranks them: an HTTPEndpoint's method handler first, then a route's own policy
        # (with_policy), then the endpoint's.
        handler = isinstance(scope.get("endpoint"), type)
        expected = declared if handler else _route_policy(scope.get("route"), endpoint) or declared
        if state is not None and enforced == expected:
            if state.principal is not None or not expected.auth_required:
                return None
            # Decided as a CORS preflight (public), which no CORS middleware answered: the endpoint itself needs a
            # caller, and there is none.
            if scope.get("type") == "websocket":
                return _CloseUnauthorizedWebsocket()
            auth = scope.get("authmw.authenticator")
            realm = auth.config.realm if isinstance(auth, Authenticator) else "authmw"
            missing = MissingCredentials("authentication is required", reason="no_credentials")
            answer = render_error(missing, realm=realm, bearer="jwt" in expected.accept)
            return Response(answer.body, status_code=answer.status, headers=dict(answer.headers))
        label = getattr(endpoint, "__qualname__", repr(endpoint))
        log.error("authmw: endpoint %s declares %s but %s was enforced; it was not run", label, expected, enforced)
        if scope.get("type") == "websocket":
            return _CloseUnauthorizedWebsocket()
        answer = render_error(
            PolicyNotApplied("the endpoint declares a policy that was not applied to this request"), realm="authmw"
        )
        return Response(answer.body, status_code=answer.status, headers=dict(answer.headers))

    # The common case is checked first, inline (a call costs here): Starlette passed the connection positionally
    # and the middleware enforced this very policy object, with a caller if it needs one. Anything else goes to
    # `refusal`.
    open_to_anyone = not declared.auth_required
    if inspect.iscoroutinefunction(endpoint) and parameters == [name]:  # Starlette's own shape: one argument

        @functools.wraps(endpoint)
        async def enforced_one(conn: Any = None, **named: Any) -> Any:  # no *args packing: ¼ µs less a request
            if named:  # FastAPI passes it by name
                conn = named[name]
            try:
                state = conn.scope["authmw"]
                if state.policy is declared and (state.principal is not None or open_to_anyone):
                    return await endpoint(conn)
            except (AttributeError, KeyError, TypeError):
                pass
            refused = refusal((conn,), {})
            if refused is None:
                return await endpoint(conn)
            if isinstance(refused, _CloseUnauthorizedWebsocket):
                await refused(conn)
                return None
            return refused

        setattr(enforced_one, _ENFORCED, (enforced_one, endpoint))
        return enforced_one  # type: ignore[return-value]

    if inspect.iscoroutinefunction(endpoint):

        @functools.wraps(endpoint)
        async def enforced_async(*args: Any, **kwargs: Any) -> Any:
            try:
                state = args[index].scope["authmw"]
                if state.policy is declared and (state.principal is not None or open_to_anyone):
                    return await endpoint(*args, **kwargs)
            except (AttributeError, IndexError, KeyError, TypeError):
                pass
            refused = refusal(args, kwargs)
            if refused is None:
                return await endpoint(*args, **kwargs)
            if isinstance(refused, _CloseUnauthorizedWebsocket):
                await refused(kwargs[name] if name in kwargs else args[index])
                return None
            return refused

        setattr(enforced_async, _ENFORCED, (enforced_async, endpoint))
        return enforced_async  # type: ignore[return-value]

    @functools.wraps(endpoint)
    def enforced(*args: Any, **kwargs: Any) -> Any:
        try:
            state = args[index].scope["authmw"]
            if state.policy is declared and (state.principal is not None or open_to_anyone):
                return endpoint(*args, **kwargs)
        except (AttributeError, IndexError, KeyError, TypeError):
            pass
        refused = refusal(args, kwargs)
        return endpoint(*args, **kwargs) if refused is None else refused

    setattr(enforced, _ENFORCED, (enforced, endpoint))
    return enforced  # type: ignore[return-value]


class _CloseUnauthorizedWebsocket:
    """A websocket endpoint's refusal: close before accepting, as for an internal error (1011)."""

    async def __call__(self, websocket: Any) -> None:
        await websocket.close(code=1011)


def public(endpoint: F) -> F:
    return policy(Policy.public())(endpoint)


def session_required(
    *, scopes: Iterable[str] = (), max_auth_age: float | None = None, csrf: bool = True
) -> Callable[[F], F]:
    return policy(Policy.session(scopes=scopes, max_auth_age=max_auth_age, csrf=csrf))


def jwt_required(*, scopes: Iterable[str] = (), max_auth_age: float | None = None) -> Callable[[F], F]:
    return policy(Policy.jwt(scopes=scopes, max_auth_age=max_auth_age))


def authenticated(*, scopes: Iterable[str] = (), max_auth_age: float | None = None) -> Callable[[F], F]:
    """A session cookie or a bearer JWT is required."""
    return policy(Policy.either(scopes=scopes, max_auth_age=max_auth_age))


def with_policy(route: R, value: Policy) -> R:
    """The route-level way: ``with_policy(Route("/admin", admin), Policy.session(scopes={"admin"}))``."""
    setattr(route, POLICY_ATTRIBUTE, value)
    return route


def _join(prefix: str, path: str) -> str:
    # Always a leading slash: a root Mount's path is "" in Starlette.
    return prefix.rstrip("/") + "/" + path.lstrip("/")


def _regex(pattern: str) -> re.Pattern[str] | None:
    """Starlette's own regex for a full path pattern (mount prefixes included): a compiled rule then covers
    exactly what the router sends to its endpoint (no empty segments collapsed, no bare mount path)."""
    try:
        return compile_path(pattern)[0]
    except (ValueError, AssertionError):  # e.g. a parameter name used by a mount and by a route inside it
        log.warning("authmw: %r cannot be matched as Starlette does; its rule matches by path segments", pattern)
        return None


def compile_routes(
    routes: Iterable[BaseRoute],
    prefix: str = "",
    host: re.Pattern[str] | None = None,
    enclosing: Policy | None = None,
) -> list[Route]:
    """authmw `Route` rules for every Starlette route (nested in mounts and hosts, and in FastAPI's included
    routers) that carries a policy.

    `prefix` is the mount paths around `routes` as Starlette joins them; `enclosing` the policy of the nearest
    mount or host around them that has one.
    """
    compiled: list[Route] = []
    for route in routes:
        if isinstance(route, Host):
            # Starlette's own host regex: a route under one host never decides for another.
            if host is not None:
                raise ConfigurationError("a Host inside another Host cannot be matched; flatten them")
            own = getattr(route, POLICY_ATTRIBUTE, None)
            compiled.extend(compile_routes(_inner_routes(route), prefix, route.host_regex, own or enclosing))
            # The Host takes every path of its host: what its routes leave open is its own policy (or the one
            # around it), or else the path rules and the default — never an endpoint rule after it (DEFER).
            within = _regex(prefix + "/{path:path}") if prefix else None  # inside a Mount: the Mount's paths
            compiled.append(
                Route(_join(prefix, "{rest:path}"), own or enclosing or DEFER, host=route.host_regex, path_regex=within)
            )
            continue
        if isinstance(route, Mount):
            own = getattr(route, POLICY_ATTRIBUTE, None)
            inner_prefix = prefix + route.path
            compiled.extend(compile_routes(_inner_routes(route), inner_prefix, host, own or enclosing))
            # The Mount takes the paths its regex matches (`<prefix>/…`, not the bare prefix): the same for them.
            catch_all = Route(
                _join(_join(prefix, route.path), "{rest:path}"),
                own or enclosing or DEFER,
                host=host,
                path_regex=_regex(inner_prefix + "/{path:path}"),
            )
            compiled.append(catch_all)
            continue
        if isinstance(route, StarletteRoute | WebSocketRoute):
            methods = getattr(route, "methods", None)
            transport = _transport(route)
            compiled.extend(_endpoint_rules(route, route.endpoint, prefix, route.path, methods, host, transport))
            continue
        effective = getattr(route, "effective_candidates", None)
        if callable(effective):
            # FastAPI's included router: its routes, each with the path and methods FastAPI serves it under.
            for candidate in effective():
                if callable(getattr(candidate, "effective_candidates", None)):
                    compiled.extend(compile_routes([candidate], prefix, host, enclosing))
                    continue
                original = getattr(candidate, "original_route", None)
                rebuilt = getattr(candidate, "starlette_route", None)
                if isinstance(rebuilt, BaseRoute):
                    # A Starlette route, websocket route, mount or host, rebuilt by FastAPI at its prefixed path;
                    # a with_policy() on the route the app declared carries over.
                    declared = getattr(original, POLICY_ATTRIBUTE, None)
                    if declared is not None and getattr(rebuilt, POLICY_ATTRIBUTE, None) is None:
                        setattr(rebuilt, POLICY_ATTRIBUTE, declared)
                    compiled.extend(compile_routes([rebuilt], prefix, host, enclosing))
                    continue
                endpoint = getattr(candidate, "endpoint", None)
                path = getattr(candidate, "path", "")
                if endpoint is None or not path:
                    _cannot_see(candidate)
                    continue
                methods = getattr(candidate, "methods", None) or None
                transport = _transport(original)
                compiled.extend(_endpoint_rules(original, endpoint, prefix, path, methods, host, transport))
            continue
        _cannot_see(route)
    return compiled


def _inner_routes(container: Mount | Host) -> list[BaseRoute]:
    """The routes a Mount or Host sends requests to: its router's, or those of the app it holds (a Starlette app or
    router, also behind middleware, which Starlette's own `routes` does not look through). An app authmw cannot
    look into is reported (`_cannot_see`): its endpoints' answers are then checked (static files aside)."""
    if container.routes:
        return list(container.routes)
    found = _routes_of(container.app)
    if found is not None:
        return list(found)
    if not _holds_static_files(container.app):
        _cannot_see(container)
    return []


def _holds_static_files(app: Any) -> bool:
    """`StaticFiles`, maybe behind middleware: it serves files, and has no endpoints that could declare a policy."""
    return any(isinstance(each, StaticFiles) for each in _wrapped_apps(app))


def _transport(route: Any) -> Literal["http", "websocket"]:
    return "websocket" if isinstance(route, WebSocketRoute) or "WebSocket" in type(route).__name__ else "http"


def _handler_policy(endpoint: type, method: str) -> Policy | None:
    """The policy on an `HTTPEndpoint`'s handler for `method` (lower-case)."""
    return getattr(getattr(endpoint, method, None), POLICY_ATTRIBUTE, None)


def _route_policy(route: Any, endpoint: Any) -> Policy | None:
    """A route's own policy (`with_policy`), else its endpoint's decorator."""
    return getattr(route, POLICY_ATTRIBUTE, None) or getattr(endpoint, POLICY_ATTRIBUTE, None)


def _endpoint_rules(
    route: Any,
    endpoint: Any,
    prefix: str,
    path: str,
    methods: Iterable[str] | None,
    host: re.Pattern[str] | None,
    transport: Literal["http", "websocket"],
) -> list[Route]:
    """The rules of one endpoint: per-method handlers of an `HTTPEndpoint` first, then the route's own policy."""
    rules: list[Route] = []
    full, regex = _join(prefix, path), _regex(prefix + path)
    if isinstance(endpoint, type) and transport == "http":  # HTTPEndpoint: a policy per method handler
        # "head" before "get": a GET rule also covers HEAD, so a handler of its own for HEAD must come first.
        for name in ("head", "get", "post", "put", "patch", "delete", "options"):
            method_policy = _handler_policy(endpoint, name)
            if method_policy is not None:
                methods_of = {name.upper()}
                rules.append(Route(full, method_policy, methods_of, host=host, path_regex=regex, transport=transport))
    if isinstance(endpoint, type) and transport == "websocket":  # WebSocketEndpoint: the handshake's handler
        connect_policy = _handler_policy(endpoint, "on_connect")
        handshake = connect_policy or _route_policy(route, endpoint)
        for later in ("on_receive", "on_disconnect"):
            declared = _handler_policy(endpoint, later)
            if declared is not None and declared != handshake:
                # The handshake is where a websocket is authenticated (P29): a later handler's policy must be the
                # handshake's (on_connect's or the class's), or the socket would be accepted under another.
                raise ConfigurationError(f"{endpoint.__qualname__}.{later} has a policy the handshake does not")
        if connect_policy is not None:
            rules.append(Route(full, connect_policy, host=host, path_regex=regex, transport=transport))
    route_policy = _route_policy(route, endpoint)
    if route_policy is not None:
        rules.append(Route(full, route_policy, methods=methods, host=host, path_regex=regex, transport=transport))
    return rules


def _starlette_host(header: str | None) -> str:
    """The host name exactly as this Starlette version's `Host` route reads it."""
    try:
        from starlette._utils import parse_host_header
    except ImportError:  # older Starlette: the header up to its first colon, as sent
        return (header or "").split(":")[0]
    parsed = parse_host_header(header)
    return "" if parsed is None else parsed.host.lower()


class _Unseen:
    count = 0


_unseen = _Unseen()


def _cannot_see(route: Any) -> None:
    # Decorators inside a route type we cannot look into are not seen: the path rules and the default apply,
    # and the middleware checks each response's endpoint (AuthMiddleware._undeclared_policy).
    _unseen.count += 1
    log.warning(
        "authmw: cannot look inside %s; its endpoints get the path rules and the default, and an answer from one that"
        " declares another policy is withheld (500)",
        type(route).__name__,
    )


class AuthMiddleware(_ASGIAuthMiddleware):
    """authmw's ASGI middleware, plus endpoint policies compiled from the Starlette app's routes."""

    _needs_prepare = True

    def _undeclared_policy(self, scope: Scope, exchange: Exchange) -> str | None:
        # Starlette's router leaves the endpoint it chose (and its route) in the scope: the same precedence as
        # `compile_routes` — an HTTPEndpoint's method handler, then the route, then the endpoint.
        endpoint = scope.get("endpoint")
        route = scope.get("route")
        declared: Policy | None = None
        if isinstance(endpoint, type) and scope["type"] == "http":
            method = str(scope.get("method", "GET")).lower()
            if method == "head" and getattr(endpoint, "head", None) is None:
                method = "get"  # as HTTPEndpoint dispatches a HEAD
            declared = _handler_policy(endpoint, method)
        if declared is None:
            declared = _route_policy(route, endpoint)
        if declared is None or declared == exchange.policy:
            return None
        name = getattr(endpoint, "__qualname__", type(endpoint).__name__)
        return f"endpoint {name} declares {declared} but {exchange.policy} was enforced (its route was not compiled)"

    def _prepare(self, scope: Scope) -> None:
        self.authenticator.host_of = _starlette_host  # type: ignore[method-assign]
        # The routes of the app this middleware wraps, never `scope["app"]`: that is the outermost Starlette app,
        # whose routes may not be the ones behind this middleware (mounted inside it, for one).
        routes = _routes_of(self.app)
        if routes is None:
            # No routes to compile: endpoint decorators cannot be applied before the app routes a request, so
            # every response is checked against its endpoint's declared policy instead (fail closed).
            self._checks_endpoints = True
            log.warning(
                "authmw: found no Starlette routes behind the middleware; an answer from an endpoint that declares"
                " a policy other than the path rules' is withheld (500)"
            )
            return
        unseen = _unseen.count
        rules = compile_routes(routes)
        # Routes authmw could not look into: check, once the app has routed each request, that the endpoint
        # does not declare a policy other than the one enforced (costs ≈ 1 µs a request, so only then).
        self._checks_endpoints = _unseen.count != unseen
        self.authenticator.add_routes(rules)
        log.debug("authmw: %d endpoint policies compiled", len(rules))


def _routes_of(app: Any) -> Any:
    """The routes of the Starlette app or router `app` is, or wraps through middlewares' ``.app`` (Starlette's
    own middleware stack, or ``AuthMiddleware(starlette_app)`` written around it); None if there is none."""
    for each in _wrapped_apps(app):
        routes = getattr(each, "routes", None)
        if routes is not None:
            return routes
    return None


def _wrapped_apps(app: Any) -> Iterator[Any]:
    """`app`, then the app each middleware wraps (its ``.app``), in turn: bounded, and never one twice."""
    seen: set[int] = set()
    while app is not None and id(app) not in seen and len(seen) < 64:
        seen.add(id(app))
        yield app
        app = getattr(app, "app", None)


def session(conn: HTTPConnection) -> AsyncSessionHandle:
    """The session handle of this request or websocket."""
    handle = conn.scope.get("authmw.session")
    if handle is None:
        raise LookupError("authmw sessions are not enabled (configure AuthConfig.sessions)")
    assert isinstance(handle, AsyncSessionHandle)
    return handle


async def login(
    conn: HTTPConnection,
    user_id: str,
    scopes: Iterable[str] = (),
    *,
    remember: bool = False,
    data: dict[str, Any] | None = None,
) -> Principal:
    """Start a session for `user_id` (always a new id); the response carries the cookie."""
    return await session(conn).login(user_id, scopes, remember=remember, data=data)


async def logout(conn: HTTPConnection) -> bool:
    return await session(conn).logout()


async def logout_everywhere(conn: HTTPConnection, user_id: str | None = None) -> int:
    return await session(conn).logout_everywhere(user_id)


async def list_sessions(conn: HTTPConnection) -> list[SessionInfo]:
    return await session(conn).list_sessions()


def _token_service(request: Request) -> tuple[Authenticator, TokenService | None]:
    auth = request.scope.get("authmw.authenticator")
    if not isinstance(auth, Authenticator):
        raise LookupError("authmw's middleware is not installed")
    return auth, auth.tokens


def _not_configured(problem: dict[str, Any] = NOT_CONFIGURED) -> Response:
    return JSONResponse(problem, status_code=501, media_type="application/problem+json")


async def _token_response(request: Request, flow: Flow[dict[str, Any]], auth: Authenticator) -> Response:
    try:
        body = await run_async(flow)
    except AuthError as error:
        answer = auth.error_response(error, ASGIRequestView(request.scope), request.scope["authmw"].policy)
        response = Response(answer.body, status_code=answer.status)
        # Several WWW-Authenticate challenges may be due: keep every header, not one per name.
        response.raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers]
        return response
    return JSONResponse(body, headers={"cache-control": "no-store", "pragma": "no-cache"})


async def token_endpoint(request: Request) -> Response:
    """``POST /api/token``: the session's caller gets an access token and a refresh token."""
    auth, service = _token_service(request)
    if service is None:
        return _not_configured()
    if not service.binds_sessions:
        return _not_configured(SESSIONS_ELSEWHERE)
    handle = session(request)
    record = handle._state.record
    flow = service.issue_for_session(request.scope["authmw"].principal, record.sid if record else None)
    return await _token_response(request, flow, auth)


async def refresh_endpoint(request: Request) -> Response:
    """``POST /api/token/refresh`` with JSON ``{"refresh_token": ...}``: a new pair; reuse revokes the family."""
    auth, service = _token_service(request)
    if service is None:
        return _not_configured()
    return await _token_response(request, service.refresh(await _bounded_body(request)), auth)


async def _bounded_body(request: Request) -> bytes:
    """At most one byte more than a refresh request may have: enough to refuse a larger one, never all of it."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_REFRESH_BODY:
            break
    return body[: MAX_REFRESH_BODY + 1]


def _tokens(conn: HTTPConnection) -> TokenService:
    auth = conn.scope.get("authmw.authenticator")
    if not isinstance(auth, Authenticator) or auth.tokens is None:
        raise LookupError("token revocation needs JWT settings and a store")
    return auth.tokens


async def revoke_access_token(conn: HTTPConnection) -> None:
    """Deny the bearer token of this request until it expires and the leeway has passed ("log out this token")."""
    principal = conn.scope["authmw"].principal
    if principal is None or principal.source != "jwt":
        raise LookupError("this request was not authenticated by a bearer token")
    await run_async(_tokens(conn).revoke_access_token(principal))


async def revoke_all_tokens(conn: HTTPConnection, user_id: str) -> None:
    """Refuse every access token issued to `user_id` before now and end their refresh families."""
    await run_async(_tokens(conn).revoke_all_tokens(user_id))


async def jwks_endpoint(request: Request) -> Response:
    """The public keys of the minted tokens, for other services to verify them."""
    _, service = _token_service(request)
    if service is None:
        return _not_configured()
    return JSONResponse(service.issuer.jwks(), headers={"cache-control": "public, max-age=300"})
