"""Both example apps answer browsers with pages and API clients with JSON, identically.

Content negotiation on `Accept` (browsers rank `text/html` first; curl, httpx and `application/json` get JSON), the
login form at `/login` keeping a local `next` path, the login error page, the one-shot notice after logging out, and
the same status codes, JSON and redirects from the Starlette and the Flask app. In-process clients: fast.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from examples import common
from examples.flask_app import app as flask_example
from examples.starlette_app import app as starlette_example
from tests.attack_harness import ServerLikeWSGITransport

BROWSER = {
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
    "User-Agent": "Mozilla/5.0 (pages test)",
}
API = {"Accept": "application/json", "User-Agent": "pages-test-api"}
COOKIE = "authmw_session"
ALICE = {"id": "alice", "source": "session", "scopes": ["items:read", "items:write"]}
ANY_CLIENT: dict[str, str] = {"User-Agent": "pages-test-any"}  # no Accept header of its own: httpx sends */*

#: an httpx.Client (the Flask app through WSGITransport) or Starlette's TestClient (an httpx2.Client): the same API
Client = Any
NewClient = Callable[..., Client]


@pytest.fixture(autouse=True)
def example_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The apps read their configuration from the environment, as when they are served."""
    for name in ("AUTHMW_LOGIN_URL", "AUTHMW_REDIS_URL", "AUTHMW_TRUSTED_ORIGINS", "AUTHMW_REALM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AUTHMW_SECRET_KEYS", secrets.token_urlsafe(36))
    monkeypatch.setenv("AUTHMW_COOKIE_SECURE", "0")
    monkeypatch.setenv("AUTHMW_JWT_ALGORITHMS", "HS256")
    monkeypatch.setenv("AUTHMW_JWT_KEY", secrets.token_urlsafe(36))
    for module in (starlette_example, flask_example):
        monkeypatch.setattr(module, "items", common.Items())


def app_clients(framework: str) -> NewClient:
    """A new app configured from the environment; the callable makes clients (browsers) of that one app."""
    if framework == "starlette":
        from starlette.testclient import TestClient

        starlette_app = starlette_example.create_app()

        def new_starlette(headers: dict[str, str] | None = None) -> Client:
            client = TestClient(starlette_app, follow_redirects=False)
            client.headers.update(headers or ANY_CLIENT)
            return client

        return new_starlette
    transport = httpx.WSGITransport(app=flask_example.create_app())

    def new_flask(headers: dict[str, str] | None = None) -> Client:
        return httpx.Client(transport=transport, base_url="http://testserver", headers=headers or ANY_CLIENT)

    return new_flask


@pytest.fixture(params=["starlette", "flask"])
def new_client(request: pytest.FixtureRequest) -> Iterator[NewClient]:
    made: list[Client] = []
    factory = app_clients(request.param)

    def new(headers: dict[str, str] | None = None) -> Client:
        made.append(factory(headers))
        return made[-1]

    yield new
    for client in made:
        client.close()


def log_in(client: Client, user: str = "alice", password: str = "wonderland", **extra: str) -> httpx.Response:
    response: httpx.Response = client.post("/login", data={"username": user, "password": password, **extra})
    assert response.status_code == 303, response.text
    assert client.cookies.get(COOKIE)
    return response


def hidden_next(page: str) -> str | None:
    found = re.findall(r'<input type="hidden" name="next" value="([^"]*)">', page)
    assert len(found) <= 1
    return found[0] if found else None


def is_html(response: httpx.Response) -> bool:
    return str(response.headers.get("content-type", "")).startswith("text/html")


# ---- the shared helpers ----


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        (None, False),
        ("", False),
        ("*/*", False),
        ("application/json", False),
        ("application/json, text/html", False),  # a tie: JSON
        ("text/html, application/json", False),
        ("application/json;q=0.9, text/html", True),
        ("text/html;q=0.5, application/json", False),
        ("text/html", True),
        ("text/*", True),
        ("text/html;q=0, */*", False),
        ("text/html;q=0.9, application/*;q=0.8", True),
        ("text/html;q=0.8, application/*;q=0.9", False),
        ("text/html;q=0.5, application/json;q=0.4, */*;q=1", True),  # the most specific range counts
        ("TEXT/HTML", True),
        ("text/html;q=nan, application/json;q=0.1", False),  # a malformed q drops its range
        ("text/html;q=2", False),
        ("text/html;level=1;q=0.7, */*;q=0.6", True),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", True),  # Firefox
        ("text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8", True),  # Chromium
        ("garbage, ;;;, /, text/, /html", False),
    ],
)
def test_wants_html_ranks_html_above_json(accept: str | None, html: bool) -> None:
    assert common.wants_html(accept) is html


