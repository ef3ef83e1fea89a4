"""Session stores: one protocol with a sync and an async face; `MemoryStore` and `RedisStore`.

Records are JSON (never pickle, P27). A stored value is ``"<absolute_expiry_ms>:<idle_ms>:<json>"`` so
that a Redis script can enforce the absolute timeout and slide the idle timeout without decoding JSON:
the key's TTL *is* the idle timeout, refreshed at most once per `touch_interval` (no write on most reads),
and never beyond the absolute expiry. Every write that could race a logout is conditional, so a request in
flight can never resurrect a deleted session.

Redis keys: ``<prefix>{<tag>}:s:<random>`` per session and ``<prefix>{<tag>}:u:<user hash>`` per user
index, where ``<tag>`` is a short hash of the user id carried in the session id: one user's records share
a hash slot, so a Redis Cluster can run the multi-key scripts (logout everywhere, rotation) atomically. Stores see
only these internal ids; what leaves the server shows the tag masked (`authmw.masking`).

Each Redis operation is written once as a plan (script, keys, arguments, reply parser); a thin sync or
async runner executes it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from authmw.errors import ConfigurationError, ServiceUnavailable

if TYPE_CHECKING:
    from authmw.localcache import LocalCache

__all__ = [
    "MemoryStore",
    "RedisStore",
    "RefreshOutcome",
    "RefreshRecord",
    "SessionRecord",
    "SessionStore",
    "StoreUnavailable",
    "user_tag",
]

log = logging.getLogger("authmw")

T = TypeVar("T")


class StoreUnavailable(ServiceUnavailable):
    """The session store could not be reached in time: answered as 503 + Retry-After (fail closed)."""


def user_hash(user_id: str) -> str:
    return hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()


def user_tag(user_id: str) -> str:
    """The hash tag shared by one user's keys: 16 bits, so it says almost nothing about who the user is."""
    return user_hash(user_id)[:4]


@dataclass(slots=True)
class SessionRecord:
    """A server-side session. Times are POSIX seconds; `sid` is the opaque id (``<tag>.<random>``)."""

    sid: str
    user_id: str
    scopes: tuple[str, ...] = ()
    created: float = 0.0
    auth_time: float = 0.0
    absolute_expiry: float = 0.0
    idle_timeout: float = 1800.0
    last_seen: float = 0.0
    user_agent: str = ""
    ip: str = ""
    remember: bool = False
    data: dict[str, Any] = field(default_factory=dict)

    def clone(self, last_seen: float | None = None) -> SessionRecord:
        """An independent copy (its own data bag), field by field: `dataclasses.replace` costs several times more
        on the per-request path."""
        r = self
        data = copy.deepcopy(r.data) if r.data else {}
        return SessionRecord(
            r.sid, r.user_id, r.scopes, r.created, r.auth_time, r.absolute_expiry, r.idle_timeout,
            r.last_seen if last_seen is None else last_seen, r.user_agent, r.ip, r.remember, data,
        )  # fmt: skip

    def encode(self) -> str:
        body = {
            "uid": self.user_id,
            "scopes": list(self.scopes),
            "created": self.created,
            "auth_time": self.auth_time,
            "ua": self.user_agent,
            "ip": self.ip,
            "remember": self.remember,
            "data": self.data,
        }
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=True)
        return f"{int(self.absolute_expiry * 1000)}:{int(self.idle_timeout * 1000)}:{payload}"

    @classmethod
    def decode(cls, sid: str, value: str | bytes, last_seen: float) -> SessionRecord | None:
        """A record from its stored form, or None when it is corrupt (a corrupt record is no session, P27)."""
        try:
            text = value.decode() if isinstance(value, bytes) else value
            absolute_ms, idle_ms, payload = text.split(":", 2)
            body = _RECORD_JSON.decode(payload)
            uid, scopes, data = body["uid"], body["scopes"], body.get("data", {})
            created, auth_time = body["created"], body["auth_time"]
            user_agent, ip, remember = body.get("ua", ""), body.get("ip", ""), body.get("remember", False)
            if (
                not isinstance(uid, str)
                or not uid
                or not isinstance(scopes, list)
                or not all(isinstance(s, str) for s in scopes)
                or not isinstance(data, dict)
                or not _finite_number(created)
                or not _finite_number(auth_time)
                or not isinstance(user_agent, str)
                or not isinstance(ip, str)
                or not isinstance(remember, bool)
            ):
                raise ValueError("malformed record")
            return cls(
                sid=sid,
                user_id=uid,
                scopes=tuple(scopes),
                created=float(created),
                auth_time=float(auth_time),
                absolute_expiry=int(absolute_ms) / 1000,
                idle_timeout=int(idle_ms) / 1000,
                last_seen=last_seen,
                user_agent=user_agent,
                ip=ip,
                remember=remember,
                data=data,
            )
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, AttributeError):
            log.warning("authmw: a corrupt session record was ignored")
            return None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} in a session record")


#: built once: `json.loads` with an option builds a new decoder on every call
_RECORD_JSON = json.JSONDecoder(parse_constant=_no_constant)


def _finite_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


@dataclass(slots=True)
class RefreshRecord:
    """A refresh token, stored under the hash of its value (never the value). Times are POSIX seconds."""

    token_hash: str
    user_id: str
    family: str
    scopes: tuple[str, ...]
    expires: float
    #: the session the token was issued from (its id): when that session ends, the family is dead
    session_sid: str | None = None
    auth_time: float = 0.0
    #: when the token was used (rotated); 0 while unused
    used_at: float = 0.0
    #: when the issuing began (0: unknown); a family is not created once the user's tokens were revoked after it
    created: float = 0.0


#: the outcomes of presenting a refresh token
RefreshOutcome = Literal["ok", "grace", "reuse", "revoked", "invalid"]


