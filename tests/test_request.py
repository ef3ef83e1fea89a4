"""The request view and the bearer-credential parser (RFC 6750 §2): P1, P13, P24, P25, P31.

Every case runs against both shells' views: `ASGIRequestView(scope)` (repeated fields stay separate header
tuples) and `WSGIRequestView(environ)` (the server has already joined repeated fields with commas).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.middleware.proxy_fix import ProxyFix

from authmw.errors import AuthError, InvalidRequest, InvalidToken
from authmw.request import (
    ASGIRequestView,
    RequestView,
    WSGIRequestView,
    bearer_token,
    route_path,
    with_identity_headers,
)

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
MAX = 8192


def asgi_view(
    authorization: Sequence[bytes] = (),
    *,
    query: bytes = b"",
    path: str = "/",
    root_path: str = "",
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> ASGIRequestView:
    headers = [(b"host", b"example.test"), *[(b"authorization", v) for v in authorization], *extra]
    scope: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": path,
        "root_path": root_path,
        "query_string": query,
        "headers": headers,
        "scheme": "https",
        "client": ("203.0.113.7", 4242),
    }
    return ASGIRequestView(scope)


def wsgi_view(authorization: Sequence[bytes] = (), *, query: bytes = b"", path: str = "/") -> WSGIRequestView:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": query.decode("latin-1"),
        "wsgi.url_scheme": "https",
        "REMOTE_ADDR": "203.0.113.7",
        "HTTP_HOST": "example.test",
    }
    if authorization:
        # What WSGI servers do with a repeated field (RFC 9110 §5.3): one value, joined with ", ".
        environ["HTTP_AUTHORIZATION"] = ", ".join(v.decode("latin-1") for v in authorization)
    return WSGIRequestView(environ)


ViewMaker = Callable[..., RequestView]
VIEWS = pytest.mark.parametrize("make", [asgi_view, wsgi_view], ids=["asgi", "wsgi"])


# --- P24/P25: what counts as a bearer credential ---------------------------------------------------------------


@VIEWS
def test_p24_no_authorization_header_is_no_credential(make: ViewMaker) -> None:
    assert bearer_token(make(), max_bytes=MAX) is None


@VIEWS
@pytest.mark.parametrize("value", [b"Basic YWxpY2U6d29uZGVybGFuZA==", b"Digest username=alice", b"Bearerx abc"])
def test_p24_other_scheme_is_not_a_bearer_credential(make: ViewMaker, value: bytes) -> None:
    assert bearer_token(make([value]), max_bytes=MAX) is None


@VIEWS
@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_p24_bearer_scheme_is_case_insensitive(make: ViewMaker, scheme: str) -> None:
    assert bearer_token(make([f"{scheme} {TOKEN}".encode()]), max_bytes=MAX) == TOKEN


@VIEWS
@pytest.mark.parametrize("token", ["abc", "a-b.c_d~e+f/g", "abc==", "A" * 100])
def test_p24_token68_characters_are_accepted(make: ViewMaker, token: str) -> None:
    assert bearer_token(make([f"Bearer {token}".encode()]), max_bytes=MAX) == token


def test_p25_two_authorization_headers_is_invalid_request() -> None:
    view = asgi_view([f"Bearer {TOKEN}".encode(), f"Bearer {TOKEN}".encode()])
    with pytest.raises(InvalidRequest) as info:
        bearer_token(view, max_bytes=MAX)
    assert info.value.status == 400
    assert info.value.code == "invalid_request"


def test_p25_two_authorization_headers_of_different_schemes_is_invalid_request() -> None:
    view = asgi_view([b"Basic YWxpY2U6d29uZGVybGFuZA==", f"Bearer {TOKEN}".encode()])
    with pytest.raises(InvalidRequest) as info:
        bearer_token(view, max_bytes=MAX)
    assert info.value.status == 400


def test_p25_comma_joined_authorization_headers_is_invalid_request_wsgi() -> None:
    view = wsgi_view([f"Bearer {TOKEN}".encode(), f"Bearer {TOKEN}".encode()])
    with pytest.raises(InvalidRequest) as info:
        bearer_token(view, max_bytes=MAX)
    assert info.value.status == 400


def test_p25_comma_joined_basic_then_bearer_is_invalid_request_wsgi() -> None:
    view = wsgi_view([b"Basic YWxpY2U6d29uZGVybGFuZA==", f"Bearer {TOKEN}".encode()])
    with pytest.raises(InvalidRequest):
        bearer_token(view, max_bytes=MAX)


@VIEWS
@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"   ", id="blank"),
        pytest.param(b"Bearer", id="bearer-alone"),
        pytest.param(b"Bearer ", id="bearer-space"),
        pytest.param(b"Bearer      ", id="bearer-spaces"),
        pytest.param(b"Bearer abc def", id="inner-space"),
        pytest.param(b"Bearer abc\tdef", id="inner-tab"),
        pytest.param(b"Bearer abc,def", id="comma"),
        pytest.param(b'Bearer "abc"', id="quoted"),
        pytest.param(b"Bearer abc;def", id="semicolon"),
        pytest.param(b"Bearer =abc", id="leading-padding"),
        pytest.param(b"Bearer abc=def", id="inner-padding"),
        pytest.param(b"Bearer abc\x00", id="nul"),
        pytest.param(b"Bearer abc\x7f", id="del"),
        pytest.param(b"Bearer \xc3\xa9t\xc3\xa9", id="utf8"),
        pytest.param(b"Bearer abc\xff", id="latin1-byte"),
        pytest.param(b"Bearer abc\r\nX-Evil: 1", id="crlf"),
    ],
)
def test_p24_malformed_bearer_credential_is_invalid_request(make: ViewMaker, value: bytes) -> None:
    with pytest.raises(InvalidRequest) as info:
        bearer_token(make([value]), max_bytes=MAX)
    assert info.value.status == 400
    assert info.value.code == "invalid_request"


@VIEWS
def test_p26_bearer_with_tab_separator_is_invalid_request_not_ignored(make: ViewMaker) -> None:
    with pytest.raises(InvalidRequest):
        bearer_token(make([f"Bearer\t{TOKEN}".encode()]), max_bytes=MAX)


@VIEWS
def test_p13_token_over_max_bytes_is_invalid_token(make: ViewMaker) -> None:
    with pytest.raises(InvalidToken) as info:
        bearer_token(make([b"Bearer " + b"a" * (MAX + 1)]), max_bytes=MAX)
    assert info.value.status == 401
    assert info.value.reason == "token_too_large"


@VIEWS
def test_p13_token_at_max_bytes_is_accepted(make: ViewMaker) -> None:
    assert bearer_token(make([b"Bearer " + b"a" * MAX]), max_bytes=MAX) == "a" * MAX


@VIEWS
def test_p13_size_limit_applies_before_syntax_check(make: ViewMaker) -> None:
    # A huge value of garbage is refused as too large, without running the token68 match over it first.
    with pytest.raises(InvalidToken):
        bearer_token(make([b"Bearer " + b"a b" * 5000]), max_bytes=64)


@VIEWS
@pytest.mark.parametrize(
    "query",
    [b"access_token=abc", b"x=1&access_token=abc", b"access_token", b"access_token=", b"a=1&access_token=abc&b=2"],
)
def test_p25_header_and_query_token_is_invalid_request(make: ViewMaker, query: bytes) -> None:
    with pytest.raises(InvalidRequest) as info:
        bearer_token(make([f"Bearer {TOKEN}".encode()], query=query), max_bytes=MAX)
    assert info.value.reason == "multiple_methods"


@VIEWS
@pytest.mark.parametrize("query", [b"my_access_token=abc", b"access_tokens=abc", b"x=access_token"])
def test_p25_other_query_parameters_are_not_a_second_method(make: ViewMaker, query: bytes) -> None:
    assert bearer_token(make([f"Bearer {TOKEN}".encode()], query=query), max_bytes=MAX) == TOKEN


@VIEWS
def test_p25_percent_encoded_query_token_name_is_a_second_method(make: ViewMaker) -> None:
    with pytest.raises(InvalidRequest):
        bearer_token(make([f"Bearer {TOKEN}".encode()], query=b"access%5Ftoken=abc"), max_bytes=MAX)


@VIEWS
def test_p25_query_token_alone_is_not_accepted(make: ViewMaker) -> None:
    assert bearer_token(make(query=f"access_token={TOKEN}".encode()), max_bytes=MAX) is None


def test_header_lookup_is_exact_name_only() -> None:
    view = asgi_view(extra=[(b"x-authorization", f"Bearer {TOKEN}".encode()), (b"authorization2", b"Bearer x")])
    assert bearer_token(view, max_bytes=MAX) is None
    assert view.header("authorization") is None
    assert view.header_values("x-authorization") == [f"Bearer {TOKEN}"]


def test_header_returns_none_when_repeated() -> None:
    view = asgi_view([b"Bearer a", b"Bearer b"])
    assert view.header_values("authorization") == ["Bearer a", "Bearer b"]
    assert view.header("authorization") is None


# --- P1: nothing but AuthError escapes the parser ------------------------------------------------------------


def _check_outcome(view: RequestView) -> None:
    try:
        token = bearer_token(view, max_bytes=256)
    except AuthError as error:
        assert isinstance(error, InvalidRequest | InvalidToken)
        assert error.status in (400, 401)
        return
    if token is not None:
        # Whatever comes out is a syntactically valid, bounded token68 (RFC 6750 §2.1).
        assert 0 < len(token) <= 256
        assert all(c.isascii() and (c.isalnum() or c in "-._~+/=") for c in token)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.binary(max_size=40))
def test_p1_arbitrary_authorization_bytes_raise_only_auth_errors(value: bytes, query: bytes) -> None:
    _check_outcome(asgi_view([value], query=query))
    _check_outcome(wsgi_view([value], query=query))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(
                st.sampled_from([b"authorization", b"Authorization", b"cookie", b"host"]), st.binary(max_size=20)
            ),
            st.one_of(st.binary(max_size=300), st.builds(lambda t: b"Bearer " + t, st.binary(max_size=300))),
        ),
        max_size=8,
    )
)
def test_p1_arbitrary_header_lists_raise_only_auth_errors(headers: list[tuple[bytes, bytes]]) -> None:
    scope = {"type": "http", "method": "GET", "path": "/", "query_string": b"", "headers": headers}
    _check_outcome(ASGIRequestView(scope))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_p1_arbitrary_wsgi_authorization_text_raises_only_auth_errors(value: str) -> None:
    # WSGI header values are native strings; a broken server could hand over anything.
    _check_outcome(WSGIRequestView({"REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_AUTHORIZATION": value}))


# --- route_path: the path the app's router sees ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "root_path", "expected"),
    [
        ("/admin", "", "/admin"),
        ("/sub/admin", "/sub", "/admin"),
        ("/sub/admin/x", "/sub", "/admin/x"),
        ("/sub", "/sub", "/"),
        ("/sub/", "/sub", "/"),
        ("/subway/admin", "/sub", "/subway/admin"),
        ("/other/admin", "/sub", "/other/admin"),
        ("/a/b/admin", "/a/b", "/admin"),
    ],
)
def test_route_path_strips_the_mount_prefix(path: str, root_path: str, expected: str) -> None:
    scope = {"type": "http", "path": path, "root_path": root_path}
    assert route_path(scope) == expected
    assert asgi_view(path=path, root_path=root_path).path == expected


def test_asgi_view_reads_scope_fields() -> None:
    view = asgi_view(path="/x", query=b"a=1")
    assert (view.method, view.path, view.scheme, view.query_string, view.client) == (
        "GET",
        "/x",
        "https",
        b"a=1",
        "203.0.113.7",
    )
    assert view.is_websocket is False
    ws = ASGIRequestView({"type": "websocket", "path": "/ws", "headers": []})
    assert (ws.method, ws.scheme, ws.is_websocket, ws.client) == ("GET", "wss", True, None)


def test_wsgi_view_reads_environ_fields() -> None:
    view = wsgi_view(path="/x", query=b"a=1")
    assert (view.method, view.path, view.scheme, view.query_string, view.client) == (
        "GET",
        "/x",
        "https",
        b"a=1",
        "203.0.113.7",
    )
    assert WSGIRequestView({"PATH_INFO": ""}).path == "/"
    assert WSGIRequestView({"CONTENT_TYPE": "text/plain"}).header_values("content-type") == ["text/plain"]


# --- X-Forwarded-* behind trusted proxies (AuthConfig.trusted_proxies) -------------------------------------------

FORWARDED = {"for": "REMOTE_ADDR", "proto": "wsgi.url_scheme", "host": "HTTP_HOST"}


def _forwarded_views(hops: int, lines: dict[str, list[str]]) -> tuple[RequestView, RequestView, dict[str, Any]]:
    """An ASGI view (one header tuple per line), a WSGI view (lines joined, as servers do) and the environ werkzeug's
    ProxyFix, trusting `hops` proxies for each header, hands to the app."""
    headers = [(b"host", b"app.internal")]
    environ: dict[str, Any] = {"REQUEST_METHOD": "POST", "PATH_INFO": "/", "HTTP_HOST": "app.internal"}
    environ |= {"wsgi.url_scheme": "http", "REMOTE_ADDR": "10.0.0.2"}
    for name, values in lines.items():
        headers += [(f"x-forwarded-{name}".encode(), value.encode()) for value in values]
        if values:
            environ[f"HTTP_X_FORWARDED_{name.upper()}"] = ",".join(values)
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers, "scheme": "http"}
    asgi = ASGIRequestView(scope | {"client": ("10.0.0.2", 5000)})
    wsgi = WSGIRequestView(dict(environ))
    seen: dict[str, Any] = {}

    def app(env: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.update(env)
        return []

    ProxyFix(app, x_for=hops, x_proto=hops, x_host=hops)(environ, lambda *args: None)  # type: ignore[arg-type]
    for view in (asgi, wsgi):
        view.trusted_proxies = hops
    return asgi, wsgi, seen


_ITEM = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.:-[]", max_size=12)
_LINE = st.lists(st.tuples(st.sampled_from(["", " ", "  "]), _ITEM), max_size=4).map(
    lambda items: ",".join(pad + item + pad for pad, item in items)
)


@settings(max_examples=400, deadline=None)
@given(hops=st.integers(0, 4), lines=st.fixed_dictionaries({name: st.lists(_LINE, max_size=3) for name in FORWARDED}))
def test_forwarded_values_are_the_ones_werkzeugs_proxyfix_takes(hops: int, lines: dict[str, list[str]]) -> None:
    """Both views read X-Forwarded-For/-Proto/-Host as ProxyFix does with the same hop count: the value the
    `hops`-th proxy from the app appended, never one further left (the client's), and the request's own when
    there are fewer values than proxies, or none, or no trusted proxy at all."""
    asgi, wsgi, proxied = _forwarded_views(hops, lines)
    for view in (asgi, wsgi):
        read = {"for": view.client_address, "proto": view.public_scheme, "host": view.public_host}
        assert read == {name: proxied[key] for name, key in FORWARDED.items()}


@pytest.mark.parametrize(
    ("hops", "forwarded_host", "expected"),
    [
        (0, ["evil.example"], "app.internal"),  # not behind a trusted proxy: the header is the client's
        (1, ["evil.example, app.example"], "app.example"),  # the client's spoofed value, left of the proxy's
        (1, ["evil.example", "app.example"], "app.example"),  # the same, as two fields
        (2, ["evil.example, app.example, edge.internal"], "app.example"),
        (2, ["app.example"], "app.internal"),  # fewer values than proxies: ignored
        (1, [" , ,"], "app.internal"),  # only empty items
    ],
)
def test_forwarded_host_counts_hops_from_the_right(hops: int, forwarded_host: list[str], expected: str) -> None:
    for view in _forwarded_views(hops, {"host": forwarded_host})[:2]:
        assert view.public_host == expected
        assert view.forwarded("host") == (None if expected == "app.internal" else expected)


def test_forwarded_client_address_and_scheme_follow_the_trusted_proxy() -> None:
    lines = {"for": ["198.51.100.66, 203.0.113.9"], "proto": ["http, https"]}
    for view in _forwarded_views(1, lines)[:2]:
        assert (view.client_address, view.public_scheme, view.client, view.scheme) == (
            "203.0.113.9",
            "https",
            "10.0.0.2",  # the peer itself stays readable
            "http",
        )
    for view in _forwarded_views(0, lines)[:2]:
        assert (view.client_address, view.public_scheme) == ("10.0.0.2", "http")


# --- P31: with_identity_headers ------------------------------------------------------------------------------


def _vary_tokens(headers: Sequence[tuple[Any, Any]]) -> list[str]:
    values = [v.decode() if isinstance(v, bytes) else v for k, v in headers if k.lower() in (b"vary", "vary")]
    assert len(values) == 1, f"expected exactly one Vary header, got {values}"
    return [t.strip().lower() for t in values[0].split(",")]


def _values(headers: Sequence[tuple[Any, Any]], name: str) -> list[str]:
    out = []
    for k, v in headers:
        key = k.decode() if isinstance(k, bytes) else k
        if key.lower() == name:
            out.append(v.decode() if isinstance(v, bytes) else v)
    return out


def _h(headers: list[tuple[str, str]], as_bytes: bool) -> list[tuple[Any, Any]]:
    return [(k.encode(), v.encode()) for k, v in headers] if as_bytes else list(headers)


BYTES_OR_STR = pytest.mark.parametrize("as_bytes", [True, False], ids=["bytes", "str"])


@BYTES_OR_STR
def test_p31_authenticated_response_gets_no_store_and_vary(as_bytes: bool) -> None:
    headers = _h([("content-type", "application/json")], as_bytes)
    out = with_identity_headers(headers, True, b"" if as_bytes else "")
    assert set(_vary_tokens(out)) == {"cookie", "authorization"}
    assert _values(out, "cache-control") == ["no-store"]
    assert _values(out, "content-type") == ["application/json"]
    assert all(isinstance(k, bytes) == as_bytes and isinstance(v, bytes) == as_bytes for k, v in out)


@BYTES_OR_STR
def test_p31_existing_vary_is_kept_and_extended(as_bytes: bool) -> None:
    headers = _h([("Vary", "Accept-Encoding"), ("content-type", "text/plain")], as_bytes)
    out = with_identity_headers(headers, True, b"" if as_bytes else "")
    tokens = _vary_tokens(out)
    assert tokens[0] == "accept-encoding"
    assert set(tokens) == {"accept-encoding", "cookie", "authorization"}


@BYTES_OR_STR
def test_p31_several_vary_headers_are_merged_without_duplicates(as_bytes: bool) -> None:
    headers = _h([("vary", "Accept-Encoding"), ("VARY", "cookie, Origin")], as_bytes)
    out = with_identity_headers(headers, False, b"" if as_bytes else "")
    tokens = _vary_tokens(out)
    assert sorted(tokens) == sorted(["accept-encoding", "cookie", "origin", "authorization"])


@BYTES_OR_STR
@pytest.mark.parametrize("authenticated", [True, False])
def test_p31_vary_star_is_kept(as_bytes: bool, authenticated: bool) -> None:
    headers = _h([("Vary", "*")], as_bytes)
    out = with_identity_headers(headers, authenticated, b"" if as_bytes else "")
    assert _vary_tokens(out) == ["*"]


@BYTES_OR_STR
def test_p31_cache_control_replaced_by_no_store_when_authenticated(as_bytes: bool) -> None:
    headers = _h([("Cache-Control", "public, max-age=3600"), ("cache-control", "immutable")], as_bytes)
    out = with_identity_headers(headers, True, b"" if as_bytes else "")
    assert _values(out, "cache-control") == ["no-store"]


@BYTES_OR_STR
def test_p31_cache_control_kept_when_anonymous(as_bytes: bool) -> None:
    headers = _h([("Cache-Control", "public, max-age=3600")], as_bytes)
    out = with_identity_headers(headers, False, b"" if as_bytes else "")
    assert _values(out, "cache-control") == ["public, max-age=3600"]
    assert set(_vary_tokens(out)) == {"cookie", "authorization"}


@BYTES_OR_STR
def test_p31_other_headers_pass_through_in_order(as_bytes: bool) -> None:
    original = [("set-cookie", "a=1"), ("set-cookie", "b=2"), ("x-one", "1"), ("content-length", "2")]
    out = with_identity_headers(_h(original, as_bytes), True, b"" if as_bytes else "")
    kept = [(k, v) for k, v in out if _values([(k, v)], "vary") == [] and _values([(k, v)], "cache-control") == []]
    assert kept == _h(original, as_bytes)


_HEADER_NAMES = st.sampled_from(
    ["Vary", "vary", "VARY", "Cache-Control", "cache-control", "Set-Cookie", "X-One", "Varyx"]
)
_HEADER_VALUES = st.sampled_from(["*", "Cookie", "accept-encoding, Origin", "no-cache", "a=1", "", " authorization "])


@settings(max_examples=300, deadline=None)
@given(
    headers=st.lists(st.tuples(_HEADER_NAMES, _HEADER_VALUES), max_size=6),
    authenticated=st.booleans(),
    as_bytes=st.booleans(),
)
def test_p31_identity_headers_of_any_response(
    headers: list[tuple[str, str]], authenticated: bool, as_bytes: bool
) -> None:
    """Whatever the app's headers: one Vary that keeps the app's tokens and names Cookie and Authorization (or is
    *); when identified, one Cache-Control, no-store; every other header kept, in order, with its value."""
    out = with_identity_headers(_h(headers, as_bytes), authenticated, b"" if as_bytes else "")
    assert all(isinstance(k, bytes) == as_bytes and isinstance(v, bytes) == as_bytes for k, v in out)
    text = [(k.decode() if isinstance(k, bytes) else k, v.decode() if isinstance(v, bytes) else v) for k, v in out]
    assert len([k for k, _ in text if k.lower() == "vary"]) == 1
    app_vary = {t.strip().lower() for k, v in headers if k.lower() == "vary" for t in v.split(",")}
    tokens = set(_vary_tokens(out))
    if "*" in app_vary:
        assert tokens == {"*"}
    else:
        assert {"cookie", "authorization"} <= tokens and (app_vary - {""}) <= tokens
    cache_control = [v for k, v in text if k.lower() == "cache-control"]
    if authenticated:
        assert cache_control == ["no-store"]
    else:
        assert cache_control == [v for k, v in headers if k.lower() == "cache-control"]
    others = [(k, v) for k, v in headers if k.lower() not in ("vary", "cache-control")]
    assert [(k, v) for k, v in text if k.lower() not in ("vary", "cache-control")] == others


@BYTES_OR_STR
def test_p31_header_pairs_given_as_lists_come_out_as_tuples(as_bytes: bool) -> None:
    """PEP 3333 asks for tuples, and wsgiref fails on anything else: pairs an app gave as lists are turned into
    tuples, as the app's other headers are kept."""
    headers = [list(pair) for pair in _h([("Content-Type", "text/plain"), ("X-One", "1")], as_bytes)]
    out = with_identity_headers(headers, True, b"" if as_bytes else "")  # type: ignore[arg-type]
    assert all(type(pair) is tuple for pair in out)
    assert [k for k, _ in out][:2] == [pair[0] for pair in headers]
