"""Who is calling: the `Principal` attached to an authenticated request, and its anonymous counterpart.

Both also satisfy Starlette's `BaseUser` protocol by shape (`is_authenticated`, `display_name`,
`identity`), so `request.user` works without this module importing Starlette.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

__all__ = ["ANONYMOUS", "Anonymous", "AuthScopes", "CredentialKind", "Principal"]

CredentialKind = Literal["session", "jwt"]

#: C0 and C1 controls, DEL and lone surrogates: never in a user id (a JWT's `sub`, a session's user), where a
#: newline would split the local caches' invalidation messages and log lines, nor in a URL authmw writes
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    `claims` holds the verified JWT claims (empty for sessions); `token_id` is the JWT's `jti`;
    times are POSIX seconds.
    """

    id: str
    source: CredentialKind
    scopes: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, compare=False)
    token_id: str | None = None
    issuer: str | None = None
    issued_at: float | None = None
    auth_time: float | None = None
    expires_at: float | None = None
    #: a public name of the session (never the session id itself); None for JWTs
    session_handle: str | None = None
    #: the jti-denylist key of a JWT, ``(iss, jti)`` hashed (P30); computed once when the token is verified
    revocation_key: str | None = field(default=None, compare=False, repr=False)

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.id

    @property
    def identity(self) -> str:
        return self.id

    def has_scopes(self, required: Iterable[str]) -> bool:
        return self.scopes.issuperset(required)

    def to_dict(self) -> dict[str, Any]:
        """The public view used by the example apps: id, source and sorted scopes."""
        return {"id": self.id, "source": self.source, "scopes": sorted(self.scopes)}


class Anonymous:
    """The caller when no credential was presented (or the route is public)."""

    __slots__ = ()
    is_authenticated = False
    display_name = ""
    identity = ""
    scopes: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        return "ANONYMOUS"


ANONYMOUS = Anonymous()


class AuthScopes:
    """`scope["auth"]`: shaped like Starlette's `AuthCredentials` so `requires(...)` keeps working.

    Authenticated callers carry the conventional ``"authenticated"`` scope besides their own. One instance
    per set of scopes is shared by every request with that set, so `scopes` is a tuple (read-only).
    """

    __slots__ = ("scopes",)
    scopes: tuple[str, ...]

    def __init__(self, scopes: Iterable[str] = ()) -> None:
        object.__setattr__(self, "scopes", tuple(scopes))

    def __setattr__(self, name: str, value: Any) -> None:
        # Shared by every request with the same scopes: a change made in one request must not reach another's.
        raise AttributeError(f"AuthScopes is read-only (shared between requests); cannot set {name!r}")

    @classmethod
    def for_principal(cls, principal: Principal | None) -> AuthScopes:
        if principal is None:
            return _NO_SCOPES
        found = _SHARED.get(principal.scopes)
        if found is None:
            if len(_SHARED) >= 1024:
                _SHARED.clear()
            found = _SHARED[principal.scopes] = cls(("authenticated", *sorted(principal.scopes)))
        return found

    def __repr__(self) -> str:
        return f"AuthScopes({list(self.scopes)!r})"


_NO_SCOPES = AuthScopes()
_SHARED: dict[frozenset[str], AuthScopes] = {}
