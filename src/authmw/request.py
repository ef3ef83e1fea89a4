"""The little the core needs to know about a request, and the bearer-credential parser (RFC 6750 §2).

A `RequestView` is built by a shell (ASGI or WSGI) and read lazily: headers are only looked up
when a policy needs them, so a public route costs almost nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container, Iterable, Mapping
from typing import Any, AnyStr
from urllib.parse import parse_qsl

from authmw.errors import InvalidRequest, InvalidToken

__all__ = ["ASGIRequestView", "RequestView", "WSGIRequestView", "bearer_token", "with_identity_headers"]

# RFC 7235 token68 (RFC 6750 §2.1 b64token): 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_SCHEME = re.compile(r"[^ \t]+")
_JOINED_BEARER = re.compile(r",\s*bearer(\s|$)", re.IGNORECASE)
#: a comma, then another credential's auth-scheme: two fields joined into one (RFC 9110 §5.3), as WSGI servers do
_JOINED_CREDENTIAL = re.compile(r",[ \t]*[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:[ \t]|$)")


class RequestView:
    """Method, route path, scheme, query string and header access; subclasses adapt ASGI and WSGI.
    What most requests never need (scheme, query string, client) is read from the request only when asked."""

    __slots__ = ("is_websocket", "method", "method_as_sent", "path", "trusted_proxies")

    #: upper-cased, as werkzeug routes it, so that `delete` meets the rules written for `DELETE`
    method: str
    method_as_sent: str
    path: str
    is_websocket: bool
    #: how many reverse proxies in front of the app add to the `X-Forwarded-*` headers (`AuthConfig.trusted_proxies`,
    #: set when the middleware begins the request); 0: the headers are ignored
    trusted_proxies: int

    @property
    def scheme(self) -> str:
        raise NotImplementedError

    @property
    def query_string(self) -> bytes:
        raise NotImplementedError

    @property
    def client(self) -> str | None:
        raise NotImplementedError

    @property
    def mount_path(self) -> str:
        """Where the app is mounted (ASGI `root_path`, WSGI `SCRIPT_NAME`): `path` is relative to it."""
        raise NotImplementedError

    def header_values(self, name: str) -> list[str]:
        """Every value of the header `name` (lower-case), in order; values decoded as latin-1."""
        raise NotImplementedError

    def header(self, name: str) -> str | None:
        """The value of a header that must appear at most once; None when absent or repeated."""
        values = self.header_values(name)
        return values[0] if len(values) == 1 else None

    def forwarded(self, name: str) -> str | None:
        """What the trusted proxy nearest the client put in `X-Forwarded-<name>` (``proto``, ``host``, ``for``), or
        None: no trusted proxies, or fewer values than there are proxies.

        As werkzeug's ProxyFix: each proxy appends a value, so the `trusted_proxies`-th from the right is the first
        that a trusted proxy wrote; values further left came from the client and are never read. Repeated fields
        count as one comma-separated list, whether the server joined them (WSGI) or not (ASGI).
        """
        hops = self.trusted_proxies
        if not hops:
            return None
        values = [item.strip() for value in self.header_values("x-forwarded-" + name) for item in value.split(",")]
        values = [item for item in values if item]
        return values[-hops] if len(values) >= hops else None

    @property
    def public_scheme(self) -> str:
        """The scheme the client used: the forwarded one behind trusted proxies, else the server's."""
        return self.forwarded("proto") or self.scheme

    @property
    def public_host(self) -> str | None:
        """The host the client asked for: the forwarded one behind trusted proxies, else the Host header."""
        return self.forwarded("host") or self.header("host")

    @property
    def client_address(self) -> str | None:
        """The client's address: the forwarded one behind trusted proxies, else the peer's (`client`)."""
        return self.forwarded("for") or self.client


