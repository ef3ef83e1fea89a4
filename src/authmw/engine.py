"""The sans-IO heart of authmw: policy → credentials → principal → decision, for any shell.

`Authenticator.flow` is a flow (see `authmw.flows`): it yields effects when it needs I/O (a key-set
refresh, a session-store lookup) and returns the principal (or None), or raises an `AuthError`. The WSGI
shell runs it with `run_sync`, the ASGI shell with `run_async`; the logic exists once.
"""

from __future__ import annotations

import inspect
import logging
import math
import re
import secrets
import time
from collections.abc import Iterable, MutableMapping, Sequence
from typing import Any, AnyStr, NamedTuple
from urllib.parse import quote

from authmw.audit import Auditor
from authmw.config import AuthConfig
from authmw.errors import (
    AuthError,
    ConfigurationError,
    ErrorResponse,
    InsufficientScope,
    InvalidRequest,
    InvalidToken,
    MissingCredentials,
    StepUpRequired,
    render_error,
)
from authmw.flows import INLINE, IO, Flow, io_blocking, io_shortcuts, io_store, restartable, run_async, run_sync
from authmw.issuer import TokenIssuer, TokenService, jti_key
from authmw.keys import UnknownKeyId
from authmw.policy import AMBIGUOUS_PATH, WEBSOCKET, Policy, Route, RouteTable
from authmw.principal import CONTROL_CHARACTERS, Principal
from authmw.request import RequestView, bearer_token, with_identity_headers
from authmw.sessions import SAFE_METHODS, SessionManager, SessionState
from authmw.stores import MemoryStore
from authmw.tokens import JWTVerifier

__all__ = ["AuthState", "Authenticator", "Exchange", "run_async", "run_sync"]

log = logging.getLogger("authmw")

_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token
# RFC 3986 host (a reg-name or a bracketed IP literal) with an optional numeric port.
_HOST = re.compile(r"(?P<host>[A-Za-z0-9._~%!$&'()*+,;=-]+|\[[0-9A-Fa-f:.vV]+\])(?::[0-9]+)?")


class AuthState(NamedTuple):
    """What the middleware decided for a request: `scope["authmw"]` / `environ["authmw"]` (immutable)."""

    policy: Policy
    principal: Principal | None


class Exchange:
    """One request's trip through authmw: its policy, session state and caller, and what the response needs."""

    __slots__ = ("policy", "principal", "public", "response_started", "state", "view")

    def __init__(self, view: RequestView, policy: Policy, public: bool, state: SessionState | None) -> None:
        self.view = view
        self.policy = policy
        self.public = public
        self.state = state
        self.principal: Principal | None = None
        self.response_started = False

    @property
    def passthrough(self) -> bool:
        """Nothing to add to the response: the app's own answer goes out untouched."""
        return self.public and self.state is None

    def attach_wsgi(self, environ: MutableMapping[str, Any], state: AuthState | None = None) -> None:
        """What a WSGI app reads of the decision; `state` is its `AuthState` when one was built already."""
        environ["authmw"] = state if state is not None else AuthState(self.policy, self.principal)
        environ["authmw.exchange"] = self
        environ["authmw.principal"] = self.principal
        if self.principal is not None:
            environ["REMOTE_USER"] = self.principal.id

    def unsaved(self) -> bool:
        """The app changed the session's data bag: `finish` must run before the response starts."""
        state = self.state
        return state is not None and state.data_snapshot is not None and state.data_changed()

    def finish(self) -> Flow[None]:
        """Save the session's data bag if the app changed it (raises `ServiceUnavailable` if it cannot). Shells
        ask `unsaved()` first, so that most responses drive no flow at all."""
        state = self.state
        if state is not None:
            yield from state.manager.save_data(state)  # which saves only a changed bag

    def response_headers(
        self, headers: Iterable[tuple[AnyStr, AnyStr]], sample: AnyStr
    ) -> list[tuple[AnyStr, AnyStr]] | None:
        """The response headers with identity headers (P31) and session cookies added; None when unchanged."""
        state = self.state
        cookies = []
        if state is not None and (state.set_cookie is not None or state.clear_cookie or state.bad_cookie):
            cookies = state.response_cookies()  # asked only when one is due: most responses set no cookie
        if self.public and not cookies:
            return None
        out = with_identity_headers(headers, self.principal is not None or bool(cookies), sample)
        if cookies:
            name = b"set-cookie" if isinstance(sample, bytes) else "Set-Cookie"
            out.extend((name, c.encode("latin-1") if isinstance(sample, bytes) else c) for c in cookies)
        return out

    def error_headers(self, response: ErrorResponse) -> list[tuple[str, str]]:
        """An error answer's headers, plus the cookie-clearing one when a bad session cookie came in."""
        headers = list(response.headers)
        if self.state is not None:
            headers.extend(("set-cookie", cookie) for cookie in self.state.response_cookies())
        return headers