UNSAFE_NEXT = [
    "//evil.example",
    "/\\evil.example",
    "https://evil.example",
    "https:/evil.example",
    "javascript:alert(1)",
    "/%0a//evil",
    "/\n//evil",
    "/\t/evil.example",
    "/\r\n/evil.example",
    "/%2F/evil.example",
    "/%5Cevil.example",
    "/a\\..\\..\\/evil.example",
    "evil.example",
    " /account",
    "",
    "/" + "a" * 3000,
]


@pytest.mark.parametrize("value", UNSAFE_NEXT)
def test_unsafe_next_values_are_never_kept(value: str) -> None:
    assert common.local_path(value) is None
    assert common.after_login(value) == "/account"


@pytest.mark.parametrize(
    ("value", "location"),
    [
        ("/account", "/account"),
        ("/api/me", "/api/me"),
        ("/a b", "/a%20b"),
        ("/caf%C3%A9", "/caf%C3%A9"),
        ("/café?x=1&y=2", "/caf%C3%A9?x=1&y=2"),
        (None, "/account"),
    ],
)
def test_local_next_paths_are_followed(value: str | None, location: str) -> None:
    assert common.after_login(value) == location


# ---- /account: JSON for API clients, the page for browsers ----


@pytest.mark.parametrize("headers", [API, ANY_CLIENT, {"Accept": "*/*"}, {"Accept": "application/json, text/html"}])
def test_account_json_for_api_clients(new_client: NewClient, headers: dict[str, str]) -> None:
    client = new_client(headers)
    log_in(client)
    account = client.get("/account")
    assert account.status_code == 200
    assert account.headers["content-type"].startswith("application/json")
    assert account.json() == ALICE
    assert list(account.json()) == ["id", "source", "scopes"]
    assert "accept" in account.headers["vary"].lower()


def test_account_page_for_browsers(new_client: NewClient) -> None:
    browser = new_client(BROWSER)
    landed = log_in(browser)
    assert landed.headers["location"] == "/account"
    page = browser.get("/account")
    assert page.status_code == 200 and is_html(page)
    assert page.headers["cache-control"] == "no-store"
    text = page.text
    assert 'id="account"' in text and 'id="login"' not in text
    assert 'Logged in as <strong id="user">alice</strong>' in text
    assert '<span id="scopes">items:read items:write</span>' in text
    assert text.count("<li data-handle=") == 1 and "(this one)" in text
    assert "Mozilla/5.0 (pages test)" in text
    assert 'id="logout"' in text and 'id="logout-everywhere"' in text
    assert re.search(r'<form method="post" action="/logout"', text)
    assert re.search(r'<form method="post" action="/logout-everywhere"', text)
    assert '<a href="/"' in text
    assert "<script" not in text
    # the same page at / when logged in
    home = browser.get("/")
    assert home.status_code == 200 and 'id="account"' in home.text and 'id="login"' not in home.text


def test_account_page_escapes_what_comes_from_headers(new_client: NewClient) -> None:
    browser = new_client({**BROWSER, "User-Agent": '<script>alert("x")</script>'})
    log_in(browser)
    page = browser.get("/account").text
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page


@pytest.mark.parametrize("headers", [API, ANY_CLIENT, {"Accept": "*/*"}])
def test_account_without_a_session_is_401_json_for_api_clients(new_client: NewClient, headers: dict[str, str]) -> None:
    refused = new_client(headers).get("/account")
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == 'Session realm="authmw"'
    assert "json" in refused.headers["content-type"]
    assert "location" not in refused.headers


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_account_without_a_session_sends_browsers_to_the_login_form(new_client: NewClient, method: str) -> None:
    browser = new_client(BROWSER)
    refused = browser.request(method, "/account")
    assert refused.status_code == 303
    assert refused.headers["location"] == "/login?next=/account"  # what authmw emits
    form = browser.get(refused.headers["location"])
    assert form.status_code == 200 and is_html(form)
    assert hidden_next(form.text) == "/account"