class ASGIRequestView(RequestView):
    # Plain attributes (read once, at no cost worth a property call) and no reference to the scope itself: the
    # scope holds the session handle, which holds this view (a cycle would leave every session request's objects
    # to the garbage collector instead of reference counting).
    __slots__ = ("_headers", "client", "mount_path", "query_string", "scheme")

    def __init__(self, scope: Mapping[str, Any]) -> None:
        self.is_websocket = websocket = scope["type"] == "websocket"
        self.trusted_proxies = 0
        self.method_as_sent = method = "GET" if websocket else scope["method"]
        self.method = method if method == "GET" or method == "POST" else method.upper()
        root_path = scope.get("root_path")
        full = scope["path"]
        self.path = path = route_path(scope) if root_path else full
        # The mount point, when `path` is under it: the server included it in the path (route_path removed it),
        # or, as servers of the older spec do, left it out.
        under = root_path and (len(path) < len(full) or not full.startswith(root_path))
        self.mount_path = str(root_path) if under else ""  # type: ignore[misc]
        self._headers: list[tuple[bytes, bytes]] = scope["headers"]
        self.scheme = scope.get("scheme") or ("wss" if websocket else "http")  # type: ignore[misc]
        self.query_string = scope.get("query_string", b"")  # type: ignore[misc]
        client = scope.get("client")
        self.client = client[0] if client else None  # type: ignore[misc]

    def header_values(self, name: str) -> list[str]:
        key = _ASGI_KEYS.get(name)
        if key is None:
            key = name.encode("latin-1")
            if len(_ASGI_KEYS) < 256:  # names come from authmw's code, never from requests; bounded anyway
                _ASGI_KEYS[name] = key
        values = []
        for k, v in self._headers:  # a loop, not a comprehension: no extra frame on every request (3.11)
            if k == key:
                values.append(v.decode("latin-1"))
        return values


_ASGI_KEYS: dict[str, bytes] = {}


def route_path(scope: Mapping[str, Any]) -> str:
    """The path the app's router sees: `path` without a mount's `root_path` prefix (as Starlette does)."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path) and (len(path) == len(root_path) or path[len(root_path)] == "/"):
        return path[len(root_path) :] or "/"
    return path


def _pep3333_text(value: str) -> str:
    """A path as routers read it: PEP 3333 hands PATH_INFO and SCRIPT_NAME over as latin-1 text of the raw
    bytes, which are UTF-8."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value.encode("latin-1", "replace").decode("utf-8", "replace")


class WSGIRequestView(RequestView):
    __slots__ = ("_environ",)

    def __init__(self, environ: Mapping[str, Any]) -> None:
        self._environ = environ
        self.is_websocket = False
        self.trusted_proxies = 0
        self.method_as_sent = method = environ.get("REQUEST_METHOD", "GET")
        self.method = method if method == "GET" or method == "POST" else method.upper()
        # PATH_INFO is what the app routes on; SCRIPT_NAME is the mount point.
        self.path = _pep3333_text(environ.get("PATH_INFO") or "/")

    @property
    def scheme(self) -> str:
        value: str = self._environ.get("wsgi.url_scheme", "http")
        return value

    @property
    def query_string(self) -> bytes:
        value: str = self._environ.get("QUERY_STRING", "")
        return value.encode("latin-1", "replace")

    @property
    def client(self) -> str | None:
        value: str | None = self._environ.get("REMOTE_ADDR")
        return value

    @property
    def mount_path(self) -> str:
        return _pep3333_text(self._environ.get("SCRIPT_NAME", ""))

    def header_values(self, name: str) -> list[str]:
        # WSGI servers join repeated fields with commas (RFC 9110 §5.3); parsers below treat commas as malformed.
        key = _WSGI_KEYS.get(name)
        if key is None:
            key = "CONTENT_TYPE" if name == "content-type" else "HTTP_" + name.upper().replace("-", "_")
            if len(_WSGI_KEYS) < 256:  # names come from authmw's code, never from requests; bounded anyway
                _WSGI_KEYS[name] = key
        value = self._environ.get(key)
        return [] if value is None else [value]


_WSGI_KEYS: dict[str, str] = {}


def has_query_token(query_string: bytes) -> bool:
    """Does the query string carry an ``access_token`` parameter (a second credential method, P25)?"""
    if b"access" not in query_string and b"%" not in query_string:
        return False
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    return any(name == "access_token" for name, _ in pairs)


