"""Store faults under real load (Issue 6, P27): private redis-server processes on their own loopback ports, killed,
paused and restarted under the running example apps (Flask under gunicorn, Starlette under uvicorn).

What must hold:
- Redis killed mid-load: routes that need the store answer 503 + Retry-After (never a 500, never an anonymous or
  stale pass, never a hang beyond the socket timeout); public routes keep serving; JWT routes fail closed too (their
  revocation check needs the store: the documented default); once Redis is back, service recovers without a restart.
- Redis restarted with persistence (AOF): sessions, logouts and revocations survive, TTLs included.
- Slow Redis (``CLIENT PAUSE``): the 1 s socket timeout of `RedisStore.from_url` holds and the request fails closed.
- Several worker processes share sessions and revocations through Redis: under load no session is lost before its
  logout and none is resurrected after it (a 100 ms propagation allowance only with the local cache on).

Each load test prints a small report (requests sent, answered by status, wrongly authorised, recovery time).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import random
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from tests.conftest import APPS, RedisProcess, Server, gunicorn_server

from authmw.io import run_async, run_sync
from authmw.masking import TagMask
from authmw.stores import RedisStore, SessionRecord, StoreUnavailable, user_tag
from authmw.stores.redis import script

pytestmark = pytest.mark.slow

SECRET = "faults-session-secret-" + "f" * 40
JWT_KEY = "faults-jwt-secret-" + "j" * 40
COOKIE = "authmw_session"
FLASK_APP = "examples.flask_app.app:app"
USERS = {"alice": "wonderland", "bob": "builder"}
SOCKET_TIMEOUT = 1.0  # RedisStore.from_url's default: every store call is bounded by it
HANG_BOUND = 3.0  # no answer may take longer than this, whatever Redis is doing


def _env(redis_url: str, **extra: str) -> dict[str, str]:
    return {
        "AUTHMW_SECRET_KEYS": SECRET,
        "AUTHMW_JWT_ALGORITHMS": "HS256",
        "AUTHMW_JWT_KEY": JWT_KEY,
        "AUTHMW_COOKIE_SECURE": "0",
        "AUTHMW_REDIS_URL": redis_url,
        **extra,
    }


def _token(user: str = "alice", scope: str = "items:read items:write", iat: float | None = None) -> str:
    now = int(time.time() if iat is None else iat)
    claims = {"sub": user, "iat": now, "exp": now + 600, "jti": uuid.uuid4().hex, "scope": scope}
    return jwt.encode(claims, JWT_KEY, "HS256")


# ---- a private redis-server (tests.conftest.RedisProcess) -----------------------------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    process = RedisProcess(tmp_path)
    process.start()
    try:
        yield process
    finally:
        process.kill()


@dataclass
class Stack:
    """A private Redis and one example app using it (the app outlives Redis restarts: nothing restarts it)."""

    framework: str
    redis: RedisProcess
    server: Server

    @property
    def url(self) -> str:
        return self.server.url

    def output(self) -> str:
        return self.server.output()

    def tracebacks(self) -> int:
        return self.output().count("Traceback")

    def ensure_redis(self) -> None:
        if not self.redis.running:
            self.redis.start()


def _app(framework: str, env: dict[str, str], workers: int = 2) -> contextlib.AbstractContextManager[Server]:
    """An example app on a loopback port; its output goes to a file (`Server.output`), never a pipe that fills."""
    return gunicorn_server(FLASK_APP, env, workers=workers) if framework == "flask" else APPS[framework](env)


@pytest.fixture(scope="module", params=["flask", "starlette"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    framework: str = request.param
    process = RedisProcess(tmp_path_factory.mktemp(f"redis-{framework}"))
    process.start()
    try:
        with _app(framework, _env(process.url)) as server:
            yield Stack(framework, process, server)
    finally:
        process.kill()


# ---- HTTP answers, timed -------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Answer:
    route: str
    sent: float
    done: float
    status: int  # 0: no HTTP answer at all (connection error or client timeout)
    retry_after: str | None = None
    user: str | None = None

    @property
    def seconds(self) -> float:
        return self.done - self.sent


def _call(
    http: httpx.Client,
    route: str,
    method: str,
    path: str,
    *,
    cookie: str | None = None,
    token: str | None = None,
    data: dict[str, str] | None = None,
) -> tuple[Answer, httpx.Response | None]:
    headers = {}
    if cookie is not None:
        headers["Cookie"] = f"{COOKIE}={cookie}"
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    sent = time.monotonic()
    try:
        response = http.request(method, path, headers=headers, data=data)
    except httpx.HTTPError:
        return Answer(route, sent, time.monotonic(), 0), None
    finally:
        http.cookies.clear()  # cookies are sent explicitly: a jar must never add a second one
    answer = Answer(route, sent, time.monotonic(), response.status_code, response.headers.get("retry-after"))
    if response.status_code == 200 and response.headers.get("content-type", "").startswith("application/json"):
        body = response.json()
        if isinstance(body, dict):
            answer.user = body.get("id")
    return answer, response


def _login(http: httpx.Client, user: str = "alice") -> tuple[Answer, str | None]:
    answer, response = _call(http, "login", "POST", "/login", data={"username": user, "password": USERS[user]})
    cookie = response.cookies.get(COOKIE) if response is not None and response.status_code == 303 else None
    return answer, cookie


def _client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=HANG_BOUND + 2)


def _wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.02) -> float:
    """Poll `check` until true; the monotonic time it was. Fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return time.monotonic()
        assert time.monotonic() < deadline, f"condition not met within {timeout} s"
        time.sleep(interval)


