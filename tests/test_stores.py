"""Session stores through their protocol: `MemoryStore` and `RedisStore` (real Redis, never a mock), each store
flow driven by `run_sync` and by `run_async` (one `asyncio.Runner` per test, so the redis.asyncio pool stays on one
loop).

Covers the store half of P18 (atomic rotation that never resurrects), P19 (idle and absolute expiry kept by the
store, sliding at most once per touch interval), P20 (delete), P27 (JSON records ``<ms>:<ms>:<json>``, corrupt
record → no session, unreachable or hung store → `StoreUnavailable` after a bounded time), the Redis key layout
(one Cluster hash slot per user), and MemoryStore's bound and thread safety.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import random
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from uuid import uuid4

import pytest
import redis
from redis.crc import key_slot
from tests.conftest import free_port

from authmw.errors import ConfigurationError
from authmw.io import run_async, run_sync
from authmw.stores import MemoryStore, RedisStore, SessionRecord, StoreUnavailable, user_tag

NEVER = 10.0**9  # a touch interval that never slides (a read that must not write)
RECORD_FORMAT = re.compile(rb"(\d+):(\d+):(\{.*\})", re.DOTALL)


# --- helpers ------------------------------------------------------------------------------------------------------


def make_record(
    user: str = "alice",
    *,
    now: float | None = None,
    idle: float = 600.0,
    absolute: float = 3600.0,
    scopes: tuple[str, ...] = ("items:read",),
    data: dict[str, Any] | None = None,
) -> SessionRecord:
    now = time.time() if now is None else now
    return SessionRecord(
        sid=f"{user_tag(user)}.{secrets.token_urlsafe(32)}",
        user_id=user,
        scopes=scopes,
        created=now,
        auth_time=now,
        absolute_expiry=now + absolute,
        idle_timeout=idle,
        last_seen=now,
        user_agent="pytest/1.0",
        ip="127.0.0.1",
        remember=False,
        data=dict(data or {}),
    )


def session_key(store: RedisStore, sid: str) -> str:
    tag, _, random_part = sid.partition(".")
    return f"{store.prefix}{{{tag}}}:s:{random_part}"


def index_key(store: RedisStore, user: str) -> str:
    digest = hashlib.sha256(user.encode()).hexdigest()
    return f"{store.prefix}{{{digest[:4]}}}:u:{digest}"


def purge(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Face:
    """The store protocol as plain calls: each operation's flow driven by `run_sync`, or by `run_async` on one event
    loop."""

    def __init__(self, store: Any, runner: asyncio.Runner | None) -> None:
        self.store = store
        self.runner = runner
        self.mode = "sync" if runner is None else "async"

    def __getattr__(self, name: str) -> Callable[..., Any]:
        operation = getattr(self.store, name)
        runner = self.runner
        if runner is None:
            return lambda *args: run_sync(operation(*args))
        return lambda *args: runner.run(run_async(operation(*args)))


@pytest.fixture
def redis_store(redis_url: str) -> Iterator[RedisStore]:
    prefix = f"test:{uuid4().hex}:"
    store = RedisStore.from_url(redis_url, prefix=prefix)
    yield store
    store.client.close()
    purge(redis_url, prefix)


def _face(request: pytest.FixtureRequest, kind: str, mode: str) -> Iterator[Face]:
    store: Any = request.getfixturevalue("redis_store") if kind == "redis" else MemoryStore()
    if mode == "sync":
        yield Face(store, None)
        return
    with asyncio.Runner() as runner:
        yield Face(store, runner)
        if isinstance(store, RedisStore):
            runner.run(store.async_client.aclose())


FACES = [
    pytest.param(("memory", "sync"), id="memory-sync"),
    pytest.param(("memory", "async"), id="memory-async"),
    pytest.param(("redis", "sync"), id="redis-sync", marks=pytest.mark.redis),
    pytest.param(("redis", "async"), id="redis-async", marks=pytest.mark.redis),
]


@pytest.fixture(params=FACES)
def face(request: pytest.FixtureRequest) -> Iterator[Face]:
    yield from _face(request, *request.param)


@pytest.fixture(params=["sync", "async"])
def redis_face(request: pytest.FixtureRequest) -> Iterator[Face]:
    yield from _face(request, "redis", request.param)


@pytest.fixture(params=["sync", "async"])
def memory_face(request: pytest.FixtureRequest) -> Iterator[Face]:
    yield from _face(request, "memory", request.param)


# --- the protocol, on every store and face ------------------------------------------------------------------------


def test_create_then_load_round_trips_every_field(face: Face) -> None:
    record = make_record(scopes=("a", "b"), data={"cart": [1, 2], "name": "Zoë ✓"})
    record.remember = True
    face.create(record)
    loaded = face.load(record.sid, NEVER)
    assert loaded is not None
    assert loaded.sid == record.sid
    assert loaded.user_id == "alice"
    assert loaded.scopes == ("a", "b")
    assert loaded.created == pytest.approx(record.created)
    assert loaded.auth_time == pytest.approx(record.auth_time)
    assert loaded.absolute_expiry == pytest.approx(record.absolute_expiry, abs=0.001)
    assert loaded.idle_timeout == pytest.approx(600.0)
    assert (loaded.user_agent, loaded.ip, loaded.remember) == ("pytest/1.0", "127.0.0.1", True)
    assert loaded.data == {"cart": [1, 2], "name": "Zoë ✓"}


def test_load_of_an_unknown_or_malformed_sid_is_none(face: Face) -> None:
    assert face.load(make_record().sid, 0) is None
    assert face.load("nodot", 0) is None
    assert face.load("", 0) is None


def test_p18_rotate_replaces_the_old_id_atomically(face: Face) -> None:
    old = make_record(data={"k": "v"})
    face.create(old)
    new = make_record(scopes=("items:read", "admin"), data={"k": "v"})
    new.created, new.absolute_expiry = old.created, old.absolute_expiry
    assert face.rotate(old.sid, new) is True
    assert face.load(old.sid, NEVER) is None
    loaded = face.load(new.sid, NEVER)
    assert loaded is not None and loaded.scopes == ("items:read", "admin") and loaded.data == {"k": "v"}
    assert loaded.absolute_expiry == pytest.approx(old.absolute_expiry, abs=0.001)
    assert [r.sid for r in face.list_user("alice")] == [new.sid]


def test_p18_rotate_after_logout_does_not_resurrect(face: Face) -> None:
    old = make_record()
    face.create(old)
    assert face.delete(old.sid, "alice") is True
    new = make_record()
    assert face.rotate(old.sid, new) is False
    assert face.load(new.sid, NEVER) is None
    assert face.load(old.sid, NEVER) is None
    assert face.list_user("alice") == []


def test_save_writes_the_data_bag_only_while_the_session_exists(face: Face) -> None:
    record = make_record()
    face.create(record)
    record.data = {"theme": "dark"}
    assert face.save(record) is True
    loaded = face.load(record.sid, NEVER)
    assert loaded is not None and loaded.data == {"theme": "dark"}

    face.delete(record.sid, "alice")
    record.data = {"theme": "light"}
    assert face.save(record) is False  # no resurrection
    assert face.load(record.sid, NEVER) is None
    assert face.list_user("alice") == []


def test_p20_delete_removes_the_record_and_its_index_entry(face: Face) -> None:
    keep, gone = make_record(), make_record()
    face.create(keep)
    face.create(gone)
    assert face.delete(gone.sid, "alice") is True
    assert face.delete(gone.sid, "alice") is False
    assert face.load(gone.sid, NEVER) is None
    assert [r.sid for r in face.list_user("alice")] == [keep.sid]


def test_delete_user_deletes_every_session_of_that_user_only(face: Face) -> None:
    alice = [make_record("alice") for _ in range(3)]
    bob = make_record("bob")
    for record in [*alice, bob]:
        face.create(record)
    assert face.delete_user("alice") == 3
    assert all(face.load(r.sid, NEVER) is None for r in alice)
    assert face.list_user("alice") == []
    assert face.load(bob.sid, NEVER) is not None
    assert [r.sid for r in face.list_user("bob")] == [bob.sid]
    assert face.delete_user("alice") == 0
    assert face.delete_user("nobody") == 0


def test_list_user_returns_the_live_sessions(face: Face) -> None:
    records = [make_record("carol") for _ in range(3)]
    for record in records:
        face.create(record)
    listed = face.list_user("carol")
    assert sorted(r.sid for r in listed) == sorted(r.sid for r in records)
    assert all(r.user_id == "carol" for r in listed)
    assert face.list_user("dave") == []


def test_p27_records_are_json_never_pickle(face: Face) -> None:
    record = make_record(data={"k": ["v", 1]})
    face.create(record)
    if isinstance(face.store, RedisStore):
        raw = face.store.client.get(session_key(face.store, record.sid))
    else:
        # The memory store serializes nothing: it keeps its own copy, so a caller's later change is not stored.
        record.data["k"].append("changed")
        assert face.load(record.sid, NEVER).data == {"k": ["v", 1]}
        raw = face.store._sessions[record.sid][0].encode().encode()
        record.data["k"].pop()
    assert isinstance(raw, bytes) and not raw.startswith(b"\x80")  # pickle protocol 2+ starts with 0x80
    match = RECORD_FORMAT.fullmatch(raw)
    assert match is not None, raw
    assert int(match.group(1)) == int(record.absolute_expiry * 1000)
    assert int(match.group(2)) == 600_000
    body = json.loads(match.group(3))
    assert body["uid"] == "alice" and body["scopes"] == ["items:read"] and body["data"] == {"k": ["v", 1]}
    assert record.sid not in raw.decode()  # the id is the key, not part of the value


def test_session_record_encode_decode_round_trip() -> None:
    record = make_record(data={"x": 1})
    text = record.encode()
    assert RECORD_FORMAT.fullmatch(text.encode()) is not None
    again = SessionRecord.decode(record.sid, text, record.last_seen)
    assert again is not None and again.user_id == record.user_id and again.data == {"x": 1}


# --- P27: corrupt records (Redis: anyone with access to the store can write garbage) ------------------------------

FAR = str(int((time.time() + 3600) * 1000))
GOOD_BODY = {"uid": "alice", "scopes": ["items:read"], "created": 1.0, "auth_time": time.time()}


def _body(**changes: Any) -> bytes:
    return f"{FAR}:60000:".encode() + json.dumps({**GOOD_BODY, **changes}).encode()


CORRUPT = [
    pytest.param(b"garbage", id="garbage"),
    pytest.param(b"", id="empty"),
    pytest.param(b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94.", id="pickle"),
    pytest.param(b"\xff\xfe\xfd", id="not-utf8"),
    pytest.param(f"{FAR}:60000:".encode(), id="no-json"),
    pytest.param(f"{FAR}:60000:{{not json".encode(), id="broken-json"),
    pytest.param(f"{FAR}:60000:[1,2]".encode(), id="json-array"),
    pytest.param(f"{FAR}:x:{{}}".encode(), id="bad-idle"),
    pytest.param(_body(uid=None), id="uid-null"),
    pytest.param(_body(uid=7), id="uid-number"),
    pytest.param(f"{FAR}:60000:".encode() + json.dumps({"scopes": []}).encode(), id="uid-missing"),
    pytest.param(_body(scopes=[1]), id="scope-number"),
    pytest.param(_body(data=[1]), id="data-list"),
    pytest.param(_body(created="yesterday"), id="created-text"),
    pytest.param(_body(scopes="admin"), id="scopes-string"),
    pytest.param(_body(uid=""), id="uid-empty"),
    pytest.param(
        f"{FAR}:60000:".encode() + json.dumps({**GOOD_BODY, "auth_time": float("nan")}).encode(), id="auth-time-nan"
    ),
]


@pytest.mark.redis
@pytest.mark.parametrize("value", CORRUPT)
def test_p27_corrupt_record_is_no_session(redis_face: Face, value: bytes) -> None:
    record = make_record()
    redis_face.create(record)
    store = redis_face.store
    store.client.set(session_key(store, record.sid), value, keepttl=True)
    assert redis_face.load(record.sid, 0) is None
    assert redis_face.load(record.sid, NEVER) is None
    assert [r.sid for r in redis_face.list_user("alice")] == []


# --- P19: timeouts kept by the store ------------------------------------------------------------------------------


def test_p19_memory_idle_timeout_slides_at_most_once_per_touch_interval(memory_face: Face) -> None:
    clock = FakeClock()
    memory_face.store = MemoryStore(clock=clock)
    record = make_record(now=clock.now, idle=100, absolute=1000)
    memory_face.create(record)
    t0 = clock.now

    clock.advance(5)
    loaded = memory_face.load(record.sid, 10)
    assert loaded is not None and loaded.last_seen == t0  # within the touch interval: nothing written
    assert memory_face.store._sessions[record.sid][1] == t0 + 100

    clock.advance(45)  # t0 + 50: slides
    loaded = memory_face.load(record.sid, 10)
    assert loaded is not None and loaded.last_seen == t0 + 50
    clock.advance(99)  # t0 + 149: alive only because it slid
    assert memory_face.load(record.sid, 10) is not None
    clock.advance(99)  # t0 + 248 < t0 + 149 + 100
    assert memory_face.load(record.sid, 10) is not None
    clock.advance(100)  # idle for exactly the idle timeout
    assert memory_face.load(record.sid, 10) is None
    assert memory_face.list_user("alice") == []
    assert memory_face.store._sessions == {} and memory_face.store._users == {}


def test_p19_memory_absolute_timeout_despite_activity(memory_face: Face) -> None:
    clock = FakeClock()
    memory_face.store = MemoryStore(clock=clock)
    record = make_record(now=clock.now, idle=100, absolute=300)
    memory_face.create(record)
    for _ in range(5):  # t0 + 60 … t0 + 300: the last one is at the absolute expiry
        clock.advance(60)
        alive = memory_face.load(record.sid, 0)
        if clock.now - record.created < 300:
            assert alive is not None
        else:
            assert alive is None
    assert memory_face.list_user("alice") == []


def test_p19_memory_list_user_and_save_do_not_slide(memory_face: Face) -> None:
    clock = FakeClock()
    memory_face.store = MemoryStore(clock=clock)
    record = make_record(now=clock.now, idle=100, absolute=1000)
    memory_face.create(record)
    clock.advance(90)
    assert len(memory_face.list_user("alice")) == 1
    record.data = {"k": 1}
    assert memory_face.save(record) is True
    clock.advance(11)  # 101 s after the last slide
    assert memory_face.load(record.sid, 0) is None


@pytest.mark.redis
def test_p19_redis_idle_and_absolute_timeouts(redis_face: Face) -> None:
    store = redis_face.store
    start = time.monotonic()
    active = make_record(idle=0.6, absolute=1.5)
    idle = make_record(idle=0.6, absolute=1.5)
    redis_face.create(active)
    redis_face.create(idle)

    def at(offset: float) -> None:
        time.sleep(max(0.0, start + offset - time.monotonic()))

    for offset in (0.2, 0.4, 0.6, 0.8, 1.0):
        at(offset)
        assert redis_face.load(active.sid, 0.1) is not None, offset
    at(1.0)
    assert redis_face.load(idle.sid, 0.1) is None  # 1 s untouched > 0.6 s idle
    assert not store.client.exists(session_key(store, idle.sid))
    at(1.2)
    assert redis_face.load(active.sid, 0.1) is not None
    assert store.client.pttl(session_key(store, active.sid)) <= 400  # never slid past the absolute expiry
    at(1.6)
    assert redis_face.load(active.sid, 0.1) is None  # absolute timeout, despite the activity
    assert not store.client.exists(session_key(store, active.sid))


@pytest.mark.redis
def test_p19_redis_read_within_touch_interval_does_not_write(redis_face: Face) -> None:
    store = redis_face.store
    record = make_record(idle=60)
    redis_face.create(record)
    key = session_key(store, record.sid)
    time.sleep(0.25)
    before = store.client.pttl(key)
    loaded = redis_face.load(record.sid, 30)  # 0.25 s since the last slide < 30 s
    after = store.client.pttl(key)
    assert after <= before < 59_800
    assert loaded is not None and loaded.last_seen == pytest.approx(record.created, abs=0.1)

    loaded = redis_face.load(record.sid, 0.1)  # 0.25 s ≥ 0.1 s: slides back to the full idle timeout
    assert store.client.pttl(key) > 59_800
    assert loaded is not None and loaded.last_seen == pytest.approx(time.time(), abs=0.1)

    record.data = {"k": "v"}
    time.sleep(0.2)
    assert redis_face.save(record) is True
    assert store.client.pttl(key) < 59_850  # KEEPTTL: a data write never extends the session
    redis_face.list_user("alice")
    assert store.client.pttl(key) < 59_850  # listing never slides


@pytest.mark.redis
def test_p19_redis_ttl_never_exceeds_the_absolute_expiry(redis_face: Face) -> None:
    store = redis_face.store
    record = make_record(idle=600, absolute=2)
    redis_face.create(record)
    key = session_key(store, record.sid)
    assert 0 < store.client.pttl(key) <= 2000
    redis_face.load(record.sid, 0)
    assert 0 < store.client.pttl(key) <= 2000
    index_ttl = store.client.pttl(index_key(store, "alice"))
    assert 1000 < index_ttl <= 2000  # the user index lives as long as the longest session


@pytest.mark.redis
def test_p19_redis_index_ttl_covers_the_longest_session(redis_face: Face) -> None:
    store = redis_face.store
    redis_face.create(make_record(absolute=7200))
    redis_face.create(make_record(absolute=60))  # a shorter session never shortens the index
    assert store.client.pttl(index_key(store, "alice")) > 7_100_000


# --- Redis key layout: one hash slot per user (Cluster-safe multi-key scripts) -----------------------------------


@pytest.mark.redis
def test_redis_user_keys_share_one_cluster_hash_slot(redis_store: RedisStore) -> None:
    users = ["alice", "bob", "Zoë", "user@example.com", "x" * 300]
    for user in users:
        for _ in range(2):
            run_sync(redis_store.create(make_record(user)))
    keys = [k.decode() for k in redis_store.client.scan_iter(match=redis_store.prefix + "*", count=1000)]
    for user in users:
        tag = user_tag(user)
        mine = [k for k in keys if k.startswith(f"{redis_store.prefix}{{{tag}}}:")]
        assert len([k for k in mine if ":s:" in k]) == 2, (user, mine)
        assert index_key(redis_store, user) in mine
        assert len({key_slot(k.encode()) for k in mine}) == 1
        for key in mine:
            assert user not in key  # the user id never appears in clear in a key


@pytest.mark.redis
def test_redis_session_key_layout(redis_store: RedisStore) -> None:
    record = make_record("alice")
    run_sync(redis_store.create(record))
    key = session_key(redis_store, record.sid)
    assert redis_store.client.exists(key)
    assert redis_store.client.sismember(index_key(redis_store, "alice"), record.sid)


# --- P27: an unreachable or hung store fails closed within a bounded time -----------------------------------------


def _all_operations(face: Face) -> list[Callable[[], Any]]:
    record = make_record()
    return [
        lambda: face.load(record.sid, 0),
        lambda: face.create(record),
        lambda: face.rotate(record.sid, make_record()),
        lambda: face.save(record),
        lambda: face.delete(record.sid, "alice"),
        lambda: face.delete_user("alice"),
        lambda: face.list_user("alice"),
    ]


def test_a_redis_url_option_redis_py_does_not_know_fails_at_start_up_without_its_password() -> None:
    """Found by review: redis-py took the option, then every store call raised a TypeError (a 500 per request)."""
    with pytest.raises(ConfigurationError, match="unknown_kw") as raised:
        RedisStore.from_url("redis://:s3cret@127.0.0.1:6379/0?unknown_kw=1")
    assert "s3cret" not in str(raised.value)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_p27_unreachable_redis_raises_store_unavailable(mode: str) -> None:
    store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0", prefix="test:down:")
    with asyncio.Runner() as runner:
        face = Face(store, runner if mode == "async" else None)
        for operation in _all_operations(face):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as caught:
                operation()
            assert time.monotonic() - started < 1.5
            assert caught.value.status == 503 and caught.value.retry_after == 5
        runner.run(store.async_client.aclose())
    store.client.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_p27_hung_redis_times_out_into_store_unavailable(mode: str) -> None:
    """A server that accepts connections and never answers: the 1 s socket timeout bounds the wait."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    store = RedisStore.from_url(f"redis://127.0.0.1:{port}/0", prefix="test:hung:")
    try:
        with asyncio.Runner() as runner:
            face = Face(store, runner if mode == "async" else None)
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                face.load(make_record().sid, 0)
            assert 0.5 < time.monotonic() - started < 2.5
            runner.run(store.async_client.aclose())
    finally:
        store.client.close()
        listener.close()


