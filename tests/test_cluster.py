"""Scale-out (Issue 6): `RedisStore` unchanged on a real 3-master Redis Cluster and through Sentinel, on both faces.

The tests start their own servers on free loopback ports: three ``redis-server --cluster-enabled yes`` joined by
``redis-cli --cluster create``, and one master watched by one ``redis-server --sentinel``. They run the whole store
protocol (sessions, token revocation, refresh tokens), with users whose hash tags land on different masters,
logout-everywhere (also while the user's slot is being resharded), the invalidation channel that keeps per-process
caches honest, and a whole cluster down (503, never 500); the record sizes behind docs/REDIS.md are measured here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from redis.crc import key_slot
from tests.conftest import RedisProcess, free_port, require_binary

from authmw import AuthConfig, InvalidToken, JWTSettings, Policy
from authmw.engine import Authenticator
from authmw.io import run_async, run_sync
from authmw.request import WSGIRequestView
from authmw.sessions import SessionSettings, SessionState
from authmw.stores import RedisStore, RefreshRecord, SessionRecord, StoreUnavailable, user_tag
from authmw.stores.localcache import LocalCache

pytestmark = pytest.mark.slow

TIMEOUT = 1.0  # the socket timeout every store client gets (what RedisStore.from_url uses)


# ---- servers --------------------------------------------------------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


class Processes:
    """redis-server processes of one fixture (`tests.conftest.RedisProcess`); all killed (and reaped) by `kill_all`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.running: dict[int, RedisProcess] = {}

    def start(self, port: int, *args: str, config: Path | None = None) -> None:
        self.running[port] = RedisProcess(self.directory, port=port, args=args, config=config)
        self.running[port].start()

    def kill(self, port: int) -> None:
        self.running.pop(port).kill()

    def kill_all(self) -> None:
        for port in list(self.running):
            self.kill(port)


