"""Sans-IO plumbing: a *flow* is a generator that yields effects when it needs I/O and returns a result.

The logic (verify, look up a session, log in, log out…) is written once as a flow; `run_sync` drives it
in a WSGI thread and `run_async` on an event loop. An effect is a blocking call (`Blocking`, run in a
worker thread under asyncio) or a store call (`StoreCall`, using the store's sync or async method).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

__all__ = ["Blocking", "Effect", "Flow", "StoreCall", "resume_async", "run_async", "run_sync", "store_call"]

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


def store_call(store: Any, name: str, *args: Any) -> Flow[Any]:
    """``yield from store_call(store, "load", sid, interval)``: a store call that costs no effect (and no
    await) when it can be answered at once: an in-memory store, or a local-cache hit (``peek_<name>``)."""
    if getattr(store, "nonblocking", False):
        return getattr(store, name)(*args)
    peek = getattr(store, "peek_" + name, None)
    if peek is not None:
        found = peek(*args)
        if found is not None:
            return found
    return (yield StoreCall(store, name, args))


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
