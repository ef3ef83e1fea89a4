"""`RedisStore`: sessions, revocations and refresh tokens in Redis, through redis-py (sync and/or asyncio clients).

A session's key's TTL *is* its idle timeout, slid at most once per `touch_interval` (no write on most reads) and
never beyond the absolute expiry. Every write that could race a logout is conditional, so a request in flight can
never resurrect a deleted session.

Keys: ``<prefix>{<tag>}:s:<random>`` per session and ``<prefix>{<tag>}:u:<user hash>`` per user index, where
``<tag>`` is a short hash of the user id carried in the session id: one user's records share a hash slot, so a Redis
Cluster can run the multi-key scripts (logout everywhere, rotation) atomically. Stores see only these internal ids;
what leaves the server shows the tag masked (`authmw.masking`).

Each operation is a flow that yields `authmw.io.Command`s (one per round trip), with the local cache's part in it,
written once for both clients. The Lua scripts are the ``lua/*.lua`` files beside this module: Lua, read as Lua,
loaded once at import.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Self

from authmw.errors import ConfigurationError
from authmw.io import MISS, Command, Flow, Miss, Script
from authmw.stores.base import RefreshOutcome, RefreshRecord, SessionRecord, StoreUnavailable, user_hash, user_tag
from authmw.stores.localcache import LocalCache

__all__ = ["RedisStore", "script"]

log = logging.getLogger("authmw")


@functools.cache
def script(name: str) -> Script:
    """The Lua script ``lua/<name>.lua`` of this package, read once."""
    source = importlib.resources.files(__package__).joinpath("lua", f"{name}.lua").read_text("utf-8")
    return Script(name, source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())


_LOAD, _CREATE, _ROTATE = script("load"), script("create"), script("rotate")
_MEMBERS, _END_USER, _DELETE = script("members"), script("end_user"), script("delete")
_REFRESH_CREATE, _REFRESH_USE = script("refresh_create"), script("refresh_use")

_OUTCOMES: dict[str, RefreshOutcome] = {"ok": "ok", "grace": "grace", "reuse": "reuse", "revoked": "revoked"}
_NO_TOUCH = 10.0**9  # a touch interval that never slides the TTL (read-only listing)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _sorted_text(reply: Any) -> list[str]:
    return sorted(_text(member) for member in reply)


def _true(reply: Any) -> bool:
    return bool(reply)


def _nothing(reply: Any) -> None:
    return None


class _Link:
    """What every `RedisStore` operation runs on (an `authmw.io.RedisLink`): the clients, the key layout, the
    invalidation channel and this process's local cache."""

    def __init__(
        self,
        client: Any = None,
        async_client: Any = None,
        *,
        prefix: str = "authmw:",
        retry_after: int = 5,
        local_cache: LocalCache | None = None,
    ) -> None:
        if client is None and async_client is None:
            raise ValueError("RedisStore needs a redis.Redis and/or a redis.asyncio.Redis client")
        self.client = client
        self.async_client = async_client
        self.prefix = prefix
        self.retry_after = retry_after
        self.local_cache = local_cache
        #: the pub/sub channel that announces what local caches must drop
        self.channel = f"{prefix}invalidate"
        self._last_warning = float("-inf")
        #: the request path's answers without a round trip: local-cache hits (else `MISS`); None without a local
        #: cache, where every answer is a round trip
        self.peek_load: Callable[[str, float], SessionRecord | Miss] | None = None
        self.peek_token_state: Callable[..., tuple[float | None, bool] | Miss] | None = None
        if local_cache is not None:
            self.peek_load, self.peek_token_state = self._cached_session, self._cached_token_state

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "authmw:",
        socket_timeout: float = 1.0,
        max_connections: int = 64,
        local_cache: bool = False,
    ) -> Self:
        """Both clients for `url`, failing fast: `socket_timeout` bounds every call (then 503), no retries.

        ``local_cache=True`` adds a per-process cache of sessions and revocation state, invalidated over
        pub/sub (see `authmw.stores.localcache`): most session requests then cost no round trip.
        """
        import redis
        import redis.asyncio

        options: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_timeout,
            "retry": None,
            "health_check_interval": 0,
        }
        # Blocking pools: a burst beyond `max_connections` waits (at most `socket_timeout`) for a free
        # connection instead of failing at once with a spurious 503.
        pool_options = {"max_connections": max_connections, "timeout": socket_timeout}
        sync_pool = redis.BlockingConnectionPool.from_url(url, **options, **pool_options)
        async_pool = redis.asyncio.BlockingConnectionPool.from_url(url, **options, **pool_options)
        for pool in (sync_pool, async_pool):
            # A connection object (nothing connects yet): an option the URL spells wrongly fails here, at
            # start-up, instead of as a TypeError on every request's first store call.
            try:
                pool.connection_class(**pool.connection_kwargs)
            except TypeError as exc:
                raise ConfigurationError(f"the Redis URL has an option redis-py does not know: {exc}") from None
        cache = None
        if local_cache:
            # Its own connection, without a read timeout: it waits for messages and pings to detect a dead link.
            listener_options = {"socket_connect_timeout": socket_timeout, "socket_timeout": None, "retry": None}
            cache = LocalCache(lambda: redis.Redis.from_url(url, **listener_options), f"{prefix}invalidate")
        return cls(
            redis.Redis(connection_pool=sync_pool),
            redis.asyncio.Redis(connection_pool=async_pool),
            prefix=prefix,
            local_cache=cache,
        )

    def unavailable(self, error: BaseException) -> StoreUnavailable:
        """What a client error is raised as (see `authmw.io.RedisLink`): a 503, logged at most once per 5 s."""
        now = time.monotonic()
        if now - self._last_warning >= 5.0:  # an outage must not flood the log
            self._last_warning = now
            log.warning("authmw: session store unavailable: %s", type(error).__name__)
        return StoreUnavailable("the session store is unavailable", retry_after=self.retry_after)

    # ---- keys ----

    def _session_key(self, sid: str, kind: str = "s") -> str:
        """A session's key (`kind` "s"), or the key of the refresh families issued from it ("sf")."""
        tag, _, random_part = sid.partition(".")
        return f"{self.prefix}{{{tag}}}:{kind}:{random_part}"

    def _user_key(self, user_id: str, kind: str, name: str | None = None) -> str:
        """A key in the user's slot: the session index ("u"), the family index ("fams"), the not-before ("nbf"), a
        denied token ("jti", name), a family ("fam", name), a refresh token ("rt", name)."""
        digest = user_hash(user_id)
        return f"{self.prefix}{{{digest[:4]}}}:{kind}:{digest if name is None else name}"

    # ---- the local cache's answers (the request path's peeks) ----

    def _cached_session(self, sid: str, touch_interval: float) -> SessionRecord | Miss:
        cache = self.local_cache
        assert cache is not None
        cache.ensure_listening()
        hit = cache.session(sid, time.time(), touch_interval)
        return MISS if hit is None else hit

    def _cached_token_state(
        self, user_id: str, jti_key: str | None, grace: float = 0.0, family: str | None = None
    ) -> tuple[float | None, bool] | Miss:
        cache = self.local_cache
        assert cache is not None
        cache.ensure_listening()
        hit = cache.token_state(user_id, jti_key, time.time(), family)
        return MISS if hit is None else hit


