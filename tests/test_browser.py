"""A real browser drives both example apps (Starlette under uvicorn, Flask under gunicorn): Debian's headless
Chromium through Playwright, asserting what a person sees. A logged-out visit to /account lands on the login form
(and comes back there after logging in), a wrong password shows the form again with a message, the account page
lists the sessions and has the log-out buttons, logging out says so, and dead cookies stay dead.

Needs /usr/bin/chromium (`make browser` installs it as root) and the playwright package (the `dev` extra); without
them this module skips, unless AUTHMW_REQUIRE_BROWSER=1 (CI), which turns the skip into a failure.
Never `playwright install`: only the system Chromium is used.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from tests.conftest import Server, free_port, uvicorn_server

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium tries to reach Google services and stalls.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 10_000
COOKIE = "authmw_session"


def _unavailable(what: str, remedy: str) -> None:
    """Skip with a clear message, or fail when AUTHMW_REQUIRE_BROWSER=1 (CI must not silently lose this test)."""
    if os.environ.get("AUTHMW_REQUIRE_BROWSER") == "1":
        pytest.fail(f"AUTHMW_REQUIRE_BROWSER=1 but {what}; {remedy}", pytrace=False)
    pytest.skip(f"real-browser test skipped: {what}; {remedy}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the module; each test gets a fresh context from `context`."""
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing", "run `make browser` as root to install Debian's chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed", "run `.venv/bin/pip install -e '.[dev]'`")
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            yield browser
        finally:
            browser.close()
    finally:
        playwright.stop()


def _new_context(browser: Browser) -> BrowserContext:
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS)
    return context


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = _new_context(browser)
    try:
        yield context
    finally:
        context.close()


def _env() -> dict[str, str]:
    return {
        "AUTHMW_SECRET_KEYS": secrets.token_urlsafe(36),  # 48 characters
        "AUTHMW_COOKIE_SECURE": "0",
        "AUTHMW_JWT_ALGORITHMS": "HS256",
        "AUTHMW_JWT_KEY": secrets.token_urlsafe(36),
    }


@pytest.fixture(scope="module", params=["starlette", "flask"])
def app_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The Starlette example under uvicorn, the Flask example under gunicorn; stopped after the module."""
    if request.param == "starlette":
        with uvicorn_server("examples.starlette_app.app:app", _env()) as server:
            yield server.url
        return
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1"]
    server = Server([*argv, "examples.flask_app.app:app"], _env(), port)
    request.addfinalizer(server.stop)
    yield server.url


@pytest.fixture(autouse=True)
def no_sessions_of_alice(app_url: str) -> None:
    """The servers live for the module: each test starts with no session of alice's left by another."""
    with httpx.Client(base_url=app_url, timeout=5) as client:
        logged_in = client.post("/login", data={"username": "alice", "password": "wonderland"})
        assert logged_in.status_code == 303, logged_in.text
        assert client.post("/logout-everywhere").status_code == 303


def _new_page(context: BrowserContext) -> Page:
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.set_default_navigation_timeout(TIMEOUT_MS)
    return page


def _submit_login(page: Page, username: str, password: str, url: str | None = None) -> Any:
    """Fill and submit the login form (of `url` if given, else of the page shown); the response the browser lands on."""
    if url is not None:
        page.goto(url)
    page.fill("#login input[name=username]", username)
    page.fill("#login input[name=password]", password)
    with page.expect_navigation() as navigation:
        page.click("#login button[type=submit]")
    return navigation.value


def _session_cookie(context: BrowserContext, url: str) -> dict[str, Any] | None:
    found = [cookie for cookie in context.cookies(url) if cookie["name"] == COOKIE]
    assert len(found) <= 1, found
    return dict(found[0]) if found else None


def _assert_login_form(page: Page, next_path: str | None) -> None:
    """What a person sees on the login form: the two fields, the button, and no account."""
    assert page.locator("#login").is_visible()
    assert page.locator("#login input[name=username]").is_visible()
    assert page.locator("#login input[name=password]").is_visible()
    assert page.locator("#login button[type=submit]").inner_text() == "Log in"
    assert page.locator("#account").count() == 0
    hidden = page.locator("#login input[name=next]")
    if next_path is None:
        assert hidden.count() == 0
    else:
        assert hidden.get_attribute("value") == next_path


def _assert_account_page(page: Page, sessions: int) -> None:
    """What a person sees on the account page: who, the scopes, the sessions, the buttons, a way home."""
    assert "Logged in as alice" in page.inner_text("#account")
    assert page.inner_text("#user") == "alice"
    assert page.inner_text("#scopes") == "items:read items:write"
    rows = page.locator("#sessions li")
    assert rows.count() == sessions
    assert [row for row in rows.all_inner_texts() if "(this one)" in row] != []
    assert page.locator("#logout").is_visible() and page.inner_text("#logout") == "Log out"
    assert page.locator("#logout-everywhere").is_visible()
    assert page.inner_text("#logout-everywhere") == "Log out everywhere"
    assert page.locator("#account a[href='/']").is_visible()
    assert page.locator("#login").count() == 0