class SessionStore(Protocol):
    """What a session store does; every method has an async twin named with an ``a`` prefix.

    Methods raise `StoreUnavailable` when the backing service cannot be reached.
    """

    def load(self, sid: str, touch_interval: float) -> SessionRecord | None:
        """The live record, sliding its idle expiry if the last slide is older than `touch_interval`."""
        ...

    async def aload(self, sid: str, touch_interval: float) -> SessionRecord | None: ...

    def create(self, record: SessionRecord) -> None:
        """Store a new record (its sid must be new) and add it to its user's index."""
        ...

    async def acreate(self, record: SessionRecord) -> None: ...

    def rotate(self, old_sid: str, record: SessionRecord) -> bool:
        """Atomically replace `old_sid` by `record` (a new sid); False when `old_sid` no longer exists."""
        ...

    async def arotate(self, old_sid: str, record: SessionRecord) -> bool: ...

    def save(self, record: SessionRecord) -> bool:
        """Write back a changed record only if it still exists (no resurrection); keeps its TTL."""
        ...

    async def asave(self, record: SessionRecord) -> bool: ...

    def delete(self, sid: str, user_id: str) -> bool:
        """End one session (a logout) and the refresh families issued from it: their access tokens with them."""
        ...

    async def adelete(self, sid: str, user_id: str) -> bool: ...

    def delete_user(self, user_id: str) -> int:
        """Delete every session of the user; the count deleted."""
        ...

    async def adelete_user(self, user_id: str) -> int: ...

    def list_user(self, user_id: str) -> list[SessionRecord]: ...

    async def alist_user(self, user_id: str) -> list[SessionRecord]: ...

    # ---- token revocation (DESIGN.md §3) and refresh tokens ----

    def token_state(
        self, user_id: str, jti_key: str | None, grace: float = 0.0, family: str | None = None
    ) -> tuple[float | None, bool]:
        """The user's not-before time (or None) and whether this token is revoked: its id on the denylist or, given
        the refresh `family` it was minted from, that family no longer alive. With `grace`, a store that cannot be
        reached may answer from revocation state fetched at most that long ago."""
        ...

    async def atoken_state(
        self, user_id: str, jti_key: str | None, grace: float = 0.0, family: str | None = None
    ) -> tuple[float | None, bool]: ...

    def revoke_jti(self, user_id: str, jti_key: str, expires_at: float) -> None:
        """Deny a token id until it expires anyway."""
        ...

    async def arevoke_jti(self, user_id: str, jti_key: str, expires_at: float) -> None: ...

    def revoke_user(self, user_id: str, not_before: float, not_before_ttl: float) -> int:
        """Log the user out everywhere at once: every session, every refresh family, and every access token
        issued before `not_before`. The count of sessions deleted."""
        ...

    async def arevoke_user(self, user_id: str, not_before: float, not_before_ttl: float) -> int: ...

    def revoke_tokens(self, user_id: str, not_before: float, not_before_ttl: float) -> None:
        """Revoke the user's refresh families and every access token issued before `not_before`; sessions stay."""
        ...

    async def arevoke_tokens(self, user_id: str, not_before: float, not_before_ttl: float) -> None: ...

    def refresh_create(self, record: RefreshRecord, family_expires: float, new_family: bool) -> bool:
        """Store a refresh token; False when its (existing) family was revoked meanwhile, when the session it
        is bound to (`record.session_sid`) no longer exists, or when the user's tokens were revoked after the
        issuing began (`record.created`)."""
        ...

    async def arefresh_create(self, record: RefreshRecord, family_expires: float, new_family: bool) -> bool: ...

    def refresh_use(
        self, tag: str, token_hash: str, now: float, grace: float, successor: tuple[str, float] | None = None
    ) -> tuple[RefreshOutcome, RefreshRecord | None]:
        """Mark a refresh token used and, given ``successor=(hash, expires)``, store its successor in the same
        family, all atomically. A second use after `grace` seconds revokes the family. `tag` is the user tag
        of the token's internal (unmasked) form (its keys' hash slot); `token_hash` the SHA-256 of that form."""
        ...

    async def arefresh_use(
        self, tag: str, token_hash: str, now: float, grace: float, successor: tuple[str, float] | None = None
    ) -> tuple[RefreshOutcome, RefreshRecord | None]: ...


# --------------------------------------------------------------------------------------------------
# Memory


class _Revocations(dict[Any, Any]):
    """A map of revocation state that counts every write into it on its store (`MemoryStore.revocations`), after
    making it. Removals are not counted: they only ever let through what a remembered decision already let
    through."""

    __slots__ = ("_store",)

    def __init__(self, store: MemoryStore, *args: Any) -> None:
        super().__init__(*args)
        self._store = store

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self._store.revocations += 1

    def setdefault(self, key: Any, default: Any = None) -> Any:
        found = super().setdefault(key, default)
        self._store.revocations += 1
        return found

    def update(self, *args: Any, **kwargs: Any) -> None:
        super().update(*args, **kwargs)
        self._store.revocations += 1

    def __ior__(self, other: Any) -> _Revocations:  # type: ignore[misc]
        self.update(other)
        return self


class _Families(dict[str, tuple[str, float]]):
    """The live refresh families (family -> (user, expiry)). Removing one revokes the access tokens minted from it,
    so every removal counts on its store (`MemoryStore.revocations`), after making it, as `_Revocations` counts the
    writes into the denylist."""

    __slots__ = ("_store",)

    def __init__(self, store: MemoryStore) -> None:
        super().__init__()
        self._store = store

    def __delitem__(self, family: str) -> None:
        super().__delitem__(family)
        self._store.revocations += 1

    def pop(self, family: str, *default: Any) -> Any:
        removed = family in self
        found = super().pop(family, *default)
        if removed:
            self._store.revocations += 1
        return found


