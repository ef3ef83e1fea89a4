"""In-process benchmarks: each app driven by a minimal ASGI or WSGI caller (no server, no sockets).

A case is an app plus the requests it answers (one scope/environ template per request: first-sight JWT cases
carry a different token each time). Every request is checked: status 200 and body == the principal's id, so
nothing can look fast by failing. Cases run interleaved, round by round, in a shuffled order per round.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import inspect
import io
import random
import sys
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from authmw.asgi import AuthMiddleware as ASGIAuthMiddleware
from authmw.engine import Authenticator
from authmw.testing import mint_token, session_cookie
from benchmarks import asgi_apps, wsgi_apps
from benchmarks.common import FLOOR_LABEL, USER, authmw_config

STARLETTE = "Starlette"
FLASK = "Flask"
EXPECTED = USER.encode()
_REQUEST_MESSAGE = {"type": "http.request", "body": b"", "more_body": False}

# Redis commands that change data (anything else a session read sends is a read or a script call).
WRITE_COMMANDS = frozenset({"SET", "SETEX", "PSETEX", "DEL", "UNLINK", "EXPIRE", "PEXPIRE", "PUBLISH", "SADD", "SREM"})


class CaseFailed(RuntimeError):
    """A case did not authenticate (or answered something else than the principal's id)."""


# ---- the minimal callers ----


def asgi_scope(path: str, headers: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    raw = [(b"host", b"testserver")] + [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": raw,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }


def wsgi_environ(path: str, headers: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "testserver",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in headers:
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    return environ


async def asgi_once(app: Any, scope: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """One request with everything captured (status, headers, body): for logins and first checks."""
    captured: dict[str, Any] = {"status": 0, "headers": [], "body": b""}

    async def receive() -> dict[str, Any]:
        return dict(_REQUEST_MESSAGE)

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            captured["status"] = message["status"]
            captured["headers"] = list(message.get("headers", ()))
        elif message["type"] == "http.response.body":
            captured["body"] += message.get("body", b"")

    await app(dict(scope), receive, send)
    return captured["status"], captured["headers"], captured["body"]


def wsgi_once(app: Any, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        captured["status"], captured["headers"] = int(status.split(" ", 1)[0]), headers
        return lambda data: None

    result = app(dict(environ), start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return captured["status"], captured["headers"], body


async def run_asgi(app: Any, templates: Sequence[dict[str, Any]], n: int) -> tuple[int, int]:
    """`n` requests through `app`; (elapsed ns, requests that did not answer 200 with the principal id)."""
    status = 0
    body = b""

    async def receive() -> dict[str, Any]:
        return _REQUEST_MESSAGE

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, body
        if message["type"] == "http.response.start":
            status = message["status"]
        else:
            body = message.get("body", b"")

    failures = 0
    count = len(templates)
    expected = EXPECTED
    clock = time.perf_counter_ns
    start = clock()
    for i in range(n):
        await app(dict(templates[i % count]), receive, send)
        if status != 200 or body != expected:
            failures += 1
    return clock() - start, failures


def run_wsgi(app: Any, templates: Sequence[dict[str, Any]], n: int) -> tuple[int, int]:
    status = ""

    def start_response(value: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        nonlocal status
        status = value

    failures = 0
    count = len(templates)
    expected = EXPECTED
    clock = time.perf_counter_ns
    start = clock()
    for i in range(n):
        result = app(dict(templates[i % count]), start_response)
        body = b"".join(result)
        close = getattr(result, "close", None)
        if close is not None:
            close()
        if status[:3] != "200" or body != expected:
            failures += 1
    return clock() - start, failures


# ---- counting Redis round trips ----


@contextmanager
def counting_commands(clients: Sequence[Any]) -> Iterator[list[str]]:
    """Record the name of every command the given redis-py clients (sync or asyncio) send."""
    log: list[str] = []

    def wrap(client: Any) -> None:
        original = client.execute_command
        if inspect.iscoroutinefunction(original):

            async def counted_async(*args: Any, **kwargs: Any) -> Any:
                log.append(str(args[0]).upper())
                return await original(*args, **kwargs)

            client.execute_command = counted_async
        else:

            def counted(*args: Any, **kwargs: Any) -> Any:
                log.append(str(args[0]).upper())
                return original(*args, **kwargs)

            client.execute_command = counted

    for client in clients:
        wrap(client)
    try:
        yield log
    finally:
        for client in clients:
            del client.execute_command


# ---- cases ----


@dataclass
class Case:
    key: str
    framework: str
    label: str
    kind: str  # "asgi" | "wsgi"
    app: Any
    templates: list[dict[str, Any]]
    group: str  # "bare" | "floor" | "peer" | "authmw"
    peer: str | None = None
    #: run before every batch (first-sight JWT cases empty authmw's verified-token cache here)
    before_batch: Callable[[], None] | None = None
    redis_clients: list[Any] = field(default_factory=list)
    #: filled by `check`: Redis commands per request and their names
    round_trips: float | None = None
    writes: float | None = None
    commands: str = ""
    note: str = ""

    async def run(self, n: int) -> tuple[int, int]:
        if self.before_batch is not None:
            self.before_batch()
        if self.kind == "asgi":
            return await run_asgi(self.app, self.templates, n)
        return run_wsgi(self.app, self.templates, n)

    async def first(self) -> tuple[int, bytes]:
        if self.before_batch is not None:
            self.before_batch()
        if self.kind == "asgi":
            status, _, body = await asgi_once(self.app, self.templates[0])
        else:
            status, _, body = wsgi_once(self.app, self.templates[0])
        return status, body

    async def check(self, n: int) -> None:
        """Prove it authenticates (body = principal id), warm it up, and count its Redis commands."""
        status, body = await self.first()
        if status != 200 or body != EXPECTED:
            raise CaseFailed(f"{self.framework} / {self.label}: {status} {body[:200]!r} instead of 200 {EXPECTED!r}")
        _, failures = await self.run(n)
        if failures:
            raise CaseFailed(f"{self.framework} / {self.label}: {failures} of {n} warm-up requests failed")
        if self.redis_clients:
            with counting_commands(self.redis_clients) as log:
                _, failures = await self.run(n)
            if failures:
                raise CaseFailed(f"{self.framework} / {self.label}: {failures} of {n} requests failed")
            self.round_trips = len(log) / n
            counts = collections.Counter(log)
            self.writes = sum(v for k, v in counts.items() if k in WRITE_COMMANDS) / n
            self.commands = ", ".join(f"{name} {count / n:.2f}" for name, count in sorted(counts.items())) or "none"


def _cookie_from(headers: Sequence[tuple[Any, Any]]) -> str:
    for name, value in headers:
        name = name.decode("latin-1") if isinstance(name, bytes) else name
        value = value.decode("latin-1") if isinstance(value, bytes) else value
        if name.lower() == "set-cookie":
            return str(value).split(";", 1)[0]
    raise CaseFailed("the login answer set no cookie")


async def _asgi_login(app: Any) -> str:
    status, headers, _ = await asgi_once(app, asgi_scope("/login"))
    if status != 200:
        raise CaseFailed(f"login answered {status}")
    return _cookie_from(headers)


def _wsgi_login(app: Any) -> str:
    status, headers, _ = wsgi_once(app, wsgi_environ("/login"))
    if status != 200:
        raise CaseFailed(f"login answered {status}")
    return _cookie_from(headers)


def _starlette_authenticator(app: Any) -> Authenticator:
    """authmw's Authenticator inside a Starlette app's middleware stack (built as its first request would)."""
    if app.middleware_stack is None:
        app.middleware_stack = app.build_middleware_stack()
    node = app.middleware_stack
    while node is not None:
        if isinstance(node, ASGIAuthMiddleware):
            return node.authenticator
        node = getattr(node, "app", None)
    raise LookupError("no authmw middleware in this app")


def _clear_jwt_cache(get_authenticator: Callable[[], Authenticator]) -> Callable[[], None]:
    def clear() -> None:
        verifier = get_authenticator().verifier
        assert verifier is not None
        verifier.clear_cache()

    return clear


async def _wait_local_cache(store: Any, timeout: float = 10.0) -> None:
    cache = store.local_cache
    cache.ensure_listening()
    deadline = time.monotonic() + timeout
    while not cache.healthy:
        if time.monotonic() > deadline:
            raise CaseFailed("the local cache's invalidation channel never came up")
        await asyncio.sleep(0.01)


def _bearer(token: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {token}")


@dataclass
class Suite:
    cases: list[Case]
    closers: list[Callable[[], Any]]


async def build_cases(tokens: int, url: str, prefix: str, only: Collection[str] | None = None) -> Suite:
    """The in-process cases (all, or those keyed in `only`), in report order.

    First-sight JWT cases get `tokens` distinct tokens, minted once per algorithm (RS256 signing is slow) and
    shared by that algorithm's cases; authmw's verified-token cache is emptied before every batch, so each token
    is verified in full every round.
    """
    closers: list[Callable[[], Any]] = []
    minted: dict[str, list[str]] = {}

    def tokens_for(algorithm: str) -> list[str]:
        if algorithm not in minted:
            config = authmw_config(algorithm=algorithm)
            minted[algorithm] = [mint_token(config, USER, ("items:read",), ttl=3600) for _ in range(tokens)]
        return minted[algorithm]

    def asgi_jwt(tokens_: list[str]) -> list[dict[str, Any]]:
        return [asgi_scope("/p", [_bearer(t)]) for t in tokens_]

    def wsgi_jwt(tokens_: list[str]) -> list[dict[str, Any]]:
        return [wsgi_environ("/p", [_bearer(t)]) for t in tokens_]

    s, f = STARLETTE, FLASK
    builders: dict[str, Callable[[], Awaitable[Case]]] = {}

    def builder(key: str) -> Callable[[Callable[[], Awaitable[Case]]], Callable[[], Awaitable[Case]]]:
        def register(build: Callable[[], Awaitable[Case]]) -> Callable[[], Awaitable[Case]]:
            builders[key] = build
            return build

        return register

    # ---- Starlette ----

    @builder("s-bare")
    async def _() -> Case:
        return Case("s-bare", s, "bare Starlette", "asgi", asgi_apps.bare(), [asgi_scope("/p")], "bare")

    for algorithm in ("HS256", "RS256"):

        @builder(f"s-peer-pyjwt-{algorithm}")
        async def _(algorithm: str = algorithm) -> Case:
            return Case(
                f"s-peer-pyjwt-{algorithm}",
                s,
                f"AuthenticationMiddleware + PyJWT {algorithm}",
                "asgi",
                asgi_apps.peer_pyjwt(algorithm),
                asgi_jwt(tokens_for(algorithm)),
                "peer",
            )

    @builder("s-peer-starsessions")
    async def _() -> Case:
        app, connection = asgi_apps.peer_starsessions(url, prefix)
        closers.append(connection.aclose)
        cookie = await _asgi_login(app)
        return Case(
            "s-peer-starsessions",
            s,
            "starsessions (Redis store)",
            "asgi",
            app,
            [asgi_scope("/p", [("cookie", cookie)])],
            "peer",
            redis_clients=[connection],
        )

    @builder("s-peer-signed-cookie")
    async def _() -> Case:
        app = asgi_apps.peer_signed_cookie()
        cookie = await _asgi_login(app)
        return Case(
            "s-peer-signed-cookie",
            s,
            "SessionMiddleware (signed cookie)",
            "asgi",
            app,
            [asgi_scope("/p", [("cookie", cookie)])],
            "peer",
        )

    for algorithm in ("HS256", "RS256", "ES256"):

        @builder(f"s-authmw-jwt-first-{algorithm}")
        async def _(algorithm: str = algorithm) -> Case:
            app = asgi_apps.authmw_jwt(authmw_config(algorithm=algorithm))
            return Case(
                f"s-authmw-jwt-first-{algorithm}",
                s,
                f"authmw JWT first sight {algorithm}",
                "asgi",
                app,
                asgi_jwt(tokens_for(algorithm)),
                "authmw",
                peer=f"s-peer-pyjwt-{algorithm}" if algorithm != "ES256" else None,
                before_batch=_clear_jwt_cache(lambda: _starlette_authenticator(app)),
            )

    @builder("s-authmw-jwt-repeated")
    async def _() -> Case:
        return Case(
            "s-authmw-jwt-repeated",
            s,
            "authmw JWT repeated token (cache)",
            "asgi",
            asgi_apps.authmw_jwt(authmw_config(algorithm="HS256")),
            asgi_jwt(tokens_for("HS256")[:1]),
            "authmw",
            peer="s-peer-pyjwt-HS256",
        )

    @builder("s-floor")
    async def _() -> Case:
        templates = asgi_jwt(tokens_for("HS256")[:1])
        authorization = dict(templates[0]["headers"])[b"authorization"].decode("latin-1")
        return Case("s-floor", s, FLOOR_LABEL, "asgi", asgi_apps.floor(authorization), templates, "floor")

    # ---- Flask ----

    @builder("f-bare")
    async def _() -> Case:
        return Case("f-bare", f, "bare Flask", "wsgi", wsgi_apps.bare(), [wsgi_environ("/p")], "bare")

    @builder("f-peer-jwt-extended")
    async def _() -> Case:
        app = wsgi_apps.peer_jwt_extended()
        return Case(
            "f-peer-jwt-extended",
            f,
            "Flask-JWT-Extended @jwt_required (HS256)",
            "wsgi",
            app,
            wsgi_jwt(wsgi_apps.jwt_extended_tokens(app, tokens)),
            "peer",
        )

    @builder("f-peer-login")
    async def _() -> Case:
        app, _ = wsgi_apps.peer_flask_login()
        return Case(
            "f-peer-login",
            f,
            "Flask-Login (Flask's signed-cookie session)",
            "wsgi",
            app,
            [wsgi_environ("/p", [("cookie", _wsgi_login(app))])],
            "peer",
        )

    @builder("f-peer-login-session")
    async def _() -> Case:
        app, client = wsgi_apps.peer_flask_login((url, prefix))
        closers.append(client.close)
        return Case(
            "f-peer-login-session",
            f,
            "Flask-Login + Flask-Session (Redis)",
            "wsgi",
            app,
            [wsgi_environ("/p", [("cookie", _wsgi_login(app))])],
            "peer",
            redis_clients=[client],
        )

    for algorithm in ("HS256", "RS256", "ES256"):

        @builder(f"f-authmw-jwt-first-{algorithm}")
        async def _(algorithm: str = algorithm) -> Case:
            app = wsgi_apps.authmw_jwt(authmw_config(algorithm=algorithm))
            return Case(
                f"f-authmw-jwt-first-{algorithm}",
                f,
                f"authmw JWT first sight {algorithm}",
                "wsgi",
                app,
                wsgi_jwt(tokens_for(algorithm)),
                "authmw",
                peer="f-peer-jwt-extended" if algorithm == "HS256" else None,
                before_batch=_clear_jwt_cache(lambda: app.extensions["authmw.authenticator"]),
            )

    @builder("f-authmw-jwt-repeated")
    async def _() -> Case:
        return Case(
            "f-authmw-jwt-repeated",
            f,
            "authmw JWT repeated token (cache)",
            "wsgi",
            wsgi_apps.authmw_jwt(authmw_config(algorithm="HS256")),
            wsgi_jwt(tokens_for("HS256")[:1]),
            "authmw",
            peer="f-peer-jwt-extended",
        )

    @builder("f-floor")
    async def _() -> Case:
        templates = wsgi_jwt(tokens_for("HS256")[:1])
        app = wsgi_apps.floor(templates[0]["HTTP_AUTHORIZATION"])
        return Case("f-floor", f, FLOOR_LABEL, "wsgi", app, templates, "floor")

    # ---- authmw sessions, both frameworks ----

    peers = {
        s: {"memory": "s-peer-signed-cookie", "redis": "s-peer-starsessions", "redis-local": "s-peer-starsessions"},
        f: {"memory": "f-peer-login", "redis": "f-peer-login-session", "redis-local": "f-peer-login-session"},
    }
    labels = {
        "memory": "authmw session, memory store",
        "redis": "authmw session, Redis",
        "redis-local": "authmw session, Redis + local cache",
    }
    for framework in (s, f):
        for store in ("memory", "redis", "redis-local"):
            key = f"{'s' if framework == s else 'f'}-authmw-session-{store}"

            @builder(key)
            async def _(framework: str = framework, store: str = store, key: str = key) -> Case:
                config = authmw_config(store=store, url=url, prefix=prefix)
                assert config.sessions is not None
                backend: Any = config.sessions.store
                clients = []
                if store != "memory":
                    clients = [backend.client, backend.async_client]
                    closers.extend([backend.async_client.aclose, backend.client.close])
                if store == "redis-local":
                    closers.append(backend.local_cache.close)
                    await _wait_local_cache(backend)
                name, value = session_cookie(config, USER, ("items:read",))
                cookie = [("cookie", f"{name}={value}")]
                if framework == s:
                    app, templates, kind = asgi_apps.authmw_session(config), [asgi_scope("/p", cookie)], "asgi"
                else:
                    app, templates, kind = wsgi_apps.authmw_session(config), [wsgi_environ("/p", cookie)], "wsgi"
                return Case(
                    key,
                    framework,
                    labels[store],
                    kind,
                    app,
                    templates,
                    "authmw",
                    peers[framework][store],
                    None,
                    clients,
                )

    order = [
        "s-bare",
        "s-floor",
        "s-peer-pyjwt-HS256",
        "s-peer-pyjwt-RS256",
        "s-peer-starsessions",
        "s-peer-signed-cookie",
        "s-authmw-jwt-first-HS256",
        "s-authmw-jwt-first-RS256",
        "s-authmw-jwt-first-ES256",
        "s-authmw-jwt-repeated",
        "s-authmw-session-memory",
        "s-authmw-session-redis",
        "s-authmw-session-redis-local",
        "f-bare",
        "f-floor",
        "f-peer-jwt-extended",
        "f-peer-login",
        "f-peer-login-session",
        "f-authmw-jwt-first-HS256",
        "f-authmw-jwt-first-RS256",
        "f-authmw-jwt-first-ES256",
        "f-authmw-jwt-repeated",
        "f-authmw-session-memory",
        "f-authmw-session-redis",
        "f-authmw-session-redis-local",
    ]
    assert sorted(order) == sorted(builders), "every case is placed in the report order"
    unknown = set(only or ()) - set(builders)
    if unknown:
        raise KeyError(f"unknown cases: {sorted(unknown)}")
    cases = [await builders[key]() for key in order if only is None or key in only]
    return Suite(cases, closers)


@dataclass
class InProcessResults:
    cases: list[Case]
    #: per case key: µs per request, one value per round
    us: dict[str, list[float]]
    rounds: int
    requests: int


async def run_rounds(
    suite: Suite, rounds: int, requests: int, seed: int = 7, progress: Callable[[str], None] | None = None
) -> InProcessResults:
    cases = suite.cases
    warm = max(20, min(requests, 300))
    for case in cases:
        await case.check(warm)
    if progress:
        progress(f"in-process: {len(cases)} cases authenticated and warm; {rounds} rounds x {requests} requests")
    us: dict[str, list[float]] = {case.key: [] for case in cases}
    rng = random.Random(seed)  # noqa: S311  (the order of cases, not a secret)
    for number in range(rounds):
        order = list(cases)
        rng.shuffle(order)
        started = time.monotonic()
        for case in order:
            gc.collect()
            elapsed, failures = await case.run(requests)
            if failures:
                raise CaseFailed(f"{case.framework} / {case.label}: {failures} of {requests} requests failed")
            us[case.key].append(elapsed / requests / 1000)
        if progress:
            progress(f"in-process: round {number + 1}/{rounds} done in {time.monotonic() - started:.1f} s")
    return InProcessResults(cases, us, rounds, requests)


async def close_suite(suite: Suite) -> None:
    for close in suite.closers:
        try:
            result = close()
            if inspect.isawaitable(result):
                await result
        except Exception as exc:  # closing is best effort
            print(f"warning: closing a client failed: {type(exc).__name__}", file=sys.stderr)
