"""The sans-IO heart of authmw: policy → credentials → principal → decision, for any shell.

`Authenticator.resolve` decides at once when no I/O is needed (a cached token and an in-process store, a local-cache
hit: most requests), and otherwise returns a `Pending` whose flow (see `authmw.io`) finishes that decision from
the point it reached: a key-set fetch before verifying, a revocation lookup, a session load. The WSGI shell drives
that flow with `run_sync`, the ASGI shell with `run_async`; the logic exists once, and runs once per request.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import re
import secrets
import time
from collections.abc import Sequence
from typing import Any
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
from authmw.exchange import AuthState, Exchange
from authmw.io import MISS, Blocking, Flow, Pending, run_sync, settled
from authmw.issuer import TokenIssuer, TokenService, jti_key
from authmw.keys import KeySet, UnknownKeyId
from authmw.policy import AMBIGUOUS_PATH, WEBSOCKET, Policy, Route, RouteTable
from authmw.principal import CONTROL_CHARACTERS, Principal
from authmw.request import RequestView, bearer_token
from authmw.sessions import SAFE_METHODS, SessionManager, SessionState
from authmw.stores import MemoryStore
from authmw.tokens import JWTVerifier

__all__ = ["AuthState", "Authenticator", "Exchange"]

log = logging.getLogger("authmw")

_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token
# RFC 3986 host (a reg-name or a bracketed IP literal) with an optional numeric port.
_HOST = re.compile(r"(?P<host>[A-Za-z0-9._~%!$&'()*+,;=-]+|\[[0-9A-Fa-f:.vV]+\])(?::[0-9]+)?")


#: the steps a remembered decision skips (begin → policy_for/is_cors_preflight → resolve → _verify_jwt, decide)
_DECISION_STEPS = frozenset(
    ("begin", "policy_for", "is_cors_preflight", "resolve", "_verify_jwt", "_unrevoked", "_conclude", "decide", "flow")
)
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
        # The store's answer without I/O (in-process, a local-cache hit), looked up once: `resolve` asks it first;
        # None where it never has one (every lookup is I/O).
        self._peek_token_state: Any = getattr(self.token_store, "peek_token_state", None)
        #: an in-process store that counts its revocation writes (`MemoryStore.revocations`), or None: a decision
        #: made after reading count N holds, as far as revocations go, while the count is N (see `still_holds`)
        self.revocation_counter: Any = None
        store = self.token_store
        # Only where the count covers everything token_state reads: MemoryStore's own token_state (a subclass's may
        # read more), not replaced on the object. Writes are counted by the store's maps themselves, whichever
        # method (a subclass's own revoke_jti, say) makes them.
        if (
            store is not None
            and not self._grace
            and type(store).token_state is MemoryStore.token_state
            and type(store).peek_token_state is MemoryStore.peek_token_state
            and "token_state" not in vars(store)
            and "peek_token_state" not in vars(store)
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
        """Resolve and check the caller of `exchange` in a synchronous world, its I/O (if any) driven there and
        then with `run_sync` (nothing to do on public routes and CORS preflights)."""
        if not exchange.public:
            outcome = self.resolve(exchange.view, exchange.policy, exchange.state)
            exchange.principal = run_sync(outcome.flow) if type(outcome) is Pending else outcome
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
        return (yield from settled(self.resolve(view, policy, session)))

    def resolve(
        self, view: RequestView, policy: Policy, session: SessionState | None = None
    ) -> Principal | Pending[Principal | None] | None:
        """Resolve and check the caller for a non-public `policy`: the principal (or None) at once when no I/O is
        needed, else a `Pending` whose flow finishes this decision from where it stopped. Raises the `AuthError`
        to answer.

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
            if token is not None:  # the credential used: a principal, or an error raised (never None)
                verified = self._verify_jwt(token)
                if type(verified) is Pending:
                    return Pending(self._concluded(verified.flow, view, policy, None))
                return self._conclude(view, policy, None, verified)
        if session is not None and "session" in accept:
            found = session.manager.lookup(session)
            if type(found) is Pending:
                return Pending(self._concluded(found.flow, view, policy, session))
            return self._conclude(view, policy, session, found)
        return self._conclude(view, policy, None, None)

    def _conclude(
        self, view: RequestView, policy: Policy, by_session: SessionState | None, principal: Principal | None
    ) -> Principal | None:
        """The last steps of a decision, once the caller is known: the cross-site checks of a caller found by the
        session `by_session`, then `decide`."""
        if principal is not None and by_session is not None and policy.csrf:
            websocket = view.is_websocket
            if websocket or view.method not in SAFE_METHODS:
                by_session.manager.check_cross_site(by_session, websocket=websocket)
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

    def _concluded(
        self, rest: Flow[Principal | None], view: RequestView, policy: Policy, by_session: SessionState | None
    ) -> Flow[Principal | None]:
        """The rest of a decision that waits for I/O: `rest` (the credential's check from where it stopped), then
        `_conclude`."""
        principal = yield from rest
        return self._conclude(view, policy, by_session, principal)

    def _verify_jwt(self, token: str) -> Principal | Pending[Principal]:
        """The bearer token's principal, verified and not revoked; a `Pending` where that needs I/O first."""
        verifier = self.verifier
        if verifier is None:
            raise InvalidToken("bearer tokens are not accepted by this service", reason="jwt_disabled")
        keyset = verifier.keyset
        if keyset.refreshes and keyset.refresh_due():
            return Pending(self._keys_then_verify(token, keyset, None))
        try:
            principal = verifier.verify(token)
        except UnknownKeyId as unknown:
            return Pending(self._keys_then_verify(token, keyset, unknown))
        return self._unrevoked(principal)

    def _keys_then_verify(self, token: str, keyset: KeySet, unknown: UnknownKeyId | None) -> Flow[Principal]:
        """Fetch the key set, then verify `token`: a refresh that was due (`unknown` None), or, for a token naming
        a key id the set does not have (`unknown`), a forced look (rate-limited by the key set) in case the
        issuer rotated its keys; nothing new, or still unknown: `unknown` is the answer."""
        verifier = self.verifier
        assert verifier is not None
        fetched = yield Blocking(keyset.ensure_fresh if unknown is None else _forced(keyset))
        if unknown is not None and not fetched:
            raise unknown
        try:
            principal = verifier.verify(token)
        except UnknownKeyId as still_unknown:
            if unknown is not None:
                raise
            principal = yield from self._keys_then_verify(token, keyset, still_unknown)  # once at most
            return principal
        return (yield from settled(self._unrevoked(principal)))

    def _unrevoked(self, principal: Principal) -> Principal | Pending[Principal]:
        """`principal` if its token is not revoked (checked after the signature, and after the verifier's cache: a
        revoked token is refused even when cached); a `Pending` where only the store's I/O can tell."""
        store = self.token_store
        if store is None:
            return principal
        args = self._token_state_args(principal)
        peek = self._peek_token_state
        state = peek(*args) if peek is not None else MISS
        if state is MISS:
            return Pending(_looked_up(principal, store.token_state(*args)))
        return _unless_revoked(principal, state)

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
            and self._peek_token_state is not None
            and not self._grace
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
        peek = self._peek_token_state
        if peek is None or self._grace:
            return False
        try:
            state = peek(*self._token_state_args(principal))
        except AuthError:  # the store cannot say now
            return False
        # MISS: not in the local cache (or it is not serving): ask the store, the full way
        return state is not MISS and _revoked(principal, state) is None

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


def _forced(keyset: KeySet) -> functools.partial[bool]:
    return functools.partial(keyset.ensure_fresh, force=True)


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


def _unless_revoked(principal: Principal, state: tuple[float | None, bool]) -> Principal:
    """`principal`, unless the revocation state `(not_before, denied)` refuses its token."""
    why = _revoked(principal, state)
    if why is not None:
        raise InvalidToken(why, reason="revoked")
    return principal


def _looked_up(principal: Principal, lookup: Flow[tuple[float | None, bool]]) -> Flow[Principal]:
    """`principal` once the store's revocation `lookup` says its token is not revoked."""
    return _unless_revoked(principal, (yield from lookup))


def _revoked(principal: Principal, state: tuple[float | None, bool]) -> str | None:
    """Why the revocation state `(not_before, denied)` refuses `principal`'s token, or None."""
    not_before, denied = state
    if denied:
        return "the token has been revoked"
    if not_before is not None and (principal.issued_at is None or principal.issued_at < not_before):
        # Both logout-everywhere and a tokens-only revoke-all (sessions kept) set this not-before: say tokens.
        return "the token was issued before the user's tokens were revoked"
    return None
