"""Sans-IO plumbing: a *flow* is a generator that yields effects when it needs I/O and returns a result.

The logic (verify, look up a session, log in, log out…) is written once as a flow; `run_sync` drives it
in a WSGI thread and `run_async` on an event loop. An effect is a blocking call (`Blocking`, run in a
worker thread under asyncio) or a store call (`StoreCall`, using the store's sync or async method).

Authentication itself, run on every request, is written as a *restartable step* instead: a plain function
taking an `io` argument. Most requests need no I/O (a cached token, an in-process store, a local-cache hit)
and then the step simply returns, with no generator and no effect object. Where it needs I/O it asks `io`:
under WSGI (`INLINE`) the call is made there and then; under ASGI an `IOResults` holds the outcomes of
effects already performed, and a missing one raises `NeedsIO`, whose effect `restartable` performs before
running the step again from the start. Everything a step does before an I/O point must therefore be safe to
repeat (parsing, verifying, deciding) — which is why only the few store and key-set calls are I/O points.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

__all__ = [
    "INLINE",
    "IO",
    "Blocking",
    "Effect",
    "Flow",
    "IOResults",
    "NeedsIO",
    "StoreCall",
    "io_blocking",
    "io_store",
    "restartable",
    "resume_async",
    "run_async",
    "run_sync",
]

T = TypeVar("T")


class Effect(Protocol):
    def run_sync(self) -> Any: ...

    async def run_async(self) -> Any: ...


Flow = Generator[Effect, Any, T]


@dataclass(frozen=True, slots=True)
class Blocking:
    """A call that may block (e.g. fetching a JWKS): inline under WSGI, in a worker thread under ASGI."""

    call: Callable[[], Any]

    def run_sync(self) -> Any:
        return self.call()

    async def run_async(self) -> Any:
        return await asyncio.to_thread(self.call)


@dataclass(frozen=True, slots=True)
class StoreCall:
    """``store.<name>(*args)`` under WSGI, ``await store.a<name>(*args)`` under ASGI."""

    store: Any
    name: str
    args: tuple[Any, ...]

    @property
    def nonblocking(self) -> bool:
        """True for stores whose every call returns at once (no I/O): no need to await them."""
        return bool(getattr(self.store, "nonblocking", False))

    def run_sync(self) -> Any:
        return getattr(self.store, self.name)(*self.args)

    async def run_async(self) -> Any:
        return await getattr(self.store, "a" + self.name)(*self.args)


def run_sync(flow: Flow[T]) -> T:
    """Drive a flow in a synchronous (WSGI) world."""
    try:
        effect = flow.send(None)
        while True:
            try:
                result = effect.run_sync()
            except Exception as exc:
                effect = flow.throw(exc)
            else:
                effect = flow.send(result)
    except StopIteration as stop:
        value: T = stop.value
        return value


async def run_async(flow: Flow[T]) -> T:
    """Drive a flow on an event loop; effects that never block (an in-memory store) run inline."""
    try:
        effect = flow.send(None)
    except StopIteration as stop:
        value: T = stop.value
        return value
    return await resume_async(flow, effect)


async def resume_async(flow: Flow[T], effect: Effect) -> T:
    """Drive a flow on from the effect it first yielded (see `run_async`)."""
    try:
        while True:
            try:
                result = effect.run_sync() if getattr(effect, "nonblocking", False) else await effect.run_async()
            except Exception as exc:
                effect = flow.throw(exc)
            else:
                effect = flow.send(result)
    except StopIteration as stop:
        value: T = stop.value
        return value


# ---- restartable steps ----


class _Inline:
    __slots__ = ()

    def __repr__(self) -> str:
        return "INLINE"


#: `io` for a synchronous world: every I/O call is made inline
INLINE = _Inline()
#: outcomes of the effects a restartable step asked for, by I/O point: (True, result) or (False, exception)
IOResults = dict[str, tuple[bool, Any]]
#: what a restartable step is given: `INLINE`, the outcomes so far (a step may also keep there what a run after
#: the I/O must not redo), or None (no I/O may be done: raise `NeedsIO`)
IO = _Inline | IOResults | None


class NeedsIO(Exception):
    """A restartable step reached I/O point `key` without its outcome: perform `effect`, then run it again."""

    def __init__(self, key: str, effect: Effect) -> None:
        super().__init__(key)
        self.key = key
        self.effect = effect


def _outcome(io: IO, key: str, make: Callable[[], Effect]) -> Any:
    if io is not None:
        assert not isinstance(io, _Inline)
        found = io.get(key)
        if found is not None:
            ok, value = found
            if ok:
                return value
            raise value
    raise NeedsIO(key, make())


def io_shortcuts(store: Any, name: str) -> tuple[Callable[..., Any] | None, Callable[..., Any] | None]:
    """The two ways `io_store` answers ``store.<name>`` without an I/O point, looked up once for a hot path:
    ``store.<name>`` itself for an in-process store, and ``store.peek_<name>`` (a local-cache hit, None on a miss)
    for a store with a local cache; None where the store has no such way."""
    if getattr(store, "nonblocking", False):
        return getattr(store, name), None
    if getattr(store, "local_cache", None) is not None:
        return None, getattr(store, "peek_" + name, None)
    return None, None


def io_store(io: IO, key: str, store: Any, name: str, *args: Any) -> Any:
    """``store.<name>(*args)`` from a restartable step: at once for an in-process store, a local-cache hit
    (``peek_<name>``) or `INLINE`; otherwise the outcome of ``store.a<name>(*args)`` (see `restartable`)."""
    if io is INLINE or getattr(store, "nonblocking", False):
        return getattr(store, name)(*args)
    peek = getattr(store, "peek_" + name, None)
    if peek is not None:
        found = peek(*args)
        if found is not None:
            return found
    return _outcome(io, key, lambda: StoreCall(store, name, args))


def io_blocking(io: IO, key: str, call: Callable[[], T]) -> T:
    """``call()`` from a restartable step: inline under `INLINE`, else in a worker thread (see `restartable`)."""
    if io is INLINE:
        return call()
    result: T = _outcome(io, key, lambda: Blocking(call))
    return result


def restartable(step: Callable[[IO], T], done: IOResults | None = None, first: NeedsIO | None = None) -> Flow[T]:
    """A restartable step as a flow: run it; when it needs I/O, yield the effect and run it again with the outcome.

    `done` and `first` continue an attempt already made (``step(done)`` raised `first`): its effect is performed
    before the step runs again, and what the step kept in `done` is kept. Bounded: each run either returns,
    raises, or asks for an I/O point whose outcome it did not have yet.
    """
    if done is None:
        done = {}
    need = first
    while True:
        if need is None:
            try:
                return step(done)
            except NeedsIO as raised:
                need = raised
        if need.key in done:  # a step asking twice for one point would loop forever: a bug, say so
            raise RuntimeError(f"restartable step asked again for I/O point {need.key!r}")
        try:
            done[need.key] = (True, (yield need.effect))
        except Exception as exc:
            done[need.key] = (False, exc)
        need = None
