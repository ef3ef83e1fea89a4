"""`LoginThrottle`: slow down password guessing, per user name and per client address, in the session store.

A login view asks `check(user, address)` before it looks at the password, and calls `success(user, address)`
when the password was right (an async view awaits the same two calls of an `AsyncLoginThrottle`)::

    wait = throttle.check(username, client_address)  # counts this attempt as a failure, for now
    if wait:
        return too_many_attempts(retry_after=wait)    # 429, Retry-After: wait
    if not password_ok(username, password):
        return wrong_password()                       # 401: the attempt stays counted
    throttle.success(username, client_address)        # forgets the user name's failures, refunds the address

Each key (a user name, a client address) gets a number of free attempts per window; from then on, every attempt
locks the key for 1 s, 2 s, 4 s... up to `max_lock`. An attempt made while either key is locked is refused without
counting. The attempt is counted when it is checked, not when it has failed: many guesses sent at once cannot
all slip through the same unlocked moment, and an app that forgets `success()` fails safe (it over-counts).

The throttle never looks at the user database, so the answers are the same for known and unknown users. User names
(NFKC, case-folded, stripped) and addresses (IPv6 grouped by /64) are hashed: no raw name is ever a key.

Counters live where the sessions do: in the `MemoryStore`'s process, or in Redis under the `RedisStore`'s prefix
(``<prefix>throttle:{u:<hash>}`` and ``<prefix>throttle:{a:<hash>}``, one script call per key, so each key has a
Redis Cluster slot of its own), shared by every process. A store that cannot be reached fails closed:
`StoreUnavailable` (503 + Retry-After), as for any other store call in a view.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import threading
import time
import unicodedata
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Self

from authmw.errors import ConfigurationError
from authmw.io import Command, Flow, inline, run_async, run_sync
from authmw.stores import MemoryStore, RedisStore, SessionStore
from authmw.stores.redis import script

if TYPE_CHECKING:
    from authmw.config import AuthConfig

__all__ = [
    "AsyncLoginThrottle",
    "BaseLoginThrottle",
    "Counter",
    "LoginThrottle",
    "ThrottleSettings",
    "decide",
    "lock_ms",
]


@dataclass(frozen=True, slots=True)
class ThrottleSettings:
    """How many attempts are free, and how long a key is locked after that. Times are seconds."""

    #: attempts per user name in a window before the locks start
    user_attempts: int = 5
    #: attempts per client address in a window (one address may be a whole office behind NAT)
    address_attempts: int = 20
    #: a key's counter is forgotten this long after its last counted attempt, or after the lock that attempt set
    window: float = 900.0
    #: the lock after the last free attempt; each further attempt doubles it
    first_lock: float = 1.0
    max_lock: float = 900.0

    def __post_init__(self) -> None:
        ConfigurationError.unless_count(self, "user_attempts", 1, 1_000_000)
        ConfigurationError.unless_count(self, "address_attempts", 1, 1_000_000)
        ConfigurationError.unless_finite(self, "window", "first_lock", "max_lock")
        if not 0.001 <= self.first_lock <= self.max_lock <= 86_400 or not 0.001 <= self.window <= 86_400:
            raise ConfigurationError(
                "ThrottleSettings needs 0.001 <= first_lock <= max_lock <= 86400 and 0.001 <= window <= 86400 "
                f"(seconds), got first_lock={self.first_lock}, max_lock={self.max_lock}, window={self.window}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ThrottleSettings:
        """The defaults, changed by `AUTHMW_LOGIN_THROTTLE_USER_ATTEMPTS`, `..._ADDRESS_ATTEMPTS`, `..._WINDOW`,
        `..._FIRST_LOCK` and `..._MAX_LOCK` (seconds)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, kind in (
            ("user_attempts", int),
            ("address_attempts", int),
            ("window", float),
            ("first_lock", float),
            ("max_lock", float),
        ):
            variable = f"AUTHMW_LOGIN_THROTTLE_{name.upper()}"
            text = env.get(variable, "").strip()
            if text:
                try:
                    values[name] = kind(text)
                except ValueError:
                    raise ConfigurationError(f"{variable} must be a {kind.__name__}, not {text!r}") from None
        return cls(**values)


# ---- the decision: data in, decision out (stores/lua/throttle.lua does exactly the same) ----


@dataclass(frozen=True, slots=True)
class Counter:
    """One key's state: attempts counted in the window, and until when (ms) the next one is refused."""

    count: int = 0
    locked_until: int = 0


