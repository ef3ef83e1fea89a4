"""The one way authmw does I/O: effects are data, flows yield them, two thin runners perform them.

An *effect* describes one piece of I/O: a Redis round trip (`Command`) or a call that may block (`Blocking`, e.g.
fetching a JWKS). A *flow* (`Flow[T]`) is logic written once as a generator: it yields effects, receives their
results (an effect's exception is thrown back in at its yield) and returns its answer. `run_sync` performs each
effect there and then (WSGI, the CLI), `run_async` awaits it (ASGI); each effect's two small methods, `run_sync` and
`run_async`, are the only other places where the two worlds differ.

Most requests need no I/O (an in-process store, a local-cache hit). The request path asks a store's `peek_load` /
`peek_token_state` first, which answer at once or say `MISS`, and builds a flow only on a miss; the decision then
comes back as a `Pending` carrying the flow that finishes it from there. An in-process store's operations are plain
functions made into flows that never yield (`inline`).
"""

from __future__ import annotations

import asyncio
import enum
import functools
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, NamedTuple, ParamSpec, Protocol, TypeVar, final

__all__ = [
    "MISS",
    "Blocking",
    "Command",
    "Effect",
    "Flow",
    "Miss",
    "Pending",
    "RedisLink",
    "Script",
    "inline",
    "run_async",
    "run_sync",
    "settled",
]

T = TypeVar("T")
P = ParamSpec("P")


class Effect(Protocol):
    """I/O as data: performed by `run_sync` in a synchronous world, awaited by `run_async` on an event loop."""

    def run_sync(self) -> Any: ...

    async def run_async(self) -> Any: ...


#: logic that yields effects, is sent their results, and returns a T
Flow = Generator[Effect, Any, T]


def run_sync(flow: Flow[T]) -> T:
    """Drive `flow` in a synchronous world (WSGI, the CLI): each effect performed there and then."""
    try:
        effect = flow.send(None)
        while True:
            effect = _after(flow, effect.run_sync)
    except StopIteration as stop:
        value: T = stop.value
        return value


def _after(flow: Flow[Any], perform: Callable[[], Any]) -> Effect:
    """The flow's next effect once `perform` has run: its result sent in, or its exception thrown in at the yield
    (StopIteration: the flow returned)."""
    try:
        result = perform()
    except Exception as exc:
        return flow.throw(exc)
    return flow.send(result)


async def run_async(flow: Flow[T]) -> T:
    """Drive `flow` on an event loop (ASGI): each effect awaited (a blocking one in a worker thread)."""
    try:
        effect = flow.send(None)
        while True:
            try:
                result = await effect.run_async()
            except Exception as exc:
                effect = flow.throw(exc)
            else:
                effect = flow.send(result)
    except StopIteration as stop:
        value: T = stop.value
        return value


@final  # callers test ``type(answer) is Pending``: the cheapest test there is, and exact only without subclasses
class Pending(Generic[T]):
    """An answer that needs I/O first: `flow` finishes it from the point reached (drive it with a runner)."""

    __slots__ = ("flow",)

    def __init__(self, flow: Flow[T]) -> None:
        self.flow = flow


def settled(answer: T | Pending[T]) -> Flow[T]:
    """An answer that may be `Pending`, as a flow: the pending one's flow, or the answer at once."""
    if type(answer) is Pending:
        return (yield from answer.flow)
    return answer


class Miss(enum.Enum):
    """The type of `MISS`."""

    MISS = "MISS"


#: what a store's `peek_*` answers when only I/O can tell (None cannot say it: "no session" is None)
MISS: Final = Miss.MISS


def inline(function: Callable[P, T]) -> Callable[P, Flow[T]]:
    """`function` as a flow that never yields: an operation of an in-process store, which needs no I/O. Its
    exceptions are raised where the flow is driven, as any effect's would be."""

    @functools.wraps(function)
    def flow(*args: P.args, **kwargs: P.kwargs) -> Flow[T]:
        return function(*args, **kwargs)
        yield  # never reached: it makes this function a generator

    return flow


