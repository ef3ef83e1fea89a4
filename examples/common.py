"""What both example apps share: the route policies, demo users, items, content negotiation and the HTML pages.

Sharing this is what keeps the Starlette and the Flask app identical over HTTP (docs/EXAMPLES.md):
browsers (whose `Accept` ranks `text/html` first) get pages, API clients (curl, httpx, `application/json`) get JSON.
"""

from __future__ import annotations

import hmac
import html
import itertools
import json
import os
import re
import threading
import time
from collections.abc import Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, unquote

from authmw import AuthConfig, Policy, Principal, Route
from authmw.sessions import SessionInfo
from authmw.throttle import BaseLoginThrottle, ThrottleSettings

Throttle = TypeVar("Throttle", bound=BaseLoginThrottle)

ROUTES = [
    Route("/", Policy.optional(accept=("session",))),
    Route("/health", Policy.public()),
    Route("/login", Policy.public()),
    Route("/account", Policy.session()),
    Route("/logout", Policy.session()),
    Route("/logout-everywhere", Policy.session()),
    Route("/api/me", Policy.either()),
    Route("/api/items", Policy.jwt(scopes={"items:read"}), methods={"GET"}),
    Route("/api/items", Policy.jwt(scopes={"items:write"}), methods={"POST"}),
    Route("/api/token", Policy.session(), methods={"POST"}),
    Route("/api/token/refresh", Policy.public(), methods={"POST"}),
    Route("/.well-known/jwks.json", Policy.public()),
    Route("/ws", Policy.either()),
]

USERS = {
    "alice": ("wonderland", ("items:read", "items:write")),
    "bob": ("builder", ("items:read",)),
}


def check_password(username: str, password: str) -> tuple[str, ...] | None:
    """The user's scopes if the password is right (constant-time comparison), else None."""
    expected, scopes = USERS.get(username, ("\0" * 16, ()))
    ok = hmac.compare_digest(password.encode(), expected.encode())
    return scopes if ok and username in USERS else None


def parse_form(body: bytes, content_type: str) -> dict[str, str]:
    """Form fields from an urlencoded (or JSON) body; anything malformed gives no fields."""
    if content_type.startswith("application/json"):
        try:
            data = json.loads(body or b"{}")
        except (ValueError, RecursionError):  # RecursionError: nested deeper than Python parses
            return {}
        return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {key: values[0] for key, values in parsed.items()}


def parse_json(body: bytes) -> tuple[Any, bool]:
    """The JSON value of a body (whatever its content type), and whether it parsed."""
    try:
        return json.loads(body), True
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None, False


class Items:
    """The demo's in-memory item list (thread-safe)."""

    def __init__(self) -> None:
        self._items: list[dict[str, Any]] = [{"id": 1, "name": "tea"}, {"id": 2, "name": "biscuits"}]
        self._ids = itertools.count(3)
        self._lock = threading.Lock()

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._items)

    def create(self, data: Any, owner: str) -> tuple[dict[str, Any], int]:
        """The created item and 201, or an error body and 400."""
        name = data.get("name") if isinstance(data, dict) else None
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            return {"detail": "an item needs a non-empty 'name' string"}, 400
        with self._lock:
            item = {"id": next(self._ids), "name": name.strip(), "owner": owner}
            self._items.append(item)
        return item, 201


def config_from_env() -> AuthConfig:
    """The apps' configuration: the `AUTHMW_*` variables, with browsers sent to `/login` unless
    `AUTHMW_LOGIN_URL` says otherwise (set it empty for plain 401s)."""
    return AuthConfig.from_env({"AUTHMW_LOGIN_URL": "/login", **os.environ}, routes=ROUTES, default=Policy.optional())


def throttle_from(config: AuthConfig, kind: type[Throttle]) -> Throttle:
    """The login throttle (`LoginThrottle` for sync views, `AsyncLoginThrottle` for async ones): counters in `config`'s
    session store (Redis: shared by every worker), settings from the `AUTHMW_LOGIN_THROTTLE_*` variables."""
    return kind.from_config(config, ThrottleSettings.from_env())


