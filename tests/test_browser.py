"""A real browser drives both example apps of DESIGN.md §6: Debian's headless Chromium through Playwright logs in
through the HTML form, sees the account and the session list, logs out, and the old cookie is dead afterwards.

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


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS)
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


def _new_page(context: BrowserContext) -> Page:
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.set_default_navigation_timeout(TIMEOUT_MS)
    return page


def _submit_login(page: Page, url: str, username: str, password: str) -> Any:
    """Fill and submit the home page's login form; the response of the page the browser lands on."""
    page.goto(url + "/")
    page.fill("#login input[name=username]", username)
    page.fill("#login input[name=password]", password)
    with page.expect_navigation() as navigation:
        page.click("#login button[type=submit]")
    return navigation.value


def _session_cookie(context: BrowserContext, url: str) -> dict[str, Any] | None:
    found = [cookie for cookie in context.cookies(url) if cookie["name"] == COOKIE]
    assert len(found) <= 1, found
    return dict(found[0]) if found else None


def test_login_account_sessions_logout_then_old_cookie_is_dead(app_url: str, context: BrowserContext) -> None:
    page = _new_page(context)
    landed = _submit_login(page, app_url, "alice", "wonderland")
    assert page.url == app_url + "/account"
    assert landed is not None and landed.status == 200
    assert landed.json() == {"id": "alice", "source": "session", "scopes": ["items:read", "items:write"]}

    page.goto(app_url + "/")
    assert "Logged in as alice" in page.inner_text("#account")
    assert page.inner_text("#user") == "alice"
    assert page.inner_text("#scopes") == "items:read items:write"
    rows = page.locator("#sessions li")
    assert rows.count() == 1
    assert "(this one)" in rows.first.inner_text()
    assert page.locator("#login").count() == 0

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
    assert page.locator("#login").is_visible()
    assert page.locator("#account").count() == 0
    assert _session_cookie(context, app_url) is None

    replay = httpx.get(app_url + "/account", cookies={COOKIE: old}, timeout=5)
    assert replay.status_code == 401


def test_wrong_password_is_401_in_the_browser(app_url: str, context: BrowserContext) -> None:
    page = _new_page(context)
    landed = _submit_login(page, app_url, "alice", "not-wonderland")
    assert page.url == app_url + "/login"
    assert landed is not None and landed.status == 401
    assert landed.json() == {"detail": "invalid username or password"}
    assert "invalid username or password" in page.inner_text("body")
    assert _session_cookie(context, app_url) is None
    account = page.goto(app_url + "/account")
    assert account is not None and account.status == 401