#: the steps a remembered decision skips (begin → policy_for/is_cors_preflight → resolve → _verify_jwt, decide)
_DECISION_STEPS = frozenset(("begin", "policy_for", "is_cors_preflight", "resolve", "_verify_jwt", "decide", "flow"))
#: how many times a decision step was set or deleted on an Authenticator class (tests monkeypatch them)
_step_patches = [0]


class _WatchesSteps(type):
    """Counts changes to decision steps on the class, so that decisions remembered before a patch are not reused
    after it (see `Authenticator.rememberable`)."""

    def __setattr__(cls, name: str, value: Any) -> None:
        if name in _DECISION_STEPS:
            _step_patches[0] += 1
        super().__setattr__(name, value)

    def __delattr__(cls, name: str) -> None:
        if name in _DECISION_STEPS:
            _step_patches[0] += 1
        super().__delattr__(name)


class Authenticator(metaclass=_WatchesSteps):
    """Decides, for one request, which principal (if any) is attached or which error is answered."""

    #: tests only (`authmw.testing.override_principal`): every non-public request is this caller
    principal_override: Principal | None = None

    def __init__(self, config: AuthConfig) -> None:
        config.validate()  # again: its fields may have changed since it was built
        self.config = config
        self.table = RouteTable(config.routes, config.default)
        # Whether the decision methods are authmw's own: decisions are only remembered (see `rememberable`) when
        # nothing overrides or patches a step they would skip.
        cls = type(self)
        self._stock = all(getattr(cls, name) is _STOCK_STEPS[name] for name in _DECISION_STEPS)
        self._patches_seen = _step_patches[0]
        self.verifier = JWTVerifier(config.jwt) if config.jwt is not None else None
        first = config.sessions.secret_keys[0] if config.sessions is not None else secrets.token_bytes(32)
        salt = first.encode() if isinstance(first, str) else bytes(first)
        self.auditor = Auditor(config.audit, salt)
        self.sessions = SessionManager(config.sessions, self.auditor) if config.sessions is not None else None
        self._max_token_bytes = config.jwt.max_token_bytes if config.jwt is not None else 8192
        self._grace = config.jwt.revocation_grace if config.jwt is not None else 0.0
        self._proxies = config.trusted_proxies
        # Revocations (jti denylist, per-user not-before) and refresh tokens live with the sessions by default.
        self.token_store: Any = None
        self.tokens: TokenService | None = None
        if config.jwt is not None:
            self.token_store = config.jwt.revocation_store or (config.sessions.store if config.sessions else None)
            if self.token_store is not None:
                sessions_in = config.sessions.store if config.sessions is not None else None
                # Refresh tokens' tags are masked with keys derived from the session keys, as cookies' are.
                masks = config.sessions.secret_keys if config.sessions is not None else None
                try:
                    self.tokens = TokenService(
                        TokenIssuer(config.jwt),
                        self.token_store,
                        self.auditor,
                        sessions_in,
                        [k.encode() if isinstance(k, str) else bytes(k) for k in masks] if masks else None,
                    )
                except ConfigurationError as exc:
                    log.info("authmw: token issuance is off: %s", exc)
                if self.tokens is not None and not self.tokens.binds_sessions:
                    log.warning(
                        "authmw: JWTSettings.revocation_store is not the session store, so POST /api/token answers"
                        " 501: refresh tokens are bound to their session, which needs both in one store"
                    )
        # An in-process store's token_state, called straight from `_verify_jwt` (it cannot need I/O, so no I/O
        # point is needed for it); None for a store that does I/O, or when a grace argument must be passed.
        # A store's answer without I/O when it has one (a local-cache hit), for `still_holds`; None: it never has.
        self._token_state_now: Any = None
        self._token_state_peek: Any = None
        #: an in-process store that counts its revocation writes (`MemoryStore.revocations`), or None: a decision
        #: made after reading count N holds, as far as revocations go, while the count is N (see `still_holds`)
        self.revocation_counter: Any = None
        if self.token_store is not None and not self._grace:
            self._token_state_now, self._token_state_peek = io_shortcuts(self.token_store, "token_state")
            store = self.token_store
            # Only where the count covers everything token_state reads: MemoryStore's own token_state (a
            # subclass's may read more), not replaced on the object. Writes are counted by the store's maps
            # themselves, whichever method (a subclass's own revoke_jti, say) makes them.
            if (
                self._token_state_now is not None
                and type(store).token_state is MemoryStore.token_state
                and "token_state" not in vars(store)
            ):
                self.revocation_counter = store
        #: the `iss` of the tokens this app mints (their `sid` names a refresh family in the token store), or
        #: `_NO_FAMILIES`: an app that mints none checks no `sid` (an identity provider's `sid` is its session)
        self._family_issuer: Any = _NO_FAMILIES
        if self.tokens is not None and config.jwt is not None:
            if _takes_family(self.token_store):
                issuer = config.jwt.issuer
                self._family_issuer = issuer if issuer is None or isinstance(issuer, str) else next(iter(issuer))
            else:
                log.warning(
                    "authmw: the token store's token_state() takes no family argument, so an access token is not"
                    " refused when its refresh family is revoked (a reused refresh token, a logout)"
                )
        if self.sessions is not None and config.jwt is not None:
            self.sessions.token_store = self.token_store
            # A not-before must outlive every access token issued before it.
            self.sessions.not_before_ttl = config.jwt.max_lifetime + config.jwt.leeway

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _DECISION_STEPS:  # a decision step patched on this object: stop remembering decisions
            object.__setattr__(self, "_stock", False)
        object.__setattr__(self, name, value)

    @staticmethod
    def host_of(header: str | None) -> str:
        """The name host rules are matched against: the Host header's host, lower-cased, port removed; "" when
        the header is missing or malformed (then no host rule applies). Adapters may replace this with their
        framework's own reading (the Starlette adapter does)."""
        if header is None:
            return ""
        found = _HOST.fullmatch(header)
        return found["host"].lower() if found is not None else ""

    def add_routes(self, routes: Sequence[Route]) -> None:
        """Put `routes` (compiled from an app's endpoints) before the configured path rules, replacing any
        compiled before."""
        path_rules = self.config.routes
        self.table = RouteTable([*routes, *path_rules], self.table.default, path_rules_start=len(routes))

    def policy_for(self, view: RequestView) -> Policy:
        table = self.table
        method = WEBSOCKET if view.is_websocket else view.method
        host = ""
        if table.uses_host:
            values = view.header_values("host")
            host = self.host_of(values[0] if values else None)
        return table.match(method, view.path, host, "" if view.is_websocket else view.method_as_sent)

    def begin(self, view: RequestView, policy: Policy | None = None) -> Exchange:
        """Start a request: its policy (from the route table unless given) and, with sessions on, its state."""
        if self._proxies:
            view.trusted_proxies = self._proxies
        if policy is None:
            policy = self.policy_for(view)
        public = not policy.accept or (view.method_as_sent == "OPTIONS" and self.is_cors_preflight(view))
        # Session state where a session can be read or started (public routes: a login form posts there).
        wants_session = public or "session" in policy.accept
        state = SessionState(self.sessions, view) if self.sessions is not None and wants_session else None
        return Exchange(view, policy, public, state)

    def authenticate(self, exchange: Exchange) -> Principal | None:
        """Resolve and check the caller of `exchange` in a synchronous world, I/O inline (nothing to do on
        public routes and CORS preflights)."""
        if not exchange.public:
            exchange.principal = self.resolve(exchange.view, exchange.policy, exchange.state, INLINE)
        return exchange.principal

    @staticmethod
    def is_cors_preflight(view: RequestView) -> bool:
        # Browsers never send credentials on a preflight; refusing it would break CORS for every route.
        # Only what a browser sends qualifies: `OPTIONS` spelt exactly so (CORS middleware compares it
        # case-sensitively and would hand an `options` request to the app), with Origin and the method asked for.
        # One method token and one origin (a WSGI server joins repeated fields with commas: not a preflight either).
        if view.method_as_sent != "OPTIONS":
            return False
        asked, origin = view.header("access-control-request-method"), view.header("origin")
        return asked is not None and _METHOD.fullmatch(asked) is not None and origin is not None and "," not in origin

    def flow(self, view: RequestView, policy: Policy, session: SessionState | None = None) -> Flow[Principal | None]:
        """`resolve` as a flow (for callers that drive flows)."""
        return restartable(lambda io: self.resolve(view, policy, session, io))

    def resolve(
        self, view: RequestView, policy: Policy, session: SessionState | None = None, io: IO = INLINE
    ) -> Principal | None:
        """Resolve and check the caller for a non-public `policy` (a restartable step, see `authmw.flows`:
        shells call it with ``io=None`` first, so a request that needs no I/O costs no flow machinery).

        A bearer token, when the route accepts one and it is present, is the credential used; an invalid
        one is refused, never replaced by the session cookie or by anonymity (P26).
        """
        if policy is AMBIGUOUS_PATH:
            raise InvalidRequest(
                "the path can be read as naming two differently protected routes (dot segments or control characters)",
                reason="ambiguous_path",
            )
        principal: Principal | None = Authenticator.principal_override
        if principal is not None:
            self.decide(policy, principal)
            return principal
        accept = policy.accept
        if "jwt" in accept:
            verifier = self.verifier
            known = verifier.verified_tokens if verifier is not None else ()
            token = bearer_token(view, max_bytes=self._max_token_bytes, known=known)
            if token is not None:
                principal = self._verify_jwt(token, io)
        if principal is None and session is not None and "session" in accept:
            principal = session.manager.lookup(session, io)
            websocket = view.is_websocket
            if principal is not None and policy.csrf and (websocket or view.method not in SAFE_METHODS):
                session.manager.check_cross_site(session, websocket=websocket)
        # The stock `decide` has nothing to do for a caller on a route without scopes or max_auth_age; an
        # overridden or patched one (see `_unpatched`) is always asked.
        if (
            principal is None
            or policy.scopes
            or policy.max_auth_age is not None
            or not (self._stock and self._patches_seen == _step_patches[0])  # `_unpatched()`, inline: every request
        ):
            self.decide(policy, principal)
        return principal

    def _verify_jwt(self, token: str, io: IO) -> Principal:
        verifier = self.verifier
        if verifier is None:
            raise InvalidToken("bearer tokens are not accepted by this service", reason="jwt_disabled")
        kept = io.get("verified-token") if isinstance(io, dict) else None
        if kept is not None:  # a run after I/O (the revocation lookup): verified already, hooks called already
            principal: Principal = kept[1]
        else:
            keyset = verifier.keyset
            if keyset.refreshes and keyset.refresh_due():
                io_blocking(io, "jwks", keyset.ensure_fresh)
            try:
                principal = verifier.verify(token)
            except UnknownKeyId:
                # The issuer may have rotated keys: look once (rate-limited by the key set), then decide.
                if not io_blocking(io, "jwks-unknown-kid", lambda: keyset.ensure_fresh(force=True)):
                    raise
                principal = verifier.verify(token)
            if isinstance(io, dict):
                io["verified-token"] = (True, principal)
        store = self.token_store
        if store is not None:
            # After the signature and after the cache: a revoked token is refused even when cached.
            args = self._token_state_args(principal)
            if self._token_state_now is not None:
                state = self._token_state_now(*args)
            else:
                state = io_store(io, "token_state", store, "token_state", *args)
            why = _revoked(principal, state)
            if why is not None:
                raise InvalidToken(why, reason="revoked")
        return principal

    def _token_state_args(self, principal: Principal) -> tuple[Any, ...]:
        """The arguments of the token store's `token_state` for `principal`'s token: the user and the jti key; then
        the grace only when one is configured (a store written to the two-argument form still works), and the refresh
        family a token minted here names (claim `sid`, when its `iss` is this app's: tokens minted elsewhere have none
        of ours), so that one lookup also says whether that family still lives."""
        key = _revocation_key(principal)
        if principal.issuer == self._family_issuer:  # never `_NO_FAMILIES`: then no token has a family of ours
            family = principal.claims.get("sid")
            if type(family) is str:
                return principal.id, key, self._grace, family
        if self._grace:
            return principal.id, key, self._grace
        return principal.id, key

    # ---- decisions a shell may remember (see authmw.asgi: repeated bearer requests) ----

    def rememberable(self, exchange: Exchange, table: RouteTable, verifications: int) -> bool:
        """Can this request's decision (made with route table `table`) be reused for the same method, path and
        Authorization value? Only an authenticated bearer token on a route without session state, step-up or host
        rules, decided by authmw's own steps (none overridden or patched), with revocations the store can answer
        without I/O (in-process, or a local-cache hit) so that `still_holds` can check them on every reuse.

        And only a repeated token: `verifications` is the verifier's count of full verifications read before
        deciding; a token verified in full just now may never come back, and remembering costs."""
        principal, policy, verifier = exchange.principal, exchange.policy, self.verifier
        return (
            principal is not None
            and verifier is not None
            and verifier.verifications == verifications
            and principal.source == "jwt"
            and exchange.state is None
            and not exchange.public
            and policy.max_auth_age is None
            and self._unpatched()
            and (self._token_state_now is not None or self._token_state_peek is not None)
            and not table.uses_host
            and Authenticator.principal_override is None
        )

    def _unpatched(self) -> bool:
        """No decision step overridden or patched, on this object or (since it was built) on its class."""
        return self._stock and self._patches_seen == _step_patches[0]

    def still_holds(self, principal: Principal, token: str, table: RouteTable, revocations: int | None = None) -> bool:
        """Does a decision made for `token` (authenticating `principal`) with route table `table` hold now? The
        table is still the one in use, the verified token is still cached as this very principal (not past `exp`,
        keys unchanged), no key refresh is due, no test override is set, and the token is not revoked. False:
        decide afresh (also when the store cannot say now: deciding afresh answers that with a 503).

        `revocations`: the store's `revocation_counter` count, read before that decision looked the token up. While
        it is unchanged nothing was revoked since, so no lookup is needed; once it changed, False (decide afresh,
        which reads the new count)."""
        verifier = self.verifier
        if (
            table is not self.table
            or verifier is None
            or Authenticator.principal_override is not None
            or not self._unpatched()
        ):
            return False
        if type(verifier).verify is not _STOCK_VERIFY or "verify" in vars(verifier):
            return False  # a verify() of its own may check more than the cache says
        keyset = verifier.keyset
        if keyset.refreshes and keyset.refresh_due():
            return False
        if verifier.cached(token) is not principal:
            return False
        if revocations is not None:
            counter = self.revocation_counter
            return counter is not None and counter.revocations == revocations
        args = self._token_state_args(principal)
        try:
            if self._token_state_now is not None:
                state = self._token_state_now(*args)
            elif self._token_state_peek is not None:
                state = self._token_state_peek(*args)
                if state is None:  # not in the local cache (or it is not serving): ask the store, the full way
                    return False
            else:
                return False
        except AuthError:  # the store cannot say now
            return False
        return _revoked(principal, state) is None

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
        if policy.max_auth_age is not None:
            auth_time = principal.auth_time
            if auth_time is None or not math.isfinite(auth_time) or time.time() - auth_time > policy.max_auth_age:
                raise StepUpRequired(
                    "a more recent authentication is required for this route", max_age=policy.max_auth_age
                )

    def error_response(self, error: AuthError, view: RequestView, policy: Policy | None) -> ErrorResponse:
        """The answer for `error`, after the user's `on_error` hook; logs the reason code, never a secret (P28)."""
        self.auditor.emit(
            "store_unavailable" if error.status == 503 else "auth_failure",
            reason=error.reason,
            method=view.method,
            path=view.path[:200],
            status=error.status,
        )
        accept = policy.accept if policy is not None else frozenset(("jwt",))
        bearer = "jwt" in accept
        session = "session" in accept and self.sessions is not None
        response = self._login_redirect(error, view, bearer, session)
        if response is None:
            response = render_error(error, realm=self.config.realm, bearer=bearer, session=session)
        hook = self.config.on_error
        if hook is not None:
            response = hook(error, view, response)
        return response

    def _login_redirect(self, error: AuthError, view: RequestView, bearer: bool, session: bool) -> ErrorResponse | None:
        """Browsers asking for a session-only page they may not see yet go to the login page (303)."""
        login_url = self.sessions.settings.login_url if self.sessions is not None else None
        if (
            login_url is None
            or bearer
            or not session
            or view.method not in ("GET", "HEAD")
            or not isinstance(error, MissingCredentials | StepUpRequired)
            or "text/html" not in (view.header("accept") or "")
        ):
            return None
        # Where the app is mounted, then the path: one leading slash, no backslash there ("//evil.example", and
        # "/\\evil.example" to a browser, are another site to a login page that follows `next`), and no control
        # character anywhere (browsers drop tabs and newlines from URLs: "/\t/evil.example" is "//evil.example").
        full = view.mount_path.rstrip("/") + "/" + view.path.lstrip("/")
        if CONTROL_CHARACTERS.search(full):
            return None  # a plain 401 instead
        back = "/" + full.lstrip("/\\")
        separator = "&" if "?" in login_url else "?"
        location = f"{login_url}{separator}next={quote(back, safe='/')}"
        return ErrorResponse(303, [("location", location), ("cache-control", "no-store"), ("content-length", "0")], b"")


