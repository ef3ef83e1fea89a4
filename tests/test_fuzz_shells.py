"""Fuzzing both shells with arbitrary requests: no unhandled exception, a known status, no unearned principal.

Requests are built below the HTTP client, as raw ASGI scopes and PEP 3333 environs, so that any bytes a server
could hand over get through: header names from the RFC 9110 token alphabet, values of any field-content bytes
(obs-text included), repeated fields (joined with ``,`` for WSGI, as gunicorn does), raw paths with ``%``, ``..``,
``//`` and percent-encoded non-ASCII or invalid UTF-8 (decoded as uvicorn and gunicorn decode them), any method.
Targeted strategies mix in valid, mutated and garbage bearer tokens and session cookies, and Origin /
Sec-Fetch-Site values, against the attack corpus' configuration (HS256 JWTs with issuer and audience, sessions on a
memory store, per-route rules with a public default).

Checked for every request (P1, P22, P28):

* the shell raises nothing and completes a well-formed response;
* the status is one of 200, 303, 400, 401, 403, 404, 405, 503;
* the app behind authmw sees a principal only when the request carried a valid credential for exactly that
  principal (a bearer token minted here, or a cookie whose signature verifies for a live session), and never sees
  an anonymous caller on a route that requires authentication (CORS preflights excepted, by design);
* `WWW-Authenticate` stays within the RFC 6750 character set, and no valid credential is echoed.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, unquote_to_bytes

import jwt
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from itsdangerous import BadSignature, TimestampSigner
from tests.attack_harness import AUDIENCE, COOKIE_NAME, HS_KID, HS_SECRET, ISSUER, SESSION_KEY, Shells, make_config

import authmw.asgi
import authmw.wsgi
from authmw.engine import AuthState

ALLOWED_STATUSES = {200, 303, 400, 401, 403, 404, 405, 503}
FUZZ_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# RFC 6750 §3: the challenge's attribute values (quoted) may only use these characters.
CHALLENGE = re.compile(
    r'(Bearer|Session) realm="[\x20\x21\x23-\x5b\x5d-\x7e]*"(, [a-z_]+=("[\x20\x21\x23-\x5b\x5d-\x7e]*"|\d+))*'
)


# ---- the world: one configuration, valid credentials minted once ----


@dataclass
class Seen:
    """What the app behind authmw saw on its last call."""

    called: bool = False
    principal: Any = None
    state: AuthState | None = None

    def reset(self) -> None:
        self.called, self.principal, self.state = False, None, None


@dataclass
class World:
    seen: Seen = field(default_factory=Seen)

    def __post_init__(self) -> None:
        self.config = make_config("hs")
        self.shells = Shells(self.config)  # used only to mint sessions the way the app's login does
        seen = self.seen

        async def asgi_app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
            seen.called = True
            seen.state = scope.get("authmw")
            seen.principal = seen.state.principal if seen.state is not None else None
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"ok"})

        def wsgi_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            seen.called = True
            seen.state = environ.get("authmw")
            seen.principal = environ.get("authmw.principal")
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]

        self.asgi = authmw.asgi.AuthMiddleware(asgi_app, self.config)
        self.wsgi = authmw.wsgi.AuthMiddleware(wsgi_app, self.config)
        now = int(time.time())
        #: valid bearer tokens -> (sub, scopes); good for an hour, far longer than the fuzz run
        self.tokens: dict[str, tuple[str, frozenset[str]]] = {}
        for sub, scope in (("alice", "items:read"), ("root", "admin items:read"), ("bob", "")):
            claims = {"sub": sub, "iat": now, "exp": now + 3600, "iss": ISSUER, "aud": AUDIENCE, "scope": scope}
            claims["jti"] = uuid.uuid4().hex
            token = jwt.encode(claims, HS_SECRET, algorithm="HS256", headers={"kid": HS_KID})
            self.tokens[token] = (sub, frozenset(scope.split()))
        #: live sessions: sid -> (user, scopes), and their cookie values
        self.cookies = [self.shells.login("alice", ("items:read",)), self.shells.login("carol", ("admin",))]
        self.sessions = {sid_of(c): (u, frozenset(s)) for c, (u, s) in zip(self.cookies, SESSION_OWNERS, strict=True)}


SESSION_OWNERS = [("alice", ("items:read",)), ("carol", ("admin",))]
_SIGNER = TimestampSigner(SESSION_KEY, salt="authmw.session", digest_method=hashlib.sha256)


def sid_of(cookie: str) -> str:
    return _SIGNER.unsign(cookie).decode()


WORLD = World()


# ---- strategies ----


def mutated(value: str) -> st.SearchStrategy[str]:
    """`value` with one small edit: truncated, a character replaced or inserted (anywhere, or in the signature
    at the end), a suffix, or case-flipped."""
    index = st.integers(0, max(0, len(value) - 1))
    in_signature = st.integers(max(0, len(value) - 43), max(0, len(value) - 1))
    char = st.characters(codec="latin-1", exclude_characters="\r\n\x00")
    b64_char = st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    return st.one_of(
        st.tuples(in_signature, b64_char).map(lambda t: value[: t[0]] + t[1] + value[t[0] + 1 :]),
        index.map(lambda i: value[:i]),
        st.tuples(index, char).map(lambda t: value[: t[0]] + t[1] + value[t[0] + 1 :]),
        st.tuples(index, char).map(lambda t: value[: t[0]] + t[1] + value[t[0] :]),
        st.sampled_from(["=", "==", ".", " ", "\t", ",", ";", "A" * 9000]).map(lambda s: value + s),
        st.just(value.swapcase()),
    )


field_bytes = st.binary(max_size=120).map(
    lambda b: bytes(c for c in b if c == 0x09 or 0x20 <= c <= 0x7E or c >= 0x80).strip(b" \t")
)
header_names = st.text(TOKEN_CHARS, min_size=1, max_size=24).map(str.lower)
valid_tokens = st.sampled_from(sorted(WORLD.tokens))
valid_cookies = st.sampled_from(WORLD.cookies)
garbage = st.text(st.characters(codec="latin-1", exclude_characters="\r\n\x00"), max_size=60)

authorization_values = st.one_of(
    valid_tokens.map(lambda t: f"Bearer {t}"),
    valid_tokens.flatmap(mutated).map(lambda t: f"Bearer {t}"),
    st.tuples(
        st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", "Token", "Bearer  ", "Bearer\t", ""]), garbage
    ).map(lambda t: f"{t[0]} {t[1]}"),
    st.tuples(valid_tokens, valid_tokens).map(lambda t: f"Bearer {t[0]}, Bearer {t[1]}"),
    garbage,
)
cookie_values = st.one_of(
    valid_cookies.map(lambda c: f"{COOKIE_NAME}={c}"),
    valid_cookies.flatmap(mutated).map(lambda c: f"{COOKIE_NAME}={c}"),
    st.tuples(valid_cookies, valid_cookies).map(lambda t: f"{COOKIE_NAME}={t[0]}; {COOKIE_NAME}={t[1]}"),
    st.tuples(valid_cookies, garbage).map(lambda t: f"theme=dark; {COOKIE_NAME}={t[0]}; other={t[1]}"),
    st.tuples(st.sampled_from([COOKIE_NAME, "__host-authmw", "authmw", "authmw_session", ""]), garbage).map(
        lambda t: f"{t[0]}={t[1]}"
    ),
    valid_cookies.map(lambda c: "; ".join([f"{COOKIE_NAME}={c}"] * 50)),
    garbage,
)
origin_values = st.one_of(
    st.sampled_from(
        ["null", "http://testserver", "https://testserver", "https://evil.example", "http://testserver:80", ""]
    ),
    garbage,
)
fetch_site_values = st.one_of(
    st.sampled_from(["same-origin", "same-site", "cross-site", "none", "CROSS-SITE"]), garbage
)

credential_headers = st.one_of(
    st.tuples(st.just("authorization"), valid_tokens.map(lambda t: f"Bearer {t}")),
    st.tuples(st.just("cookie"), valid_cookies.map(lambda c: f"{COOKIE_NAME}={c}")),
    st.tuples(st.just("authorization"), authorization_values),
    st.tuples(st.just("cookie"), cookie_values),
).map(lambda t: (t[0].encode(), t[1].encode("latin-1")))
context_headers = st.one_of(
    st.tuples(st.just("origin"), origin_values),
    st.tuples(st.just("sec-fetch-site"), fetch_site_values),
    st.tuples(st.just("referer"), st.sampled_from(["https://evil.example/x", "http://testserver/x", "::"])),
    st.tuples(st.just("access-control-request-method"), st.sampled_from(["GET", "POST"])),
    st.tuples(st.just("host"), st.sampled_from(["testserver", "evil.example", "testserver:80", "[::1]", ""])),
    st.tuples(st.just("accept"), st.sampled_from(["text/html", "*/*"])),
).map(lambda t: (t[0].encode(), t[1].encode("latin-1")))
arbitrary_headers = st.tuples(header_names.map(str.encode), field_bytes)
# Credentials first (none, one, or two), then request context and arbitrary fields, in any order.
header_lists = st.tuples(
    st.lists(credential_headers, min_size=0, max_size=2),
    st.lists(st.one_of(context_headers, arbitrary_headers), max_size=6),
    st.randoms(use_true_random=False),
).map(lambda t: t[2].sample(t[0] + t[1], len(t[0]) + len(t[1])))

path_segments = st.one_of(
    st.sampled_from(
        ["admin", "Admin", "api", "items", "me", "account", "maybe", "administrator", "public", "..", ".", ""]
    ),
    st.sampled_from(["%2e%2e", "%2E", "%2f", "%2F", "%61dmin", "%00", "%ff", "%c3%a4dmin", "%", "%zz", "admin;x"]),
    st.sampled_from(["\u00e4dmin", "\u2025", "\uff0e\uff0e", "caf\u00e9"]).map(
        lambda s: "".join(f"%{b:02X}" for b in s.encode())
    ),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?#"), max_size=12),
)
ROUTE_PATHS = ["/api/items", "/admin", "/account", "/api/me", "/maybe", "/public", "//admin", "/./account", "/API/me"]
ROUTE_PATHS += ["/api/items", "/account", "/api/me", "/maybe"]
raw_paths = st.one_of(
    # Mostly the configured routes (so credentials matter), with a few more segments of any kind after them.
    st.tuples(
        st.sampled_from(ROUTE_PATHS),
        st.one_of(st.just([]), st.just([]), st.lists(path_segments, max_size=2)),
        st.sampled_from([False, False, True]),
    ).map(lambda t: (t[0] + "".join("/" + s for s in t[1]) + ("/" if t[2] else "")).encode()),
    st.lists(path_segments, max_size=6).map(lambda segments: ("/" + "/".join(segments)).encode()),
)
methods = st.one_of(
    st.sampled_from(
        ["GET", "GET", "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "delete", "post"]
    ),
    st.text(TOKEN_CHARS, min_size=1, max_size=10),
)
queries = st.one_of(
    st.just(b""),
    valid_tokens.map(lambda t: f"access_token={t}".encode()),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#"), max_size=30).map(str.encode),
)


@dataclass(frozen=True)
class FuzzRequest:
    method: str
    raw_path: bytes
    query: bytes
    headers: list[tuple[bytes, bytes]]
    scheme: str


_random_requests = st.builds(
    FuzzRequest,
    method=methods,
    raw_path=raw_paths,
    query=queries,
    headers=header_lists,
    scheme=st.sampled_from(["http", "https"]),
)
# A route together with a credential it accepts (maybe mutated), amid noise: so that principals are common and
# the oracle is exercised both ways.
_bearer = st.one_of(valid_tokens, valid_tokens.flatmap(mutated)).map(lambda t: (b"authorization", f"Bearer {t}"))
_cookie = st.one_of(valid_cookies, valid_cookies.flatmap(mutated)).map(lambda c: (b"cookie", f"{COOKIE_NAME}={c}"))
_credentialed = st.one_of(
    st.tuples(st.sampled_from([b"/api/items", b"/api/me", b"/maybe", b"/admin/x"]), _bearer),
    st.tuples(st.sampled_from([b"/account", b"/api/me", b"/maybe", b"/account/"]), _cookie),
)
_credentialed_requests = st.builds(
    lambda route, noise, method, query, scheme: FuzzRequest(
        method, route[0], query, [(route[1][0], route[1][1].encode("latin-1")), *noise], scheme
    ),
    _credentialed,
    st.lists(st.one_of(context_headers, arbitrary_headers), max_size=4),
    st.one_of(st.just("GET"), methods),
    st.one_of(st.just(b""), queries),
    st.sampled_from(["http", "https"]),
)
requests = st.one_of(_random_requests, _credentialed_requests)


# ---- driving the shells ----


@dataclass
class Outcome:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


_loops: list[asyncio.AbstractEventLoop] = []


def _loop() -> asyncio.AbstractEventLoop:
    """One event loop for the whole module (cheaper than `asyncio.run` per example), closed at the end."""
    if not _loops:
        _loops.append(asyncio.new_event_loop())
    return _loops[0]


@pytest.fixture(scope="module", autouse=True)
def _close_loop() -> Iterator[None]:
    yield
    while _loops:
        _loops.pop().close()


def call_asgi(request: FuzzRequest) -> Outcome:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": request.scheme,
        "raw_path": request.raw_path,
        "path": unquote(request.raw_path.decode("ascii")),  # what uvicorn does
        "query_string": request.query,
        "root_path": "",
        "headers": list(request.headers),
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    messages: list[MutableMapping[str, Any]] = []
    sent_request = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_request
        if not sent_request:
            sent_request = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        messages.append(message)

    _loop().run_until_complete(WORLD.asgi(scope, receive, send))
    assert messages and messages[0]["type"] == "http.response.start", "no response was started"
    start = messages[0]
    assert all(m["type"] == "http.response.body" for m in messages[1:])
    assert not messages[-1].get("more_body", False), "the response never finished"
    for name, value in start.get("headers", []):
        assert isinstance(name, bytes) and isinstance(value, bytes)
    headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in start.get("headers", [])]
    return Outcome(start["status"], headers, b"".join(m.get("body", b"") for m in messages[1:]))


def call_wsgi(request: FuzzRequest) -> Outcome:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(request.raw_path).decode("latin-1"),  # what gunicorn does (PEP 3333)
        "QUERY_STRING": request.query.decode("latin-1"),
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": request.scheme,
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in request.headers:
        key = name.decode("latin-1").upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        text = value.decode("latin-1")
        environ[key] = f"{environ[key]},{text}" if key in environ else text
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        assert exc_info is None, "the middleware reported an error through exc_info"
        started.append((status, headers))
        return lambda data: None

    result = WORLD.wsgi(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    assert len(started) == 1, "start_response must be called exactly once"
    status, headers = started[0]
    assert re.fullmatch(r"\d{3} .+", status), status
    for name, value in headers:
        assert isinstance(name, str) and isinstance(value, str)
        value.encode("latin-1")  # PEP 3333: header values are latin-1 text
    return Outcome(int(status[:3]), [(k.lower(), v) for k, v in headers], body)


# ---- the oracle ----


def _values(request: FuzzRequest, name: str) -> list[str]:
    return [v.decode("latin-1") for k, v in request.headers if k == name.encode()]


def earned(request: FuzzRequest, principal: Any) -> bool:
    """Did the request carry a valid credential for exactly this principal?"""
    if principal.source == "jwt":
        return any(
            token in value and (principal.id, principal.scopes) == owner
            for token, owner in WORLD.tokens.items()
            for value in _values(request, "authorization")
        )
    for header in _values(request, "cookie"):
        for pair in header.split(";"):
            name, sep, value = pair.strip().partition("=")
            if not sep or name != COOKIE_NAME:
                continue
            try:
                sid = _SIGNER.unsign(value).decode()
            except (BadSignature, UnicodeError, ValueError):
                continue
            if WORLD.sessions.get(sid) == (principal.id, principal.scopes):
                return True
    return False


def check(request: FuzzRequest, outcome: Outcome) -> None:
    seen = WORLD.seen
    assert outcome.status in ALLOWED_STATUSES, outcome
    for name, value in outcome.headers:
        assert "\r" not in value and "\n" not in value
        if name == "www-authenticate":
            assert CHALLENGE.fullmatch(value), value
    if seen.called:
        if seen.principal is not None:
            assert earned(request, seen.principal), f"a principal was attached without its credential: {request}"
        state = seen.state
        asked, origins = _values(request, "access-control-request-method"), _values(request, "origin")
        preflight = (
            request.method == "OPTIONS"
            and len(asked) == 1
            and re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", asked[0]) is not None
            and len(origins) == 1
            and "," not in origins[0]
        )
        if state is not None and state.policy.auth_required and not preflight:
            assert seen.principal is not None, "an anonymous caller reached a route that requires authentication"
    else:
        assert outcome.status != 200, "a 200 that the app did not produce"
    echoed = outcome.body.decode("latin-1") + "".join(v for _, v in outcome.headers)
    for secret in [*WORLD.tokens, *WORLD.cookies]:
        for piece in re.split(r"[.;]", secret):
            assert len(piece) < 16 or piece not in echoed, "a credential was echoed"


def _events(outcome: Outcome) -> None:
    """For `--hypothesis-show-statistics`: how the statuses and principals are spread."""
    event(f"status {outcome.status}")
    principal = WORLD.seen.principal
    event("no principal" if principal is None else f"principal from {principal.source}")


@FUZZ_SETTINGS
@given(request=requests)
def test_fuzz_asgi_shell(request: FuzzRequest) -> None:
    WORLD.seen.reset()
    outcome = call_asgi(request)
    _events(outcome)
    check(request, outcome)


@FUZZ_SETTINGS
@given(request=requests)
def test_fuzz_wsgi_shell(request: FuzzRequest) -> None:
    WORLD.seen.reset()
    outcome = call_wsgi(request)
    _events(outcome)
    check(request, outcome)


def test_fuzz_oracle_recognises_valid_credentials() -> None:
    """The oracle is not vacuous: the valid credentials do get a principal through both shells."""
    token = next(t for t, owner in WORLD.tokens.items() if owner[0] == "alice")
    cookie = WORLD.cookies[0]
    for method, path, headers in (
        ("GET", b"/api/items", [(b"authorization", f"Bearer {token}".encode())]),
        ("GET", b"/account", [(b"cookie", f"{COOKIE_NAME}={cookie}".encode())]),
    ):
        request = FuzzRequest(method, path, b"", headers, "https")
        for call in (call_asgi, call_wsgi):
            WORLD.seen.reset()
            outcome = call(request)
            assert outcome.status == 200 and WORLD.seen.principal is not None
            assert earned(request, WORLD.seen.principal)
            check(request, outcome)
