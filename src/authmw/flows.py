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

__all__ = ["Blocking", "Effect", "Flow", "StoreCall", "run_async", "run_sync"]

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
    """Drive a flow on an event loop."""
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