@pytest.mark.redis
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_redis_burst_beyond_the_connection_pool_waits_for_a_free_connection(redis_url: str, mode: str) -> None:
    """More concurrent requests than pooled connections is load, not an outage: they should queue for a
    connection (bounded by the timeout), not fail at once with `StoreUnavailable` (a spurious 503)."""
    store = RedisStore.from_url(redis_url, prefix=f"test:{uuid4().hex}:", max_connections=4)
    failures: list[BaseException] = []
    try:
        if mode == "async":

            async def burst() -> None:
                results = await asyncio.gather(
                    *(run_async(store.load(make_record().sid, 0)) for _ in range(40)), return_exceptions=True
                )
                failures.extend(r for r in results if isinstance(r, BaseException))
                await store.async_client.aclose()

            asyncio.run(burst())
        else:
            barrier = threading.Barrier(20)

            def worker() -> None:
                barrier.wait()
                for _ in range(10):
                    try:
                        run_sync(store.load(make_record().sid, 0))
                    except StoreUnavailable as exc:
                        failures.append(exc)

            threads = [threading.Thread(target=worker) for _ in range(20)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
    finally:
        store.client.close()
    assert failures == []


# --- no resurrection under concurrency (real Redis) ---------------------------------------------------------------


@pytest.mark.redis
def test_redis_concurrent_slides_and_saves_never_resurrect_a_deleted_session(redis_url: str) -> None:
    prefix = f"test:{uuid4().hex}:"
    stores = [RedisStore.from_url(redis_url, prefix=prefix) for _ in range(8)]
    record = make_record(idle=60)
    run_sync(stores[0].create(record))
    key = session_key(stores[0], record.sid)
    deleted = threading.Event()
    stop = threading.Event()
    errors: list[BaseException] = []

    def hammer(store: RedisStore) -> None:
        try:
            while not stop.is_set():
                loaded = run_sync(store.load(record.sid, 0))  # touch interval 0: every read slides
                if loaded is not None:
                    loaded.data = {"n": random.random()}
                    run_sync(store.save(loaded))
                elif deleted.is_set():
                    # one more round after the delete: still nothing comes back
                    run_sync(store.save(record))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(s,)) for s in stores[1:]]
    try:
        for thread in threads:
            thread.start()
        time.sleep(0.2)
        assert run_sync(stores[0].delete(record.sid, "alice")) is True
        deleted.set()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert not stores[0].client.exists(key)
            time.sleep(0.02)
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
        for store in stores:
            store.client.close()
        purge(redis_url, prefix)
    assert errors == []
    assert not stores[0].client.exists(key)


