"""`authmw.throttle`: the pure decision (hypothesis properties), the in-process counters, the Redis script (real
Redis: the same answers as the pure decision, shared by two stores as by two processes, keys under the prefix,
expiring, one round trip per key), failing closed, and the example apps' 429 answers (in process; the real servers
are in test_e2e_throttle.py).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import RedisSpace, free_port

from authmw import AuthConfig
from authmw.errors import ConfigurationError, ServiceUnavailable
from authmw.io import run_sync
from authmw.sessions import SessionSettings
from authmw.stores import MemoryStore, RedisStore, StoreUnavailable
from authmw.throttle import (
    AsyncLoginThrottle,
    Counter,
    LoginThrottle,
    ThrottleSettings,
    _Limits,
    _MemoryCounters,
    _RedisCounters,
    _Step,
    decide,
    lock_ms,
)

SMALL = ThrottleSettings(user_attempts=3, address_attempts=5, window=60.0, first_lock=1.0, max_lock=8.0)


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ---- the pure decision ----

limits = st.builds(
    lambda free, first, factor, window: (free, first, first * factor, window),
    st.integers(1, 8),
    st.integers(1, 5_000),
    st.integers(1, 2_000),
    st.integers(1_000, 10**7),
)


@settings(max_examples=300, deadline=None)
@given(limits=limits, gaps=st.lists(st.integers(0, 20_000), min_size=1, max_size=40))
def test_the_lock_never_decreases_while_attempts_continue_and_is_capped(
    limits: tuple[int, int, int, int], gaps: list[int]
) -> None:
    free, first, cap, window = limits
    counter: Counter | None = None
    now, last_lock, counted = 0, 0, 0
    for gap in gaps:
        now += gap
        before = counter or Counter()
        kept, ttl, wait = decide("try", counter, now, free, first, cap, window)
        assert 0 <= wait <= cap
        if wait:  # refused: nothing counted, nothing changed
            assert kept == before and ttl is None and wait == before.locked_until - now
            continue
        assert kept is not None and ttl is not None
        counted += 1
        assert kept.count == counted
        lock = kept.locked_until - now if counted >= free else 0
        assert lock == lock_ms(counted, free, first, cap)
        assert lock >= last_lock and lock <= cap
        assert ttl == window + lock  # forgotten a whole window after the lock ends, not with it
        if counted < free:
            assert lock == 0
        last_lock, counter = lock, kept


@given(limits=limits, count=st.integers(1, 60), now=st.integers(0, 10**13))
def test_undo_takes_one_attempt_back_and_the_lock_with_it_below_the_free_ones(
    limits: tuple[int, int, int, int], count: int, now: int
) -> None:
    free, first, cap, window = limits
    counter = Counter(count, now + 5)
    undone, ttl, wait = decide("undo", counter, now, free, first, cap, window)
    assert wait == 0 and ttl is None  # the key keeps its time to live
    if count == 1:
        assert undone is None
    else:
        assert undone == Counter(count - 1, now + 5 if count - 1 >= free else 0)
    assert decide("undo", None, now, free, first, cap, window) == (None, None, 0)
    assert decide("clear", counter, now, free, first, cap, window) == (None, None, 0)


def test_the_first_locks_double_from_the_last_free_attempt() -> None:
    assert [lock_ms(n, 3, 1000, 8000) for n in range(1, 8)] == [0, 0, 1000, 2000, 4000, 8000, 8000]
    assert lock_ms(10**9, 1, 1, 900_000) == 900_000  # no overflow, however long the attack


names = st.text(st.characters(codec="utf-8"), max_size=30)


@settings(max_examples=100, deadline=None)
@given(unknown=names, steps=st.lists(st.tuples(st.integers(0, 3000), st.booleans()), max_size=25))
def test_known_and_unknown_users_get_the_same_answers(unknown: str, steps: list[tuple[int, bool]]) -> None:
    """The throttle never asks who exists: the same attempts get the same waits, whatever the name."""
    answers = []
    for name in ("alice", unknown):
        clock = Clock()
        throttle = LoginThrottle(None, SMALL, clock=clock)
        seen = []
        for gap, other_address in steps:
            clock.now += gap / 1000
            seen.append(throttle.check(name, "10.9.9.9" if other_address else "10.0.0.1"))
        answers.append(seen)
    assert answers[0] == answers[1]


@settings(max_examples=100, deadline=None)
@given(failures=st.integers(0, 4))
def test_success_clears_the_user_name_counter_not_the_address_one(failures: int) -> None:
    clock = Clock()
    throttle = LoginThrottle(None, SMALL, clock=clock)
    for _ in range(failures):
        assert throttle.check("alice", "10.0.0.1") == 0
        clock.now += 10
    assert throttle.check("alice", "10.0.0.1") == 0
    throttle.success("alice", "10.0.0.1")
    # alice starts again from nothing, from anywhere
    for _ in range(SMALL.user_attempts):
        assert throttle.check("alice", "10.7.7.7") == 0
    assert throttle.check("alice", "10.7.7.8") == 1
    # the address keeps its failures (the successful attempt itself is taken back)
    for n in range(SMALL.address_attempts - failures):
        assert throttle.check(f"user{n}", "10.0.0.1") == 0
    assert throttle.check("someone-else", "10.0.0.1") == 1


def test_a_locked_name_or_address_refuses_without_counting_anywhere() -> None:
    clock = Clock()
    throttle = LoginThrottle(None, SMALL, clock=clock)
    for _ in range(3):
        assert throttle.check("alice", "10.0.0.1") == 0
    assert throttle.check("alice", "10.0.0.1") == 1  # the right password would not be tried either
    for _ in range(20):  # hammering the locked name does not use up the address
        assert throttle.check("alice", "10.0.0.1") == 1
    assert [throttle.check(f"u{n}", "10.0.0.1") for n in range(3)] == [0, 0, 1]  # 3 + 2: the address's 5
    for _ in range(20):  # nor does a locked address count against the names tried from it
        assert throttle.check("bob", "10.0.0.1") == 1
    assert [throttle.check("bob", "10.0.0.2") for _ in range(4)] == [0, 0, 0, 1]
    clock.now += 1.0
    assert throttle.check("alice", "10.0.0.3") == 0  # the lock is over: one more attempt, then a longer lock
    assert throttle.check("alice", "10.0.0.3") == 2


def test_waits_are_whole_seconds_rounded_up() -> None:
    clock = Clock()
    throttle = LoginThrottle(None, ThrottleSettings(user_attempts=1, first_lock=0.2, max_lock=2.5), clock=clock)
    assert throttle.check("alice", None) == 0
    assert throttle.check("alice", None) == 1  # 0.2 s: Retry-After 1
    clock.now += 0.2
    assert throttle.check("alice", None) == 0
    clock.now += 0.399
    assert throttle.check("alice", None) == 1
    for _ in range(4):
        clock.now += 3
        assert throttle.check("alice", None) == 0
    assert throttle.check("alice", None) == 3  # capped at 2.5 s


# ---- keys ----


def test_names_are_normalised_and_never_stored() -> None:
    throttle = LoginThrottle()
    key = throttle.user_key("alice")
    assert re.fullmatch(r"throttle:\{u:[0-9a-f]{32}\}", key)
    assert {
        throttle.user_key(name) for name in ("Alice", " alice ", "ALICE", "\uff41\uff4c\uff49\uff43\uff45", "alice\t")
    } == {key}
    assert throttle.user_key("bob") != key and "alice" not in key


def test_addresses_are_grouped_and_hashed() -> None:
    throttle = LoginThrottle()
    v6 = throttle.address_key("2001:db8:1:2::1")
    assert throttle.address_key("2001:db8:1:2:ffff:ffff:ffff:ffff") == v6  # one /64
    assert throttle.address_key("2001:db8:1:3::1") != v6
    assert throttle.address_key("fe80::1%eth0") == throttle.address_key("fe80::2")
    assert throttle.address_key("::ffff:192.0.2.7") == throttle.address_key("192.0.2.7")
    assert throttle.address_key("192.0.2.7") != throttle.address_key("192.0.2.8")
    assert re.fullmatch(r"throttle:\{a:[0-9a-f]{32}\}", v6) and "2001" not in v6
    assert throttle.address_key("testclient") == throttle.address_key("TestClient ")  # not an IP: the text


# ---- settings ----


def test_settings_from_env() -> None:
    assert ThrottleSettings.from_env({}) == ThrottleSettings()
    assert ThrottleSettings() == ThrottleSettings(5, 20, 900.0, 1.0, 900.0)
    env = {
        "AUTHMW_LOGIN_THROTTLE_USER_ATTEMPTS": "3",
        "AUTHMW_LOGIN_THROTTLE_ADDRESS_ATTEMPTS": "7",
        "AUTHMW_LOGIN_THROTTLE_WINDOW": "30",
        "AUTHMW_LOGIN_THROTTLE_FIRST_LOCK": "0.5",
        "AUTHMW_LOGIN_THROTTLE_MAX_LOCK": " 2 ",
    }
    assert ThrottleSettings.from_env(env) == ThrottleSettings(3, 7, 30.0, 0.5, 2.0)


@pytest.mark.parametrize(
    "env",
    [
        {"AUTHMW_LOGIN_THROTTLE_USER_ATTEMPTS": "0"},
        {"AUTHMW_LOGIN_THROTTLE_USER_ATTEMPTS": "2.5"},
        {"AUTHMW_LOGIN_THROTTLE_ADDRESS_ATTEMPTS": "many"},
        {"AUTHMW_LOGIN_THROTTLE_WINDOW": "nan"},
        {"AUTHMW_LOGIN_THROTTLE_WINDOW": "0"},
        {"AUTHMW_LOGIN_THROTTLE_FIRST_LOCK": "inf"},
        {"AUTHMW_LOGIN_THROTTLE_FIRST_LOCK": "10", "AUTHMW_LOGIN_THROTTLE_MAX_LOCK": "5"},
        {"AUTHMW_LOGIN_THROTTLE_MAX_LOCK": "1e9"},
    ],
)
def test_bad_settings_are_refused_at_start_up(env: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError):
        ThrottleSettings.from_env(env)


# ---- in-process counters ----


def test_throttles_on_one_memory_store_share_their_counters() -> None:
    store, clock = MemoryStore(), Clock(time.time())
    first, second = LoginThrottle(store, SMALL, clock=clock), LoginThrottle(store, SMALL, clock=clock)
    assert [first.check("alice", None), second.check("alice", None), first.check("alice", None)] == [0, 0, 0]
    assert second.check("alice", None) == 1
    assert LoginThrottle(MemoryStore(), SMALL, clock=clock).check("alice", None) == 0  # another store: its own
    config = AuthConfig(sessions=SessionSettings(secret_keys=["k" * 32], store=store))
    assert LoginThrottle.from_config(config, SMALL).check("alice", None) == 1


def test_memory_counters_expire_after_the_window() -> None:
    clock = Clock()
    throttle = LoginThrottle(None, ThrottleSettings(user_attempts=2, window=10.0, max_lock=100.0), clock=clock)
    assert [throttle.check("alice", None), throttle.check("alice", None)] == [0, 0]
    waits = []
    for _ in range(6):
        waits.append(throttle.check("alice", None))
        clock.now += waits[-1]
        assert throttle.check("alice", None) == 0  # each attempt after its lock doubles it
    assert waits == [1, 2, 4, 8, 16, 32]
    clock.now += 64 + 9.9  # the lock (longer than the window), then most of a window without attempts
    assert throttle.check("alice", None) == 0
    assert throttle.check("alice", None) == 100  # still counted: doubling on, up to the cap
    clock.now += 100 + 10  # the lock, then a whole window without attempts: forgotten
    assert [throttle.check("alice", None), throttle.check("alice", None), throttle.check("alice", None)] == [0, 0, 1]


def test_memory_counters_are_bounded() -> None:
    counters = _MemoryCounters(max_keys=100)
    limits = _Limits(5, 1000, 10_000, 60_000)
    for n in range(1000):
        run_sync(counters.run(_Step("try", f"k{n}", 1000, limits)))
    assert len(counters._entries) == 100


def test_only_memory_and_redis_stores_hold_counters() -> None:
    with pytest.raises(ConfigurationError, match="MemoryStore or a RedisStore"):
        LoginThrottle(object())  # type: ignore[arg-type]
    assert LoginThrottle.from_config(AuthConfig()).check("alice", None) == 0  # no sessions: its own counters


def test_the_async_throttle_shares_the_counters() -> None:
    store = MemoryStore()
    throttle, async_throttle = LoginThrottle(store, SMALL), AsyncLoginThrottle(store, SMALL)

    async def attempts() -> list[int]:
        return [await async_throttle.check("alice", "10.0.0.1") for _ in range(4)]

    assert asyncio.run(attempts()) == [0, 0, 0, 1]
    asyncio.run(async_throttle.success("alice", "10.0.0.1"))
    assert throttle.check("alice", "10.0.0.1") == 0


# ---- Redis ----


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as run:
        yield run


def _keys(space: RedisSpace) -> dict[str, dict[str, str]]:
    client = redis.Redis.from_url(space.url, decode_responses=True)
    try:
        return {key: client.hgetall(key) for key in client.scan_iter(match=space.prefix + "*")}
    finally:
        client.close()


@pytest.mark.redis
def test_two_redis_stores_share_the_counters_under_the_prefix(redis_space: RedisSpace) -> None:
    one = LoginThrottle(RedisStore.from_url(redis_space.url, prefix=redis_space.prefix), SMALL)
    two = LoginThrottle(RedisStore.from_url(redis_space.url, prefix=redis_space.prefix), SMALL)
    assert [one.check("alice", "10.0.0.1"), two.check("alice", "10.0.0.2"), one.check("alice", "10.0.0.3")] == [0] * 3
    assert two.check("alice", "10.0.0.4") == 1  # the fourth, in "another process"
    assert one.user_key("alice") == two.user_key("alice")
    assert re.fullmatch(re.escape(redis_space.prefix) + r"throttle:\{u:[0-9a-f]{32}\}", one.user_key("alice"))
    stored = _keys(redis_space)
    assert set(stored) == {one.user_key("alice"), *(one.address_key(f"10.0.0.{n}") for n in (1, 2, 3))}
    assert stored[one.user_key("alice")]["n"] == "3"
    assert all("alice" not in key and "10.0.0" not in key for key in stored)
    client = redis.Redis.from_url(redis_space.url)
    try:
        assert all(0 < client.pttl(key) <= (SMALL.window + SMALL.max_lock) * 1000 for key in stored)
    finally:
        client.close()
    two.success("alice", "10.0.0.3")  # clears the name everywhere
    assert one.check("alice", "10.0.0.1") == 0
    assert one.user_key("alice") in _keys(redis_space)


@pytest.mark.redis
def test_redis_counters_expire(redis_space: RedisSpace) -> None:
    short = ThrottleSettings(user_attempts=1, window=0.3, first_lock=0.2, max_lock=0.2)
    throttle = LoginThrottle(RedisStore.from_url(redis_space.url, prefix=redis_space.prefix), short)
    assert throttle.check("alice", "10.0.0.1") == 0
    assert throttle.check("alice", "10.0.0.1") == 1
    assert _keys(redis_space)
    time.sleep(0.55)  # the lock, then the window
    assert _keys(redis_space) == {}  # Redis forgot them itself
    assert throttle.check("alice", "10.0.0.1") == 0


class CountingRedis(redis.Redis):
    """A client that notes the commands it sends (each `execute_command` is one round trip)."""

    sent: list[str]

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.sent.append(str(args[0]))
        return super().execute_command(*args, **options)


@pytest.mark.redis
def test_one_round_trip_per_key(redis_space: RedisSpace) -> None:
    client = CountingRedis.from_url(redis_space.url)
    client.sent = []
    throttle = LoginThrottle(RedisStore(client, prefix=redis_space.prefix), SMALL)
    throttle.check("warm-up", None)  # loads the script if the server lacks it (NOSCRIPT: SCRIPT LOAD, again)
    client.sent.clear()
    assert throttle.check("alice", "10.0.0.1") == 0
    assert client.sent == ["EVALSHA", "EVALSHA"]  # the address, then the name
    client.sent.clear()
    throttle.success("alice", "10.0.0.1")
    assert client.sent == ["EVALSHA", "EVALSHA"]
    client.close()


@pytest.mark.redis
def test_redis_async_throttle(redis_space: RedisSpace, runner: asyncio.Runner) -> None:
    store = RedisStore.from_url(redis_space.url, prefix=redis_space.prefix)
    throttle, async_throttle = LoginThrottle(store, SMALL), AsyncLoginThrottle(store, SMALL)
    assert [runner.run(async_throttle.check("alice", "::1")) for _ in range(3)] == [0, 0, 0]
    assert throttle.check("alice", "::1") == 1  # the sync throttle sees what the async one counted
    locked_until = _keys(redis_space)[throttle.user_key("alice")]["until"]
    assert float(locked_until) > time.time() * 1000
    runner.run(async_throttle.success("alice", "::1"))
    assert throttle.user_key("alice") not in _keys(redis_space)


operations = st.lists(
    st.tuples(st.sampled_from(["try", "try", "try", "undo", "clear"]), st.integers(0, 5_000)), max_size=30
)


@pytest.mark.redis
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limits=limits, ops=operations)
def test_the_redis_script_decides_as_decide_does(
    redis_space: RedisSpace, limits: tuple[int, int, int, int], ops: list[tuple[str, int]]
) -> None:
    """The Lua script and `decide` are two writings of one rule: the same operations, the same answers and state.
    (Times stay within the window, which Redis measures on its own clock.)"""
    client = redis.Redis.from_url(redis_space.url, decode_responses=True)
    store = RedisStore(client, prefix=redis_space.prefix)
    in_redis, in_memory = _RedisCounters(store), _MemoryCounters()
    free, first, cap, _ = limits
    bounds = _Limits(free, first, cap, 10**8)
    key = f"{redis_space.prefix}throttle:{{u:{secrets.token_hex(8)}}}"
    now = 1_700_000_000_000
    try:
        for op, gap in ops:
            now += gap
            step = _Step(op, key, now, bounds)  # type: ignore[arg-type]
            assert run_sync(in_redis.run(step)) == run_sync(in_memory.run(step))
            stored = client.hgetall(key)
            entry = in_memory._entries.get(key)
            if entry is None:
                assert stored == {}
            else:
                assert (int(float(stored["n"])), int(float(stored["until"]))) == (entry[0].count, entry[0].locked_until)
                assert client.pttl(key) > 0  # never a key without an expiry
    finally:
        client.delete(key)
        client.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_unreachable_store_fails_closed(mode: str) -> None:
    store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0", prefix="test:down:", socket_timeout=0.5)
    with pytest.raises(StoreUnavailable) as raised:
        if mode == "sync":
            LoginThrottle(store, SMALL).check("alice", "10.0.0.1")
        else:
            asyncio.run(AsyncLoginThrottle(store, SMALL).check("alice", "10.0.0.1"))
    assert isinstance(raised.value, ServiceUnavailable) and raised.value.retry_after == store.retry_after
    assert raised.value.status == 503


# ---- the example apps (in process) ----


@pytest.fixture
def throttled_examples(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AUTHMW_LOGIN_URL", "AUTHMW_REDIS_URL", "AUTHMW_TRUSTED_ORIGINS", "AUTHMW_REALM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AUTHMW_SECRET_KEYS", secrets.token_urlsafe(36))
    monkeypatch.setenv("AUTHMW_COOKIE_SECURE", "0")
    monkeypatch.setenv("AUTHMW_JWT_ALGORITHMS", "HS256")
    monkeypatch.setenv("AUTHMW_JWT_KEY", secrets.token_urlsafe(36))
    monkeypatch.setenv("AUTHMW_LOGIN_THROTTLE_USER_ATTEMPTS", "2")
    monkeypatch.setenv("AUTHMW_LOGIN_THROTTLE_FIRST_LOCK", "30")


def test_the_example_apps_answer_a_throttled_login_identically(throttled_examples: None) -> None:
    from tests.test_examples_pages import API, BROWSER, app_clients, snapshot

    answers = []
    for framework in ("starlette", "flask"):
        client = app_clients(framework)(API)
        wrong = [client.post("/login", data={"username": "alice", "password": "nope"}) for _ in range(2)]
        assert [r.status_code for r in wrong] == [401, 401]
        api = client.post("/login", data={"username": "alice", "password": "wonderland"})
        page = client.post("/login", data={"username": "alice", "password": "wonderland"}, headers=BROWSER)
        assert api.status_code == page.status_code == 429
        assert api.headers["retry-after"] == page.headers["retry-after"] == "30"
        assert api.json() == {"detail": "Too many attempts; try again in 30 seconds."}
        assert '<p id="error" class="error" role="alert">Too many attempts; try again in 30 seconds.</p>' in page.text
        assert "set-cookie" not in api.headers and "set-cookie" not in page.headers
        answers.append([(snapshot(r), r.headers["retry-after"]) for r in (api, page)])
        client.close()
    assert answers[0] == answers[1]