class RedisStore(_Link):
    """Sessions in Redis via redis-py (sync `redis.Redis` and/or `redis.asyncio.Redis`).

    Build it with `RedisStore.from_url(url)` (both clients, bounded timeouts) or pass the client(s) you
    already have. One round trip per request (a Lua script that reads and, at most once per interval,
    slides the TTL); no `KEYS` scans.
    """

    # ---- sessions ----

    def load(self, sid: str, touch_interval: float) -> Flow[SessionRecord | None]:
        cache = self.local_cache
        epoch = 0
        if cache is not None:
            hit = self._cached_session(sid, touch_interval)
            if hit is not MISS:
                return hit
            epoch = cache.epoch
        record: SessionRecord | None = yield self._load_command(sid, touch_interval)
        if cache is not None and record is not None:
            cache.put_session(record, epoch)
        return record

    def _load_command(self, sid: str, touch_interval: float) -> Command:
        now = time.time()

        def parse(reply: Any) -> SessionRecord | None:
            if not reply:
                return None
            value, pttl = reply
            record = SessionRecord.decode(sid, value, 0.0)
            if record is None:
                return None
            # Redis drops the key at now + pttl: the session counts as last seen one idle timeout before that, so
            # that nothing (the local cache included) serves it past that deadline. That is exactly when it was
            # last seen, unless the TTL was capped by the absolute expiry; then earlier (a slide looks due sooner).
            record.last_seen = min(now, now + int(pttl) / 1000 - record.idle_timeout)
            return record

        keys = [self._session_key(sid)]
        return Command(self, parse, _LOAD, keys, [int(now * 1000), int(touch_interval * 1000)])

    def _ttl_ms(self, record: SessionRecord, idle: bool = True) -> int:
        """The record's key's TTL (`idle`), or its user index's (until the absolute expiry)."""
        left = record.absolute_expiry - time.time()
        return max(1, int((min(record.idle_timeout, left) if idle else left) * 1000))

    def create(self, record: SessionRecord) -> Flow[None]:
        keys = [self._session_key(record.sid), self._user_key(record.user_id, "u")]
        args: list[str | int] = [record.encode(), self._ttl_ms(record), record.sid, self._ttl_ms(record, idle=False)]
        yield Command(self, _nothing, _CREATE, keys, args)

    def rotate(self, old_sid: str, record: SessionRecord) -> Flow[bool]:
        keys = [self._session_key(old_sid), self._session_key(record.sid), self._user_key(record.user_id, "u")]
        args: list[str | int] = [record.encode(), self._ttl_ms(record), old_sid, record.sid]
        args.append(self._ttl_ms(record, idle=False))
        rotated: bool = yield Command(self, _true, _ROTATE, keys, args, invalidates=(f"s:{old_sid}",))
        return rotated

    def save(self, record: SessionRecord) -> Flow[bool]:
        # SET ... XX KEEPTTL: only if the session still exists, and without extending its life.
        command = ("SET", self._session_key(record.sid), record.encode(), "XX", "KEEPTTL")
        saved: bool = yield Command(self, _true, command=command, invalidates=(f"s:{record.sid}",))
        return saved

    def delete(self, sid: str, user_id: str) -> Flow[bool]:
        """Delete a session and revoke the refresh families issued from it. First expecting none (a session that
        never got tokens: one round trip); when the script finds some, again with their keys declared."""
        families: list[str] = []
        for _ in range(10):
            keys = [
                self._session_key(sid),
                self._user_key(user_id, "u"),
                self._session_key(sid, "sf"),
                self._user_key(user_id, "fams"),
                *(self._user_key(user_id, "fam", family) for family in families),
            ]
            reply: bool | list[str] = yield Command(
                self,
                lambda reply: _sorted_text(reply) if isinstance(reply, list) else bool(reply),
                _DELETE,
                keys,
                [sid, "\n".join(families)],
            )
            if not isinstance(reply, list):
                # Announced once done; families revoked: the user's cached token states may still say "alive".
                yield Command(self, invalidates=(f"s:{sid}", f"t:{user_id}") if families else (f"s:{sid}",))
                return reply
            families = reply
        raise StoreUnavailable("the session's refresh tokens kept changing; try again", retry_after=1)

    def delete_user(self, user_id: str) -> Flow[int]:
        return self._end_user(user_id, sessions=True, tokens=False)

    def list_user(self, user_id: str) -> Flow[list[SessionRecord]]:
        sids: list[str] = yield Command(self, _sorted_text, command=("SMEMBERS", self._user_key(user_id, "u")))
        records = []
        for sid in sids:
            record = yield from self.load(sid, _NO_TOUCH)
            if record is not None:
                records.append(record)
        return records

    def _end_user(
        self, user_id: str, *, sessions: bool, tokens: bool, not_before: float = 0.0, not_before_ttl: float = 1.0
    ) -> Flow[int]:
        """End the user's sessions and/or revoke their tokens: read the members, then delete exactly those keys
        (all declared) if the members did not change meanwhile; else read again."""
        slot = f"{self.prefix}{{{user_tag(user_id)}}}"
        index, families = self._user_key(user_id, "u"), self._user_key(user_id, "fams")
        for _ in range(10):
            members: list[list[str]] = yield Command(
                self, lambda reply: [_sorted_text(part) for part in reply], _MEMBERS, [index, families]
            )
            sids = members[0] if sessions else []
            fams = members[1] if tokens else []
            keys = [index, families, self._user_key(user_id, "nbf")]
            keys += [f"{slot}:s:{sid.partition('.')[2]}" for sid in sids]
            keys += [f"{slot}:fam:{family}" for family in fams]
            args: list[str | int] = ["\n".join(sids), "\n".join(fams), len(sids), repr(not_before)]
            args += [max(1, int(not_before_ttl * 1000)), "1" if sessions else "0", "1" if tokens else "0"]
            invalidates = (f"u:{user_id}" if sessions else f"t:{user_id}",)
            ended: int = yield Command(self, int, _END_USER, keys, args, invalidates=invalidates)
            if ended >= 0:
                return ended
        raise StoreUnavailable("the user's sessions kept changing; try again", retry_after=1)

    # ---- token revocation and refresh tokens ----

    def token_state(
        self, user_id: str, jti_key: str | None, grace: float = 0.0, family: str | None = None
    ) -> Flow[tuple[float | None, bool]]:
        cache, now, epoch = self.local_cache, time.time(), 0
        if cache is not None:
            hit = self._cached_token_state(user_id, jti_key, grace, family)
            if hit is not MISS:
                return hit
            epoch = cache.epoch
        keys = [self._user_key(user_id, "nbf"), self._user_key(user_id, "jti", jti_key or "-")]
        if family is not None:
            keys.append(self._user_key(user_id, "fam", family))  # the same slot: still one MGET, one round trip

        def parse(reply: Any) -> tuple[float | None, bool]:
            not_before, denied = reply[0], reply[1]
            revoked = (jti_key is not None and bool(denied)) or (family is not None and reply[2] is None)
            return (float(not_before) if not_before is not None else None), revoked

        try:
            state: tuple[float | None, bool] = yield Command(self, parse, command=("MGET", *keys))
        except StoreUnavailable:
            stale = None
            if cache is not None and grace:
                stale = cache.stale_token_state(user_id, jti_key, now, grace, family)
            if stale is None:
                raise
            return stale
        if cache is not None:
            cache.put_token_state(user_id, jti_key, state, now, epoch, family)
        return state

    def revoke_jti(self, user_id: str, jti_key: str, expires_at: float) -> Flow[None]:
        ttl = max(1, int((expires_at - time.time()) * 1000))
        command = ("SET", self._user_key(user_id, "jti", jti_key), "1", "PX", ttl)
        yield Command(self, _nothing, command=command, invalidates=(f"t:{user_id}",))

    def revoke_user(self, user_id: str, not_before: float, not_before_ttl: float) -> Flow[int]:
        return self._end_user(user_id, sessions=True, tokens=True, not_before=not_before, not_before_ttl=not_before_ttl)

    def revoke_tokens(self, user_id: str, not_before: float, not_before_ttl: float) -> Flow[None]:
        yield from self._end_user(
            user_id, sessions=False, tokens=True, not_before=not_before, not_before_ttl=not_before_ttl
        )

    def refresh_create(self, record: RefreshRecord, family_expires: float, new_family: bool) -> Flow[bool]:
        now, user = time.time(), record.user_id
        keys = [
            self._user_key(user, "rt", record.token_hash),
            self._user_key(user, "fam", record.family),
            self._user_key(user, "fams"),
            self._user_key(user, "nbf"),
        ]
        sid = record.session_sid
        # A session in another user's slot is no session of this user: left undeclared, the script refuses it.
        if sid and sid.partition(".")[0] == user_tag(user):
            keys += [self._session_key(sid), self._session_key(sid, "sf")]
        args: list[str | int] = [user, record.family, json.dumps(list(record.scopes)), repr(record.expires), sid or ""]
        args += [repr(record.auth_time), max(1, int((record.expires - now) * 1000))]
        args += [max(1, int((family_expires - now) * 1000)), "1" if new_family else "0"]
        args.append(repr(record.created) if record.created else "0")
        created: bool = yield Command(self, _true, _REFRESH_CREATE, keys, args)
        return created

    def refresh_use(
        self, tag: str, token_hash: str, now: float, grace: float, successor: tuple[str, float] | None = None
    ) -> Flow[tuple[RefreshOutcome, RefreshRecord | None]]:
        slot = f"{self.prefix}{{{tag}}}"
        token_key = f"{slot}:rt:{token_hash}"
        found: list[str | None] = yield Command(
            self, lambda reply: [None if v is None else _text(v) for v in reply], command=("HMGET", token_key, *_BOUND)
        )
        owner, family, session = found
        if family is None:
            return "invalid", None
        successor_key = f"{slot}:rt:{successor[0]}" if successor is not None else f"{slot}:rt:-"
        keys = [token_key, f"{slot}:fam:{family}", successor_key]
        if session:
            keys.append(f"{slot}:s:{session.partition('.')[2]}")
        args: list[str | int] = [repr(now), repr(grace), "", 1, family, session or ""]
        if successor is not None:
            args[2:4] = [repr(successor[1]), max(1, int((successor[1] - now) * 1000))]
        parse = functools.partial(_used, tag, token_hash, now)
        result: tuple[RefreshOutcome, RefreshRecord | None] = yield Command(self, parse, _REFRESH_USE, keys, args)
        if result[0] in ("reuse", "revoked") and owner:
            # The script may have deleted the family: caches must stop saying its access tokens are alive.
            yield Command(self, invalidates=(f"t:{owner}",))
        return result


#: what `refresh_use` reads first: whose token, its family and its session
_BOUND = ("uid", "fam", "sess")


def _used(tag: str, token_hash: str, now: float, reply: Any) -> tuple[RefreshOutcome, RefreshRecord | None]:
    """The reply of ``refresh_use.lua``: the outcome and, with it, the token's record."""
    status: RefreshOutcome = _OUTCOMES.get(_text(reply[0]), "invalid")
    if len(reply) < 8:
        return status, None
    uid, family_name, scopes, expires, session_sid, auth_time, used = (_text(v) for v in reply[1:])
    record = RefreshRecord(
        token_hash=token_hash,
        user_id=uid,
        family=family_name,
        scopes=tuple(json.loads(scopes)),
        expires=float(expires),
        session_sid=session_sid or None,
        auth_time=float(auth_time),
        used_at=float(used),
    )
    if user_tag(uid) != tag or record.expires <= now:
        return "invalid", None
    return status, record