#: authmw's own decision steps and verifier, as defined: what `_unpatched` compares with
_STOCK_STEPS = {name: getattr(Authenticator, name) for name in _DECISION_STEPS}
_STOCK_VERIFY = JWTVerifier.verify


def _revocation_key(principal: Principal) -> str | None:
    key = principal.revocation_key
    if key is None and principal.token_id is not None:
        key = jti_key(principal.issuer, principal.token_id)
    return key


#: `Authenticator._family_issuer` when tokens' `sid` claims are not checked
_NO_FAMILIES = object()


def _takes_family(store: Any) -> bool:
    """Does the store's token_state take a fourth argument (the refresh family)?"""
    try:
        parameters = inspect.signature(store.token_state).parameters
    except (TypeError, ValueError):  # no signature to read: trust it
        return True
    kinds = [p.kind for p in parameters.values()]
    positional = sum(k in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) for k in kinds)
    return positional >= 4 or inspect.Parameter.VAR_POSITIONAL in kinds


def _revoked(principal: Principal, state: tuple[float | None, bool]) -> str | None:
    """Why the revocation state `(not_before, denied)` refuses `principal`'s token, or None."""
    not_before, denied = state
    if denied:
        return "the token has been revoked"
    if not_before is not None and (principal.issued_at is None or principal.issued_at < not_before):
        # Both logout-everywhere and a tokens-only revoke-all (sessions kept) set this not-before: say tokens.
        return "the token was issued before the user's tokens were revoked"
    return None