@dataclass(frozen=True, slots=True)
class _Limits:
    free: int
    first_ms: int
    max_ms: int
    window_ms: int

    def args(self) -> tuple[int, int, int, int]:
        return self.free, self.first_ms, self.max_ms, self.window_ms


Operation = Literal["try", "undo", "clear"]


def lock_ms(count: int, free: int, first_ms: int, max_ms: int) -> int:
    """How long the key stays locked after its `count`-th attempt: none before `free`, then doubling, capped."""
    if count < free:
        return 0
    return min(first_ms << min(count - free, 40), max_ms)


def decide(
    op: Operation, counter: Counter | None, now_ms: int, free: int, first_ms: int, max_ms: int, window_ms: int
) -> tuple[Counter | None, int | None, int]:
    """What one operation does to one key: (the counter to keep, None: delete it; its new time to live in ms,
    None: keep the old one; the answer: ms to wait, 0: go ahead).

    ``try`` counts an attempt unless the key is locked; ``undo`` takes one counted attempt back (and the lock with
    it once the count is below the free ones again); ``clear`` forgets the key.
    """
    if op == "clear" or (counter is None and op == "undo"):
        return None, None, 0
    current = counter or Counter()
    if op == "undo":
        count = current.count - 1
        if count <= 0:
            return None, None, 0
        return Counter(count, current.locked_until if count >= free else 0), None, 0
    if now_ms < current.locked_until:
        return current, None, current.locked_until - now_ms
    count = current.count + 1
    lock = lock_ms(count, free, first_ms, max_ms)
    # Kept a whole window beyond the lock: a counter that expired with its lock would give the guesser a fresh start.
    return Counter(count, now_ms + lock if lock else current.locked_until), window_ms + lock, 0


# ---- where the counters live ----


@dataclass(frozen=True, slots=True)
class _Step:
    """One operation on one key, the same for every backend."""

    op: Operation
    key: str
    now_ms: int
    limits: _Limits


class _MemoryCounters:
    """In-process counters: `decide` under a lock, with expiry and a bound on the number of keys."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self.max_keys = max_keys
        self._lock = threading.Lock()
        # key -> (counter, expiry in ms); ordered by last write, so the first ones are the least recently written
        self._entries: dict[str, tuple[Counter, int]] = {}

    @inline
    def run(self, step: _Step) -> int:
        with self._lock:
            entry = self._entries.pop(step.key, None)
            if entry is not None and entry[1] <= step.now_ms:
                entry = None
            counter, ttl_ms, wait_ms = decide(step.op, entry[0] if entry else None, step.now_ms, *step.limits.args())
            if counter is not None:
                expires = step.now_ms + ttl_ms if ttl_ms is not None else entry[1] if entry else step.now_ms
                self._entries[step.key] = (counter, expires)
                if len(self._entries) > self.max_keys:  # the least recently written goes: O(1), unlike a scan
                    del self._entries[next(iter(self._entries))]
            return wait_ms


#: each MemoryStore's counters: every throttle built on one store sees the same ones
_MEMORY: weakref.WeakKeyDictionary[MemoryStore, _MemoryCounters] = weakref.WeakKeyDictionary()
_MEMORY_LOCK = threading.Lock()


def _memory_counters(store: MemoryStore) -> _MemoryCounters:
    with _MEMORY_LOCK:
        counters = _MEMORY.get(store)
        if counters is None:
            counters = _MEMORY[store] = _MemoryCounters()
        return counters


#: `decide` in Lua (stores/lua/throttle.lua): one script call per key
_SCRIPT = script("throttle")


class _RedisCounters:
    """Counters in Redis, on the store's connections: one script call per key (a 503 when it cannot be reached)."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store

    def run(self, step: _Step) -> Flow[int]:
        args = [step.op, step.now_ms, *step.limits.args()]
        wait_ms: int = yield Command(self.store, int, _SCRIPT, [step.key], args)
        return wait_ms


# ---- the helper ----


def _user_name(user: str) -> str:
    """One spelling per name as people type it: compatibility forms, case and surrounding spaces do not count."""
    return unicodedata.normalize("NFKC", user).casefold().strip()


def _address_group(address: str) -> str:
    """The address, or its /64 for IPv6 (what one host or site usually holds); other text as it is."""
    text = address.strip()
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])  # without an IPv6 zone (`fe80::1%eth0`)
    except ValueError:
        return text.casefold()
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _digest(kind: str, text: str) -> str:
    return hashlib.sha256(f"authmw.throttle.{kind}\0{text}".encode("utf-8", "surrogatepass")).hexdigest()[:32]