@pytest.mark.redis
def test_redis_async_concurrent_slides_never_resurrect(redis_store: RedisStore) -> None:
    record = make_record(idle=60)
    run_sync(redis_store.create(record))
    key = session_key(redis_store, record.sid)

    async def main() -> None:
        async def slide() -> None:
            for _ in range(20):
                loaded = await run_async(redis_store.load(record.sid, 0))
                if loaded is not None:
                    loaded.data = {"n": 1}
                    await run_async(redis_store.save(loaded))
                await asyncio.sleep(0)

        async def logout() -> None:
            await asyncio.sleep(0.01)
            assert await run_async(redis_store.delete(record.sid, "alice")) is True

        await asyncio.gather(*(slide() for _ in range(20)), logout())
        await redis_store.async_client.aclose()

    asyncio.run(main())
    for _ in range(10):
        assert not redis_store.client.exists(key)
        time.sleep(0.02)


# --- MemoryStore: bounded and thread-safe -------------------------------------------------------------------------


def test_memory_store_is_bounded() -> None:
    store = MemoryStore(max_sessions=5)
    records = [make_record(f"user{i % 3}") for i in range(12)]
    for record in records:
        run_sync(store.create(record))
    assert len(store._sessions) == 5
    assert all(run_sync(store.load(r.sid, NEVER)) is not None for r in records[-5:])  # the newest survive
    assert all(run_sync(store.load(r.sid, NEVER)) is None for r in records[:7])
    indexed = {sid for sids in store._users.values() for sid in sids}
    assert indexed == {r.sid for r in records[-5:]}  # evicted sessions left no index entries behind


