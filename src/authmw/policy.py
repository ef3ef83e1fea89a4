"""What a route requires (`Policy`) and which routes get which policy (`Route`, `RouteTable`).

Patterns match by path segments, never by string prefix: ``/admin`` covers ``/admin`` and ``/admin/``
but never ``/administrator``. ``{name}`` matches one segment, ``{name:path}`` (or a final ``*``)
matches the rest of the path, including nothing. The first matching route wins; otherwise the default.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from authmw.errors import ConfigurationError
from authmw.principal import CredentialKind

__all__ = ["AMBIGUOUS_PATH", "DEFER", "WEBSOCKET", "Policy", "Route", "RouteTable", "normalize_path"]

_KINDS: frozenset[CredentialKind] = frozenset(("session", "jwt"))
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


@dataclass(frozen=True, slots=True)
class Policy:
    """Which credentials a route accepts and what the caller must have.

    Build one with the class methods: `Policy.public()`, `Policy.optional()`, `Policy.required()`,
    `Policy.jwt(...)`, `Policy.session(...)`.
    """

    accept: frozenset[CredentialKind] = _KINDS
    auth_required: bool = False
    scopes: frozenset[str] = frozenset()
    #: seconds; the caller must have authenticated at most this long ago (step-up for sensitive routes)
    max_auth_age: float | None = None
    #: cross-site request checks on unsafe methods when the credential came from a cookie
    csrf: bool = True

    def __post_init__(self) -> None:
        if not self.accept <= _KINDS:
            raise ConfigurationError(f"unknown credential kinds: {sorted(self.accept - _KINDS)}")
        if self.auth_required and not self.accept:
            raise ConfigurationError("a policy that requires authentication must accept a credential kind")
        if (self.scopes or self.max_auth_age is not None) and not self.auth_required:
            raise ConfigurationError("scopes and max_auth_age only make sense on a policy that requires auth")
        for scope in self.scopes:
            if _SCOPE_TOKEN.fullmatch(scope) is None:  # RFC 6749 §3.3 scope-token
                raise ConfigurationError(f"invalid scope name {scope!r}")
        if self.max_auth_age is not None and not 0 < self.max_auth_age < float("inf"):
            raise ConfigurationError("max_auth_age must be a positive number of seconds")

    @property
    def is_public(self) -> bool:
        return not self.accept

    @classmethod
    def public(cls) -> Policy:
        """No credential is read; the request always passes anonymously."""
        return cls(accept=frozenset(), auth_required=False)

    @classmethod
    def optional(cls, accept: Iterable[CredentialKind] = _KINDS) -> Policy:
        """Identify the caller when a credential is presented; pass anonymous requests through.

        A presented but invalid credential is still refused (never downgraded to anonymous, P26).
        """
        return cls(accept=frozenset(accept), auth_required=False)

    @classmethod
    def required(
        cls,
        accept: Iterable[CredentialKind] = _KINDS,
        *,
        scopes: Iterable[str] = (),
        max_auth_age: float | None = None,
        csrf: bool = True,
    ) -> Policy:
        """Authentication by any accepted kind is required."""
        return cls(frozenset(accept), True, frozenset(scopes), max_auth_age, csrf)

    @classmethod
    def jwt(cls, *, scopes: Iterable[str] = (), max_auth_age: float | None = None) -> Policy:
        """A bearer JWT is required; cookies are ignored."""
        return cls.required(("jwt",), scopes=scopes, max_auth_age=max_auth_age)

    @classmethod
    def session(cls, *, scopes: Iterable[str] = (), max_auth_age: float | None = None, csrf: bool = True) -> Policy:
        """A session cookie is required; bearer tokens are ignored."""
        return cls.required(("session",), scopes=scopes, max_auth_age=max_auth_age, csrf=csrf)

    @classmethod
    def either(cls, *, scopes: Iterable[str] = (), max_auth_age: float | None = None) -> Policy:
        """A session cookie or a bearer JWT is required (a bearer token, when present, is the one used)."""
        return cls.required(_KINDS, scopes=scopes, max_auth_age=max_auth_age)

    @classmethod
    def parse(cls, spec: str, scopes: Iterable[str] = ()) -> Policy:
        """A policy from its name, for configuration files: public, optional, required, jwt, session, either."""
        name = spec.strip().lower()
        scopes = tuple(scopes)
        if scopes and name in ("public", "optional"):
            raise ConfigurationError(f"a {name} policy cannot require scopes")
        if name == "public":
            return cls.public()
        if name == "optional":
            return cls.optional()
        if name in ("required", "either"):
            return cls.required(scopes=scopes)
        if name == "jwt":
            return cls.jwt(scopes=scopes)
        if name == "session":
            return cls.session(scopes=scopes)
        raise ConfigurationError(f"unknown policy {spec!r}; use public, optional, required, jwt or session")


_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)(?::(\w+))?\}$")
_INNER_PARAM = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*(?::(\w+))?\}")
# What each path convertor matches in one segment (Starlette's and Werkzeug's convertors).
_CONVERTORS = {
    None: "[^/]+",
    "str": "[^/]+",
    "string": "[^/]+",
    "int": "[0-9]+",
    "float": r"[0-9]+(?:\.[0-9]+)?",
    "uuid": "[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}",
}
_ANY: Literal["*"] = "*"
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")

#: the method a websocket handshake is matched with (a GET, but only rules for GET or for websockets take it)
WEBSOCKET = "WEBSOCKET"


def normalize_path(path: str) -> str:
    """A path with repeated slashes collapsed, dot segments resolved and no trailing slash (as a proxy may send
    it on). The route table matches both this reading and the path as sent, and takes the stricter policy.
    """
    if "//" not in path and "/." not in path and (len(path) <= 1 or not path.endswith("/")):
        return path or "/"
    out: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if out:
                out.pop()
            continue
        out.append(segment)
    return "/" + "/".join(out)


@dataclass(frozen=True, slots=True)
class Route:
    """A path pattern (and optionally a set of methods, and a host) bound to a `Policy`.

    `host` limits the route to requests whose `Host` header (port removed) matches it: a name such as
    ``api.example.com`` or a pattern such as ``{tenant}.example.com`` (a parameter matches any run of characters
    other than ``/``, as in Starlette's `Host`), or a compiled regex (matched from the start, as Starlette does).
    """

    path: str
    policy: Policy
    methods: frozenset[str] | None = None
    host: re.Pattern[str] | None = None
    #: when set, the path (as sent) must match this regex instead of the segment pattern: rules compiled from
    #: an app's routes use the router's own regex, so they cover exactly the paths the router sends there
    path_regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)
    #: "http" or "websocket": a rule compiled from one kind of route never decides for the other; and its
    #: methods are compared as sent (case-sensitively, as Starlette's router does)
    transport: Literal["http", "websocket"] | None = None
    _segments: tuple[str | re.Pattern[str], ...] = field(init=False, repr=False, compare=False)
    _tail: bool = field(init=False, repr=False, compare=False)

    def __init__(
        self,
        path: str,
        policy: Policy,
        methods: Iterable[str] | None = None,
        *,
        host: str | re.Pattern[str] | None = None,
        path_regex: re.Pattern[str] | None = None,
        transport: Literal["http", "websocket"] | None = None,
    ) -> None:
        if not path.startswith("/"):
            raise ConfigurationError(f"route path must start with '/': {path!r}")
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "policy", policy)
        object.__setattr__(self, "host", _host_pattern(host) if isinstance(host, str) else host)
        object.__setattr__(self, "path_regex", path_regex)
        object.__setattr__(self, "transport", transport)
        if methods is not None:
            upper = {m if transport else m.upper() for m in methods}
            if "GET" in upper:
                upper.add("HEAD")
            object.__setattr__(self, "methods", frozenset(upper))
        else:
            object.__setattr__(self, "methods", None)
        segments: list[str | re.Pattern[str]] = []
        tail = False
        parts = [p for p in normalize_path(path).split("/") if p]
        for index, part in enumerate(parts):
            is_last = index == len(parts) - 1
            param = _PARAM.match(part)
            if part == "*" or (param and param.group(2) == "path"):
                if not is_last:
                    raise ConfigurationError(f"a path wildcard must be the last segment: {path!r}")
                tail = True
            elif param and param.group(2) in (None, "str", "string"):
                segments.append(_ANY)
            elif "{" in part or "}" in part:
                # A typed parameter ("{id:int}") or one inside a segment ("{name}.txt"): match by a regex.
                pieces = _INNER_PARAM.split(part)
                literals, convertors = pieces[::2], pieces[1::2]
                if any("{" in p or "}" in p for p in literals):
                    raise ConfigurationError(f"bad path parameter in {path!r}")
                unknown = [c for c in convertors if c not in _CONVERTORS]
                if unknown:
                    raise ConfigurationError(f"unknown path convertor {unknown[0]!r} in {path!r}")
                pattern = re.escape(literals[0])
                for convertor, literal in zip(convertors, literals[1:], strict=True):
                    pattern += f"(?:{_CONVERTORS[convertor]})" + re.escape(literal)
                segments.append(re.compile(pattern))
            else:
                segments.append(part)
        object.__setattr__(self, "_segments", tuple(segments))
        object.__setattr__(self, "_tail", tail)

    def matches(
        self, method: str, parts: Sequence[str], host: str = "", path: str | None = None, method_as_sent: str = ""
    ) -> bool:
        """Does a request match? `method` is upper-cased, or ``WEBSOCKET`` for a websocket handshake."""
        websocket = method == WEBSOCKET
        if self.transport is not None:
            if (self.transport == "websocket") != websocket:
                return False
            if self.methods is not None and (method_as_sent or method) not in self.methods:
                return False
        elif self.methods is not None and method not in self.methods and not (websocket and "GET" in self.methods):
            return False  # a path rule for GET also covers the websocket handshake (a GET)
        if self.host is not None and self.host.match(host) is None:
            return False
        if self.path_regex is not None:
            if path is None:
                path = "/" + "/".join(parts)
            return self.path_regex.match(path) is not None
        n = len(self._segments)
        if len(parts) < n or (len(parts) > n and not self._tail):
            return False
        for want, got in zip(self._segments, parts, strict=False):
            if want is _ANY:
                continue
            if type(want) is str:
                if want != got:
                    return False
            elif want.fullmatch(got) is None:  # type: ignore[union-attr]
                return False
        return True


class RouteTable:
    """Routes compiled once; `match` is the per-request lookup (memoised per method and path, bounded)."""

    __slots__ = ("_cache", "_cache_size", "default", "path_rules_start", "routes", "uses_host")

    def __init__(
        self, routes: Sequence[Route], default: Policy, *, cache_size: int = 4096, path_rules_start: int = 0
    ) -> None:
        self.routes = tuple(routes)
        self.default = default
        #: where the configured path rules begin (before them: rules compiled from an app's endpoints); a matching
        #: `DEFER` rule before this index skips the rest of the endpoint rules
        self.path_rules_start = path_rules_start
        #: whether `match` needs the request's host (some route is limited to a host)
        self.uses_host = any(route.host is not None for route in self.routes)
        self._cache: dict[tuple[str, str, str], Policy] = {}
        self._cache_size = cache_size

    def match(self, method: str, path: str, host: str = "", method_as_sent: str = "") -> Policy:
        """The policy for a request; `method` upper-cased (``WEBSOCKET`` for a handshake), `host` the Host
        header's name (needed when `uses_host`), `method_as_sent` for rules compiled from an app's routes."""
        key = (method_as_sent or method, path, host)
        policy = self._cache.get(key)
        if policy is None:
            policy = self._lookup(method, path, host, method_as_sent)
            if len(self._cache) >= self._cache_size:
                # Paths are attacker-chosen: never let the memo grow without bound.
                self._cache.clear()
            self._cache[key] = policy
        return policy

    def _lookup(self, method: str, path: str, host: str, method_as_sent: str = "") -> Policy:
        # Routers (Starlette, Werkzeug) match the path as sent, dot segments included; a proxy or a server
        # behind us may resolve them first. When the two readings would get different policies, no choice
        # between them is safe (the stricter may want other scopes or another credential): refuse the request.
        # Browsers resolve dot segments before sending, so only hand-made requests ever meet this.
        if _CONTROL_CHARACTER.search(path):
            # Routers read such paths in more than one way (a regex `$` matches before a final newline): refuse.
            return AMBIGUOUS_PATH
        parts = [p for p in path.split("/") if p]
        policy = self._first(method, path, parts, host, method_as_sent)
        if "." in parts or ".." in parts:
            resolved_path = normalize_path(path)
            resolved = [p for p in resolved_path.split("/") if p]
            if self._first(method, resolved_path, resolved, host, method_as_sent) != policy:
                return AMBIGUOUS_PATH
        return policy

    def _first(self, method: str, path: str, parts: Sequence[str], host: str, method_as_sent: str = "") -> Policy:
        routes = self.routes
        index, count = 0, len(routes)
        while index < count:
            route = routes[index]
            if route.matches(method, parts, host, path, method_as_sent):
                if route.policy is not DEFER:
                    return route.policy
                if index < self.path_rules_start:
                    index = self.path_rules_start  # the app's router goes no further: only path rules remain
                    continue
            index += 1
        return self.default


def _host_pattern(host: str) -> re.Pattern[str]:
    pieces = _INNER_PARAM.split(host)
    literals, convertors = pieces[::2], pieces[1::2]
    if not host or any(c not in (None, "str", "string") for c in convertors) or "{" in "".join(literals):
        raise ConfigurationError(f"bad route host {host!r}")
    pattern = re.escape(literals[0])
    for literal in literals[1:]:
        pattern += "[^/]+" + re.escape(literal)
    return re.compile(pattern + "$")


#: A compiled rule that says "the app's router stops here, on a route without a policy of its own": e.g. a
#: Starlette `Mount` or `Host` takes every path under it, so endpoint rules after it must not decide for those
#: paths; the configured path rules (and the default) still do. Compared by identity, never by value.
DEFER = Policy(csrf=False)

#: What `RouteTable.match` answers for a path whose dot segments make it match two different policies;
#: the engine refuses such a request with 400 invalid_request (compared by identity, never by value).
AMBIGUOUS_PATH = Policy(auth_required=True)