class BaseLoginThrottle:
    """Login attempts per user name and per client address, counted in the session store: each operation as a flow
    (`check_flow`, `success_flow`; see `authmw.io`). `LoginThrottle` runs them for sync views, `AsyncLoginThrottle`
    for async ones.

    Build one once, at start-up: `from_config(config)` (the store of `config.sessions`), or with a `MemoryStore` or
    `RedisStore` (None: counters of its own, in this process).
    """

    def __init__(
        self,
        store: SessionStore | None = None,
        settings: ThrottleSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or ThrottleSettings()
        self._clock = clock
        self._counters: _MemoryCounters | _RedisCounters
        if isinstance(store, RedisStore):
            self._counters = _RedisCounters(store)
            self._prefix = f"{store.prefix}throttle:"
        elif isinstance(store, MemoryStore):
            self._counters = _memory_counters(store)
            self._prefix = "throttle:"
        elif store is None:
            self._counters = _MemoryCounters()
            self._prefix = "throttle:"
        else:
            # Better refused than counters kept per process, unnoticed, beside a store that every process shares.
            raise ConfigurationError(
                f"{type(self).__name__} keeps its counters in a MemoryStore or a RedisStore, "
                f"not a {type(store).__name__}"
            )
        s = self.settings
        first, cap, window = round(s.first_lock * 1000), round(s.max_lock * 1000), round(s.window * 1000)
        self._user_limits = _Limits(s.user_attempts, first, cap, window)
        self._address_limits = _Limits(s.address_attempts, first, cap, window)

    @classmethod
    def from_config(cls, config: AuthConfig, settings: ThrottleSettings | None = None) -> Self:
        """On the session store `config` uses (in-process counters when it has no sessions)."""
        return cls(config.sessions.store if config.sessions is not None else None, settings)

    def user_key(self, user: str) -> str:
        """The key of a user name's counter (a hash: the name itself is never stored)."""
        return f"{self._prefix}{{u:{_digest('user', _user_name(user))}}}"

    def address_key(self, address: str) -> str:
        """The key of a client address's counter (IPv6 by /64, hashed)."""
        return f"{self._prefix}{{a:{_digest('address', _address_group(address))}}}"

    def check_flow(self, user: str, address: str | None) -> Flow[int]:
        """Before checking the password: 0 to go ahead (the attempt is counted as a failure until `success_flow`),
        else the whole seconds to wait (send 429 with ``Retry-After``, and do not check the password).

        `address` is the client's address (None: unknown, only the user name is throttled). Raises
        `StoreUnavailable` (a `ServiceUnavailable`: 503) when the store cannot be reached.
        """
        now = round(self._clock() * 1000)
        keys = [(self.user_key(user), self._user_limits)]
        if address:  # the address first: a locked address never adds to a user name's count
            keys.insert(0, (self.address_key(address), self._address_limits))
        counted: list[tuple[str, _Limits]] = []
        for key, limits in keys:
            wait_ms = yield from self._counters.run(_Step("try", key, now, limits))
            if wait_ms > 0:
                for done_key, done_limits in counted:  # a refused attempt counts nowhere
                    yield from self._counters.run(_Step("undo", done_key, now, done_limits))
                return max(1, -(-wait_ms // 1000))
            counted.append((key, limits))
        return 0

    def success_flow(self, user: str, address: str | None) -> Flow[None]:
        """The password was right: forget the user name's attempts, and take this attempt back from the address's."""
        now = round(self._clock() * 1000)
        yield from self._counters.run(_Step("clear", self.user_key(user), now, self._user_limits))
        if address:
            yield from self._counters.run(_Step("undo", self.address_key(address), now, self._address_limits))


class LoginThrottle(BaseLoginThrottle):
    """The throttle for sync views (Flask, WSGI): `check` and `success` (see `check_flow`, `success_flow`)."""

    def check(self, user: str, address: str | None) -> int:
        """`check_flow`, run: 0 to go ahead, else the whole seconds to wait (answer 429)."""
        return run_sync(self.check_flow(user, address))

    def success(self, user: str, address: str | None) -> None:
        """`success_flow`, run."""
        run_sync(self.success_flow(user, address))


class AsyncLoginThrottle(BaseLoginThrottle):
    """The throttle for async views (Starlette, FastAPI): the same `check` and `success`, awaited."""

    async def check(self, user: str, address: str | None) -> int:
        """`check_flow`, awaited: 0 to go ahead, else the whole seconds to wait (answer 429)."""
        return await run_async(self.check_flow(user, address))

    async def success(self, user: str, address: str | None) -> None:
        """`success_flow`, awaited."""
        await run_async(self.success_flow(user, address))