def test_a_dead_cookie_sends_browsers_to_the_login_form_and_api_clients_get_401(new_client: NewClient) -> None:
    browser = new_client(BROWSER)
    log_in(browser)
    old = browser.cookies[COOKIE]
    assert browser.post("/logout").status_code == 303
    replayed = {"Cookie": f"{COOKIE}={old}"}
    assert new_client(API).get("/account", headers=replayed).status_code == 401
    again = new_client(BROWSER).get("/account", headers=replayed)
    assert again.status_code == 303 and again.headers["location"] == "/login?next=/account"


def test_the_users_login_url_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTHMW_LOGIN_URL", "/sign-in")
    for framework in ("starlette", "flask"):
        refused = app_clients(framework)(BROWSER).get("/account")
        assert (refused.status_code, refused.headers["location"]) == (303, "/sign-in?next=/account")
    monkeypatch.setenv("AUTHMW_LOGIN_URL", "")  # empty: no redirect, a plain 401
    for framework in ("starlette", "flask"):
        assert app_clients(framework)(BROWSER).get("/account").status_code == 401


# ---- GET /login, POST /login ----


def test_get_login_shows_the_form_and_keeps_next(new_client: NewClient) -> None:
    client = new_client(BROWSER)
    plain = client.get("/login")
    assert plain.status_code == 200 and is_html(plain)
    assert re.search(r'<form method="post" action="/login" id="login">', plain.text)
    assert 'name="username"' in plain.text and 'name="password"' in plain.text
    assert hidden_next(plain.text) is None
    assert 'id="error"' not in plain.text
    kept = client.get("/login", params={"next": "/api/me"})
    assert hidden_next(kept.text) == "/api/me"
    quoted = client.get("/login", params={"next": '/x"><script>'})
    assert hidden_next(quoted.text) == "/x&quot;&gt;&lt;script&gt;"
    assert "<script>" not in quoted.text
    # API clients get the form too (GET /login is a page), and it no longer answers 405
    assert new_client(API).get("/login").status_code == 200


@pytest.mark.parametrize("value", UNSAFE_NEXT)
def test_unsafe_next_is_never_followed(new_client: NewClient, value: str) -> None:
    client = new_client(BROWSER)
    form = client.get("/login", params={"next": value})
    assert form.status_code == 200
    assert hidden_next(form.text) is None
    assert "evil" not in form.text
    landed = log_in(client, next=value)
    assert landed.headers["location"] == "/account"


def test_unsafe_next_in_a_raw_query_is_never_kept(new_client: NewClient) -> None:
    client = new_client(BROWSER)
    for raw in ("/login?next=/%0a//evil", "/login?next=//evil.example", "/login?next=/%5Cevil.example"):
        form = client.get(raw)
        assert form.status_code == 200 and hidden_next(form.text) is None, raw


def test_login_follows_a_kept_local_next(new_client: NewClient) -> None:
    client = new_client(BROWSER)
    assert log_in(client, next="/api/me").headers["location"] == "/api/me"
    assert log_in(client, next="/account").headers["location"] == "/account"
    assert log_in(client, next="/café").headers["location"] == "/caf%C3%A9"
    assert log_in(client).headers["location"] == "/account"


def test_wrong_password_shows_the_form_again_to_browsers(new_client: NewClient) -> None:
    client = new_client(BROWSER)
    bad = client.post("/login", data={"username": "alice", "password": "nope", "next": "/api/me"})
    assert bad.status_code == 401 and is_html(bad)
    assert "set-cookie" not in bad.headers
    assert '<p id="error" class="error" role="alert">Invalid username or password.</p>' in bad.text
    assert re.search(r'<input name="username" value="alice"', bad.text)
    assert 'name="password"' in bad.text and "nope" not in bad.text
    assert hidden_next(bad.text) == "/api/me"
    escaped = client.post("/login", data={"username": "<b>x</b>", "password": "nope"})
    assert "<b>x</b>" not in escaped.text and "&lt;b&gt;x&lt;/b&gt;" in escaped.text


@pytest.mark.parametrize("headers", [API, ANY_CLIENT])
def test_wrong_password_is_401_json_for_api_clients(new_client: NewClient, headers: dict[str, str]) -> None:
    bad = new_client(headers).post("/login", data={"username": "alice", "password": "nope"})
    assert bad.status_code == 401
    assert bad.json() == {"detail": "invalid username or password"}
    assert "set-cookie" not in bad.headers


def test_login_csrf_is_still_refused(new_client: NewClient) -> None:
    for headers in (BROWSER, API):
        refused = new_client(headers).post(
            "/login",
            data={"username": "alice", "password": "wonderland"},
            headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        )
        assert refused.status_code == 403
        assert "json" in refused.headers["content-type"] and "detail" in refused.json()
        assert "set-cookie" not in refused.headers