def _report(capsys: pytest.CaptureFixture[str], record: Callable[[str, object], None], name: str, **data: Any) -> None:
    record(name, json.dumps(data))
    with capsys.disabled():
        print(f"\n[{name}] " + "; ".join(f"{k}: {v}" for k, v in data.items()))


def _problem_503(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"].isdigit()
    assert response.headers["content-type"] == "application/problem+json"


# ---- (a) Redis killed mid-load, then restarted (no persistence: the records are gone) ---------------------------


@dataclass
class Timeline:
    killing: float = float("inf")  # about to send SIGKILL
    killed: float = float("inf")  # SIGKILL delivered and the process reaped
    restarting: float = float("inf")  # a new redis-server launched
    up: float = float("inf")  # it answers PING


@dataclass
class Load:
    url: str
    token: str
    dead_cookie: str
    stop: threading.Event = field(default_factory=threading.Event)
    answers: list[Answer] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, seed: int) -> None:
        order = ["account", "api_me", "items", "health", "dead"]
        rng = random.Random(seed)
        mine: list[Answer] = []
        cookie: str | None = None
        with _client(self.url) as http:
            while not self.stop.is_set():
                if cookie is None:
                    answer, cookie = _login(http)
                    mine.append(answer)
                    if cookie is None:
                        time.sleep(0.01)  # Redis down: 503; try again shortly
                    continue
                route = rng.choice(order)
                if route == "account":
                    answer, _ = _call(http, route, "GET", "/account", cookie=cookie)
                elif route == "api_me":
                    answer, _ = _call(http, route, "GET", "/api/me", cookie=cookie)
                elif route == "items":
                    answer, _ = _call(http, route, "GET", "/api/items", token=self.token)
                elif route == "health":
                    answer, _ = _call(http, route, "GET", "/health")
                else:
                    answer, _ = _call(http, route, "GET", "/account", cookie=self.dead_cookie)
                mine.append(answer)
                if route in ("account", "api_me") and answer.status == 401:
                    cookie = None  # its record died with the old Redis: log in again
        with self.lock:
            self.answers.extend(mine)


