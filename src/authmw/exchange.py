"""`Exchange`: one request's trip through authmw, from the decision to the response; `AuthState`, what the app sees.

The shells build an `Exchange` with `Authenticator.begin`, attach what was decided to the request, and ask it what
the response needs (identity headers, session cookies, the session's data bag saved first).
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from typing import Any, AnyStr, NamedTuple

from authmw.errors import ErrorResponse
from authmw.io import Flow
from authmw.policy import Policy
from authmw.principal import Principal
from authmw.request import RequestView, with_identity_headers
from authmw.sessions import SessionState

__all__ = ["AuthState", "Exchange"]


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