# ---- logging out: 303 to / and a notice shown once ----


def notice_cookies(response: httpx.Response) -> list[str]:
    return [c for c in response.headers.get_list("set-cookie") if c.startswith(common.NOTICE_COOKIE + "=")]


@pytest.mark.parametrize(
    ("path", "notice", "message"),
    [
        ("/logout", "logged-out", "You have been logged out."),
        ("/logout-everywhere", "logged-out-everywhere", "You have been logged out everywhere"),
    ],
)
def test_logout_redirects_home_with_a_notice_shown_once(
    new_client: NewClient, path: str, notice: str, message: str
) -> None:
    browser = new_client(BROWSER)
    log_in(browser)
    response = browser.post(path)
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    (flash,) = notice_cookies(response)
    assert flash == f"{common.NOTICE_COOKIE}={notice}; Max-Age=60; Path=/; HttpOnly; SameSite=Lax"
    assert any(c.startswith(COOKIE + "=") and "Max-Age=0" in c for c in response.headers.get_list("set-cookie"))
    home = browser.get("/")
    assert home.status_code == 200
    assert re.search(r'<p id="notice" class="notice" role="status">' + re.escape(message), home.text)
    assert 'id="login"' in home.text and 'id="account"' not in home.text
    (cleared,) = notice_cookies(home)
    assert "Max-Age=0" in cleared
    again = browser.get("/")
    assert 'id="notice"' not in again.text
    assert notice_cookies(again) == []


def test_a_forged_notice_is_never_echoed(new_client: NewClient) -> None:
    client = new_client(BROWSER)
    for value in ("<script>alert(1)</script>", "logged-out-nowhere", "NOTICES"):
        home = client.get("/", headers={"Cookie": f"{common.NOTICE_COOKIE}={value}"})
        assert home.status_code == 200
        assert 'id="notice"' not in home.text and "alert" not in home.text
        assert notice_cookies(home) and "Max-Age=0" in notice_cookies(home)[0]


def test_logout_everywhere_ends_every_session_and_token(new_client: NewClient) -> None:
    laptop, phone, bob = new_client(BROWSER), new_client(API), new_client(API)
    log_in(laptop)
    log_in(phone)
    log_in(bob, "bob", "builder")
    assert laptop.get("/account").text.count("<li data-handle=") == 2
    issued = phone.post("/api/token")
    assert issued.status_code == 200, issued.text
    bearer = {"Authorization": "Bearer " + issued.json()["access_token"]}
    assert new_client(API).get("/api/me", headers=bearer).json()["id"] == "alice"

    assert laptop.post("/logout-everywhere").headers["location"] == "/"
    assert phone.get("/account").status_code == 401
    assert new_client(API).get("/api/me", headers=bearer).status_code == 401
    refreshed = new_client(API).post("/api/token/refresh", json={"refresh_token": issued.json()["refresh_token"]})
    assert refreshed.status_code == 401
    assert bob.get("/account").json()["id"] == "bob"
    back = laptop.get("/account")
    assert back.status_code == 303 and back.headers["location"] == "/login?next=/account"


def test_logout_needs_a_session(new_client: NewClient) -> None:
    for path in ("/logout", "/logout-everywhere"):
        assert new_client(API).post(path).status_code == 401


# ---- the two apps answer the same requests the same way ----


Step = tuple[str, str, str, dict[str, Any], int]  # (client, method, path, httpx options, status)