class MemoryStore:
    """The embedded default: a dict behind a lock (safe for WSGI threads and asyncio alike), with expiry
    and a bound on the number of sessions (expired ones are purged first, then the oldest).
    """

    #: no call does I/O: flows run them inline, even on an event loop
    nonblocking = True

    def __init__(self, *, max_sessions: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        self.max_sessions = max_sessions
        self._clock = clock
        self._lock = threading.Lock()
        # sid -> (the record, idle deadline, last slide time); records are copied in and out, never shared
        self._sessions: dict[str, tuple[SessionRecord, float, float]] = {}
        self._users: dict[str, set[str]] = {}
        self._denied: dict[tuple[str, str], float] = _Revocations(self)  # (user, jti key) -> expiry
        self._not_before: dict[str, tuple[float, float]] = _Revocations(self)  # user -> (not before, kept until)
        self._refresh: dict[str, RefreshRecord] = {}  # token hash -> record
        self._families: dict[str, tuple[str, float]] = _Families(self)  # family -> (user, expiry)
        self._session_families: dict[str, set[str]] = {}  # session id -> the families issued from it
        #: how many revocation writes (jti denials, per-user not-befores) this store has taken, counted by the two
        #: maps themselves after each write (whichever code writes): a token found unrevoked after reading count N is
        #: still unrevoked while the count is N
        self.revocations = 0

    def _live(self, sid: str, now: float) -> tuple[SessionRecord, float, float] | None:
        entry = self._sessions.get(sid)
        if entry is None:
            return None
        record, deadline, _ = entry
        if now >= deadline or now >= record.absolute_expiry:
            self._drop(sid)
            return None
        return entry

    def _drop(self, sid: str) -> None:
        self._session_families.pop(sid, None)
        entry = self._sessions.pop(sid, None)
        if entry is not None:
            members = self._users.get(entry[0].user_id)
            if members is not None:
                members.discard(sid)
                if not members:
                    del self._users[entry[0].user_id]

    def _make_room(self, now: float) -> None:
        if len(self._sessions) < self.max_sessions:
            return
        for sid in list(self._sessions):
            self._live(sid, now)
        while len(self._sessions) >= self.max_sessions:
            self._drop(next(iter(self._sessions)))

    def _put(self, record: SessionRecord, now: float) -> None:
        deadline = min(now + record.idle_timeout, record.absolute_expiry)
        self._sessions[record.sid] = (record.clone(now), deadline, now)
        self._users.setdefault(record.user_id, set()).add(record.sid)

    def load(self, sid: str, touch_interval: float) -> SessionRecord | None:
        now = self._clock()
        entry = self._sessions.get(sid)
        if entry is not None and now - entry[2] < touch_interval and now < entry[1] and now < entry[0].absolute_expiry:
            # Live and no slide due: nothing to change, so no lock (entries are replaced whole, never changed).
            return entry[0].clone(entry[2])
        with self._lock:
            entry = self._live(sid, now)
            if entry is None:
                return None
            record, _deadline, slid_at = entry
            if now - slid_at >= touch_interval:
                slid_at = now
                self._sessions[sid] = (record, min(now + record.idle_timeout, record.absolute_expiry), now)
            return record.clone(slid_at)

    def create(self, record: SessionRecord) -> None:
        now = self._clock()
        with self._lock:
            self._make_room(now)
            self._put(record, now)

    def rotate(self, old_sid: str, record: SessionRecord) -> bool:
        now = self._clock()
        with self._lock:
            if self._live(old_sid, now) is None:
                return False
            self._drop(old_sid)
            self._put(record, now)
            return True

    def save(self, record: SessionRecord) -> bool:
        now = self._clock()
        with self._lock:
            entry = self._live(record.sid, now)
            if entry is None:
                return False
            self._sessions[record.sid] = (record.clone(entry[2]), entry[1], entry[2])
            return True

    def delete(self, sid: str, user_id: str) -> bool:
        with self._lock:
            existed = sid in self._sessions
            for family in self._session_families.get(sid, ()):
                self._families.pop(family, None)
            self._drop(sid)
            return existed

    def delete_user(self, user_id: str) -> int:
        with self._lock:
            return self._drop_user(user_id)

    def list_user(self, user_id: str) -> list[SessionRecord]:
        now = self._clock()
        with self._lock:
            records = []
            for sid in list(self._users.get(user_id, ())):
                entry = self._live(sid, now)
                if entry is not None:
                    records.append(entry[0].clone(entry[2]))
            return records

    def token_state(
        self, user_id: str, jti_key: str | None, grace: float = 0.0, family: str | None = None
    ) -> tuple[float | None, bool]:
        now = self._clock()
        # No lock: single dict reads (each atomic); nothing here must be consistent with anything else.
        entry = self._not_before.get(user_id)
        not_before = entry[0] if entry is not None and entry[1] > now else None
        denied = jti_key is not None and self._denied.get((user_id, jti_key), 0.0) > now
        if family is not None and not denied:
            alive = self._families.get(family)
            denied = alive is None or alive[0] != user_id or alive[1] <= now
        return not_before, denied

    def revoke_jti(self, user_id: str, jti_key: str, expires_at: float) -> None:
        now = self._clock()
        with self._lock:
            if len(self._denied) >= self.max_sessions:
                self._denied = _Revocations(self, {k: v for k, v in self._denied.items() if v > now})
            self._denied[(user_id, jti_key)] = expires_at

    def revoke_user(self, user_id: str, not_before: float, not_before_ttl: float) -> int:
        with self._lock:
            count = self._drop_user(user_id)
            self._revoke_tokens(user_id, not_before, not_before_ttl)
            return count

    def _drop_user(self, user_id: str) -> int:
        """Drop every session of the user; the number that were still live."""
        now = self._clock()
        sids = list(self._users.get(user_id, ()))
        live = sum(1 for sid in sids if self._live(sid, now) is not None)
        for sid in sids:
            self._drop(sid)
        self._users.pop(user_id, None)
        return live

    def revoke_tokens(self, user_id: str, not_before: float, not_before_ttl: float) -> None:
        with self._lock:
            self._revoke_tokens(user_id, not_before, not_before_ttl)

    def _revoke_tokens(self, user_id: str, not_before: float, not_before_ttl: float) -> None:
        for family, (owner, _) in list(self._families.items()):
            if owner == user_id:
                del self._families[family]
        previous = self._not_before.get(user_id, (0.0, 0.0))[0]
        self._not_before[user_id] = (max(previous, not_before), self._clock() + not_before_ttl)

    def refresh_create(self, record: RefreshRecord, family_expires: float, new_family: bool) -> bool:
        now = self._clock()
        with self._lock:
            if record.session_sid is not None:
                session = self._live(record.session_sid, now)
                if session is None or session[0].user_id != record.user_id:
                    return False
            revoked = self._not_before.get(record.user_id)
            if record.created and revoked is not None and revoked[1] > now and revoked[0] >= record.created:
                return False  # a logout-everywhere landed while these tokens were being issued
            if new_family:
                self._families[record.family] = (record.user_id, family_expires)
                if record.session_sid is not None:
                    self._session_families.setdefault(record.session_sid, set()).add(record.family)
            elif record.family not in self._families:
                return False
            if len(self._refresh) >= self.max_sessions:
                live = {f for f, (_, until) in self._families.items() if until > now}
                self._refresh = {h: r for h, r in self._refresh.items() if r.expires > now and r.family in live}
            self._refresh[record.token_hash] = record
            return True

    def refresh_use(
        self, tag: str, token_hash: str, now: float, grace: float, successor: tuple[str, float] | None = None
    ) -> tuple[RefreshOutcome, RefreshRecord | None]:
        with self._lock:
            record = self._refresh.get(token_hash)
            if record is None or user_tag(record.user_id) != tag or record.expires <= now:
                return "invalid", None
            family = self._families.get(record.family)
            if family is None or family[1] <= now:
                return "revoked", None
            if record.session_sid is not None and self._live(record.session_sid, now) is None:
                del self._families[record.family]
                return "revoked", None
            outcome: RefreshOutcome = "ok"
            if record.used_at:
                if grace <= 0 or now - record.used_at > grace:  # clocks of concurrent calls may disagree
                    del self._families[record.family]  # reuse: the whole family is revoked
                    return "reuse", record
                outcome = "grace"
            else:
                record.used_at = now
            if successor is not None:
                self._refresh[successor[0]] = replace(
                    record, token_hash=successor[0], expires=successor[1], used_at=0.0
                )
            return outcome, record

    # The async face: nothing here blocks, so the same code serves the event loop.
    async def atoken_state(
        self, user_id: str, jti_key: str | None, grace: float = 0.0, family: str | None = None
    ) -> tuple[float | None, bool]:
        return self.token_state(user_id, jti_key, grace, family)

    async def arevoke_jti(self, user_id: str, jti_key: str, expires_at: float) -> None:
        self.revoke_jti(user_id, jti_key, expires_at)

    async def arevoke_user(self, user_id: str, not_before: float, not_before_ttl: float) -> int:
        return self.revoke_user(user_id, not_before, not_before_ttl)

    async def arevoke_tokens(self, user_id: str, not_before: float, not_before_ttl: float) -> None:
        self.revoke_tokens(user_id, not_before, not_before_ttl)

    async def arefresh_create(self, record: RefreshRecord, family_expires: float, new_family: bool) -> bool:
        return self.refresh_create(record, family_expires, new_family)

    async def arefresh_use(
        self, tag: str, token_hash: str, now: float, grace: float, successor: tuple[str, float] | None = None
    ) -> tuple[RefreshOutcome, RefreshRecord | None]:
        return self.refresh_use(tag, token_hash, now, grace, successor)

    async def aload(self, sid: str, touch_interval: float) -> SessionRecord | None:
        return self.load(sid, touch_interval)

    async def acreate(self, record: SessionRecord) -> None:
        self.create(record)

    async def arotate(self, old_sid: str, record: SessionRecord) -> bool:
        return self.rotate(old_sid, record)

    async def asave(self, record: SessionRecord) -> bool:
        return self.save(record)

    async def adelete(self, sid: str, user_id: str) -> bool:
        return self.delete(sid, user_id)

    async def adelete_user(self, user_id: str) -> int:
        return self.delete_user(user_id)

    async def alist_user(self, user_id: str) -> list[SessionRecord]:
        return self.list_user(user_id)


# --------------------------------------------------------------------------------------------------
# Redis

# KEYS[1] session; ARGV: now_ms, touch_interval_ms. Returns false or {value, pttl}.
_LOAD = """
local v = redis.call('GET', KEYS[1])
if not v then return false end
local abs, idle = string.match(v, '^(%d+):(%d+):')
if not abs then return {v, 0} end
abs = tonumber(abs); idle = tonumber(idle)
local now = tonumber(ARGV[1])
if abs <= now then redis.call('DEL', KEYS[1]); return false end
local pttl = redis.call('PTTL', KEYS[1])
local full = math.min(idle, abs - now)
if full - pttl >= tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], full)
  pttl = full
end
return {v, pttl}
"""

# KEYS[1] session, KEYS[2] user index; ARGV: value, ttl_ms, sid, index_ttl_ms
_CREATE = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[4]) then redis.call('PEXPIRE', KEYS[2], ARGV[4]) end
return 1
"""

# KEYS[1] old session, KEYS[2] new session, KEYS[3] user index; ARGV: value, ttl_ms, old sid, new sid, index_ttl
_ROTATE = """
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('SREM', KEYS[3], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[4])
if redis.call('PTTL', KEYS[3]) < tonumber(ARGV[5]) then redis.call('PEXPIRE', KEYS[3], ARGV[5]) end
return 1
"""

# KEYS[1] session index, KEYS[2] refresh-family index. Returns both member lists (phase 1 of _END_USER).
_MEMBERS = """
return {redis.call('SMEMBERS', KEYS[1]), redis.call('SMEMBERS', KEYS[2])}
"""

# Phase 2 of ending a user's sessions and/or tokens, with every key it touches declared (Redis Cluster routes a
# script by its KEYS and, while a slot migrates, answers TRYAGAIN instead of half-doing the work).
# KEYS: session index, family index, not-before, then ARGV[3] session keys, then the family keys.
# ARGV: the session members and family members read in phase 1 (sorted, '\n'-joined), the number of session keys,
# not_before, not_before_ttl_ms, '1' to end the sessions, '1' to revoke the tokens. Returns -1 when the members
# changed in between (the caller reads them again), else the number of sessions ended.
_END_USER = """
local function listed(key)
  local members = redis.call('SMEMBERS', key)
  table.sort(members)
  return table.concat(members, '\\n')
