"""Policies and the route table: constructors, validation, segment-wise path matching, methods, the bounded memo."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authmw import ConfigurationError, Policy, Route, RouteTable
from authmw.policy import AMBIGUOUS_PATH, DEFER, normalize_path

REQUIRED = Policy.jwt()
DEFAULT = Policy.optional()


def table(*routes: Route, default: Policy = DEFAULT, cache_size: int = 4096) -> RouteTable:
    return RouteTable(list(routes), default, cache_size=cache_size)


def covers(pattern: str, path: str, method: str = "GET", methods: list[str] | None = None) -> bool:
    # Covered: the rule applies, or the path is refused as ambiguous (never the default).
    return table(Route(pattern, REQUIRED, methods)).match(method, path) in (REQUIRED, AMBIGUOUS_PATH)


# --- Policy constructors ----------------------------------------------------------------------------------------


def test_public_policy_reads_no_credential() -> None:
    policy = Policy.public()
    assert policy.is_public
    assert policy.accept == frozenset()
    assert not policy.auth_required


def test_optional_policy_accepts_both_kinds_without_requiring() -> None:
    policy = Policy.optional()
    assert policy.accept == {"jwt", "session"}
    assert not policy.auth_required
    assert not policy.is_public
    assert Policy.optional(accept=["jwt"]).accept == {"jwt"}


def test_required_policies() -> None:
    assert Policy.required().accept == {"jwt", "session"}
    assert Policy.required().auth_required
    jwt_only = Policy.jwt(scopes={"items:read"})
    assert (jwt_only.accept, jwt_only.auth_required, jwt_only.scopes) == ({"jwt"}, True, {"items:read"})
    session = Policy.session(csrf=False, max_auth_age=300)
    assert (session.accept, session.csrf, session.max_auth_age) == ({"session"}, False, 300)
    either = Policy.either(scopes=["a", "b"])
    assert (either.accept, either.scopes) == ({"jwt", "session"}, {"a", "b"})


def test_policies_are_immutable_and_comparable() -> None:
    assert Policy.jwt(scopes={"a"}) == Policy.jwt(scopes=["a"])
    with pytest.raises(AttributeError):
        Policy.jwt().auth_required = False  # type: ignore[misc]


@pytest.mark.parametrize(
    "build",
    [
        lambda: Policy(scopes=frozenset({"items:read"})),
        lambda: Policy(auth_required=False, max_auth_age=60),
        lambda: Policy(accept=frozenset(), auth_required=False, scopes=frozenset({"x"})),
    ],
    ids=["scopes", "max_auth_age", "public-with-scopes"],
)
def test_scopes_on_a_non_required_policy_is_configuration_error(build: object) -> None:
    with pytest.raises(ConfigurationError):
        build()  # type: ignore[operator]


@pytest.mark.parametrize("accept", [["basic"], ["jwt", "cookie"], ["JWT"], ["api_key"]])
def test_unknown_credential_kind_is_configuration_error(accept: list[str]) -> None:
    with pytest.raises(ConfigurationError):
        Policy.optional(accept=accept)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        Policy.required(accept=accept)  # type: ignore[arg-type]


def test_required_policy_without_credential_kind_is_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        Policy.required(accept=())


@pytest.mark.parametrize("scope", ["", " ", "items read", "items\tread", 'items"read', "items\\read", "a\nb"])
def test_bad_scope_name_is_configuration_error(scope: str) -> None:
    with pytest.raises(ConfigurationError):
        Policy.jwt(scopes={scope})


@pytest.mark.parametrize("scope", ["items\x00read", "items\x7f", "caf\u00e9", "a\u200bb"])
def test_scope_name_outside_rfc6749_charset_is_configuration_error(scope: str) -> None:
    with pytest.raises(ConfigurationError):
        Policy.jwt(scopes={scope})


@pytest.mark.parametrize("age", [-1, 0])
def test_non_positive_max_auth_age_is_configuration_error(age: float) -> None:
    with pytest.raises(ConfigurationError):
        Policy.jwt(max_auth_age=age)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("public", Policy.public()),
        ("optional", Policy.optional()),
        ("required", Policy.required()),
        ("either", Policy.required()),
        ("jwt", Policy.jwt()),
        ("session", Policy.session()),
        ("  JWT ", Policy.jwt()),
        ("Session", Policy.session()),
    ],
)
def test_policy_parse_names(spec: str, expected: Policy) -> None:
    assert Policy.parse(spec) == expected


def test_policy_parse_passes_scopes() -> None:
    assert Policy.parse("jwt", ["items:read"]) == Policy.jwt(scopes={"items:read"})
    assert Policy.parse("required", ["a"]).scopes == {"a"}


@pytest.mark.parametrize("spec", ["", "admin", "none", "allow", "jwt,session", "publicx"])
def test_policy_parse_unknown_name_is_configuration_error(spec: str) -> None:
    with pytest.raises(ConfigurationError):
        Policy.parse(spec)


def test_policy_parse_bad_scope_is_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        Policy.parse("jwt", ["bad scope"])


@pytest.mark.parametrize("spec", ["public", "optional"])
def test_policy_parse_scopes_on_non_required_policy_is_configuration_error(spec: str) -> None:
    with pytest.raises(ConfigurationError):
        Policy.parse(spec, ["items:read"])


# --- Route patterns ---------------------------------------------------------------------------------------------


def test_route_path_must_start_with_slash() -> None:
    with pytest.raises(ConfigurationError):
        Route("admin", REQUIRED)


@pytest.mark.parametrize("path", ["/administrator", "/admins", "/admin.html", "/adminx/y", "/Admin", "/xadmin", "/"])
def test_admin_never_covers_other_names(path: str) -> None:
    assert not covers("/admin", path)


@pytest.mark.parametrize(
    "path", ["/admin", "/admin/", "//admin", "/admin//", "/./admin", "/x/../admin", "/admin/.", "/../admin"]
)
def test_admin_covers_every_spelling_of_admin(path: str) -> None:
    assert covers("/admin", path)


@pytest.mark.parametrize("path", ["/admin/users", "/admin/x/y"])
def test_plain_route_does_not_cover_deeper_paths(path: str) -> None:
    assert not covers("/admin", path)


def test_param_matches_exactly_one_segment() -> None:
    assert covers("/items/{id}", "/items/42")
    assert covers("/items/{id}", "/items/abc/")
    assert covers("/items/{id:str}", "/items/abc")
    assert covers("/items/{id:uuid}", "/items/0b6e2f6c-8a4c-4d43-9a35-0e7c1f1d2a3b")
    assert not covers("/items/{id:uuid}", "/items/a/b")
    assert not covers("/items/{id}", "/items")
    assert not covers("/items/{id}", "/items/")
    assert not covers("/items/{id}", "/items/42/edit")
    assert covers("/items/{id}/edit", "/items/42/edit")
    assert not covers("/items/{id}/edit", "/items/42/view")


def test_int_param_matches_digits_only() -> None:
    assert covers("/items/{id:int}", "/items/42")
    assert not covers("/items/{id:int}", "/items/drafts")


@pytest.mark.parametrize("pattern", ["/files/{rest:path}", "/files/*"])
@pytest.mark.parametrize(
    "path", ["/files", "/files/", "/files/a", "/files/a/b/c", "//files//a", "/x/../files/a", "/files/../x"]
)
def test_tail_wildcard_covers_zero_or_more_segments(pattern: str, path: str) -> None:
    # "/files/../x": routers do not resolve dot segments and send it to the /files/{rest:path} endpoint, so the
    # rule must cover it; "/x/../files/a": a proxy that resolves them sends /files/a (the two readings differ,
    # so the request is refused as ambiguous).
    assert covers(pattern, path)


@pytest.mark.parametrize("pattern", ["/files/{rest:path}", "/files/*"])
@pytest.mark.parametrize("path", ["/filesx", "/filesx/a", "/other/files", "/"])
def test_tail_wildcard_never_covers_other_prefixes(pattern: str, path: str) -> None:
    assert not covers(pattern, path)


def test_root_wildcard_covers_everything() -> None:
    assert covers("/*", "/")
    assert covers("/{rest:path}", "/anything/at/all")
    assert covers("/", "/")
    assert not covers("/", "/x")


@pytest.mark.parametrize("pattern", ["/a/*/b", "/a/{rest:path}/b", "/*/x", "/{p:path}/{q}"])
def test_wildcard_not_last_is_configuration_error(pattern: str) -> None:
    with pytest.raises(ConfigurationError):
        Route(pattern, REQUIRED)


@pytest.mark.parametrize("pattern", ["/items/{id", "/items/id}", "/items/{1id}", "/x/{}", "/x/{{id}}"])
def test_bad_parameter_is_configuration_error(pattern: str) -> None:
    with pytest.raises(ConfigurationError):
        Route(pattern, REQUIRED)


def test_route_pattern_with_dot_segments_is_normalized_or_refused() -> None:
    try:
        route = Route("/x/../admin", REQUIRED)
    except ConfigurationError:
        return
    assert table(route).match("GET", "/admin") is REQUIRED


def test_pattern_with_repeated_or_trailing_slashes_is_the_same_route() -> None:
    assert covers("//admin/", "/admin")
    assert covers("/admin//users/", "/admin/users")


# --- methods, order, default ------------------------------------------------------------------------------------


def test_methods_restrict_the_route() -> None:
    assert covers("/items", "/items", "POST", methods=["POST"])
    assert not covers("/items", "/items", "GET", methods=["POST"])
    assert covers("/items", "/items", "DELETE", methods=None)


def test_get_implies_head() -> None:
    assert covers("/items", "/items", "HEAD", methods=["GET"])
    assert Route("/items", REQUIRED, ["get"]).methods == {"GET", "HEAD"}
    assert not covers("/items", "/items", "HEAD", methods=["POST"])


def test_first_match_wins() -> None:
    public, strict = Policy.public(), Policy.jwt(scopes={"admin"})
    routes = table(Route("/api/health", public), Route("/api/{rest:path}", strict), Route("/api/health", REQUIRED))
    assert routes.match("GET", "/api/health") is public
    assert routes.match("GET", "/api/items") is strict
    reverse = table(Route("/api/{rest:path}", strict), Route("/api/health", public))
    assert reverse.match("GET", "/api/health") is strict


def test_method_specific_route_falls_through_to_later_routes() -> None:
    write = Policy.jwt(scopes={"items:write"})
    read = Policy.jwt(scopes={"items:read"})
    routes = table(Route("/items", write, ["POST", "PUT"]), Route("/items", read))
    assert routes.match("POST", "/items") is write
    assert routes.match("GET", "/items") is read


def test_unmatched_path_gets_the_default_policy() -> None:
    deny = Policy.required()
    routes = table(Route("/public", Policy.public()), default=deny)
    assert routes.match("GET", "/anything") is deny
    assert routes.match("GET", "/publicx") is deny
    assert table().match("GET", "/") is DEFAULT


def test_route_table_memo_is_bounded() -> None:
    routes = table(Route("/admin/{rest:path}", REQUIRED), cache_size=16)
    for i in range(200):
        assert routes.match("GET", f"/p/{i}") is DEFAULT
        assert len(routes._cache) <= 16
    for i in range(200):
        assert routes.match("GET", f"/admin/{i}") is REQUIRED
        assert len(routes._cache) <= 16


def test_route_table_memo_keys_on_method() -> None:
    routes = table(Route("/items", REQUIRED, ["POST"]))
    assert routes.match("POST", "/items") is REQUIRED
    assert routes.match("GET", "/items") is DEFAULT
    assert routes.match("POST", "/items") is REQUIRED


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("", "/"),
        ("/", "/"),
        ("/a", "/a"),
        ("/a/", "/a"),
        ("//a//b//", "/a/b"),
        ("/a/./b", "/a/b"),
        ("/a/../b", "/b"),
        ("/../../a", "/a"),
        ("/a/b/..", "/a"),
        ("/a/.../b", "/a/.../b"),
        ("/a/.hidden", "/a/.hidden"),
    ],
)
def test_normalize_path(path: str, expected: str) -> None:
    assert normalize_path(path) == expected


# --- property: /admin/{rest:path} covers exactly the paths under admin ------------------------------------------


def reference_segments(path: str) -> list[str]:
    out: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if out:
                out.pop()
            continue
        out.append(segment)
    return out


_SEGMENT = st.one_of(
    st.sampled_from(["admin", "Admin", "ADMIN", "administrator", "admin.", ".admin", "adm", "", ".", "..", "...", "x"]),
    st.text(alphabet="adminADMIN./%~_-x \u00e9", max_size=12),
    st.text(max_size=8),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_SEGMENT, max_size=8), st.booleans())
def test_admin_tail_route_covers_exactly_paths_under_admin(segments: list[str], trailing: bool) -> None:
    path = "/" + "/".join(segments) + ("/" if trailing else "")
    routes = table(Route("/admin/{rest:path}", REQUIRED))
    normalized = reference_segments(path)
    as_sent = [segment for segment in path.split("/") if segment]  # what a router matches (dots kept)
    policy = routes.match("GET", path)
    if re.search(r"[\x00-\x1f\x7f]", path):
        assert policy is AMBIGUOUS_PATH, path  # control characters: refused, whatever the route
    elif normalized[:1] == ["admin"] and as_sent[:1] == ["admin"]:
        assert policy is REQUIRED, path
    elif normalized[:1] == ["admin"] or as_sent[:1] == ["admin"]:
        assert policy is AMBIGUOUS_PATH, path
    else:
        assert policy is DEFAULT, path


def test_dot_segments_naming_two_differently_protected_routes_are_ambiguous() -> None:
    # Both readings require auth, but with other scopes: neither may be chosen over the other.
    admin = Policy.jwt(scopes={"admin"})
    routes = table(Route("/admin/{rest:path}", admin), Route("/reports/{rest:path}", Policy.session()))
    assert routes.match("GET", "/reports/../admin/users") is AMBIGUOUS_PATH
    assert routes.match("GET", "/admin/../reports/x") is AMBIGUOUS_PATH
    # Dot segments that change nothing keep the route's policy.
    assert routes.match("GET", "/admin/./users") is admin
    assert routes.match("GET", "/admin/x/../users") is admin
    assert routes.match("GET", "/elsewhere/../other") is DEFAULT


def test_route_limited_to_a_host() -> None:
    api = Policy.jwt()
    routes = table(Route("/page", api, host="api.example"), Route("/t/{rest:path}", REQUIRED, host="{tenant}.example"))
    assert routes.uses_host
    assert routes.match("GET", "/page", "api.example") is api
    assert routes.match("GET", "/page", "open.example") is DEFAULT
    assert routes.match("GET", "/page") is DEFAULT  # no Host header: no host route applies
    assert routes.match("GET", "/t/x", "acme.example") is REQUIRED
    assert routes.match("GET", "/t/x", "example") is DEFAULT
    assert not table(Route("/page", api)).uses_host


@pytest.mark.parametrize("host", ["", "{a:int}.example", "{a.example"])
def test_bad_route_host_is_refused(host: str) -> None:
    with pytest.raises(ConfigurationError):
        Route("/x", REQUIRED, host=host)


def test_a_defer_rule_skips_the_remaining_endpoint_rules_but_not_the_path_rules() -> None:
    public, session = Policy.public(), Policy.session()
    compiled = [Route("/app/{rest:path}", DEFER), Route("/{rest:path}", public)]
    path_rules = [Route("/app/reports", session)]
    routes = RouteTable([*compiled, *path_rules], DEFAULT, path_rules_start=len(compiled))
    assert routes.match("GET", "/app/reports") is session  # a path rule still applies under the DEFER
    assert routes.match("GET", "/app/other") is DEFAULT  # the later endpoint rule does not
    assert routes.match("GET", "/elsewhere") is public
    # A DEFER among path rules (it never is, but) is no answer: it is passed over.
    assert RouteTable([Route("/x", DEFER)], DEFAULT).match("GET", "/x") is DEFAULT