def _wait(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(interval)


def _cluster_ok(port: int) -> bool:
    with contextlib.closing(redis.Redis(port=port, socket_timeout=1, decode_responses=True)) as client:
        info = client.execute_command("CLUSTER INFO")
    state = info.get("cluster_state") if isinstance(info, dict) else None  # redis-py parses the reply
    if state is None:
        state = dict(line.split(":", 1) for line in str(info).split() if ":" in line).get("cluster_state")
    return state == "ok"


@dataclass
class Cluster:
    ports: list[int]
    processes: Processes

    def node_of(self, key: str) -> int:
        """The port of the master serving `key`'s slot (asked of the cluster, not assumed)."""
        slot = key_slot(key.encode())
        with contextlib.closing(redis.Redis(port=self.ports[0], socket_timeout=1)) as client:
            for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
        raise LookupError(f"slot {slot} is not served")

    def sync_client(self, socket_timeout: float | None = TIMEOUT) -> redis.cluster.RedisCluster:
        return redis.cluster.RedisCluster(
            host="127.0.0.1", port=self.ports[0], socket_timeout=socket_timeout, socket_connect_timeout=TIMEOUT
        )

    def async_client(self) -> redis.asyncio.cluster.RedisCluster:
        return redis.asyncio.cluster.RedisCluster(
            host="127.0.0.1", port=self.ports[1], socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT
        )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three masters on free ports (explicit cluster-bus ports: port + 10000 may be taken or past 65535)."""
    directory = tmp_path_factory.mktemp("cluster")
    ports = _free_ports(6)
    processes = Processes(directory)
    try:
        for port, bus in zip(ports[:3], ports[3:], strict=True):
            processes.start(
                port,
                *(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    str(bus),
                    "--cluster-config-file",
                    f"nodes-{port}.conf",
                ),
                *("--cluster-node-timeout", "2000"),
            )
        nodes = [f"127.0.0.1:{port}" for port in ports[:3]]
        cli = require_binary("redis-cli")
        create = [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"]
        done = subprocess.run(create, capture_output=True, timeout=30, check=False)
        assert done.returncode == 0, done.stdout.decode(errors="replace")[-2000:]
        _wait(lambda: all(_cluster_ok(port) for port in ports[:3]), 15, "cluster_state:ok on every node")
        yield Cluster(ports[:3], processes)
    finally:
        processes.kill_all()


@dataclass
class SentinelSetup:
    master_port: int
    sentinel_port: int

    def sync_client(self, socket_timeout: float | None = TIMEOUT) -> redis.Redis:
        sentinel = redis.sentinel.Sentinel([("127.0.0.1", self.sentinel_port)], socket_timeout=TIMEOUT)
        return sentinel.master_for("m", socket_timeout=socket_timeout, socket_connect_timeout=TIMEOUT)

    def async_client(self) -> redis.asyncio.Redis:
        sentinel = redis.asyncio.sentinel.Sentinel([("127.0.0.1", self.sentinel_port)], socket_timeout=TIMEOUT)
        return sentinel.master_for("m", socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSetup]:
    directory = tmp_path_factory.mktemp("sentinel")
    master, watcher = _free_ports(2)
    processes = Processes(directory)
    config = directory / "sentinel.conf"  # Sentinel rewrites its config file: it must be its own, writable
    config.write_text(f"sentinel monitor m 127.0.0.1 {master} 1\nsentinel down-after-milliseconds m 2000\n")
    try:
        processes.start(master)
        processes.start(watcher, "--sentinel", config=config)

        def knows_master() -> bool:
            with contextlib.closing(redis.Redis(port=watcher, socket_timeout=1)) as client:
                address = client.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", "m")
            return address is not None and int(address[1]) == master

        _wait(knows_master, 10, "the sentinel knows the master")
        yield SentinelSetup(master, watcher)
    finally:
        processes.kill_all()


# ---- stores and faces -----------------------------------------------------------------------------------------------


class Face:
    """The store protocol as plain calls: each operation's flow driven by `run_sync`, or by `run_async` on one event
    loop."""

    def __init__(self, store: RedisStore, runner: asyncio.Runner | None) -> None:
        self.store = store
        self.runner = runner

    def __getattr__(self, name: str) -> Callable[..., Any]:
        operation = getattr(self.store, name)
        runner = self.runner
        if runner is None:
            return lambda *args: run_sync(operation(*args))
        return lambda *args: runner.run(run_async(operation(*args)))


def _purge(client: Any, prefix: str) -> None:
    for key in list(client.scan_iter(match=prefix + "*", count=1000)):
        client.delete(key)  # one key at a time: a Cluster refuses a multi-key DEL across slots


@pytest.fixture(params=["cluster", "sentinel"])
def backend(request: pytest.FixtureRequest) -> Cluster | SentinelSetup:
    setup: Cluster | SentinelSetup = request.getfixturevalue(request.param)
    return setup


@pytest.fixture(params=["sync", "async"])
def face(request: pytest.FixtureRequest, backend: Cluster | SentinelSetup) -> Iterator[Face]:
    prefix = f"t:{uuid4().hex[:8]}:"
    sync_client, async_client = backend.sync_client(), backend.async_client()
    store = RedisStore(sync_client, async_client, prefix=prefix)
    try:
        if request.param == "sync":
            yield Face(store, None)
        else:
            with asyncio.Runner() as runner:
                try:
                    yield Face(store, runner)
                finally:
                    runner.run(async_client.aclose())
    finally:
        _purge(sync_client, prefix)
        sync_client.close()


def _users(backend: Cluster | SentinelSetup) -> list[str]:
    """Three users; on the Cluster, one whose keys live on each master."""
    if isinstance(backend, SentinelSetup):
        return ["alice", "bob", "carol"]
    by_node: dict[int, str] = {}
    for i in range(1000):
        user = f"user-{i}@example.com"
        by_node.setdefault(backend.node_of("{" + user_tag(user) + "}"), user)
        if len(by_node) == len(backend.ports):
            return [by_node[port] for port in backend.ports]
    raise AssertionError("no users found on every master")


def make_record(user: str, *, absolute: float = 3600.0, data: dict[str, Any] | None = None) -> SessionRecord:
    now = time.time()
    return SessionRecord(
        sid=f"{user_tag(user)}.{secrets.token_urlsafe(32)}",
        user_id=user,
        scopes=("items:read", "items:write"),
        created=now,
        auth_time=now,
        absolute_expiry=now + absolute,
        idle_timeout=1800.0,
        last_seen=now,
        user_agent="Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
        ip="203.0.113.7",
        data=dict(data or {}),
    )


def make_refresh(user: str, family: str, session: SessionRecord | None = None) -> RefreshRecord:
    return RefreshRecord(
        token_hash=secrets.token_hex(32),
        user_id=user,
        family=family,
        scopes=("items:read",),
        expires=time.time() + 600,
        session_sid=session.sid if session is not None else None,
        auth_time=time.time(),
    )


# ---- the Cluster itself -------------------------------------------------------------------------------------------


def test_cluster_has_three_masters_and_each_user_lives_on_one_of_them(cluster: Cluster) -> None:
    users = _users(cluster)
    prefix = f"spread:{uuid4().hex[:8]}:"
    client = cluster.sync_client()
    store = RedisStore(client, prefix=prefix)
    try:
        for user in users:
            session = make_record(user)
            run_sync(store.create(session))
            run_sync(store.revoke_jti(user, "jti-1", time.time() + 60))
            run_sync(store.revoke_tokens(user, time.time() - 10, 60))
            run_sync(store.refresh_create(make_refresh(user, "fam-1", session), time.time() + 600, True))
        seen: dict[int, set[int]] = collections.defaultdict(set)
        for port in cluster.ports:
            with contextlib.closing(redis.Redis(port=port, socket_timeout=1)) as node:
                for key in node.scan_iter(match=prefix + "*"):
                    seen[port].add(key_slot(key))
        # Each master holds exactly one user's keys, and all of a user's keys (session, index, denylist,
        # not-before, refresh token, family, family index) share that user's one slot.
        assert sorted(len(slots) for slots in seen.values()) == [1, 1, 1], dict(seen)
        assert {cluster.node_of(store._user_key(user, "u")) for user in users} == set(cluster.ports)
        for user in users:
            owner = cluster.node_of(store._user_key(user, "u"))
            assert seen[owner] == {key_slot(store._user_key(user, "u").encode())}
    finally:
        _purge(client, prefix)
        client.close()


# ---- the whole protocol, on the Cluster and through Sentinel, sync and async -----------------------------------


def test_session_protocol(face: Face, backend: Cluster | SentinelSetup) -> None:
    users = _users(backend)
    records = {user: [make_record(user, data={"n": i}) for i in range(2)] for user in users}
    for user, (first, second) in records.items():
        face.create(first)
        face.create(second)
        loaded = face.load(first.sid, 0.0)  # touch interval 0: this read also slides the idle TTL
        assert loaded is not None
        assert (loaded.user_id, loaded.scopes, loaded.data, loaded.ip) == (user, first.scopes, {"n": 0}, first.ip)
        assert sorted(r.sid for r in face.list_user(user)) == sorted((first.sid, second.sid))
        # rotate: the old id is gone, the new one carries on
        rotated = make_record(user, data={"n": 9})
        assert face.rotate(first.sid, rotated) is True
        assert face.load(first.sid, 60.0) is None
        assert face.rotate(first.sid, make_record(user)) is False  # never resurrects
        assert sorted(r.sid for r in face.list_user(user)) == sorted((rotated.sid, second.sid))
        # save: only while the record exists
        rotated.data = {"cart": [1, 2]}
        assert face.save(rotated) is True
        reloaded = face.load(rotated.sid, 60.0)
        assert reloaded is not None and reloaded.data == {"cart": [1, 2]}
        # delete one, then every other
        assert face.delete(rotated.sid, user) is True
        assert face.delete(rotated.sid, user) is False
        assert face.save(rotated) is False
        assert [r.sid for r in face.list_user(user)] == [second.sid]
    first_user, *others = users
    assert face.delete_user(first_user) == 1
    assert face.list_user(first_user) == []
    assert face.load(records[first_user][1].sid, 60.0) is None
    for user in others:  # other users, on other masters, untouched
        assert [r.sid for r in face.list_user(user)] == [records[user][1].sid]
        assert face.delete_user(user) == 1


def test_token_protocol(face: Face, backend: Cluster | SentinelSetup) -> None:
    for user in _users(backend):
        assert face.token_state(user, "jti-a") == (None, False)
        face.revoke_jti(user, "jti-a", time.time() + 60)
        assert face.token_state(user, "jti-a") == (None, True)
        assert face.token_state(user, "jti-b") == (None, False)
        assert face.token_state(user, None) == (None, False)
        # refresh tokens: rotation, reuse revokes the family, a revoked family takes no new member
        first = make_refresh(user, "fam-1")
        assert face.refresh_create(first, time.time() + 900, True) is True
        outcome, record = face.refresh_use(user_tag(user), first.token_hash, time.time(), 0.0)
        assert outcome == "ok" and record is not None and record.user_id == user and record.family == "fam-1"
        second = make_refresh(user, "fam-1")
        assert face.refresh_create(second, time.time() + 900, False) is True
        assert face.refresh_use(user_tag(user), first.token_hash, time.time(), 0.0)[0] == "reuse"
        assert face.refresh_use(user_tag(user), second.token_hash, time.time(), 0.0)[0] == "revoked"
        assert face.refresh_create(make_refresh(user, "fam-1"), time.time() + 900, False) is False
        assert face.refresh_use(user_tag(user), secrets.token_hex(32), time.time(), 0.0) == ("invalid", None)
        # a refresh token bound to a session dies with it
        session = make_record(user)
        face.create(session)
        bound = make_refresh(user, "fam-2", session)
        assert face.refresh_create(bound, time.time() + 900, True) is True
        assert face.delete(session.sid, user) is True
        assert face.refresh_use(user_tag(user), bound.token_hash, time.time(), 0.0)[0] == "revoked"
        # revoke_tokens: refresh families and earlier access tokens, sessions kept
        kept = make_record(user)
        face.create(kept)
        third = make_refresh(user, "fam-3")
        assert face.refresh_create(third, time.time() + 900, True) is True
        cutoff = time.time()
        face.revoke_tokens(user, cutoff, 60)
        not_before, denied = face.token_state(user, "jti-a")
        assert not_before == pytest.approx(cutoff) and denied is True
        assert face.refresh_use(user_tag(user), third.token_hash, time.time(), 0.0)[0] == "revoked"
        assert face.load(kept.sid, 60.0) is not None
        face.revoke_tokens(user, cutoff - 100, 60)  # a not-before never moves back
        assert face.token_state(user, None)[0] == pytest.approx(cutoff)


def test_logout_everywhere(face: Face, backend: Cluster | SentinelSetup) -> None:
    target, *others = _users(backend)
    sessions = [make_record(target) for _ in range(3)]
    for session in sessions:
        face.create(session)
    refresh = make_refresh(target, "fam-x")
    assert face.refresh_create(refresh, time.time() + 900, True) is True
    bystanders = {user: make_record(user) for user in others}
    for session in bystanders.values():
        face.create(session)
    other_refresh = make_refresh(others[0], "fam-y")
    assert face.refresh_create(other_refresh, time.time() + 900, True) is True
    cutoff = time.time()
    assert face.revoke_user(target, cutoff, 60) == 3
    assert all(face.load(s.sid, 60.0) is None for s in sessions)
    assert face.list_user(target) == []
    assert face.refresh_use(user_tag(target), refresh.token_hash, time.time(), 0.0)[0] == "revoked"
    assert face.token_state(target, None)[0] == pytest.approx(cutoff)
    assert face.revoke_user(target, cutoff, 60) == 0
    for user, session in bystanders.items():  # nobody else, on any master, was touched
        assert face.load(session.sid, 60.0) is not None
        assert face.token_state(user, None) == (None, False)
    assert face.refresh_use(user_tag(others[0]), other_refresh.token_hash, time.time(), 0.0)[0] == "ok"


# ---- the invalidation channel: every process's local cache hears every write ------------------------------------


def test_invalidation_channel_reaches_a_local_cache_on_another_client(backend: Cluster | SentinelSetup) -> None:
    prefix = f"inv:{uuid4().hex[:8]}:"
    channel = f"{prefix}invalidate"
    # The listener's own connection has no read timeout (it pings); on the Cluster it may sit on any master.
    cache = LocalCache(lambda: backend.sync_client(socket_timeout=None), channel)
    reader = RedisStore(backend.sync_client(), prefix=prefix, local_cache=cache)
    writer = RedisStore(backend.sync_client(), backend.async_client(), prefix=prefix)
    users = _users(backend)
    try:
        cache.ensure_listening()
        _wait(lambda: cache.healthy, 5, "the invalidation channel is up")
        with asyncio.Runner() as runner:
            try:
                for user in users:
                    session = make_record(user)
                    run_sync(writer.create(session))
                    assert run_sync(reader.load(session.sid, 60.0)) is not None
                    assert session.sid in cache._sessions  # cached: the next read costs no round trip
                    run_sync(writer.delete(session.sid, user))
                    _wait(lambda s=session: s.sid not in cache._sessions, 2, f"{user}'s logout seen", 0.005)
                    assert run_sync(reader.load(session.sid, 60.0)) is None
                    # logout-everywhere from the asyncio face, and a token revocation, reach the cache as well
                    again = make_record(user)
                    run_sync(writer.create(again))
                    assert run_sync(reader.load(again.sid, 60.0)) is not None
                    assert run_sync(reader.token_state(user, "jti-z")) == (None, False)
                    assert (user, "jti-z", None) in cache._token_states
                    assert runner.run(run_async(writer.revoke_user(user, time.time(), 60))) == 1
                    _wait(lambda s=again: s.sid not in cache._sessions, 2, f"{user}'s logout-everywhere seen", 0.005)
                    assert run_sync(reader.load(again.sid, 60.0)) is None
                    assert run_sync(reader.token_state(user, "jti-z"))[0] is not None
                    run_sync(writer.revoke_jti(user, "jti-z", time.time() + 60))
                    _wait(
                        lambda u=user: run_sync(reader.token_state(u, "jti-z"))[1],
                        2,
                        f"{user}'s jti revocation seen",
                        0.005,
                    )
            finally:
                runner.run(writer.async_client.aclose())
        assert cache.healthy
    finally:
        cache.close()
        _purge(writer.client, prefix)
        reader.client.close()
        writer.client.close()


# ---- masked ids (issue 3) and family-bound access tokens (issue 4), end to end through the middleware's flows ------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_masked_ids_leave_each_users_keys_in_one_slot_through_login_tokens_refresh_and_logouts(
    cluster: Cluster, mode: str
) -> None:
    """Cookies and refresh tokens show a masked tag, but inside nothing changed: every key of a user (sessions,
    index, refresh tokens, families, the families of each session) shares the user's slot, so login, token issue,
    refresh, a logout (which now also revokes the session's families, with their keys declared) and logout-everywhere
    run as single-slot scripts on the master that serves it; a cross-slot script would be refused (CROSSSLOT)."""
    prefix = f"mask:{uuid4().hex[:8]}:"
    store = RedisStore(cluster.sync_client(), cluster.async_client(), prefix=prefix)
    settings = SessionSettings(secret_keys=["cluster-test-session-key-" + "c" * 30], store=store, cookie_secure=False)
    auth = Authenticator(AuthConfig(jwt=JWTSettings(algorithms=["HS256"], keys="j" * 40), sessions=settings))
    assert auth.sessions is not None and auth.tokens is not None
    sessions, tokens = auth.sessions, auth.tokens
    users = _users(cluster)
    with contextlib.ExitStack() as stack:
        runner = stack.enter_context(asyncio.Runner()) if mode == "async" else None

        def run(flow: Any) -> Any:
            return run_sync(flow) if runner is None else runner.run(run_async(flow))

        def accepted(access: str) -> bool:
            view = WSGIRequestView(
                {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_AUTHORIZATION": f"Bearer {access}"}
            )
            try:
                return run(auth.flow(view, Policy.jwt())) is not None
            except InvalidToken:
                return False

        try:
            for user in users:
                laptop, phone = (SessionState(sessions, WSGIRequestView({"REQUEST_METHOD": "POST"})) for _ in range(2))
                for state in (laptop, phone):
                    run(sessions.login(state, user, ["items:read"]))
                pairs = {}
                for name, state in (("laptop", laptop), ("phone", phone)):
                    assert state.record is not None
                    principal = sessions.principal_of(state.record)
                    pairs[name] = run(tokens.issue_for_session(principal, state.record.sid))
                renewed = run(tokens.refresh(json.dumps({"refresh_token": pairs["laptop"]["refresh_token"]}).encode()))
                public = [s.set_cookie.split(";")[0].partition("=")[2][:4] for s in (laptop, phone) if s.set_cookie]
                public += [pair["refresh_token"][:4] for pair in (*pairs.values(), renewed)]
                assert len(public) == 5 and public != [user_tag(user)] * 5  # masked: not the tag, not all alike
                assert all(accepted(pair["access_token"]) for pair in (*pairs.values(), renewed))
                slots = set()
                for port in cluster.ports:
                    with contextlib.closing(redis.Redis(port=port, socket_timeout=1)) as node:
                        slots |= {key_slot(key) for key in node.scan_iter(match=f"{prefix}{{{user_tag(user)}}}*")}
                assert slots == {key_slot(f"{{{user_tag(user)}}}".encode())}
                assert run(sessions.logout(laptop)) is True  # its families revoked with it
                assert not accepted(renewed["access_token"]) and accepted(pairs["phone"]["access_token"])
                time.sleep(0.002)  # the phone's token is minted strictly before the not-before
                assert run(sessions.logout_everywhere(phone)) == 1
                assert not accepted(pairs["phone"]["access_token"])
            for port in cluster.ports:  # nothing of any user left outside that user's own slot
                with contextlib.closing(redis.Redis(port=port, socket_timeout=1)) as node:
                    owned = {key_slot(f"{{{user_tag(user)}}}".encode()) for user in users}
                    assert {key_slot(key) for key in node.scan_iter(match=f"{prefix}*")} <= owned
        finally:
            if runner is not None:
                runner.run(store.async_client.aclose())
            _purge(store.client, prefix)
            store.client.close()


# ---- what does not hold on a Cluster today --------------------------------------------------------------------------


def test_whole_cluster_down_fails_closed(tmp_path: Path) -> None:
    port, bus = _free_ports(2)
    processes = Processes(tmp_path)
    try:
        processes.start(port, "--cluster-enabled", "yes", "--cluster-port", str(bus), "--cluster-node-timeout", "2000")
        with contextlib.closing(redis.Redis(port=port, socket_timeout=1)) as admin:
            admin.execute_command("CLUSTER ADDSLOTSRANGE", 0, 16383)  # a one-master cluster
        _wait(lambda: _cluster_ok(port), 10, "cluster_state:ok")
        client = redis.cluster.RedisCluster(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1)
        store = RedisStore(client, prefix="down:")
        session = make_record("alice")
        run_sync(store.create(session))
        assert run_sync(store.load(session.sid, 60.0)) is not None
        processes.kill(port)
        failures: list[str] = []
        for name, call in (
            ("load", lambda: run_sync(store.load(session.sid, 60.0))),
            ("token_state", lambda: run_sync(store.token_state("alice", "j"))),
            ("revoke_user", lambda: run_sync(store.revoke_user("alice", time.time(), 60))),
        ):
            started = time.monotonic()
            try:
                call()
                failures.append(f"{name}: answered with the cluster down")
            except StoreUnavailable:
                pass
            except Exception as exc:  # what the app would turn into a 500
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
            assert time.monotonic() - started < 5
        assert failures == []
    finally:
        processes.kill_all()


def test_logout_everywhere_during_resharding_ends_every_session(cluster: Cluster) -> None:
    prefix = f"reshard:{uuid4().hex[:8]}:"
    client = cluster.sync_client()
    store = RedisStore(client, prefix=prefix)
    user = "resharded@example.com"
    slot = key_slot(store._user_key(user, "u").encode())
    source = cluster.node_of(store._user_key(user, "u"))
    target = next(port for port in cluster.ports if port != source)
    nodes = {port: redis.Redis(port=port, socket_timeout=5) for port in cluster.ports}
    ids = {port: nodes[port].execute_command("CLUSTER MYID") for port in cluster.ports}
    try:
        run_sync(store.revoke_tokens(user, time.time() - 100, 600))  # the user has a not-before and a refresh family
        assert run_sync(store.refresh_create(make_refresh(user, "fam-r"), time.time() + 900, True))
        sessions = [make_record(user) for _ in range(2)]
        for session in sessions:
            run_sync(store.create(session))
        # A resharding step caught halfway, as `redis-cli --cluster reshard` does it: the slot is MIGRATING on
        # the source and IMPORTING on the target, and the keys the script declares have moved already.
        nodes[target].execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[source])
        nodes[source].execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[target])
        for key in (store._user_key(user, "u"), store._user_key(user, "fams"), store._user_key(user, "nbf")):
            nodes[source].execute_command("MIGRATE", "127.0.0.1", target, key, 0, 5000)
        try:
            ended = run_sync(store.revoke_user(user, time.time(), 600))
        except StoreUnavailable:
            ended = -1  # refused (fail closed) would be acceptable; then the sessions must still be checked
        alive = [s.sid for s in sessions if run_sync(store.load(s.sid, 60.0)) is not None]
        # Ended (2, nothing alive), or refused as a whole (fail closed: 503, nothing ended) would both be right.
        assert (ended, alive) in ((2, []), (-1, [s.sid for s in sessions])), (
            f"logout-everywhere answered {ended} and left {len(alive)} of 2 sessions alive"
        )
    finally:
        # Finish the resharding so the module's cluster stays whole: move what is left, then hand the slot over.
        for key in nodes[source].execute_command("CLUSTER GETKEYSINSLOT", slot, 1000):
            nodes[source].execute_command("MIGRATE", "127.0.0.1", target, key, 0, 5000)
        for port in cluster.ports:
            nodes[port].execute_command("CLUSTER SETSLOT", slot, "NODE", ids[target])
        _wait(lambda: all(_cluster_ok(port) for port in cluster.ports), 10, "cluster_state:ok after resharding")
        _purge(client, prefix)
        client.close()
        for node in nodes.values():
            node.close()


# ---- sizing: what one session costs in Redis (the numbers behind docs/REDIS.md) -------------------------------


def test_sizing_bytes_per_session(
    sentinel: SentinelSetup, cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = "authmw:"  # the default prefix: key names as long as in production
    admin = redis.Redis(port=sentinel.master_port, socket_timeout=10)
    store = RedisStore(sentinel.sync_client(), prefix=prefix)
    count = 2000
    try:
        admin.flushall()
        before = int(admin.info("memory")["used_memory"])
        sessions = [make_record(f"user-{i:06d}@example.com") for i in range(count)]  # one session per user
        for session in sessions:
            run_sync(store.create(session))
        per_user_session = (int(admin.info("memory")["used_memory"]) - before) / count
        session_key = store._session_key(sessions[0].sid)
        session_bytes = int(admin.memory_usage(session_key, samples=0) or 0)
        index_bytes = int(admin.memory_usage(store._user_key(sessions[0].user_id, "u"), samples=0) or 0)
        value_bytes = len(admin.get(session_key) or b"")
        admin.flushall()
        before = int(admin.info("memory")["used_memory"])
        for _ in range(count):  # many sessions of one user: the index set grows instead
            run_sync(store.create(make_record("busy@example.com")))
        per_extra_session = (int(admin.info("memory")["used_memory"]) - before) / count
        admin.flushall()
        before = int(admin.info("memory")["used_memory"])
        for i in range(count):  # one access-token revocation per user
            run_sync(store.revoke_jti(f"user-{i:06d}@example.com", secrets.token_hex(16), time.time() + 300))
        per_jti = (int(admin.info("memory")["used_memory"]) - before) / count
        admin.flushall()
        before = int(admin.info("memory")["used_memory"])
        for i in range(count):  # one refresh token (a new family) per user
            run_sync(
                store.refresh_create(make_refresh(f"user-{i:06d}@example.com", uuid4().hex), time.time() + 900, True)
            )
        per_refresh = (int(admin.info("memory")["used_memory"]) - before) / count
        cluster_store = RedisStore(cluster.sync_client(), prefix=prefix)
        run_sync(cluster_store.create(sessions[0]))
        owner = redis.Redis(port=cluster.node_of(session_key), socket_timeout=1)
        cluster_session_bytes = int(owner.memory_usage(session_key, samples=0) or 0)
        owner.delete(session_key, store._user_key(sessions[0].user_id, "u"))
        owner.close()
        cluster_store.client.close()
    finally:
        admin.flushall()
        admin.close()
        store.client.close()
    with capsys.disabled():
        print(
            f"\n[sizing] stored value {value_bytes} B; MEMORY USAGE session key {session_bytes} B "
            f"(cluster node {cluster_session_bytes} B), index set with one member {index_bytes} B; used_memory per "
            f"session incl. its own user index {per_user_session:.0f} B; per extra session of one user "
            f"{per_extra_session:.0f} B; per denied jti {per_jti:.0f} B; per refresh token in a new family "
            f"{per_refresh:.0f} B"
        )
    assert 200 < value_bytes < 600  # the float times vary in length
    assert session_bytes < 1024 and per_user_session < 1536 and per_extra_session < 1024
    assert per_jti < 512 and per_refresh < 2048