end
if ARGV[6] == '1' and listed(KEYS[1]) ~= ARGV[1] then return -1 end
if ARGV[7] == '1' and listed(KEYS[2]) ~= ARGV[2] then return -1 end
local sessions = tonumber(ARGV[3])
local n = 0
for i = 4, 3 + sessions do n = n + redis.call('DEL', KEYS[i]) end
for i = 4 + sessions, #KEYS do redis.call('DEL', KEYS[i]) end
if ARGV[6] == '1' then redis.call('DEL', KEYS[1]) end
if ARGV[7] == '1' then
  redis.call('DEL', KEYS[2])
  local current = tonumber(redis.call('GET', KEYS[3]) or '0')
  if tonumber(ARGV[4]) > current then redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5]) end
end
return n
"""

# KEYS[1] session, KEYS[2] user index, KEYS[3] the refresh families issued from the session, KEYS[4] the user's
# family index, then the keys of the families the caller expects; ARGV: sid, those families (sorted, '\n'-joined).
# Returns the session's families when they are not the ones expected (the caller declares those and runs it again:
# every key a script touches is declared, for Redis Cluster), else the number of sessions deleted.
_DELETE = """
local families = redis.call('SMEMBERS', KEYS[3])
table.sort(families)
if table.concat(families, '\\n') ~= ARGV[2] then return families end
local n = redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
if #families > 0 then
  for i = 5, #KEYS do redis.call('DEL', KEYS[i]) end
  redis.call('SREM', KEYS[4], unpack(families))
  redis.call('DEL', KEYS[3])
