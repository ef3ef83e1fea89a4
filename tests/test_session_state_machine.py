"""The session lifecycle as a Hypothesis state machine: the model and the system always agree.

`authmw.sessions.SessionManager` flows (login, resolve, rotate, logout, logout everywhere) are driven through
`authmw.io.run_sync` with `SessionState`s built on `WSGIRequestView` environs that carry the cookie, exactly as
the WSGI shell does. A plain-Python model tracks which sessions are live. After every step, *every* cookie ever
issued is resolved again (by an observer that never slides the idle timeout, so observing changes nothing) and
must resolve to a principal iff the model says its session is live, and then to the right user and scopes; a dead
one must also make the response clear the cookie (P20).

Two systems under test:

* `MemoryStore` with a fake clock (also patched into `authmw.sessions`, so the manager's own timestamps agree
  with the store's): idle and absolute expiry are modelled to the second, including when a read slides the idle
  timeout (only once `touch_interval` has passed since the last slide).
* A real Redis (`redis_url` fixture; a unique key prefix per machine, deleted afterwards). Redis' TTLs run on
  real time, so the idle timeout is 1 s and `advance_time` sleeps past it, at most once per example to keep the
  run bounded; every other step is milliseconds, far inside the idle timeout.

Promises: P16 (only issued ids), P18 (rotation, login over an old cookie), P19 (idle and absolute timeouts,
server-side), P20 (logout, logout everywhere, replay refused).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

import authmw.sessions
from authmw.io import run_sync
from authmw.request import WSGIRequestView
from authmw.sessions import SessionManager, SessionSettings, SessionState
from authmw.stores import MemoryStore, RedisStore

SECRET = "state-machine-session-signing-key-" + "0123456789abcdef" * 2
COOKIE_NAME = "authmw_session"
USERS = ("alice", "bob", "carol")
SCOPES = st.frozensets(st.sampled_from(["items:read", "items:write", "admin"]), max_size=3)

# Memory store: whole seconds on a fake clock, so the model is exact.
IDLE = 600
ABSOLUTE = 1500
TOUCH = 60
MEMORY_STEPS = [1, TOUCH - 1, TOUCH, TOUCH + 1, IDLE // 2, IDLE - 1, IDLE, IDLE + 1, ABSOLUTE]
EPOCH = 1_900_000_000.0

# Redis: real time.
REDIS_IDLE = 1.0
REDIS_TOUCH = 0.25
REDIS_SLEEP = REDIS_IDLE + 0.2


@dataclass
class ModelSession:
    user: str
    scopes: frozenset[str]
    created: float
    slid: float
    live: bool = True


class FakeClock:
    def __init__(self) -> None:
        self.now = EPOCH

    def __call__(self) -> float:
        return self.now


class _TimeModule:
    """`authmw.sessions.time` under test: the real module, except that `time()` is the fake clock."""

    def __init__(self, clock: FakeClock) -> None:
        self.time = clock

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def _state(manager: SessionManager, cookie: str | None = None) -> SessionState:
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": "127.0.0.1", "HTTP_USER_AGENT": "sm"}
    if cookie is not None:
        environ["HTTP_COOKIE"] = f"{COOKIE_NAME}={cookie}"
    return SessionState(manager, WSGIRequestView(environ))


def _cookie_of(state: SessionState) -> str:
    assert state.set_cookie is not None and state.set_cookie.startswith(COOKIE_NAME + "=")
    attributes = state.set_cookie.split("; ")[1:]
    assert attributes == ["Path=/", "HttpOnly", "SameSite=Lax"]  # non-persistent by default (P21)
    return state.set_cookie.split(";", 1)[0].split("=", 1)[1]


class SessionLifecycle(RuleBasedStateMachine):
    """Rules and invariant shared by both stores; subclasses supply the store, time and the expiry model."""

    cookies = Bundle("cookies")

    def __init__(self) -> None:
        super().__init__()
        self.model: dict[str, ModelSession] = {}
        self.settings = SessionSettings(
            secret_keys=[SECRET], store=self.make_store(), cookie_secure=False, **self.timeouts()
        )
        self.manager = SessionManager(self.settings)
        # Reads that never slide the idle timeout: checking the invariant must not change what it checks.
        self.observer = SessionManager(self.settings)
        self.observer.touch_interval = 1e9

    # ---- what subclasses provide ----

    def make_store(self) -> Any:
        raise NotImplementedError

    def timeouts(self) -> dict[str, float]:
        raise NotImplementedError

    def now(self) -> float:
        raise NotImplementedError

    def expired(self, session: ModelSession) -> bool:
        raise NotImplementedError

    def touched(self, session: ModelSession) -> None:
        """A read through the real manager happened now (it may slide the idle timeout)."""

    # ---- the model ----

    def is_live(self, cookie: str) -> bool:
        session = self.model[cookie]
        if session.live and self.expired(session):
            session.live = False
        return session.live

    def _issue(self, state: SessionState, user: str, scopes: frozenset[str], created: float) -> str:
        cookie = _cookie_of(state)
        assert cookie not in self.model, "a session id was issued twice (P16)"
        now = self.now()
        self.model[cookie] = ModelSession(user, scopes, created, now)
        return cookie

    # ---- rules ----

    @rule(target=cookies, user=st.sampled_from(USERS), scopes=SCOPES)
    def login(self, user: str, scopes: frozenset[str]) -> str:
        state = _state(self.manager)
        principal = run_sync(self.manager.login(state, user, scopes))
        assert (principal.id, principal.scopes, principal.source) == (user, scopes, "session")
        return self._issue(state, user, scopes, self.now())

    @rule(target=cookies, previous=cookies, user=st.sampled_from(USERS), scopes=SCOPES)
    def login_over_old_cookie(self, previous: str, user: str, scopes: frozenset[str]) -> str:
        """Login while the browser still holds a cookie (maybe someone else's): that session ends (P18)."""
        self.is_live(previous)
        state = _state(self.manager, previous)
        run_sync(self.manager.login(state, user, scopes))
        self.model[previous].live = False
        return self._issue(state, user, scopes, self.now())

    @rule(cookie=cookies)
    def request(self, cookie: str) -> None:
        live = self.is_live(cookie)
        state = _state(self.manager, cookie)
        principal = run_sync(self.manager.resolve(state))
        assert (principal is not None) == live
        if principal is not None:
            self.touched(self.model[cookie])

    @rule(target=cookies, cookie=cookies, scopes=st.none() | SCOPES)
    def rotate(self, cookie: str, scopes: frozenset[str] | None) -> Any:
        """A privilege change: a new id, the old one dead at once (P18)."""
        live = self.is_live(cookie)
        state = _state(self.manager, cookie)
        principal = run_sync(self.manager.resolve(state))
        assert (principal is not None) == live
        if principal is None:
            return multiple()
        old = self.model[cookie]
        self.touched(old)
        rotated = run_sync(self.manager.rotate(state, scopes))
        new_scopes = old.scopes if scopes is None else scopes
        assert (rotated.id, rotated.scopes) == (old.user, new_scopes)
        old.live = False
        return self._issue(state, old.user, new_scopes, old.created)

    @rule(cookie=cookies)
    def logout(self, cookie: str) -> None:
        live = self.is_live(cookie)
        state = _state(self.manager, cookie)
        deleted = run_sync(self.manager.logout(state))
        assert deleted == live
        assert state.response_cookies() == [self.manager.clearing_cookie()]
        self.model[cookie].live = False

    @rule(user=st.sampled_from(USERS))
    def logout_everywhere(self, user: str) -> None:
        live = [c for c, s in self.model.items() if s.user == user and self.is_live(c)]
        count = run_sync(self.manager.logout_everywhere(_state(self.manager), user))
        self.check_logout_everywhere_count(count, len(live))
        for cookie in live:
            self.model[cookie].live = False

    def check_logout_everywhere_count(self, count: int, live: int) -> None:
        assert count == live

    # ---- the invariant ----

    @invariant()
    def every_cookie_resolves_as_the_model_says(self) -> None:
        for cookie, session in self.model.items():
            live = self.is_live(cookie)
            state = _state(self.observer, cookie)
            principal = run_sync(self.observer.resolve(state))
            if live:
                assert principal is not None, f"a live session of {session.user} did not resolve"
                assert (principal.id, principal.source, principal.scopes) == (session.user, "session", session.scopes)
                assert state.response_cookies() == []
            else:
                assert principal is None, f"a dead session of {session.user} still resolves"
                assert state.response_cookies() == [self.observer.clearing_cookie()]


class MemoryLifecycle(SessionLifecycle):
    """`MemoryStore` on a fake clock: idle sliding and both timeouts modelled exactly."""

    def make_store(self) -> MemoryStore:
        self.clock = FakeClock()
        self._real_time = authmw.sessions.time
        authmw.sessions.time = _TimeModule(self.clock)  # type: ignore[assignment]
        return MemoryStore(clock=self.clock)

    def teardown(self) -> None:
        authmw.sessions.time = self._real_time

    def timeouts(self) -> dict[str, float]:
        return {"idle_timeout": IDLE, "absolute_timeout": ABSOLUTE, "touch_interval": TOUCH}

    def now(self) -> float:
        return self.clock.now

    def expired(self, session: ModelSession) -> bool:
        return self.clock.now >= min(session.slid + IDLE, session.created + ABSOLUTE)

    def touched(self, session: ModelSession) -> None:
        if self.clock.now - session.slid >= TOUCH:
            session.slid = self.clock.now

    def check_logout_everywhere_count(self, count: int, live: int) -> None:
        # Both stores count the sessions that were still live (see the memory-store count test below).
        assert count >= live

    @rule(seconds=st.sampled_from(MEMORY_STEPS))
    def advance_time(self, seconds: int) -> None:
        self.clock.now += seconds


class RedisLifecycle(SessionLifecycle):
    """A real Redis: idle expiry by sleeping past a 1 s idle timeout (once per example at most)."""

    redis_url = ""

    def make_store(self) -> RedisStore:
        self.prefix = f"test:sm:{uuid.uuid4().hex}:"
        self.slept = False
        self.store = RedisStore.from_url(self.redis_url, prefix=self.prefix)
        return self.store

    def teardown(self) -> None:
        client = redis.Redis.from_url(self.redis_url)
        try:
            keys = list(client.scan_iter(match=self.prefix + "*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()
            self.store.client.close()

    def timeouts(self) -> dict[str, float]:
        return {"idle_timeout": REDIS_IDLE, "absolute_timeout": 3600.0, "touch_interval": REDIS_TOUCH}

    def now(self) -> float:
        return time.time()

    def expired(self, session: ModelSession) -> bool:
        return False  # only `advance_time` ends sessions by time, and it marks them itself

    @precondition(lambda self: not self.slept and any(s.live for s in self.model.values()))
    @rule()
    def advance_time(self) -> None:
        """Sleep past the idle timeout (only when some session is live, so the sleep proves something)."""
        time.sleep(REDIS_SLEEP)
        self.slept = True
        for session in self.model.values():
            session.live = False


MEMORY_SETTINGS = settings(
    max_examples=120, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
REDIS_SETTINGS = settings(
    max_examples=15, stateful_step_count=20, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def test_session_lifecycle_memory_store_agrees_with_model() -> None:
    run_state_machine_as_test(MemoryLifecycle, settings=MEMORY_SETTINGS)


@pytest.mark.redis
def test_session_lifecycle_redis_store_agrees_with_model(redis_url: str) -> None:
    machine = type("RedisLifecycleHere", (RedisLifecycle,), {"redis_url": redis_url})
    run_state_machine_as_test(machine, settings=REDIS_SETTINGS)


def test_logout_everywhere_counts_only_live_sessions_on_the_memory_store() -> None:
    machine = MemoryLifecycle()
    try:
        expired = machine.login("alice", frozenset())
        machine.advance_time(IDLE)
        live = machine.login("alice", frozenset())
        assert not machine.is_live(expired) and machine.is_live(live)
        count = run_sync(machine.manager.logout_everywhere(_state(machine.manager), "alice"))
        assert count == 1
    finally:
        machine.teardown()