def too_many_attempts(seconds: int) -> str:
    """What a throttled login says: in the page to browsers, as `detail` to API clients."""
    return f"Too many attempts; try again in {seconds} second{'' if seconds == 1 else 's'}."


# ---- content negotiation ----

_Q_VALUE = re.compile(r"0(?:\.\d{0,3})?|1(?:\.0{0,3})?")


def _accept_ranges(accept: str) -> list[tuple[str, str, float]]:
    """The media ranges of an `Accept` header as (type, subtype, q); malformed ranges are left out."""
    ranges = []
    for item in accept.split(","):
        media, *params = item.split(";")
        kind, slash, subtype = media.strip().lower().partition("/")
        if not slash or not kind or not subtype:
            continue
        quality: float | None = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                value = value.strip()
                quality = float(value) if _Q_VALUE.fullmatch(value) else None
        if quality is not None:
            ranges.append((kind, subtype, quality))
    return ranges


def _quality(ranges: Sequence[tuple[str, str, float]], kind: str, subtype: str) -> float:
    """The q-value the most specific matching range gives `kind/subtype` (0 when none matches)."""
    best: tuple[int, float] = (-1, 0.0)
    for range_kind, range_subtype, quality in ranges:
        if (range_kind, range_subtype) == (kind, subtype):
            specificity = 2
        elif range_kind == kind and range_subtype == "*":
            specificity = 1
        elif (range_kind, range_subtype) == ("*", "*"):
            specificity = 0
        else:
            continue
        best = max(best, (specificity, quality))
    return best[1]


def wants_html(accept: str | None) -> bool:
    """Whether the client ranks `text/html` above `application/json` (q-values honoured).

    Browsers (``text/html,...,*/*;q=0.8``) get pages; a missing header, ``*/*`` alone, a tie or ``application/json``
    (curl, httpx, API clients) get JSON.
    """
    ranges = _accept_ranges(accept or "")
    return _quality(ranges, "text", "html") > _quality(ranges, "application", "json")


# ---- where to go after logging in ----

_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: characters left as they are in a redirect target: what both Starlette and werkzeug leave as they are
_LOCATION_SAFE = "/%!$&'()*+,:;=@?"


def local_path(value: str | None) -> str | None:
    """`value` if it is a path on this site, else None: one leading `/` (not `//` or `/\\`, which browsers read as
    another host), no backslash, no control character (browsers drop tabs and newlines: `/\\n//evil` is `//evil`),
    no scheme; checked both as given and percent-decoded."""
    if not value or len(value) > 2000:
        return None
    for candidate in (value, unquote(value)):
        if (
            not candidate.startswith("/")
            or candidate.startswith("//")
            or "\\" in candidate
            or _CONTROL_CHARACTERS.search(candidate)
        ):
            return None
    return value


def after_login(next_value: str | None) -> str:
    """Where a successful login goes: the kept `next` path if it is local, else `/account` (as a Location value)."""
    path = local_path(next_value)
    return quote(path, safe=_LOCATION_SAFE) if path is not None else "/account"


# ---- the one-shot notice after logging out ----

NOTICE_COOKIE = "authmw_demo_notice"
#: the only notices there are: the cookie names one, and its own text is never shown
NOTICES = {
    "logged-out": "You have been logged out.",
    "logged-out-everywhere": "You have been logged out everywhere: all your sessions have ended and every token "
    "issued to you has been revoked.",
}
_NOTICE_ATTRIBUTES = "Path=/; HttpOnly; SameSite=Lax"
#: the Set-Cookie value that clears the notice once it has been shown
NOTICE_CLEARED = f"{NOTICE_COOKIE}=; Max-Age=0; {_NOTICE_ATTRIBUTES}"


def notice_cookie(notice: str) -> str:
    """The Set-Cookie value that carries `notice` (a key of NOTICES) to the next page, for a minute at most."""
    if notice not in NOTICES:
        raise ValueError(f"unknown notice {notice!r}")
    return f"{NOTICE_COOKIE}={notice}; Max-Age=60; {_NOTICE_ATTRIBUTES}"