end
return n
"""


_OUTCOMES: dict[str, RefreshOutcome] = {"ok": "ok", "grace": "grace", "reuse": "reuse", "revoked": "revoked"}

# KEYS[1] token, KEYS[2] family, KEYS[3] family index, KEYS[4] the user's not-before, KEYS[5] the bound
# session and KEYS[6] its families (when there is one); ARGV: uid, family, scopes, exp, session, auth_time,
# token_ttl_ms, family_ttl_ms, new_family, created
_REFRESH_CREATE = """
if ARGV[10] ~= '0' then
  -- a logout-everywhere that landed while these tokens were being issued
  local revoked = redis.call('GET', KEYS[4])
  if revoked and tonumber(revoked) >= tonumber(ARGV[10]) then return 0 end
end
local absolute = nil
if ARGV[5] ~= '' then
  -- the bound session must exist and be this user's
  if not KEYS[5] then return 0 end
  local v = redis.call('GET', KEYS[5])
  local payload = v and string.match(v, '^%d+:%d+:(.*)$')
  if not payload then return 0 end
  local ok, body = pcall(cjson.decode, payload)
  if not ok or type(body) ~= 'table' or body['uid'] ~= ARGV[1] then return 0 end
  absolute = string.match(v, '^(%d+):')
end
if ARGV[9] == '0' and redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'uid', ARGV[1], 'fam', ARGV[2], 'scopes', ARGV[3], 'exp', ARGV[4],
           'sess', ARGV[5], 'auth', ARGV[6], 'used', '0')
redis.call('PEXPIRE', KEYS[1], ARGV[7])
if ARGV[9] == '1' then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[8])
  redis.call('SADD', KEYS[3], ARGV[2])
  if redis.call('PTTL', KEYS[3]) < tonumber(ARGV[8]) then redis.call('PEXPIRE', KEYS[3], ARGV[8]) end
  if absolute and KEYS[6] then
    -- the session's families, which its logout revokes: kept while the session may live
    redis.call('SADD', KEYS[6], ARGV[2])
    redis.call('PEXPIREAT', KEYS[6], absolute)
  end
end
return 1
"""

# KEYS: the token, its family, its successor, and (when bound to one) its session: every key declared (Cluster).
# ARGV: now, grace, successor expiry, successor ttl_ms, the family and the session read in phase 1.
_REFRESH_USE = """
local r = redis.call('HMGET', KEYS[1], 'uid', 'fam', 'scopes', 'exp', 'sess', 'auth', 'used')
if not r[1] or r[2] ~= ARGV[5] or r[5] ~= ARGV[6] then return {'invalid'} end
if redis.call('EXISTS', KEYS[2]) == 0 then return {'revoked'} end
if r[5] ~= '' and (not KEYS[4] or redis.call('EXISTS', KEYS[4]) == 0) then
  redis.call('DEL', KEYS[2])
  return {'revoked'}
end
local now = tonumber(ARGV[1])
local used = tonumber(r[7])
local outcome = 'ok'
if used > 0 then
  if tonumber(ARGV[2]) <= 0 or now - used > tonumber(ARGV[2]) then
    redis.call('DEL', KEYS[2])
    return {'reuse', r[1], r[2], r[3], r[4], r[5], r[6], r[7]}
  end
  outcome = 'grace'
else
  redis.call('HSET', KEYS[1], 'used', ARGV[1])
  used = ARGV[1]
end
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[3], 'uid', r[1], 'fam', r[2], 'scopes', r[3], 'exp', ARGV[3], 'sess', r[5],
             'auth', r[6], 'used', '0')
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
end
return {outcome, r[1], r[2], r[3], r[4], r[5], r[6], tostring(used)}
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class _Plan:
    """One Redis operation, independent of sync/async: a script (or raw command) and how to read its reply."""

    script: str | None
    keys: Sequence[str]
    args: Sequence[str | int | bytes]
    parse: Callable[[Any], Any]
    command: tuple[str | bytes | int, ...] = ()
    #: what other processes' local caches must drop once this write is done (see `authmw.localcache`)
    invalidates: tuple[str, ...] = ()


#: an operation of several round trips: yields plans, receives their parsed replies, returns the result
Program = Generator["_Plan", Any, T]


def _announce(*messages: str) -> _Plan:
    """A plan that runs no command, only publishes `messages` to the local caches (for a program whose last
    write's invalidations depend on what that write found)."""
    return _Plan(None, (), (), lambda reply: None, invalidates=messages)


_NO_TOUCH = 10.0**9  # a touch interval that never slides the TTL (read-only listing)

_REDIS_ERRORS: tuple[type[BaseException], ...] = ()


def _redis_errors() -> tuple[type[BaseException], ...]:
    global _REDIS_ERRORS
    if not _REDIS_ERRORS:
        import redis.exceptions as rexc

        # Any client-side failure is "unavailable", never a 500 (RedisClusterException is no RedisError).
        _REDIS_ERRORS = (rexc.RedisError, rexc.RedisClusterException, OSError)
    return _REDIS_ERRORS


def _no_script() -> type[BaseException]:
    """redis-py's NOSCRIPT error (imported when one is raised: redis is an optional dependency)."""
    from redis.exceptions import NoScriptError

    return NoScriptError