def bearer_token(view: RequestView, *, max_bytes: int, known: Container[str] = ()) -> str | None:
    """The one bearer token of this request, or None when no bearer credential was presented.

    Raises `InvalidRequest` (400) for duplicate or malformed Authorization fields and for a second
    credential method (P25), `InvalidToken` (401) for a token over `max_bytes` (P13, before any parsing).
    An Authorization field of another scheme (e.g. Basic) is not a bearer credential and is left alone.
    `known` holds tokens that already passed these checks (the verifier's cache): their syntax is not re-checked.
    """
    values = view.header_values("authorization")
    if not values:
        return None
    if len(values) == 1:
        # The common spelling, checked in one step; anything else takes the careful path below.
        value = values[0]
        if value.startswith("Bearer ") and len(value) - 7 <= max_bytes:
            token = value[7:]
            if token in known or _TOKEN68.fullmatch(token) is not None:
                query = view.query_string
                if query and has_query_token(query):
                    raise InvalidRequest("more than one credential method", reason="multiple_methods")
                return token
    if len(values) > 1:
        raise InvalidRequest("more than one Authorization header", reason="duplicate_authorization")
    value = values[0].strip(" \t")
    if not value:
        raise InvalidRequest("empty Authorization header", reason="empty_authorization")
    match = _SCHEME.match(value)
    scheme = match.group(0) if match else value
    rest = value[len(scheme) :]
    if scheme.lower() != "bearer":
        if _JOINED_BEARER.search(value):
            # A server joined two Authorization fields ("Basic …, Bearer …"): two credentials (P25).
            raise InvalidRequest("more than one Authorization header", reason="duplicate_authorization")
        return None
    if (rest and not rest.startswith(" ")) or "\t" in rest:
        raise InvalidRequest("malformed Authorization header", reason="malformed_authorization")
    token = rest.lstrip(" ")
    if not token:
        raise InvalidRequest("the Bearer credential is empty", reason="empty_token")
    if "," in token and _JOINED_CREDENTIAL.search(token):
        # "Bearer A,Bearer B": worded as for the two fields an ASGI server passes on, so both shells agree (P25).
        raise InvalidRequest("more than one Authorization header", reason="duplicate_authorization")
    if len(token) > max_bytes:
        raise InvalidToken("the token is too large", reason="token_too_large")
    if _TOKEN68.fullmatch(token) is None:
        raise InvalidRequest("malformed Authorization header", reason="malformed_authorization")
    query = view.query_string
    if query and has_query_token(query):
        raise InvalidRequest("more than one credential method", reason="multiple_methods")
    return token


class _HeaderWords:
    """The header names and values `with_identity_headers` writes, in bytes (ASGI) or str (WSGI)."""

    def __init__(self, encode: Callable[[str], Any]) -> None:
        self.vary, self.cache_control, self.comma, self.star = map(encode, ("vary", "cache-control", ",", "*"))
        self.no_store, self.both = encode("no-store"), encode("Cookie, Authorization")
        self.extra = [(encode(v), encode(v.lower())) for v in ("Cookie", "Authorization")]
        self.join = encode(", ")
        #: the headers appended as they are, built once
        self.vary_both, self.no_store_header = (self.vary, self.both), (self.cache_control, self.no_store)


_BYTES_WORDS = _HeaderWords(lambda text: text.encode("latin-1"))
_STR_WORDS = _HeaderWords(lambda text: text)


def with_identity_headers(
    headers: Iterable[tuple[AnyStr, AnyStr]], authenticated: bool, sample: AnyStr
) -> list[tuple[AnyStr, AnyStr]]:
    """Response headers plus `Vary: Cookie, Authorization`, and `Cache-Control: no-store` when a caller was
    identified (P31). Works on ASGI (bytes) and WSGI (str) headers alike; `sample` is ``b""`` or ``""``.
    """
    words = _BYTES_WORDS if isinstance(sample, bytes) else _STR_WORDS
    vary_name, cache_control = words.vary, words.cache_control
    out: list[tuple[AnyStr, AnyStr]] = []
    vary: list[AnyStr] | None = None
    for pair in headers:  # most responses have neither header: keep the app's own pairs, build nothing
        lowered = pair[0].lower()
        if lowered == vary_name:
            if vary is None:
                vary = []
            vary.append(pair[1])
        elif lowered != cache_control or not authenticated:  # an identified response is never stored by a cache
            if type(pair) is not tuple:  # e.g. a list: servers (wsgiref) want (name, value) tuples
                name, value = pair
                pair = (name, value)
            out.append(pair)
    if vary is None:
        out.append(words.vary_both)
    else:
        present = {v.strip().lower() for value in vary for v in value.split(words.comma)}
        if words.star in present:
            out.append((words.vary, words.star))
        else:
            values: list[AnyStr] = list(vary)
            values.extend(name for name, lowered in words.extra if lowered not in present)
            out.append((words.vary, words.join.join(values)))
    if authenticated:
        out.append(words.no_store_header)
    return out


#: a shell-independent way to build views in tests and adapters
ViewFactory = Callable[[Mapping[str, Any]], RequestView]
