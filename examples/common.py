"""What both example apps share: the route policies, demo users, items, and the HTML home page.

Sharing this is what keeps the Starlette and the Flask app identical over HTTP (DESIGN.md §6).
"""

from __future__ import annotations

import hmac
import html
import itertools
import json
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs

from authmw import Policy, Principal, Route
from authmw.sessions import SessionInfo

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


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>authmw demo</title>
<style>body{{font-family:system-ui,sans-serif;max-width:42rem;margin:2rem auto}}form{{margin:.5rem 0}}</style>
</head><body>
<h1>authmw demo</h1>
{body}
</body></html>
"""

LOGIN_FORM = """<form method="post" action="/login" id="login">
  <label>Username <input name="username" autocomplete="username" required></label>
  <label>Password <input name="password" type="password" autocomplete="current-password" required></label>
  <label><input type="checkbox" name="remember" value="1"> Remember me</label>
  <button type="submit">Log in</button>
</form>
<p>Demo users: <code>alice</code> / <code>wonderland</code>, <code>bob</code> / <code>builder</code>.</p>"""


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def home_page(principal: Principal | None, sessions: Sequence[SessionInfo] = ()) -> str:
    if principal is None:
        return PAGE.format(body=LOGIN_FORM)
    rows = "\n".join(
        f'<li data-handle="{s.handle}">{html.escape(s.user_agent or "unknown client")} '
        f"from {html.escape(s.ip or '?')}, since {_when(s.created)}, last seen {_when(s.last_seen)}"
        f"{' <strong>(this one)</strong>' if s.current else ''}</li>"
        for s in sessions
    )
    body = f"""<section id="account">
<p>Logged in as <strong id="user">{html.escape(principal.id)}</strong>
with scopes <span id="scopes">{html.escape(" ".join(sorted(principal.scopes)))}</span>.</p>
<form method="post" action="/logout"><button type="submit" id="logout">Log out</button></form>
<form method="post" action="/logout-everywhere">
  <button type="submit" id="logout-everywhere">Log out everywhere</button></form>
<h2>Your sessions</h2>
<ul id="sessions">
{rows}
</ul>
</section>"""
    return PAGE.format(body=body)