PARITY_STEPS: list[Step] = [
    ("anon", "GET", "/health", {}, 200),
    ("anon", "GET", "/", {}, 200),
    ("anon", "GET", "/", {"headers": BROWSER}, 200),
    ("anon", "GET", "/login", {}, 200),
    ("anon", "GET", "/login", {"params": {"next": "/account"}}, 200),
    ("anon", "GET", "/login", {"params": {"next": "//evil.example"}}, 200),
    ("anon", "HEAD", "/login", {}, 200),
    ("anon", "GET", "/account", {}, 401),
    ("anon", "GET", "/account", {"headers": API}, 401),
    ("anon", "GET", "/account", {"headers": BROWSER}, 303),
    ("anon", "HEAD", "/account", {"headers": BROWSER}, 303),
    ("anon", "POST", "/account", {"headers": BROWSER}, 401),
    ("anon", "GET", "/account", {"headers": {"Accept": "text/html", "Cookie": f"{COOKIE}=garbage"}}, 303),
    ("anon", "POST", "/login", {"data": {"username": "alice", "password": "nope"}}, 401),
    (
        "anon",
        "POST",
        "/login",
        {"data": {"username": "alice", "password": "nope", "next": "/x"}, "headers": BROWSER},
        401,
    ),
    ("anon", "POST", "/login", {"json": {"username": "alice", "password": "nope"}, "headers": API}, 401),
    ("anon", "POST", "/login", {"data": {"username": "alice"}, "headers": {"Origin": "https://evil.example"}}, 403),
    ("anon", "PUT", "/login", {}, 405),
    ("anon", "DELETE", "/account", {}, 401),
    ("anon", "OPTIONS", "/api/items", {}, 405),
    (
        "anon",
        "OPTIONS",
        "/api/items",
        {"headers": {"Origin": "https://x.example", "Access-Control-Request-Method": "GET"}},
        405,
    ),
    (
        "anon",
        "OPTIONS",
        "/account",
        {"headers": {"Origin": "https://x.example", "Access-Control-Request-Method": "GET"}},
        405,
    ),
    ("anon", "OPTIONS", "/account", {}, 401),
    ("a", "POST", "/login", {"data": {"username": "alice", "password": "wonderland", "next": "//evil.example"}}, 303),
    ("a", "GET", "/account", {}, 200),
    ("a", "GET", "/account", {"headers": BROWSER}, 200),
    ("a", "GET", "/", {"headers": BROWSER}, 200),
    ("b", "POST", "/login", {"data": {"username": "alice", "password": "wonderland", "next": "/api/me?x=1"}}, 303),
    ("b", "GET", "/account", {"headers": BROWSER}, 200),
    ("b", "GET", "/api/me", {"headers": BROWSER}, 200),
    ("a", "POST", "/logout", {}, 303),
    ("a", "GET", "/", {}, 200),
    ("a", "GET", "/", {}, 200),
    ("a", "GET", "/account", {"headers": BROWSER}, 303),
    ("a", "POST", "/login", {"data": {"username": "bob", "password": "builder", "next": "/café"}}, 303),
    ("a", "POST", "/logout-everywhere", {"headers": BROWSER}, 303),
    ("a", "GET", "/", {"headers": BROWSER}, 200),
    ("b", "GET", "/account", {"headers": API}, 200),
    ("b", "GET", "/account", {"headers": BROWSER}, 200),
    ("c", "POST", "/login", {"data": {"username": "alice", "password": "wonderland"}}, 303),
    ("c", "POST", "/logout-everywhere", {}, 303),
    ("c", "GET", "/account", {}, 401),
    ("c", "GET", "/", {"headers": {"Cookie": f"{common.NOTICE_COOKIE}=forged"}}, 200),
    ("b", "GET", "/account", {"headers": API}, 401),  # alice's sessions ended by c's logout-everywhere
]


def _page_shape(text: str) -> str:
    """An HTML page without what differs between servers by nature: session rows (times, client address)."""
    return re.sub(r'<ul id="sessions">.*?</ul>', lambda m: f"<sessions {m[0].count('<li')}>", text, flags=re.S)


def snapshot(response: httpx.Response) -> dict[str, Any]:
    content_type = response.headers.get("content-type", "")
    cookies = sorted(
        (c.split("=", 1)[0], *sorted(p for p in c.split("; ")[1:] if not p.startswith("Expires=")))
        + ((c.split(";", 1)[0],) if c.startswith(common.NOTICE_COOKIE) else ())
        for c in response.headers.get_list("set-cookie")
    )
    html = is_html(response) and response.status_code != 303 and response.request.method != "HEAD"
    return {
        "status": response.status_code,
        "type": content_type.split(";")[0] if response.status_code != 303 else None,
        "json": response.json() if "json" in content_type and response.content else None,
        "html": _page_shape(response.text) if html else None,
        "location": response.headers.get("location"),
        "cache-control": response.headers.get("cache-control"),
        "set-cookie": cookies,
    }