def test_logged_out_visit_login_form_wrong_password_then_back_to_account(app_url: str, context: BrowserContext) -> None:
    page = _new_page(context)
    # A logged-out visit to /account lands on the login form, which keeps where the person was going.
    landed = page.goto(app_url + "/account")
    assert landed is not None and landed.status == 200
    assert landed.request.redirected_from is not None  # authmw's 303
    assert page.url == app_url + "/login?next=/account"
    _assert_login_form(page, next_path="/account")

    # A wrong password: the form again, with a message, the username kept, and a 401.
    refused = _submit_login(page, "alice", "not-wonderland")
    assert refused is not None and refused.status == 401
    assert page.url == app_url + "/login"
    assert page.inner_text("#error") == "Invalid username or password."
    assert page.locator("#error").is_visible()
    assert page.input_value("#login input[name=username]") == "alice"
    assert page.input_value("#login input[name=password]") == ""
    _assert_login_form(page, next_path="/account")
    assert _session_cookie(context, app_url) is None

    # The right password: back on /account (the kept `next`), which is the account page.
    accepted = _submit_login(page, "alice", "wonderland")
    assert accepted is not None and accepted.status == 200
    assert page.url == app_url + "/account"
    _assert_account_page(page, sessions=1)
    assert page.locator("#error").count() == 0


def test_get_login_shows_the_form(app_url: str, context: BrowserContext) -> None:
    page = _new_page(context)
    shown = page.goto(app_url + "/login")
    assert shown is not None and shown.status == 200
    assert shown.headers["content-type"].startswith("text/html")
    _assert_login_form(page, next_path=None)
    assert page.locator("#error").count() == 0 and page.locator("#notice").count() == 0
    home = page.goto(app_url + "/")  # the home page has the same form
    assert home is not None and home.status == 200
    _assert_login_form(page, next_path=None)


def test_login_account_page_logout_then_old_cookie_is_dead(app_url: str, context: BrowserContext) -> None:
    page = _new_page(context)
    landed = _submit_login(page, "alice", "wonderland", url=app_url + "/")
    assert landed is not None and landed.status == 200
    assert page.url == app_url + "/account"
    assert landed.headers["content-type"].startswith("text/html")
    _assert_account_page(page, sessions=1)

    page.goto(app_url + "/")  # the home page is the account page when logged in
    _assert_account_page(page, sessions=1)

    cookie = _session_cookie(context, app_url)
    assert cookie is not None and cookie["value"]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Lax"
    assert cookie["path"] == "/"
    old = cookie["value"]
    assert page.evaluate("document.cookie").find(COOKIE) == -1  # HttpOnly: invisible to scripts

    with page.expect_navigation() as navigation:
        page.click("#logout")
    assert navigation.value is not None and navigation.value.status == 200
    assert page.url == app_url + "/"
    assert page.inner_text("#notice") == "You have been logged out."
    _assert_login_form(page, next_path=None)
    assert _session_cookie(context, app_url) is None
    assert page.evaluate("document.cookie") == ""  # the notice cookie is HttpOnly too

    page.reload()  # the notice is shown once
    assert page.locator("#notice").count() == 0
    _assert_login_form(page, next_path=None)

    replay = httpx.get(app_url + "/account", cookies={COOKIE: old}, headers={"Accept": "application/json"}, timeout=5)
    assert replay.status_code == 401
    assert "json" in replay.headers["content-type"]


def test_two_browsers_then_log_out_everywhere(app_url: str, browser: Browser) -> None:
    laptop, phone = _new_context(browser), _new_context(browser)
    try:
        laptop_page, phone_page = _new_page(laptop), _new_page(phone)
        _submit_login(phone_page, "alice", "wonderland", url=app_url + "/")
        _submit_login(laptop_page, "alice", "wonderland", url=app_url + "/")
        assert laptop_page.url == phone_page.url == app_url + "/account"
        _assert_account_page(laptop_page, sessions=2)
        phone_page.reload()
        _assert_account_page(phone_page, sessions=2)
        assert laptop_page.locator("#sessions li", has_text="(this one)").count() == 1

        with laptop_page.expect_navigation() as navigation:
            laptop_page.click("#logout-everywhere")
        assert navigation.value is not None and navigation.value.status == 200
        assert laptop_page.url == app_url + "/"
        assert "You have been logged out everywhere" in laptop_page.inner_text("#notice")
        _assert_login_form(laptop_page, next_path=None)
        assert _session_cookie(laptop, app_url) is None

        # The other browser's next visit to /account lands on the login form.
        landed = phone_page.goto(app_url + "/account")
        assert landed is not None and landed.status == 200
        assert phone_page.url == app_url + "/login?next=/account"
        _assert_login_form(phone_page, next_path="/account")
        assert phone_page.locator("#notice").count() == 0  # the notice was the laptop's
    finally:
        laptop.close()
        phone.close()
