"""`MemoryStore`: sessions, revocations and refresh tokens in this process (a dict behind a lock).

Its operations need no I/O: each is a plain method made into a flow that never yields (`authmw.io.inline`), and its
two reads of the request path are those plain methods themselves (`peek_load`, `peek_token_state`: always an answer).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from authmw.io import MISS, Miss, inline
from authmw.stores.base import RefreshOutcome, RefreshRecord, SessionRecord, user_tag

__all__ = ["MemoryStore"]


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


def _miss(*args: Any) -> Miss:
    return MISS


class MemoryStore:
    """The embedded default: a dict behind a lock (safe for WSGI threads and asyncio alike), with expiry
    and a bound on the number of sessions (expired ones are purged first, then the oldest).
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A subclass's own load or token_state must not be bypassed by this class's answer without I/O: unless it
        # brings its own peek, the request path asks the operation itself.
        for operation, peek in (("load", "peek_load"), ("token_state", "peek_token_state")):
            if operation in vars(cls) and peek not in vars(cls):
                setattr(cls, peek, _miss)

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

    def _put(self, record: SessionRecord, now: float) -> None:
        deadline = min(now + record.idle_timeout, record.absolute_expiry)
        self._sessions[record.sid] = (record.clone(now), deadline, now)
        self._users.setdefault(record.user_id, set()).add(record.sid)

    # ---- sessions ----

    def peek_load(self, sid: str, touch_interval: float) -> SessionRecord | None:
        """`load`, at once."""
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

    load = inline(peek_load)

    @inline
    def create(self, record: SessionRecord) -> None:
        now = self._clock()
        with self._lock:
            if len(self._sessions) >= self.max_sessions:
                for sid in list(self._sessions):  # the expired ones first, then the oldest
                    self._live(sid, now)
                while len(self._sessions) >= self.max_sessions:
                    self._drop(next(iter(self._sessions)))
            self._put(record, now)

    @inline
    def rotate(self, old_sid: str, record: SessionRecord) -> bool:
        now = self._clock()
        with self._lock:
            if self._live(old_sid, now) is None:
                return False
            self._drop(old_sid)
            self._put(record, now)
            return True

    @inline
    def save(self, record: SessionRecord) -> bool:
        now = self._clock()
        with self._lock:
            entry = self._live(record.sid, now)
            if entry is None:
                return False
            self._sessions[record.sid] = (record.clone(entry[2]), entry[1], entry[2])
            return True

    @inline
    def delete(self, sid: str, user_id: str) -> bool:
        with self._lock:
            existed = sid in self._sessions
            for family in self._session_families.get(sid, ()):
                self._families.pop(family, None)
            self._drop(sid)
            return existed

    @inline
    def delete_user(self, user_id: str) -> int:
        with self._lock:
            return self._drop_user(user_id)

    @inline
    def list_user(self, user_id: str) -> list[SessionRecord]:
        now = self._clock()
        with self._lock:
            entries = [self._live(sid, now) for sid in list(self._users.get(user_id, ()))]
            return [entry[0].clone(entry[2]) for entry in entries if entry is not None]

    def _drop_user(self, user_id: str) -> int:
        """Drop every session of the user; the number that were still live."""
        now = self._clock()
        sids = list(self._users.get(user_id, ()))
        live = sum(1 for sid in sids if self._live(sid, now) is not None)
        for sid in sids:
            self._drop(sid)
        self._users.pop(user_id, None)
        return live

    # ---- token revocation and refresh tokens ----

    def peek_token_state(
        self, user_id: str, jti_key: str | None, grace: float = 0.0, family: str | None = None
    ) -> tuple[float | None, bool]:
        """`token_state`, at once."""
        now = self._clock()
        # No lock: single dict reads (each atomic); nothing here must be consistent with anything else.
        entry = self._not_before.get(user_id)
        not_before = entry[0] if entry is not None and entry[1] > now else None
        denied = jti_key is not None and self._denied.get((user_id, jti_key), 0.0) > now
        if family is not None and not denied:
            alive = self._families.get(family)
            denied = alive is None or alive[0] != user_id or alive[1] <= now
        return not_before, denied

    token_state = inline(peek_token_state)

    @inline
    def revoke_jti(self, user_id: str, jti_key: str, expires_at: float) -> None:
        now = self._clock()
        with self._lock:
            if len(self._denied) >= self.max_sessions:
                self._denied = _Revocations(self, {k: v for k, v in self._denied.items() if v > now})
            self._denied[(user_id, jti_key)] = expires_at

    @inline
    def revoke_user(self, user_id: str, not_before: float, not_before_ttl: float) -> int:
        with self._lock:
            count = self._drop_user(user_id)
            self._revoke_tokens(user_id, not_before, not_before_ttl)
            return count

    @inline
    def revoke_tokens(self, user_id: str, not_before: float, not_before_ttl: float) -> None:
        with self._lock:
            self._revoke_tokens(user_id, not_before, not_before_ttl)

    def _revoke_tokens(self, user_id: str, not_before: float, not_before_ttl: float) -> None:
        for family, (owner, _) in list(self._families.items()):
            if owner == user_id:
                del self._families[family]
        previous = self._not_before.get(user_id, (0.0, 0.0))[0]
        self._not_before[user_id] = (max(previous, not_before), self._clock() + not_before_ttl)

    @inline
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

    @inline
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