def test_both_apps_answer_the_same_requests_identically() -> None:
    answers = []
    for framework in ("starlette", "flask"):
        factory = app_clients(framework)
        clients: dict[str, Client] = {step[0]: factory() for step in PARITY_STEPS}
        answers.append(
            [
                snapshot(clients[name].request(method, path, **options))
                for name, method, path, options, _ in PARITY_STEPS
            ]
        )
        for client in clients.values():
            client.close()
    differences = [
        f"{step[:3]}:\n  starlette={s}\n  flask={f}"
        for step, s, f in zip(PARITY_STEPS, answers[0], answers[1], strict=True)
        if s != f
    ]
    assert not differences, "\n".join(differences)
    wrong = [
        f"{step[:3]}: {a['status']} (expected {step[4]})"
        for step, a in zip(PARITY_STEPS, answers[0], strict=True)
        if a["status"] != step[4]
    ]
    assert not wrong, "\n".join(wrong)
    locations = [answer["location"] for answer in answers[0] if answer["location"]]
    assert all(location.startswith("/") and not location.startswith("//") for location in locations)


# ---- OPTIONS, CORS preflights and a repeated Authorization field: the same answer from both apps ----

PREFLIGHT = [("Origin", "https://other.example"), ("Access-Control-Request-Method", "GET")]


def _wire_clients() -> dict[str, Client]:
    """Both apps handed requests as their servers hand them over: uvicorn passes a repeated field on as is (so does
    TestClient, given a list), gunicorn joins it with ',' into one environ value (httpx's WSGITransport would keep
    only the last one)."""
    from starlette.testclient import TestClient

    return {
        "starlette": TestClient(starlette_example.create_app(), follow_redirects=False),
        "flask": httpx.Client(
            transport=ServerLikeWSGITransport(app=flask_example.create_app()), base_url="http://testserver"
        ),
    }


def _on_the_wire(response: httpx.Response) -> dict[str, Any]:
    content_type = response.headers.get("content-type", "")
    return {
        "status": response.status_code,
        "type": content_type.split(";")[0],
        "body": response.json() if "json" in content_type else response.text,
        "www-authenticate": response.headers.get_list("www-authenticate"),
        "cache-control": response.headers.get("cache-control"),
        "vary": response.headers.get("vary"),
        "location": response.headers.get("location"),
    }


def test_both_apps_answer_options_and_repeated_authorization_identically() -> None:
    """OPTIONS is 405 in both (Flask's automatic OPTIONS answer is off: the Starlette app has none); a CORS
    preflight passes authmw unauthenticated and gets that 405 too; two Authorization fields are one 400 with the
    same words, whether the server passed both on (ASGI) or joined them (WSGI)."""
    now = int(time.time())
    token = pyjwt.encode(
        {"sub": "alice", "iat": now, "exp": now + 300, "scope": "items:read"}, os.environ["AUTHMW_JWT_KEY"], "HS256"
    )
    bearer = ("Authorization", f"Bearer {token}")
    requests: list[tuple[str, str, list[tuple[str, str]], int]] = []
    for path, options in (("/api/items", 405), ("/api/me", 401), ("/account", 401)):
        requests += [
            ("OPTIONS", path, [], options),
            ("OPTIONS", path, PREFLIGHT, 405),
            ("OPTIONS", path, [*PREFLIGHT, ("Access-Control-Request-Headers", "authorization")], 405),
            ("OPTIONS", path, [bearer], 401 if path == "/account" else 405),
        ]
        twice = 401 if path == "/account" else 400  # a session-only route reads no Authorization field
        for fields in ([bearer, bearer], [bearer, ("Authorization", "Basic YWxpY2U6d29uZGVybGFuZA==")]):
            requests += [(method, path, fields, twice) for method in ("GET", "POST", "OPTIONS")]
    clients = _wire_clients()
    answers = {
        name: [_on_the_wire(c.request(m, p, headers=h)) for m, p, h, _ in requests] for name, c in clients.items()
    }
    for client in clients.values():
        client.close()
    differences = [
        f"{m} {p} {[n for n, _ in h]}:\n  starlette={s}\n  flask={f}"
        for (m, p, h, _), s, f in zip(requests, answers["starlette"], answers["flask"], strict=True)
        if s != f
    ]
    assert not differences, "\n".join(differences)
    assert [a["status"] for a in answers["starlette"]] == [status for *_, status in requests]
    for (*_, status), answer in zip(requests, answers["starlette"], strict=True):
        if status == 400:
            assert answer["www-authenticate"] == [
                'Bearer realm="authmw", error="invalid_request", error_description="more than one Authorization header"'
            ]
        if status == 405:
            assert answer["body"] == {"detail": "Method Not Allowed"} and answer["www-authenticate"] == []
