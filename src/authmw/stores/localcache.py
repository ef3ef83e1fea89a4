"""An opt-in per-process cache of session records and revocation state, kept correct by Redis pub/sub.

Every write that can end or change a session or revoke a token publishes an invalidation on one channel;
every process listens (a daemon thread) and drops what it holds. So a session-authenticated request
usually costs no Redis round trip, yet a logout on one process is refused by every other one within
milliseconds. Correctness over speed: while the channel is down the cache serves nothing, and when it
comes back everything cached before is dropped (messages may have been missed).

A cached session is also re-read from Redis once per sliding interval (that read slides its idle TTL),
so the idle timeout keeps working and a lost message can never keep a session alive for long.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from authmw.stores.base import SessionRecord

__all__ = ["LocalCache"]

log = logging.getLogger("authmw")

_MAX_TOKEN_STATE_AGE = 60.0

#: how many forks this process descends from (counted in the child): a cache started before a fork must
#: start its listener again in the child
_forks = 0


def _forked() -> None:
    global _forks
    _forks += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


class LocalCache:
    """Process-local cache for a `RedisStore`; ``RedisStore.from_url(url, local_cache=True)`` builds one."""

    def __init__(
        self,
        pubsub_client_factory: Callable[[], Any],
        channel: str,
        *,
        max_entries: int = 50_000,
        ping_interval: float = 1.0,
    ) -> None:
        self.channel = channel
        self.max_entries = max_entries
        self.ping_interval = ping_interval
        self._factory = pubsub_client_factory
        self._lock = threading.Lock()
        self._sessions: dict[str, SessionRecord] = {}
        self._user_sessions: dict[str, set[str]] = {}
        #: (user, jti key, refresh family) -> (not-before, revoked, when fetched)
        self._token_states: dict[tuple[str, str | None, str | None], tuple[float | None, bool, float]] = {}
        #: bumped on every invalidation; a read that raced one is not cached
        self.epoch = 0
        self.healthy = False
        #: when anything (a message, a pong) last came over the channel (monotonic); silence means a dead link
        self._last_heard = float("-inf")
        self._silence_limit = 2 * ping_interval + 0.5
        self._fork_generation = -1
        self._thread: threading.Thread | None = None
        #: True from the listener's start until it ends (in this process: a child of a fork has no thread)
        self._listening = False
        self._stopped = threading.Event()

    # ---- the listener ----

    def ensure_listening(self) -> None:
        """Start the listener thread in this process (again after a fork: threads do not survive it)."""
        # The fork generation instead of os.getpid(), and a flag the thread clears as it ends instead of
        # Thread.is_alive() (which takes a lock): this runs on every request.
        if self._fork_generation == _forks and self._listening:
            return
        with self._lock:
            if self._fork_generation == _forks and self._listening:
                return
            self.healthy = False
            self._clear()
            self._stopped.clear()
            self._listening = True
            self._thread = threading.Thread(target=self._listen_until_stopped, name="authmw-invalidation", daemon=True)
            try:
                self._thread.start()
            except BaseException:
                self._listening = False
                raise
            # Last: in a forked child `_listening` is still True from the parent, so until this line the check
            # above sends every request here (to wait for the lock) instead of to the parent's stale cache.
            self._fork_generation = _forks

    def close(self) -> None:
        self._stopped.set()
        self.healthy = False

    def _listen_until_stopped(self) -> None:
        try:
            self._listen()
        finally:  # however the thread ends, the next request starts another
            self._listening = False

    def _listen(self) -> None:
        backoff = 0.05
        while not self._stopped.is_set():
            pubsub = None
            try:
                pubsub = self._factory().pubsub()
                pubsub.subscribe(self.channel)
                last_ping = time.monotonic()
                while not self._stopped.is_set():
                    message = pubsub.get_message(timeout=self.ping_interval)
                    if message is not None:
                        self._last_heard = time.monotonic()
                        self._on_message(message)
                        backoff = 0.05
                    now = time.monotonic()
                    if now - last_ping >= self.ping_interval:
                        pubsub.ping()  # a closed connection raises here, even when nobody publishes
                        last_ping = now
                    if self.healthy and now - self._last_heard > self._silence_limit:
                        # Pings go unanswered: the link is dead without being closed (a stuck proxy, a partition).
                        raise TimeoutError("the invalidation channel went silent")
            except Exception as exc:
                if self.healthy:
                    log.warning("authmw: invalidation channel lost (%s); local cache off", type(exc).__name__)
                with self._lock:
                    self.healthy = False
                    self._clear_sessions()  # revocation state is kept only for an opt-in grace (stale_token_state)
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):  # closing a broken connection may fail too
                        pubsub.close()

    def _on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "subscribe":
            with self._lock:
                self._clear()  # anything cached before may have missed an invalidation
                self.healthy = True
            log.info("authmw: invalidation channel up; local cache on")
        elif kind == "message":
            data = message.get("data")
            self.invalidate((data.decode() if isinstance(data, bytes) else str(data)).split("\n"))

    # ---- invalidation ----

    def _clear(self) -> None:
        self._clear_sessions()
        self._token_states.clear()

    def _clear_sessions(self) -> None:
        self.epoch += 1
        self._sessions.clear()
        self._user_sessions.clear()

    def _serving(self) -> bool:
        return self.healthy and time.monotonic() - self._last_heard <= self._silence_limit

    def invalidate(self, messages: Iterable[str]) -> None:
        """Apply invalidation messages: ``s:<sid>``, ``u:<user>`` (sessions and tokens), ``t:<user>`` (tokens:
        also a revoked refresh family of the user, whose access tokens a cached state may still call alive)."""
        with self._lock:
            self.epoch += 1
            for message in messages:
                kind, _, value = message.partition(":")
                if kind == "s":
                    record = self._sessions.pop(value, None)
                    if record is not None:
                        self._user_sessions.get(record.user_id, set()).discard(value)
                elif kind in ("u", "t"):
                    if kind == "u":
                        for sid in self._user_sessions.pop(value, set()):
                            self._sessions.pop(sid, None)
                    for key in [k for k in self._token_states if k[0] == value]:
                        del self._token_states[key]

    # ---- reads ----

    def session(self, sid: str, now: float, touch_interval: float) -> SessionRecord | None:
        """A cached live record, if the channel is up and the record was seen in Redis within the interval."""
        if not self._serving():
            return None
        record = self._sessions.get(sid)
        if record is None:
            return None
        if (
            now - record.last_seen >= touch_interval
            or now >= record.absolute_expiry
            or now >= record.last_seen + record.idle_timeout
        ):
            return None
        # A copy: requests must not share (or mutate) one another's view of the data bag.
        return record.clone()

    def put_session(self, record: SessionRecord, epoch: int) -> None:
        with self._lock:
            if epoch != self.epoch or not self.healthy:
                return  # an invalidation arrived while this was read: it may be stale
            if len(self._sessions) >= self.max_entries:
                self._sessions.clear()
                self._user_sessions.clear()
            # A copy: the record read is also the one the request gets, and may change its data bag and never save.
            self._sessions[record.sid] = record.clone(record.last_seen)
            self._user_sessions.setdefault(record.user_id, set()).add(record.sid)

    def token_state(
        self, user_id: str, jti_key: str | None, now: float, family: str | None = None
    ) -> tuple[float | None, bool] | None:
        if not self._serving():
            return None
        entry = self._token_states.get((user_id, jti_key, family))
        if entry is None or now - entry[2] >= _MAX_TOKEN_STATE_AGE:
            return None
        return entry[0], entry[1]

    def stale_token_state(
        self, user_id: str, jti_key: str | None, now: float, grace: float, family: str | None = None
    ) -> tuple[float | None, bool] | None:
        """While Redis is unreachable: revocation state fetched within `grace` seconds (an explicit opt-in)."""
        entry = self._token_states.get((user_id, jti_key, family))
        if entry is None or now - entry[2] > grace:
            return None
        return entry[0], entry[1]

    def put_token_state(
        self,
        user_id: str,
        jti_key: str | None,
        state: tuple[float | None, bool],
        now: float,
        epoch: int,
        family: str | None = None,
    ) -> None:
        with self._lock:
            if epoch != self.epoch or not self.healthy:
                return
            if len(self._token_states) >= self.max_entries:
                self._token_states.clear()
            self._token_states[(user_id, jti_key, family)] = (state[0], state[1], now)