class RedisStore:
    """Sessions in Redis via redis-py (sync `redis.Redis` and/or `redis.asyncio.Redis`).

    Build it with `RedisStore.from_url(url)` (both clients, bounded timeouts) or pass the client(s) you
    already have. One round trip per request (a Lua script that reads and, at most once per interval,
    slides the TTL); no `KEYS` scans.
    """

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
        self._shas: dict[str, str] = {}  # script -> its SHA1, as EVALSHA names it

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "authmw:",
        socket_timeout: float = 1.0,
        max_connections: int = 64,
        local_cache: bool = False,
    ) -> RedisStore:
        """Both clients for `url`, failing fast: `socket_timeout` bounds every call (then 503), no retries.

        ``local_cache=True`` adds a per-process cache of sessions and revocation state, invalidated over
        pub/sub (see `authmw.localcache`): most session requests then cost no round trip.
        """
        import redis
        import redis.asyncio

        from authmw.localcache import LocalCache

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

    # ---- keys ----

    def _session_key(self, sid: str) -> str:
        tag, _, random_part = sid.partition(".")
        return f"{self.prefix}{{{tag}}}:s:{random_part}"

    def _index_key(self, user_id: str) -> str:
        digest = user_hash(user_id)
        return f"{self.prefix}{{{digest[:4]}}}:u:{digest}"

    # ---- plans (the logic, written once) ----

    def _plan_load(self, sid: str, touch_interval: float) -> _Plan:
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

        return _Plan(_LOAD, [self._session_key(sid)], [int(now * 1000), int(touch_interval * 1000)], parse)

    def _ttl_ms(self, record: SessionRecord) -> int:
        return max(1, int(min(record.idle_timeout, record.absolute_expiry - time.time()) * 1000))

    def _index_ttl_ms(self, record: SessionRecord) -> int:
        return max(1, int((record.absolute_expiry - time.time()) * 1000))

    def _plan_create(self, record: SessionRecord) -> _Plan:
        return _Plan(
            _CREATE,
            [self._session_key(record.sid), self._index_key(record.user_id)],
            [record.encode(), self._ttl_ms(record), record.sid, self._index_ttl_ms(record)],
            lambda reply: None,
        )

    def _plan_rotate(self, old_sid: str, record: SessionRecord) -> _Plan:
        return _Plan(
            _ROTATE,
            [self._session_key(old_sid), self._session_key(record.sid), self._index_key(record.user_id)],
            [record.encode(), self._ttl_ms(record), old_sid, record.sid, self._index_ttl_ms(record)],
            lambda reply: bool(reply),
            invalidates=(f"s:{old_sid}",),
        )

    def _plan_save(self, record: SessionRecord) -> _Plan:
        # SET ... XX KEEPTTL: only if the session still exists, and without extending its life.
        command = ("SET", self._session_key(record.sid), record.encode(), "XX", "KEEPTTL")
        return _Plan(None, (), (), lambda reply: bool(reply), command, invalidates=(f"s:{record.sid}",))

    def _session_families_key(self, sid: str) -> str:
        tag, _, random_part = sid.partition(".")
        return f"{self.prefix}{{{tag}}}:sf:{random_part}"

    def _delete(self, sid: str, user_id: str) -> Program[bool]:
        """Delete a session and revoke the refresh families issued from it. First expecting none (a session that
        never got tokens: one round trip); when the script finds some, again with their keys declared."""
        families: list[str] = []
        for _ in range(10):
            keys = [
                self._session_key(sid),
                self._index_key(user_id),
                self._session_families_key(sid),
                self._user_key(user_id, "fams"),
                *(self._user_key(user_id, "fam", family) for family in families),
            ]
            reply: bool | list[str] = yield _Plan(
                _DELETE,
                keys,
                [sid, "\n".join(families)],
                lambda reply: sorted(_text(m) for m in reply) if isinstance(reply, list) else bool(reply),
            )
            if not isinstance(reply, list):
                # Announced once done; families revoked: the user's cached token states may still say "alive".
                yield _announce(f"s:{sid}", f"t:{user_id}") if families else _announce(f"s:{sid}")
                return reply
            families = reply
        raise StoreUnavailable("the session's refresh tokens kept changing; try again", retry_after=1)

    def _end_user(
        self, user_id: str, *, sessions: bool, tokens: bool, not_before: float = 0.0, not_before_ttl: float = 1.0
    ) -> Program[int]:
        """End the user's sessions and/or revoke their tokens: read the members, then delete exactly those keys
        (all declared) if the members did not change meanwhile; else read again."""
        digest = user_hash(user_id)
        slot = f"{self.prefix}{{{digest[:4]}}}"
        index, families, nbf = self._index_key(user_id), self._user_key(user_id, "fams"), self._user_key(user_id, "nbf")
        for _ in range(10):
            members: list[list[str]] = yield _Plan(
                _MEMBERS, [index, families], [], lambda reply: [sorted(_text(m) for m in part) for part in reply]
            )
            sids = members[0] if sessions else []
            fams = members[1] if tokens else []
            keys = [index, families, nbf]
            keys += [f"{slot}:s:{sid.partition('.')[2]}" for sid in sids]
            keys += [f"{slot}:fam:{family}" for family in fams]
            ended: int = yield _Plan(
                _END_USER,
                keys,
                [
                    "\n".join(sids),
                    "\n".join(fams),
                    len(sids),
                    repr(not_before),
                    max(1, int(not_before_ttl * 1000)),
                    "1" if sessions else "0",
                    "1" if tokens else "0",
                ],
                lambda reply: int(reply),
                invalidates=(f"u:{user_id}" if sessions else f"t:{user_id}",),
            )
            if ended >= 0:
                return ended
        raise StoreUnavailable("the user's sessions kept changing; try again", retry_after=1)

    def _plan_members(self, user_id: str) -> _Plan:
        command = ("SMEMBERS", self._index_key(user_id))
        return _Plan(
            None, (), (), lambda reply: sorted(m.decode() if isinstance(m, bytes) else m for m in reply), command
        )

    def _user_key(self, user_id: str, kind: str, name: str | None = None) -> str:
        digest = user_hash(user_id)
        return f"{self.prefix}{{{digest[:4]}}}:{kind}:{digest if name is None else name}"

    def _plan_token_state(self, user_id: str, jti_key: str | None, family: str | None = None) -> _Plan:
        digest = user_hash(user_id)
        slot = f"{self.prefix}{{{digest[:4]}}}"
        keys = [f"{slot}:nbf:{digest}", f"{slot}:jti:{jti_key or '-'}"]
        if family is not None:
            keys.append(f"{slot}:fam:{family}")  # the same slot: still one MGET, one round trip

        def parse(reply: Any) -> tuple[float | None, bool]:
            not_before, denied = reply[0], reply[1]
            revoked = (jti_key is not None and bool(denied)) or (family is not None and reply[2] is None)
            return (float(not_before) if not_before is not None else None), revoked

        return _Plan(None, (), (), parse, ("MGET", *keys))

    def _plan_revoke_jti(self, user_id: str, jti_key: str, expires_at: float) -> _Plan:
        ttl = max(1, int((expires_at - time.time()) * 1000))
        command = ("SET", self._user_key(user_id, "jti", jti_key), "1", "PX", ttl)
        return _Plan(None, (), (), lambda reply: None, command, invalidates=(f"t:{user_id}",))

    def _plan_refresh_create(self, record: RefreshRecord, family_expires: float, new_family: bool) -> _Plan:
        now = time.time()
        keys = [
            self._user_key(record.user_id, "rt", record.token_hash),
            self._user_key(record.user_id, "fam", record.family),
            self._user_key(record.user_id, "fams"),
            self._user_key(record.user_id, "nbf"),
        ]
        sid = record.session_sid
        # A session in another user's slot is no session of this user: left undeclared, the script refuses it.
        if sid and sid.partition(".")[0] == user_tag(record.user_id):
            keys += [self._session_key(sid), self._session_families_key(sid)]
        return _Plan(
            _REFRESH_CREATE,
            keys,
            [
                record.user_id,
                record.family,
                json.dumps(list(record.scopes)),
                repr(record.expires),
                record.session_sid or "",
                repr(record.auth_time),
                max(1, int((record.expires - now) * 1000)),
                max(1, int((family_expires - now) * 1000)),
                "1" if new_family else "0",
                repr(record.created) if record.created else "0",
            ],
            lambda reply: bool(reply),
        )

    def _refresh_use(
        self, tag: str, token_hash: str, now: float, grace: float, successor: tuple[str, float] | None
    ) -> Program[tuple[RefreshOutcome, RefreshRecord | None]]:
        slot = f"{self.prefix}{{{tag}}}"
        token_key = f"{slot}:rt:{token_hash}"
        found: list[str | None] = yield _Plan(
            None,
            (),
            (),
            lambda reply: [None if v is None else _text(v) for v in reply],
            ("HMGET", token_key, "uid", "fam", "sess"),
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

        def parse(reply: Any) -> tuple[RefreshOutcome, RefreshRecord | None]:
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

        result: tuple[RefreshOutcome, RefreshRecord | None] = yield _Plan(_REFRESH_USE, keys, args, parse)
        if result[0] in ("reuse", "revoked") and owner:
            # The script may have deleted the family: caches must stop saying its access tokens are alive.
            yield _announce(f"t:{owner}")
        return result

    # ---- runners ----

    def _failed(self, exc: BaseException) -> StoreUnavailable:
        now = time.monotonic()
        if now - self._last_warning >= 5.0:  # one line per 5 s: an outage must not flood the log
            self._last_warning = now
            log.warning("authmw: session store unavailable: %s", type(exc).__name__)
        return StoreUnavailable("the session store is unavailable", retry_after=self.retry_after)

    def _evalsha(self, plan: _Plan) -> tuple[Any, ...]:
        """The EVALSHA command that runs `plan`'s script: sent as is, which costs less than redis-py's `Script`
        objects (7-11 µs a call); `_run` / `_arun` load the script when the server does not know it."""
        assert plan.script is not None
        sha = self._shas.get(plan.script)
        if sha is None:
            sha = self._shas[plan.script] = hashlib.sha1(plan.script.encode(), usedforsecurity=False).hexdigest()
        return ("EVALSHA", sha, len(plan.keys), *plan.keys, *plan.args)

    def _run(self, plan: _Plan) -> Any:
        if self.client is None:
            raise RuntimeError("this RedisStore has no synchronous client (use the async methods)")
        try:
            if plan.script is None:
                # No command at all: a plan that only announces (`invalidates`).
                reply = self.client.execute_command(*plan.command) if plan.command else None
            else:
                command = self._evalsha(plan)
                try:
                    reply = self.client.execute_command(*command)
                except _no_script():  # a new or restarted (or flushed) server: load it, once, and run it again
                    self.client.script_load(plan.script)
                    reply = self.client.execute_command(*command)
            if plan.invalidates:
                # Always announced, cache or not: other processes (and the CLI's changes) must reach every cache.
                if self.local_cache is not None:
                    self.local_cache.invalidate(plan.invalidates)
                message = "\n".join(plan.invalidates)
                try:
                    self.client.publish(self.channel, message)
                except _redis_errors():
                    # The write is done: one more try on a fresh connection, so that a connection that broke just
                    # now does not leave other processes' caches serving what was ended (then: 503, retry it).
                    self.client.publish(self.channel, message)
        except _redis_errors() as exc:
            raise self._failed(exc) from None
        return plan.parse(reply)

    async def _arun(self, plan: _Plan) -> Any:
        if self.async_client is None:
            raise RuntimeError("this RedisStore has no asyncio client (use the sync methods)")
        try:
            if plan.script is None:
                reply = await self.async_client.execute_command(*plan.command) if plan.command else None
            else:
                command = self._evalsha(plan)
                try:
                    reply = await self.async_client.execute_command(*command)
                except _no_script():  # as above
                    await self.async_client.script_load(plan.script)
                    reply = await self.async_client.execute_command(*command)
            if plan.invalidates:
                if self.local_cache is not None:
                    self.local_cache.invalidate(plan.invalidates)
                message = "\n".join(plan.invalidates)
                try:
                    await self.async_client.publish(self.channel, message)
                except _redis_errors():  # as above
                    await self.async_client.publish(self.channel, message)
        except _redis_errors() as exc:
            raise self._failed(exc) from None
        return plan.parse(reply)

    def _drive(self, program: Program[T]) -> T:
        try:
            plan = next(program)
            while True:
                plan = program.send(self._run(plan))
        except StopIteration as stop:
            result: T = stop.value
            return result

    async def _adrive(self, program: Program[T]) -> T:
        try:
            plan = next(program)
            while True:
                plan = program.send(await self._arun(plan))
        except StopIteration as stop:
            result: T = stop.value
            return result

    # ---- the protocol ----

    def peek_load(self, sid: str, touch_interval: float) -> SessionRecord | None:
        """A local-cache hit, without any I/O; None means "ask Redis" (never "no session")."""
        cache = self.local_cache
        if cache is None:
            return None
        cache.ensure_listening()
        return cache.session(sid, time.time(), touch_interval)

    def peek_token_state(
        self, user_id: str, jti_key: str | None, grace: float = 0.0, family: str | None = None
    ) -> tuple[float | None, bool] | None:
        """A local-cache hit, without any I/O; None means "ask Redis"."""
        cache = self.local_cache
        if cache is None:
            return None
        cache.ensure_listening()
        return cache.token_state(user_id, jti_key, time.time(), family)

    def load(self, sid: str, touch_interval: float) -> SessionRecord | None:
        cache = self.local_cache
        if cache is None:
            result: SessionRecord | None = self._run(self._plan_load(sid, touch_interval))
            return result
        cache.ensure_listening()
        hit = cache.session(sid, time.time(), touch_interval)
        if hit is not None:
            return hit
        epoch = cache.epoch
        record: SessionRecord | None = self._run(self._plan_load(sid, touch_interval))
        if record is not None:
            cache.put_session(record, epoch)
        return record

    async def aload(self, sid: str, touch_interval: float) -> SessionRecord | None:
        cache = self.local_cache
        if cache is None:
            result: SessionRecord | None = await self._arun(self._plan_load(sid, touch_interval))
            return result
        cache.ensure_listening()
        hit = cache.session(sid, time.time(), touch_interval)
        if hit is not None:
            return hit
        epoch = cache.epoch
        record: SessionRecord | None = await self._arun(self._plan_load(sid, touch_interval))
        if record is not None:
            cache.put_session(record, epoch)
        return record

    def create(self, record: SessionRecord) -> None:
        self._run(self._plan_create(record))

    async def acreate(self, record: SessionRecord) -> None:
        await self._arun(self._plan_create(record))

    def rotate(self, old_sid: str, record: SessionRecord) -> bool:
        return bool(self._run(self._plan_rotate(old_sid, record)))

    async def arotate(self, old_sid: str, record: SessionRecord) -> bool:
        return bool(await self._arun(self._plan_rotate(old_sid, record)))

    def save(self, record: SessionRecord) -> bool:
        return bool(self._run(self._plan_save(record)))

    async def asave(self, record: SessionRecord) -> bool:
        return bool(await self._arun(self._plan_save(record)))

    def delete(self, sid: str, user_id: str) -> bool:
        return self._drive(self._delete(sid, user_id))

    async def adelete(self, sid: str, user_id: str) -> bool:
        return await self._adrive(self._delete(sid, user_id))

    def delete_user(self, user_id: str) -> int:
        return self._drive(self._end_user(user_id, sessions=True, tokens=False))

    async def adelete_user(self, user_id: str) -> int:
        return await self._adrive(self._end_user(user_id, sessions=True, tokens=False))

    def list_user(self, user_id: str) -> list[SessionRecord]:
        sids: list[str] = self._run(self._plan_members(user_id))
        records = [self.load(sid, _NO_TOUCH) for sid in sids]
        return [r for r in records if r is not None]

    async def alist_user(self, user_id: str) -> list[SessionRecord]:
        sids: list[str] = await self._arun(self._plan_members(user_id))
        records = [await self.aload(sid, _NO_TOUCH) for sid in sids]
        return [r for r in records if r is not None]

    def token_state(
        self, user_id: str, jti_key: str | None, grace: float = 0.0, family: str | None = None
    ) -> tuple[float | None, bool]:
        cache = self.local_cache
        now = time.time()
        if cache is not None:
            cache.ensure_listening()
            hit = cache.token_state(user_id, jti_key, now, family)
            if hit is not None:
                return hit
        epoch = cache.epoch if cache is not None else 0
        try:
            result: tuple[float | None, bool] = self._run(self._plan_token_state(user_id, jti_key, family))
        except StoreUnavailable:
            stale = (
                cache.stale_token_state(user_id, jti_key, now, grace, family) if cache is not None and grace else None
            )
            if stale is None:
                raise
            return stale
        if cache is not None:
            cache.put_token_state(user_id, jti_key, result, now, epoch, family)
        return result

    async def atoken_state(
        self, user_id: str, jti_key: str | None, grace: float = 0.0, family: str | None = None
    ) -> tuple[float | None, bool]:
        cache = self.local_cache
        now = time.time()
        if cache is not None:
            cache.ensure_listening()
            hit = cache.token_state(user_id, jti_key, now, family)
            if hit is not None:
                return hit
        epoch = cache.epoch if cache is not None else 0
        try:
            result: tuple[float | None, bool] = await self._arun(self._plan_token_state(user_id, jti_key, family))
        except StoreUnavailable:
            stale = (
                cache.stale_token_state(user_id, jti_key, now, grace, family) if cache is not None and grace else None
            )
            if stale is None:
                raise
            return stale
        if cache is not None:
            cache.put_token_state(user_id, jti_key, result, now, epoch, family)
        return result

    def revoke_jti(self, user_id: str, jti_key: str, expires_at: float) -> None:
        self._run(self._plan_revoke_jti(user_id, jti_key, expires_at))

    async def arevoke_jti(self, user_id: str, jti_key: str, expires_at: float) -> None:
        await self._arun(self._plan_revoke_jti(user_id, jti_key, expires_at))

    def revoke_user(self, user_id: str, not_before: float, not_before_ttl: float) -> int:
        program = self._end_user(
            user_id, sessions=True, tokens=True, not_before=not_before, not_before_ttl=not_before_ttl
        )
        return self._drive(program)

    async def arevoke_user(self, user_id: str, not_before: float, not_before_ttl: float) -> int:
        program = self._end_user(
            user_id, sessions=True, tokens=True, not_before=not_before, not_before_ttl=not_before_ttl
        )
        return await self._adrive(program)

    def revoke_tokens(self, user_id: str, not_before: float, not_before_ttl: float) -> None:
        self._drive(
            self._end_user(user_id, sessions=False, tokens=True, not_before=not_before, not_before_ttl=not_before_ttl)
        )

    async def arevoke_tokens(self, user_id: str, not_before: float, not_before_ttl: float) -> None:
        await self._adrive(
            self._end_user(user_id, sessions=False, tokens=True, not_before=not_before, not_before_ttl=not_before_ttl)
        )

    def refresh_create(self, record: RefreshRecord, family_expires: float, new_family: bool) -> bool:
        return bool(self._run(self._plan_refresh_create(record, family_expires, new_family)))

    async def arefresh_create(self, record: RefreshRecord, family_expires: float, new_family: bool) -> bool:
        return bool(await self._arun(self._plan_refresh_create(record, family_expires, new_family)))

    def refresh_use(
        self, tag: str, token_hash: str, now: float, grace: float, successor: tuple[str, float] | None = None
    ) -> tuple[RefreshOutcome, RefreshRecord | None]:
        result: tuple[RefreshOutcome, RefreshRecord | None] = self._drive(
            self._refresh_use(tag, token_hash, now, grace, successor)
        )
        return result

    async def arefresh_use(
        self, tag: str, token_hash: str, now: float, grace: float, successor: tuple[str, float] | None = None
    ) -> tuple[RefreshOutcome, RefreshRecord | None]:
        result: tuple[RefreshOutcome, RefreshRecord | None] = await self._adrive(
            self._refresh_use(tag, token_hash, now, grace, successor)
        )
        return result