def _judge_kill_run(answers: list[Answer], t: Timeline) -> dict[str, Any]:
    """Sort every answer into right and wrong against the timeline; the problems list must come out empty."""
    problems: list[str] = []
    wrongly_authorised = 0
    for a in answers:
        down = a.sent >= t.killed and a.done <= t.restarting  # wholly inside the outage
        after = a.done >= t.restarting
        if a.status == 0:
            problems.append(f"{a.route}: no HTTP answer after {a.seconds:.2f} s")
        elif a.status >= 500 and a.status != 503:
            problems.append(f"{a.route}: {a.status}")
        elif a.status == 503 and not (a.retry_after or "").isdigit():
            problems.append(f"{a.route}: 503 without Retry-After")
        if a.seconds > HANG_BOUND:
            problems.append(f"{a.route}: answered after {a.seconds:.2f} s")
        if a.route == "health":
            if a.status != 200:
                problems.append(f"public route answered {a.status}")
        elif a.route == "dead":
            if a.status == 200:
                wrongly_authorised += 1
            elif a.status not in (401, 503):
                problems.append(f"logged-out cookie answered {a.status}")
        elif a.route == "login":
            if a.status not in (303, 503):
                problems.append(f"login answered {a.status}")
        else:  # account, api_me (session), items (JWT, revocation check in Redis)
            if a.status == 200:
                if down or (a.route != "items" and a.user != "alice"):
                    wrongly_authorised += 1
            elif a.status == 401:
                if a.route == "items" or not after:
                    problems.append(f"{a.route}: 401 while its record existed (lost session or token)")
            elif a.status != 503:
                problems.append(f"{a.route}: answered {a.status}")
            elif a.done < t.killing:
                problems.append(f"{a.route}: 503 before Redis was killed")
    statuses = collections.Counter(a.status for a in answers)
    outage = [a for a in answers if a.sent >= t.killed and a.done <= t.restarting and a.route != "health"]
    return {
        "problems": problems,
        "requests": len(answers),
        "by status": dict(sorted(statuses.items())),
        "wrongly authorised": wrongly_authorised,
        "answered during the outage": len(outage),
        "max seconds during the outage": round(max((a.seconds for a in outage), default=0.0), 3),
        "max seconds overall": round(max((a.seconds for a in answers), default=0.0), 3),
    }


def test_p27_redis_killed_mid_load_fails_closed_and_recovers(
    stack: Stack, capsys: pytest.CaptureFixture[str], record_property: Callable[[str, object], None]
) -> None:
    with _client(stack.url) as http:
        _, dead_cookie = _login(http, "bob")
        assert dead_cookie is not None
        assert _call(http, "logout", "POST", "/logout", cookie=dead_cookie)[0].status == 303
    load = Load(stack.url, _token(), dead_cookie)
    threads = [threading.Thread(target=load.run, args=(i,), daemon=True) for i in range(4)]
    timeline = Timeline()
    tracebacks = stack.tracebacks()
    try:
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        timeline.killing = time.monotonic()
        stack.redis.kill()
        timeline.killed = time.monotonic()
        time.sleep(1.0)
        timeline.restarting = time.monotonic()
        timeline.up = stack.redis.start()
        # Recovery: the first 200 on a session route with a fresh login, with nothing restarted but Redis.
        with _client(stack.url) as http:

            def recovered() -> bool:
                _, cookie = _login(http)
                return cookie is not None and _call(http, "probe", "GET", "/account", cookie=cookie)[0].status == 200

            recovered_at = _wait_for(recovered, timeout=10.0, interval=0.01)
        time.sleep(1.0)
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(timeout=HANG_BOUND + 5)
        stack.ensure_redis()
    assert not any(thread.is_alive() for thread in threads), "a client thread hung"
    verdict = _judge_kill_run(load.answers, timeline)
    problems = verdict.pop("problems")
    after = [a for a in load.answers if a.sent >= timeline.up and a.route == "account" and a.status == 200]
    verdict["server tracebacks"] = stack.tracebacks() - tracebacks
    verdict["recovery seconds (fresh login, after Redis answered PING)"] = round(recovered_at - timeline.up, 3)
    verdict["first load 200 on /account after restart (s)"] = (
        round(min(a.done for a in after) - timeline.up, 3) if after else None
    )
    server = "gunicorn, 2 workers" if stack.framework == "flask" else "uvicorn"
    _report(capsys, record_property, f"fault report: {stack.framework} ({server}), Redis killed mid-load", **verdict)
    assert problems == [], problems[:20]
    assert verdict["wrongly authorised"] == 0
    assert verdict["server tracebacks"] == 0, stack.output()[-6000:]
    assert verdict["answered during the outage"] > 0, "the load never saw the outage"
    assert verdict["by status"].get(503, 0) > 0
    assert after, "the load never got a session back after Redis returned"
    assert recovered_at - timeline.up < 5.0


