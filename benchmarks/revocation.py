"""Revocation propagation: how long after a logout in one process every other process refuses the credential.

Worker processes (multiprocessing, spawn) each run an authmw WSGI app on `RedisStore.from_url(url,
local_cache=True)`. In each trial they are armed with a fresh session cookie (or bearer token) of a fresh user,
serve it until it is in their local cache (checked: no Redis command while serving it), then keep calling the
app every ~0.5 ms. The main process then logs the user out through its own authmw app (``POST /logout`` for the
session, ``POST /logout-everywhere`` for the token, which revokes every token issued before it) and each worker
reports when it first got a refusal. A trial's delay is from just before the logout request until the *last*
worker refused; the report gives p50/p99 over trials.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from authmw import AuthConfig, Policy, Route
from authmw.testing import mint_token, session_cookie
from authmw.wsgi import AuthMiddleware, get_session
from benchmarks.common import authmw_config, percentile

POLL_INTERVAL = 0.0005
WAIT_LIMIT = 5.0


def _config(url: str, prefix: str, local: bool) -> AuthConfig:
    config = authmw_config(store="redis-local" if local else "redis", url=url, prefix=prefix)
    config.routes = [
        Route("/p", Policy.either()),
        Route("/logout", Policy.session()),
        Route("/logout-everywhere", Policy.session()),
    ]
    return config


def _inner_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/logout":
        get_session(environ).logout()
    elif path == "/logout-everywhere":
        get_session(environ).logout_everywhere()
    principal = environ.get("authmw.principal")
    body = principal.id.encode() if principal is not None else b""
    start_response("200 OK", [("content-type", "text/plain"), ("content-length", str(len(body)))])
    return [body]


def _call(app: Any, method: str, path: str, header: tuple[str, str]) -> tuple[int, bytes]:
    from benchmarks.inprocess import wsgi_environ, wsgi_once

    environ = wsgi_environ(path, [header])
    environ["REQUEST_METHOD"] = method
    status, _, body = wsgi_once(app, environ)
    return status, body


def _worker(url: str, prefix: str, conn: Connection) -> None:
    from benchmarks.inprocess import counting_commands

    config = _config(url, prefix, local=True)
    assert config.sessions is not None
    store = config.sessions.store
    app = AuthMiddleware(_inner_app, config)
    cache = store.local_cache
    cache.ensure_listening()
    deadline = time.monotonic() + 20
    while not cache.healthy and time.monotonic() < deadline:
        time.sleep(0.01)
    conn.send(("up", cache.healthy))
    while True:
        message = conn.recv()
        if message[0] == "stop":
            break
        _, header, user = message
        # Serve it until it is cached: then no Redis command is sent while serving it.
        cached = False
        for _ in range(200):
            status, body = _call(app, "GET", "/p", header)
            if status != 200 or body != user.encode():
                conn.send(("error", f"{status} {body[:100]!r} instead of 200 {user!r}"))
                break
            with counting_commands([store.client]) as log:
                status, _ = _call(app, "GET", "/p", header)
            if status == 200 and not log:
                cached = True
                break
            time.sleep(0.001)
        else:
            conn.send(("error", "the credential never got into the local cache"))
        if not cached:
            continue
        conn.send(("ready", None))
        refused_at = None
        deadline = time.monotonic() + WAIT_LIMIT
        while time.monotonic() < deadline:
            status, _ = _call(app, "GET", "/p", header)
            if status != 200:
                refused_at = time.time()
                break
            time.sleep(POLL_INTERVAL)
        conn.send(("refused", refused_at))
    cache.close()


@dataclass
class Propagation:
    kind: str  # "session" | "token"
    workers: int
    delays_ms: list[float]
    failures: int

    @property
    def p50(self) -> float:
        return percentile(self.delays_ms, 50)

    @property
    def p99(self) -> float:
        return percentile(self.delays_ms, 99)


def measure(
    url: str, prefix: str, workers: int, trials: int, progress: Callable[[str], None] | None = None
) -> list[Propagation]:
    context = multiprocessing.get_context("spawn")
    config = _config(url, prefix, local=False)
    main_app = AuthMiddleware(_inner_app, config)
    pipes: list[Connection] = []
    processes = []
    results = []
    try:
        for _ in range(workers):
            parent, child = context.Pipe()
            process = context.Process(target=_worker, args=(url, f"{prefix}", child), daemon=True)
            process.start()
            pipes.append(parent)
            processes.append(process)
        for pipe in pipes:
            if not pipe.poll(60):
                raise RuntimeError("a revocation worker did not start")
            kind, healthy = pipe.recv()
            if not healthy:
                raise RuntimeError("a revocation worker's local cache never came up")
        for kind in ("session", "token"):
            delays: list[float] = []
            failures = 0
            for trial in range(-1, trials):  # trial -1 warms both sides up and is not counted
                user = f"revoke-{kind}-{trial + 1}"
                name, value = session_cookie(config, user, ("items:read",))
                cookie = ("cookie", f"{name}={value}")
                if kind == "session":
                    header = cookie
                else:
                    header = ("authorization", f"Bearer {mint_token(config, user, ('items:read',), ttl=600)}")
                for pipe in pipes:
                    pipe.send(("arm", header, user))
                for pipe in pipes:
                    if not pipe.poll(30):
                        raise RuntimeError("a revocation worker did not get ready")
                    state, detail = pipe.recv()
                    if state != "ready":
                        raise RuntimeError(f"a revocation worker failed: {detail}")
                started = time.time()
                status, _ = _call(main_app, "POST", "/logout" if kind == "session" else "/logout-everywhere", cookie)
                if status != 200:
                    raise RuntimeError(f"the logout answered {status}")
                seen = []
                for pipe in pipes:
                    if not pipe.poll(WAIT_LIMIT + 10):
                        raise RuntimeError("a revocation worker did not answer")
                    _, refused_at = pipe.recv()
                    seen.append(refused_at)
                if trial < 0:
                    continue
                if any(t is None for t in seen):
                    failures += 1
                else:
                    delays.append(max(0.0, max(seen) - started) * 1000)
            results.append(Propagation(kind, workers, delays, failures))
            if progress:
                result = results[-1]
                progress(
                    f"revocation ({kind}): {trials} trials, {workers} workers: p50 {result.p50:.1f} ms, "
                    f"p99 {result.p99:.1f} ms, {failures} never refused"
                )
    finally:
        for pipe in pipes:
            with contextlib.suppress(OSError):
                pipe.send(("stop",))
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.terminate()
                process.join(5)
        assert config.sessions is not None
        config.sessions.store.client.close()
    return results