def test_memory_store_purges_expired_sessions_before_evicting_live_ones() -> None:
    clock = FakeClock()
    store = MemoryStore(max_sessions=3, clock=clock)
    short = make_record(now=clock.now, idle=10)
    live = [make_record(now=clock.now, idle=1000) for _ in range(2)]
    for record in [short, *live]:
        run_sync(store.create(record))
    clock.advance(20)
    newest = make_record(now=clock.now, idle=1000)
    run_sync(store.create(newest))
    assert run_sync(store.load(short.sid, NEVER)) is None
    assert all(run_sync(store.load(r.sid, NEVER)) is not None for r in [*live, newest])


def test_memory_store_is_thread_safe() -> None:
    store = MemoryStore(max_sessions=200)
    users = [f"user{i}" for i in range(5)]
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        mine: list[SessionRecord] = []
        try:
            for _ in range(400):
                op = rng.random()
                if op < 0.35 or not mine:
                    record = make_record(rng.choice(users), idle=60)
                    run_sync(store.create(record))
                    mine.append(record)
                elif op < 0.6:
                    run_sync(store.load(rng.choice(mine).sid, 0))
                elif op < 0.7:
                    old = mine.pop(rng.randrange(len(mine)))
                    new = make_record(old.user_id)
                    if run_sync(store.rotate(old.sid, new)):
                        mine.append(new)
                elif op < 0.8:
                    victim = mine.pop(rng.randrange(len(mine)))
                    run_sync(store.delete(victim.sid, victim.user_id))
                elif op < 0.9:
                    run_sync(store.list_user(rng.choice(users)))
                elif op < 0.95:
                    record = rng.choice(mine)
                    record.data = {"n": rng.random()}
                    run_sync(store.save(record))
                else:
                    run_sync(store.delete_user(rng.choice(users)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert len(store._sessions) <= 200
    # the user index and the records agree exactly
    indexed = {sid for sids in store._users.values() for sid in sids}
    assert indexed == set(store._sessions)
    for user in users:
        listed = {r.sid for r in run_sync(store.list_user(user))}
        assert listed == store._users.get(user, set())
    for user in users:
        run_sync(store.delete_user(user))
    assert store._sessions == {} and store._users == {}


def test_memory_store_copies_every_field_of_a_record() -> None:
    # MemoryStore copies records field by field (for speed): a field added later must not be dropped.
    store = MemoryStore()
    now = time.time()
    values = {f.name: getattr(_FULL, f.name) for f in dataclasses.fields(SessionRecord)}
    record = SessionRecord(**values)
    assert {f.name for f in dataclasses.fields(SessionRecord)} == set(values)
    run_sync(store.create(record))
    loaded = run_sync(store.load(record.sid, 3600))
    assert loaded is not None
    for f in dataclasses.fields(SessionRecord):
        if f.name != "last_seen":
            assert getattr(loaded, f.name) == getattr(record, f.name), f.name
    assert loaded.data is not record.data
    assert loaded.last_seen >= now - 1


_NOW = time.time()
_FULL = SessionRecord(
    sid=f"{user_tag('alice')}.{'x' * 43}",
    user_id="alice",
    scopes=("a", "b"),
    created=_NOW - 5,
    auth_time=_NOW - 4,
    absolute_expiry=_NOW + 3600,
    idle_timeout=900.0,
    last_seen=_NOW - 3,
    user_agent="ua",
    ip="127.0.0.1",
    remember=True,
    data={"k": [1, 2]},
)


def test_the_memory_store_counts_its_revocation_writes_after_making_them() -> None:
    store = MemoryStore()
    assert store.revocations == 0
    run_sync(store.revoke_jti("alice", "k1", time.time() + 60))
    assert store.revocations == 1 and run_sync(store.token_state("alice", "k1")) == (None, True)
    run_sync(store.revoke_tokens("alice", time.time(), 60))
    assert store.revocations == 2
    run_sync(store.revoke_user("bob", time.time(), 60))
    assert store.revocations == 3
    run_sync(store.token_state("alice", "k2"))
    assert store.revocations == 3  # reads change nothing


def test_the_memory_stores_revocation_maps_count_every_kind_of_write() -> None:
    store = MemoryStore()
    store._denied[("alice", "k")] = 1.0
    store._denied.update({("bob", "k"): 1.0})
    store._not_before.setdefault("carol", (1.0, 2.0))
    store._not_before |= {"dave": (1.0, 2.0)}
    assert store.revocations == 4
    store._denied.pop(("alice", "k"))  # removals let through only what was let through already: not counted
    assert store.revocations == 4
    run_sync(store.revoke_jti("erin", "k", time.time() + 60))  # and the pruning rebuild keeps counting
    store.max_sessions = 1
    run_sync(store.revoke_jti("frank", "k", time.time() + 60))
    run_sync(store.revoke_jti("grace", "k", time.time() + 60))
    assert store.revocations == 7