# ---- (d) JWT routes with Redis down: the revocation check fails closed (the documented default) ----------------


def test_p27_jwt_routes_fail_closed_while_redis_is_down(stack: Stack) -> None:
    token = _token(scope="items:read items:write")
    with _client(stack.url) as http:
        assert _call(http, "items", "GET", "/api/items", token=token)[0].status == 200  # now in the verifier cache
        me = http.get("/api/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200 and me.json()["source"] == "jwt"
        try:
            stack.redis.kill()
            started = time.monotonic()
            for method, path in (("GET", "/api/items"), ("GET", "/api/me"), ("POST", "/api/items")):
                response = http.request(method, path, headers={"Authorization": f"Bearer {token}"}, json={"name": "x"})
                _problem_503(response)
                assert "authmw" not in response.headers.get("set-cookie", "")
            assert time.monotonic() - started < HANG_BOUND
            assert http.get("/health").status_code == 200  # public routes keep serving
            # A token that fails its signature is still a 401: the store is consulted only after the signature.
            forged = jwt.encode({"sub": "alice", "iat": int(time.time()), "exp": int(time.time()) + 60}, "x" * 40)
            assert http.get("/api/items", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
        finally:
            stack.ensure_redis()
        _wait_for(lambda: _call(http, "items", "GET", "/api/items", token=token)[0].status == 200, timeout=5.0)


# ---- (c) slow Redis: CLIENT PAUSE longer than the socket timeout ----------------------------------------------------


def test_p27_paused_redis_fails_closed_within_the_socket_timeout_then_recovers(
    stack: Stack, capsys: pytest.CaptureFixture[str], record_property: Callable[[str, object], None]
) -> None:
    with _client(stack.url) as http:
        _, alice = _login(http, "alice")
        _, bob = _login(http, "bob")
        assert alice is not None and bob is not None
        token = _token()
        for _ in range(4):  # every worker has a pooled connection and the scripts loaded
            assert _call(http, "account", "GET", "/account", cookie=alice)[0].status == 200
            assert _call(http, "items", "GET", "/api/items", token=token)[0].status == 200
        admin = stack.redis.client()
        seconds: dict[str, float] = {}
        try:
            assert admin.execute_command("CLIENT", "PAUSE", 3000, "ALL")
            paused = time.monotonic()
            health = _call(http, "health", "GET", "/health")[0]
            assert health.status == 200 and health.seconds < 0.5  # public routes never wait for the store
            for route, path, kwargs in (
                ("account", "/account", {"cookie": alice}),
                ("items", "/api/items", {"token": token}),
            ):
                answer, response = _call(http, route, "GET", path, **kwargs)
                assert response is not None, f"{route}: no answer"
                _problem_503(response)
                seconds[route] = round(answer.seconds, 3)
                assert answer.seconds < SOCKET_TIMEOUT + 0.5, f"{route} took {answer.seconds:.2f} s"
            assert time.monotonic() - paused < 3.0, "the pause ended before the checks ran: inconclusive"
        except BaseException:
            admin.execute_command("CLIENT", "UNPAUSE")
            raise
        finally:
            admin.close()
        # The pause ends by itself: service comes back without a restart, and no pooled connection hands one
        # request the late reply meant for another (a timed-out connection must be dropped, not reused).
        recovered = _wait_for(
            lambda: _call(http, "account", "GET", "/account", cookie=alice)[0].status == 200, timeout=6.0
        )
        for _ in range(10):
            for user, cookie in (("alice", alice), ("bob", bob)):
                answer, _ = _call(http, "account", "GET", "/account", cookie=cookie)
                assert (answer.status, answer.user) == (200, user)
            assert _call(http, "items", "GET", "/api/items", token=token)[0].status == 200
    _report(
        capsys,
        record_property,
        f"fault report: {stack.framework}, CLIENT PAUSE 3000",
        **{
            "seconds to 503 (account, items)": seconds,
            "first 200 after the pause began (s)": round(recovered - paused, 3),
        },
    )


# ---- (b) persistence: sessions, logouts and revocations survive a Redis restart ---------------------------------


def _session_key(cookie: str) -> str:
    # The signed value starts with the session id, its tag masked: <masked tag>.<random>.
    tag, random_part = TagMask(SECRET.encode()).unmask(".".join(cookie.split(".")[:2])).split(".")
    return f"authmw:{{{tag}}}:s:{random_part}"


def test_p27_sessions_survive_a_redis_restart_with_persistence(tmp_path: Path) -> None:
    process = RedisProcess(tmp_path, persistent=True)
    process.start()
    try:
        with _app("starlette", _env(process.url)) as starlette, _app("flask", _env(process.url), workers=1) as flask:
            urls = {"starlette": starlette.url, "flask": flask.url}
            with _client(starlette.url) as http:
                alive = {}
                for name, url in urls.items():
                    http.base_url = httpx.URL(url)
                    _, alive[name] = _login(http, "alice")
                http.base_url = httpx.URL(starlette.url)
                _, logged_out = _login(http, "bob")
                assert _call(http, "logout", "POST", "/logout", cookie=logged_out)[0].status == 303
                _, bob = _login(http, "bob")
                bob_token, alice_token = _token("bob", "items:read", iat=time.time() - 2), _token("alice")
                assert _call(http, "items", "GET", "/api/items", token=bob_token)[0].status == 200
                assert _call(http, "everywhere", "POST", "/logout-everywhere", cookie=bob)[0].status == 303
                assert _call(http, "items", "GET", "/api/items", token=bob_token)[0].status == 401
                admin = process.client()
                ttl_before = {name: admin.pttl(_session_key(cookie)) for name, cookie in alive.items()}
                admin.close()
                assert all(0 < ttl <= 1800_000 for ttl in ttl_before.values()), ttl_before

                def check_everything() -> None:
                    for name, url in urls.items():
                        http.base_url = httpx.URL(url)
                        cookie = alive[name]
                        # The first request may still find the pool's old connection broken: wait out the 503s.
                        _wait_for(lambda c=cookie: _call(http, "a", "GET", "/account", cookie=c)[0].status != 503, 5)
                        answer, _ = _call(http, "account", "GET", "/account", cookie=cookie)
                        assert (answer.status, answer.user) == (200, "alice"), name
                        for cookie in (logged_out, bob):  # a logout is as durable as a login
                            assert _call(http, "dead", "GET", "/account", cookie=cookie)[0].status == 401
                        assert _call(http, "items", "GET", "/api/items", token=bob_token)[0].status == 401
                        assert _call(http, "items", "GET", "/api/items", token=alice_token)[0].status == 200
                    admin = process.client()
                    for name, cookie in alive.items():
                        ttl = admin.pttl(_session_key(cookie))
                        assert 0 < ttl <= ttl_before[name] + 1000, (name, ttl)  # the idle TTL survives, unextended
                    admin.close()

                process.terminate()  # SIGTERM: Redis's graceful shutdown
                process.start()
                check_everything()
                process.kill()  # SIGKILL: a crash; appendfsync everysec still has every acknowledged write
                process.start()
                check_everything()
    finally:
        process.kill()


# ---- (e) several workers under load: no lost and no resurrected sessions ----------------------------------------


@dataclass
class Churn:
    url: str
    allowance: float  # seconds after its logout during which a 200 for the old cookie is tolerated
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    dead: list[tuple[str, float]] = field(default_factory=list)  # (cookie, when its logout was answered)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    lost: int = 0
    resurrected: int = 0
    wrong_user: int = 0
    within_allowance: int = 0
    cycles: int = 0
    problems: list[str] = field(default_factory=list)

    def run(self, seed: int) -> None:
        rng = random.Random(seed)
        counts: collections.Counter[int] = collections.Counter()
        with _client(self.url) as http:
            while not self.stop.is_set():
                user = rng.choice(list(USERS))
                answer, cookie = _login(http, user)
                counts[answer.status] += 1
                if cookie is None:
                    self._problem(f"login answered {answer.status}")
                    continue
                for _ in range(rng.randint(2, 6)):
                    answer, _ = _call(http, "account", "GET", "/account", cookie=cookie)
                    counts[answer.status] += 1
                    if answer.status == 401:
                        with self.lock:
                            self.lost += 1
                    elif answer.status != 200:
                        self._problem(f"/account answered {answer.status}")
                    elif answer.user != user:
                        with self.lock:
                            self.wrong_user += 1
                answer, _ = _call(http, "logout", "POST", "/logout", cookie=cookie)
                counts[answer.status] += 1
                if answer.status != 303:
                    self._problem(f"logout answered {answer.status}")
                    continue
                with self.lock:
                    self.dead.append((cookie, answer.done))
                    probes = [(cookie, answer.done), *rng.sample(self.dead, min(2, len(self.dead)))]
                    self.cycles += 1
                for old, logged_out in probes:  # its own old cookie at once, and others' from any worker
                    answer, _ = _call(http, "dead", "GET", "/account", cookie=old)
                    counts[answer.status] += 1
                    if answer.status == 200:
                        with self.lock:
                            if answer.sent - logged_out > self.allowance:
                                self.resurrected += 1
                            else:
                                self.within_allowance += 1
                    elif answer.status != 401:
                        self._problem(f"a logged-out cookie answered {answer.status}")
        with self.lock:
            self.statuses.update(counts)

    def _problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)


@pytest.mark.parametrize("local_cache", ["0", "1"], ids=["no-local-cache", "local-cache"])
def test_workers_share_sessions_under_load_without_losing_or_resurrecting_any(
    private_redis: RedisProcess,
    local_cache: str,
    capsys: pytest.CaptureFixture[str],
    record_property: Callable[[str, object], None],
) -> None:
    env = _env(private_redis.url, AUTHMW_LOCAL_CACHE=local_cache)
    churn = Churn("", allowance=0.1 if local_cache == "1" else 0.0)
    with gunicorn_server(FLASK_APP, env, workers=3) as server:
        churn.url = server.url
        threads = [threading.Thread(target=churn.run, args=(i,), daemon=True) for i in range(3)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(3.0)
        churn.stop.set()
        for thread in threads:
            thread.join(timeout=HANG_BOUND + 5)
        elapsed = time.monotonic() - started
        # Then Redis dies: a session every worker has just seen (and cached, with the local cache on) is refused
        # within the propagation allowance; the cache never outlives its invalidation channel.
        with _client(server.url) as http:
            _, cookie = _login(http)
            for _ in range(12):
                assert _call(http, "account", "GET", "/account", cookie=cookie)[0].status == 200
            private_redis.kill()
            time.sleep(0.1)
            after_kill = collections.Counter(
                _call(http, "account", "GET", "/account", cookie=cookie)[0].status for _ in range(12)
            )
    assert not any(thread.is_alive() for thread in threads), "a client thread hung"
    _report(
        capsys,
        record_property,
        f"load report: gunicorn 3 workers, AUTHMW_LOCAL_CACHE={local_cache}",
        requests=sum(churn.statuses.values()),
        **{"by status": dict(sorted(churn.statuses.items()))},
        **{"login/logout cycles": churn.cycles, "seconds": round(elapsed, 2)},
        lost=churn.lost,
        resurrected=churn.resurrected,
        **{"wrong user": churn.wrong_user, "200s within the propagation allowance": churn.within_allowance},
        **{"then Redis killed, /account 100 ms later": dict(after_kill)},
    )
    assert churn.problems == [], churn.problems[:20]
    assert (churn.lost, churn.resurrected, churn.wrong_user) == (0, 0, 0)
    assert churn.cycles >= 10, "too little load to mean anything"
    if local_cache == "0":
        assert churn.within_allowance == 0
    assert after_kill == {503: 12}


# ---- a silent partition: Redis stops answering this process without closing its connections -------------------


class BlackholeProxy:
    """A loopback TCP proxy to Redis that can stop forwarding without closing anything (a dropped link, a frozen
    host): no RST, no FIN, just silence."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.silent = threading.Event()
        self.closed = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                downstream, _ = self.listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
                upstream.settimeout(None)
            except OSError:
                return
            self.sockets += [downstream, upstream]
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
                if not data:
                    return
                while self.silent.is_set() and not self.closed.is_set():
                    time.sleep(0.02)  # hold every byte, in both directions
                sink.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.closed.set()
        self.silent.clear()
        for sock in [self.listener, *self.sockets]:
            with contextlib.suppress(OSError):
                sock.close()


def _alice_session() -> SessionRecord:
    """A fresh session record of alice's: an hour to live, idle after 30 minutes."""
    now = time.time()
    return SessionRecord(
        sid=f"{user_tag('alice')}.{secrets.token_urlsafe(32)}",
        user_id="alice",
        created=now,
        auth_time=now,
        absolute_expiry=now + 3600,
        idle_timeout=1800,
        last_seen=now,
    )


def test_p27_local_cache_stops_serving_when_redis_goes_silent(private_redis: RedisProcess) -> None:
    proxy = BlackholeProxy(private_redis.port)
    prefix = f"silent:{uuid.uuid4().hex}:"
    reader = RedisStore.from_url(proxy.url, prefix=prefix, local_cache=True)  # this process's view of Redis
    writer = RedisStore.from_url(private_redis.url, prefix=prefix)  # another process, still connected
    cache = reader.local_cache
    assert cache is not None
    try:
        record = _alice_session()
        run_sync(writer.create(record))
        cache.ensure_listening()
        _wait_for(lambda: cache.healthy, timeout=5.0)
        assert run_sync(reader.load(record.sid, 60)) is not None  # now cached
        proxy.silent.set()
        assert run_sync(writer.delete(record.sid, "alice"))  # logged out elsewhere; the invalidation cannot arrive

        def stopped_serving() -> bool:
            try:
                return run_sync(reader.load(record.sid, 60)) is None
            except StoreUnavailable:
                return True  # fail closed: what a request without the cache gets

        # The cache pings every second: two missed PONGs (plus the 1 s socket timeout) is the most it may take.
        _wait_for(stopped_serving, timeout=4.0, interval=0.1)
    finally:
        cache.close()
        proxy.close()
        reader.client.close()
        writer.client.close()


def test_scripts_are_loaded_again_when_the_server_forgets_them(private_redis: RedisProcess) -> None:
    """authmw sends EVALSHA itself: a server that does not know a script (new, restarted, SCRIPT FLUSH) gets it
    loaded and the call made again, on the sync and the asyncio client alike; nothing fails."""
    store = RedisStore.from_url(private_redis.url, prefix=f"flush:{uuid.uuid4().hex}:")
    record = _alice_session()
    admin = private_redis.client()
    sha = hashlib.sha1(script("load").source.encode(), usedforsecurity=False).hexdigest()

    async def load_twice_async() -> list[str | None]:
        users = []
        try:
            for _ in range(2):
                admin.script_flush()
                loaded = await run_async(store.load(record.sid, 60))
                users.append(loaded.user_id if loaded is not None else None)
        finally:
            await store.async_client.aclose()
        return users

    try:
        run_sync(store.create(record))  # the server had never seen the scripts
        for _ in range(2):
            admin.script_flush()
            loaded = run_sync(store.load(record.sid, 60))
            assert loaded is not None and loaded.user_id == "alice"
        assert asyncio.run(load_twice_async()) == ["alice", "alice"]
        assert admin.script_exists(sha) == [True]
    finally:
        admin.close()
        store.client.close()