@dataclass(frozen=True, slots=True)
class Blocking:
    """A call that may block (e.g. fetching a JWKS): inline under `run_sync`, in a worker thread under `run_async`."""

    call: Callable[[], Any]

    def run_sync(self) -> Any:
        return self.call()

    async def run_async(self) -> Any:
        return await asyncio.to_thread(self.call)


# ---- Redis ----


class Script(NamedTuple):
    """A Lua script, sent by its SHA1 (EVALSHA) and loaded into a server that does not know it yet."""

    name: str
    source: str
    sha: str


class _Drops(Protocol):
    def invalidate(self, messages: Iterable[str]) -> None: ...


class RedisLink(Protocol):
    """What a `Command` runs on (a `RedisStore`): its clients, the invalidation channel and this process's cache."""

    @property
    def client(self) -> Any: ...

    @property
    def async_client(self) -> Any: ...

    @property
    def channel(self) -> str: ...

    @property
    def local_cache(self) -> _Drops | None: ...

    def unavailable(self, error: BaseException) -> Exception:
        """The exception to raise for a client error (a connection lost, a timeout…)."""
        ...


def _as_is(reply: Any) -> Any:
    return reply


@dataclass(frozen=True, slots=True)
class Command:
    """One Redis round trip as data: a script (EVALSHA) or a plain command, how to read its reply, and what every
    process's local cache must drop once it is done (`invalidates`, published on the link's channel). With neither a
    script nor a command it only publishes (a flow whose last write's invalidations depend on what it found)."""

    link: RedisLink
    parse: Callable[[Any], Any] = _as_is
    script: Script | None = None
    keys: Sequence[str] = ()
    args: Sequence[str | int | bytes] = ()
    command: tuple[str | bytes | int, ...] = ()
    invalidates: tuple[str, ...] = ()

    def run_sync(self) -> Any:
        return self.parse(run_sync(self._exchange()))

    async def run_async(self) -> Any:
        return self.parse(await run_async(self._exchange()))

    def _exchange(self) -> Flow[Any]:
        """The client calls, the same for both clients: a flow of `_Call`s, returning the reply."""
        link, script, reply = self.link, self.script, None
        try:
            if script is not None:
                # EVALSHA as is: cheaper than redis-py's Script objects (7-11 µs a call).
                evalsha = ("EVALSHA", script.sha, len(self.keys), *self.keys, *self.args)
                try:
                    reply = yield _Call(link, evalsha)
                except _no_script():  # a new, restarted or flushed server: load it, once, and run it again
                    yield _Call(link, ("SCRIPT LOAD", script.source))
                    reply = yield _Call(link, evalsha)
            elif self.command:
                reply = yield _Call(link, self.command)
            if self.invalidates:
                # Always announced, cache or not: other processes (and the CLI's changes) must reach every cache.
                cache = link.local_cache
                if cache is not None:
                    cache.invalidate(self.invalidates)
                publish = ("PUBLISH", link.channel, "\n".join(self.invalidates))
                try:
                    yield _Call(link, publish)
                except redis_errors():
                    # The write is done: one more try on a fresh connection, so that a connection that broke just
                    # now does not leave other processes' caches serving what was ended (then: 503, retry it).
                    yield _Call(link, publish)
        except redis_errors() as exc:
            raise link.unavailable(exc) from None
        return reply


@dataclass(frozen=True, slots=True)
class _Call:
    """One client call: the link's redis.Redis under `run_sync`, its redis.asyncio.Redis under `run_async`."""

    link: RedisLink
    args: tuple[Any, ...]

    def run_sync(self) -> Any:
        client = self.link.client
        if client is None:
            raise RuntimeError("this RedisStore has no synchronous client (drive its flows with run_async)")
        return client.execute_command(*self.args)

    async def run_async(self) -> Any:
        client = self.link.async_client
        if client is None:
            raise RuntimeError("this RedisStore has no asyncio client (drive its flows with run_sync)")
        return await client.execute_command(*self.args)


_REDIS_ERRORS: tuple[type[BaseException], ...] = ()


def redis_errors() -> tuple[type[BaseException], ...]:
    """What a Redis client raises when the server cannot be used (redis is imported only once one is in use)."""
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