# ---- pages ----

LOGIN_ERROR = "Invalid username or password."

STYLE = """
body{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;color:#222}
header{border-bottom:1px solid #ddd;margin-bottom:1.5rem}header a{color:inherit;text-decoration:none}
label{display:block;margin:.6rem 0}input[name=username],input[name=password]{display:block;padding:.3rem;width:16rem}
button{padding:.35rem .9rem;cursor:pointer}form.inline{display:inline-block;margin:0 .5rem .5rem 0}
.notice,.error{padding:.6rem .9rem;border-radius:4px}.notice{background:#e8f5e9;border:1px solid #a5d6a7}
.error{background:#fdecea;border:1px solid #f1a9a0}#sessions li{margin:.3rem 0}.hint{color:#666;font-size:.9rem}
"""


def _page(title: str, body: str, notice: str | None = None) -> str:
    shown = f'<p id="notice" class="notice" role="status">{html.escape(notice)}</p>\n' if notice else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{html.escape(title)} · authmw demo</title>
<style>{STYLE}</style>
</head><body>
<header><h1><a href="/">authmw demo</a></h1></header>
<main>
{shown}{body}
</main>
</body></html>
"""


def login_page(
    *, next_path: str | None = None, username: str = "", error: str | None = None, notice: str | None = None
) -> str:
    """The login form posting to `/login`, keeping a local `next` path, the username typed and an error message."""
    next_path = local_path(next_path)
    hidden = f'\n  <input type="hidden" name="next" value="{html.escape(next_path)}">' if next_path else ""
    shown_error = f'<p id="error" class="error" role="alert">{html.escape(error)}</p>\n' if error else ""
    focus_user, focus_password = (" autofocus", "") if not username else ("", " autofocus")
    body = f"""<h2>Log in</h2>
{shown_error}<form method="post" action="/login" id="login">{hidden}
  <label>Username <input name="username" value="{html.escape(username[:200])}" autocomplete="username" required\
{focus_user}></label>
  <label>Password <input name="password" type="password" autocomplete="current-password" required{focus_password}>\
</label>
  <label><input type="checkbox" name="remember" value="1"> Remember me</label>
  <button type="submit">Log in</button>
</form>
<p class="hint">Demo users: <code>alice</code> / <code>wonderland</code>,
<code>bob</code> / <code>builder</code>.</p>"""
    return _page("Log in", body, notice)


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def account_page(principal: Principal, sessions: Sequence[SessionInfo] = (), notice: str | None = None) -> str:
    """Who is logged in, their sessions, and the buttons to log out here or everywhere."""
    rows = "\n".join(
        f'<li data-handle="{html.escape(s.handle)}">{html.escape(s.user_agent or "unknown client")} '
        f"from {html.escape(s.ip or '?')}, since {_when(s.created)}, last seen {_when(s.last_seen)}"
        f"{' <strong>(this one)</strong>' if s.current else ''}</li>"
        for s in sessions
    )
    scopes = " ".join(sorted(principal.scopes))
    body = f"""<section id="account">
<h2>Your account</h2>
<p>Logged in as <strong id="user">{html.escape(principal.id)}</strong>
with scopes <span id="scopes">{html.escape(scopes) if scopes else "(none)"}</span>.</p>
<h3>Your sessions</h3>
<ul id="sessions">
{rows}
</ul>
<form method="post" action="/logout" class="inline"><button type="submit" id="logout">Log out</button></form>
<form method="post" action="/logout-everywhere" class="inline">\
<button type="submit" id="logout-everywhere">Log out everywhere</button></form>
<p><a href="/" id="home">Back to the home page</a></p>
</section>"""
    return _page("Your account", body, notice)


def home_page(principal: Principal | None, sessions: Sequence[SessionInfo] = (), notice_key: str | None = None) -> str:
    """`GET /`: the account page when logged in, else the login form; with the notice a logout left, if any."""
    notice = NOTICES.get(notice_key) if notice_key is not None else None
    if principal is None:
        return login_page(notice=notice)
    return account_page(principal, sessions, notice)
